"""Settings dataclasses from a user's `params` dict: unknown names are an error that lists the known ones, and so
is a value of the wrong type (a boolean where a number is expected, a string for a number, NaN)."""

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
    check_types(cls, params, what)
    return replace(cls(), **params)  # type: ignore[type-var]


def check_types(cls: type, params: Mapping[str, Any], what: str) -> None:
    """InvalidParams when a value does not have its field's declared type (int, float, bool, str, None; other
    declared types, such as tuples, are left to the model's own checks)."""
    declared = {f.name: f.type.__name__ if isinstance(f.type, type) else str(f.type) for f in fields(cls)}
    for name, value in params.items():
        kinds = {k.strip() for k in declared.get(name, "").split("|")}
        if not kinds <= {"int", "float", "bool", "str", "None"}:
            continue
        if _fits(value, kinds):
            continue
        want = " or ".join(sorted(k for k in kinds if k != "None")) + (" or null" if "None" in kinds else "")
        raise InvalidParams(f"{what} param {name} must be {want}, not {value!r}")


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
