"""Before a /locate is answered: every field of its query-log row can be stored, on SQLite and PostgreSQL alike.

The request schema (app.schemas) already bounds what the client sends (64-bit timestamps, 200-character device
without NUL, normalised BSSIDs, RSSI and age ranges); this checks the whole row, the model's answer included,
so a row that would fail its group commit (and with it every other request sharing that commit) is refused here
with a 422, and nothing answered is ever unstorable.
"""

from __future__ import annotations

import math
from typing import Any

from app.errors import Invalid
from ml.data.limits import INT64_MAX, INT64_MIN, LABEL_MAX, TEXT_MAX

INT32_MAX = 2**31 - 1
_TEXT = (("device", TEXT_MAX, True), ("floor", LABEL_MAX, False), ("building", LABEL_MAX, True))
_ANSWER = ("x", "y", "error_m")


def check_query_rows(rows: list[dict[str, Any]]) -> None:
    """Raise Invalid naming the query and field when a row cannot be stored."""
    many = len(rows) > 1
    for i, row in enumerate(rows):
        where = f"queries[{i}]: " if many else ""
        for name, max_len, optional in _TEXT:
            v = row.get(name)
            if v is None and optional:
                continue
            if not isinstance(v, str) or len(v) > max_len or "\x00" in v:
                raise Invalid(f"{where}{name} cannot be stored (at most {max_len} characters, no NUL)")
        ts = row.get("client_timestamp")
        if ts is not None and not (isinstance(ts, int) and INT64_MIN <= ts <= INT64_MAX):
            raise Invalid(f"{where}timestamp must be an integer within 64 bits")
        for name in _ANSWER:
            v = row.get(name)
            if not isinstance(v, float | int) or not math.isfinite(v):
                raise Invalid(f"{where}the model could not place this scan (its {name} is not a finite number)")
        if not 0 <= int(row.get("model_version", -1)) <= INT32_MAX:
            raise Invalid(f"{where}model version out of range")
