"""Settings dataclasses from a user's `params` dict: unknown names are an error that lists the known ones, and so
is a value of the wrong type (a boolean where a number is expected, a string for a number, NaN). An integral float
for an int setting (10.0: JSON numbers often arrive so) is accepted as that int, and given to the settings as one."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

import numpy as np

from ml.errors import InvalidParams

T = TypeVar("T")


def settings_from(cls: type[T], params: Mapping[str, Any], what: str) -> T:
    """cls's defaults with `params` applied; InvalidParams("unknown <what> params: ...; known: ...") on a bad name."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParams(f"unknown {what} params: {unknown}; known: {sorted(known)}")
    return replace(cls(), **check_types(cls, params, what))  # type: ignore[type-var]


def check_types(cls: type, params: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`params` with each value as its field declares it: InvalidParams when a value does not have its field's
    declared type (int, float, bool, str, None; other declared types, such as tuples, are left to the model's own
    checks); a number for an int-only field comes back as a plain int (10.0 -> 10, np.int64 -> int), so that no
    setting accepted here fails later where an int is needed (a range, a tensor's size)."""
    declared = {f.name: f.type.__name__ if isinstance(f.type, type) else str(f.type) for f in fields(cls)}
    out = dict(params)
    for name, value in params.items():
        kinds = {k.strip() for k in declared.get(name, "").split("|")}
        if not kinds <= {"int", "float", "bool", "str", "None"}:
            continue
        if _fits(value, kinds):
            if "int" in kinds and "float" not in kinds and _is_number(value):
                out[name] = int(value)
            continue
        want = " or ".join(sorted(k for k in kinds if k != "None")) + (" or null" if "None" in kinds else "")
        if _is_number(value) and not math.isfinite(float(value)):
            raise InvalidParams(f"{what} param {name} must be a finite number ({want}), not {value!r}")
        raise InvalidParams(f"{what} param {name} must be {want}, not {value!r}")
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


def _fits(v: Any, kinds: set[str]) -> bool:
    # numbers' ABCs so numpy scalars (np.int64, np.float32) from benchmark sweeps count as numbers
    if v is None:
        return "None" in kinds
    if isinstance(v, bool | np.bool_):
        return "bool" in kinds
    if isinstance(v, numbers.Integral):
        return "int" in kinds or "float" in kinds
    if isinstance(v, numbers.Real):
        f = float(v)
        return ("float" in kinds and math.isfinite(f)) or ("int" in kinds and f.is_integer())
    if isinstance(v, str):
        return "str" in kinds
    return False
