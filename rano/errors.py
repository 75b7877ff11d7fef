"""Exception classes raised by :mod:`rano` for bad input (each names what was wrong)."""

from __future__ import annotations


class RanoError(ValueError):
    """Base class of every input error raised by the ``rano`` package."""


class SettingsError(RanoError):
    """A response-criteria setting is unknown, of the wrong type or out of range."""


class GeometryError(RanoError):
    """An image or array has unusable geometry (spacing, direction, dimension, pixel type)."""


class ResponseInputError(RanoError):
    """The visits, observations or reader inputs given to the response engine are inconsistent."""


class MatchError(RanoError):
    """Lesion masks of different visits cannot be put into one space for matching."""
