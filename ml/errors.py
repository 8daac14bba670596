"""Errors the ml library raises for problems with the caller's data or settings (not bugs).

The service turns these, and only these, into messages for the user (app.errors); any other
exception from ml/ is a bug and stays an internal error.
"""

from __future__ import annotations


class MLError(ValueError):
    """Base of every expected ml failure. Subclasses ValueError so older callers keep working."""


class InvalidParams(MLError):
    """A model/training parameter is out of range or unknown."""


class InsufficientData(MLError):
    """The data cannot train or evaluate this model (too few rows, no heard AP, a missing modality...)."""
