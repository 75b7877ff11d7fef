"""Exceptions the actions, the pipeline and the row helpers raise on purpose; the API maps each to an
HTTP status.

``ServiceError`` subclasses carry a clear, user-facing message and, for invalid input, field-level
messages (``field_errors``), so that no caller ever has to show an IntegrityError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trials.models import AuditImmutableError

if TYPE_CHECKING:
    from trials.models import ImagingSeries

__all__ = [
    "AuditImmutableError",
    "DuplicateError",
    "DuplicateSeriesError",
    "InvalidInputError",
    "InsufficientStorageError",
    "InvalidStateError",
    "MissingImageError",
    "RegionGrowingError",
    "ServiceError",
    "SignatureError",
    "UploadRejectedError",
]


class ServiceError(Exception):
    """Base class of every error a service raises on purpose.

    Args:
        message: what went wrong, in words a user can act on.
        field_errors: optional ``{field name: [messages]}``.
    """

    http_status = 400

    def __init__(self, message: str, field_errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field_errors: dict[str, list[str]] = field_errors or {}


class InvalidInputError(ServiceError, ValueError):
    """The input is invalid (HTTP 400): a field value, or objects from different trials mixed."""

    http_status = 400


class DuplicateError(ServiceError):
    """The object would duplicate an existing one (HTTP 409): same subject id, visit label, UID..."""

    http_status = 409


class InvalidStateError(ServiceError):
    """The verb does not apply in the object's current state (HTTP 409), e.g. confirming twice."""

    http_status = 409


class UploadRejectedError(InvalidInputError):
    """The upload is not a usable MR series (HTTP 400); the message is the imaging module's."""


class DuplicateSeriesError(DuplicateError):
    """The series is already stored (HTTP 409).

    Attributes:
        existing: The ImagingSeries already holding this Series Instance UID, or None when it belongs to
            a trial the uploader cannot see (then nothing about it may be shown).
    """

    def __init__(self, message: str, existing: ImagingSeries | None) -> None:
        super().__init__(message, {"series_instance_uid": [message]})
        self.existing = existing


class SignatureError(InvalidInputError):
    """The password re-entered for an electronic signature is wrong (nothing was signed)."""


class RegionGrowingError(InvalidInputError):
    """Region growing from a seed gave no usable lesion (outside the image, leaked, or too small)."""


class MissingImageError(InvalidStateError):
    """The visit has no stored volume or mask to work on (the pipeline has not produced it)."""


class InsufficientStorageError(ServiceError):
    """The image store has no room for what must be written (HTTP 507); nothing partial is kept."""

    http_status = 507
