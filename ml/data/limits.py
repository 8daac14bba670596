"""The limits every stored survey or query field obeys, whichever way it arrives (JSON body, CSV, trace, JSONL).

The database columns are sized for them (labels 64 characters, free text 200, 64-bit integers), and PostgreSQL
refuses NUL characters in text where SQLite keeps them: checking here, before any insert, makes the answer to a
bad value the same 422 on both databases instead of a 500 on one and a silently kept value on the other.
"""

from __future__ import annotations

import math

from ml.data.errors import DataFormatError

LABEL_MAX = 64  # floor and building labels (String(64) columns)
TEXT_MAX = 200  # device, path, user (String(200) columns)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def text_problem(value: object, max_len: int) -> str | None:
    """Why `value` cannot be stored as text of at most `max_len` characters, or None."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if len(value) > max_len:
        return f"{len(value)} characters; the limit is {max_len}"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def int64_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer, got {type(value).__name__}"
    if not INT64_MIN <= value <= INT64_MAX:
        return f"{value} does not fit in 64 bits"
    return None


def float_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number, got {type(value).__name__}"
    if not math.isfinite(value):
        return "not a finite number"
    return None


def fingerprint_problem(fp: object) -> tuple[str, str] | None:
    """(field, problem) for the first field of a survey `Fingerprint` that cannot be stored, or None."""
    for name, max_len, required in (
        ("floor", LABEL_MAX, True),
        ("building", LABEL_MAX, False),
        ("device", TEXT_MAX, False),
        ("path", TEXT_MAX, False),
        ("user", TEXT_MAX, False),
    ):
        v = getattr(fp, name, None)
        if v is None:
            if required:
                return name, "missing"
            continue
        problem = text_problem(v, max_len)
        if problem is None and required and not v:
            problem = "empty"
        if problem is not None:
            return name, problem
    ts = getattr(fp, "timestamp", None)
    if ts is not None and (problem := int64_problem(ts)) is not None:
        return "timestamp", problem
    for name in ("x", "y"):
        if (problem := float_problem(getattr(fp, name, None))) is not None:
            return name, problem
    for i, r in enumerate(getattr(fp, "wifi", ()) or ()):
        age = r.age_ms
        if age is None:
            continue
        problem = float_problem(age) if isinstance(age, float) else None
        if problem is None and not INT64_MIN <= age <= INT64_MAX:
            problem = f"{age} does not fit in 64 bits"
        if problem is not None:
            return f"wifi[{i}].age_ms", problem
    return None


def check_fingerprint(fp: object, where: str, columns: dict[str, str] | None = None) -> None:
    """Raise DataFormatError naming `where` and the field (or the file's column, via `columns`) when a field of
    `fp` cannot be stored."""
    found = fingerprint_problem(fp)
    if found is None:
        return
    field, problem = found
    base = field.split("[")[0]
    if columns is not None and base in columns:
        raise DataFormatError(f"{field}: {problem}", f"{where}, column {columns[base]}")
    raise DataFormatError(problem, f"{where}, field {field}")
