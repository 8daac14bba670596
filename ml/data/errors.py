"""The one exception every reader raises for malformed input.

Readers never let a bare KeyError/IndexError/ValueError (or a tarfile/lzma
error) escape: callers — the upload endpoint in particular — turn a
`DataFormatError` into a 422 with `str(err)`, which names the offending place
(`where`) so a surveyor can fix the file.
"""

from __future__ import annotations


class DataFormatError(ValueError):
    """Malformed input data.

    `message` says what is wrong, `where` where it is, e.g.
    "trainingData.csv line 17, column WAP003" or
    "site1/F1/path_data_files/5dd...txt line 230" (None when not known).
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        # Both go to args so the exception pickles (Celery ships it between processes).
        super().__init__(message, where)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def __repr__(self) -> str:
        return f"DataFormatError({self.message!r}, where={self.where!r})"
