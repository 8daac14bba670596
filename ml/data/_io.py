"""Opening reader sources: a path, or a text or binary file object.

Readers accept all three because the API streams uploads (binary file
objects), tests pass strings (text), and the CLI passes paths. A file object
given by the caller is never closed here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, cast

Source = str | os.PathLike[str] | IO[str] | IO[bytes]


def as_path(source: object) -> Path | None:
    """`source` as a Path when it names a file (str or os.PathLike), else None (a file object)."""
    if isinstance(source, str | os.PathLike):
        return Path(os.fspath(cast("str | os.PathLike[str]", source)))
    return None


def source_name(source: object, default: str = "<stream>") -> str:
    """A short human name for error messages: the file name, not the full path."""
    path = as_path(source)
    if path is not None:
        return path.name
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return Path(name).name
    return default


def is_binary(f: Any) -> bool:
    """True for a bytes file object (read(0) returns b"" without consuming anything)."""
    return isinstance(f.read(0), bytes)


@contextmanager
def open_text(source: Source) -> Iterator[IO[str]]:
    """`source` as a UTF-8 text stream, newlines untranslated (what csv wants), a leading BOM dropped."""
    path = as_path(source)
    if path is not None:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield f
        return
    if not is_binary(source):
        yield cast(IO[str], source)
        return
    wrapper = io.TextIOWrapper(cast(IO[bytes], source), encoding="utf-8-sig", newline="")
    try:
        yield wrapper
    finally:
        # detach() so closing/collecting the wrapper does not close the caller's file.
        with suppress(ValueError):  # already detached or closed by the caller
            wrapper.detach()
