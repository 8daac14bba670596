"""Settings dataclasses from a user's `params` dict: unknown names are an error that lists the known ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

from ml.errors import InvalidParams

T = TypeVar("T")


def settings_from(cls: type[T], params: Mapping[str, Any], what: str) -> T:
    """cls's defaults with `params` applied; InvalidParams("unknown <what> params: ...; known: ...") on a bad name."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParams(f"unknown {what} params: {unknown}; known: {sorted(known)}")
    return replace(cls(), **params)  # type: ignore[type-var]
