"""Error policy of the pipeline: what a task retries, what fails a job once, and the message a user reads.

- :class:`TransientError` (a lost database or broker connection) is retried by the tasks with backoff.
- :data:`PERMANENT_ERRORS` (an unusable image or model, data the rules cannot assess, invalid input)
  fail the job once, with :func:`user_message` as its error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import InterfaceError, OperationalError

from rano.errors import RanoError
from segmentation.errors import ImagingError, ModelError
from trials.exceptions import ServiceError


class TransientError(Exception):
    """A failure that may go away by itself (database or broker connection): the task is retried."""


#: Errors that no retry can fix: the job fails once with the error's message.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ImagingError, ModelError, RanoError, ServiceError)

#: Database errors worth a retry (connection lost, server restarting, serialisation failures).
TRANSIENT_DATABASE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)


def user_message(exc: BaseException) -> str:
    """The message of an error in words for the dashboard and the API (never a traceback)."""
    if isinstance(exc, ImagingError):
        return exc.user_message
    if isinstance(exc, ServiceError):
        return exc.message
    return str(exc) or exc.__class__.__name__


@contextmanager
def transient_errors() -> Iterator[None]:
    """Re-raise database connection failures as :class:`TransientError` (so that tasks retry them)."""
    try:
        yield
    except TRANSIENT_DATABASE_ERRORS as exc:
        raise TransientError(f"database unavailable: {exc}") from exc


__all__ = [
    "PERMANENT_ERRORS",
    "TRANSIENT_DATABASE_ERRORS",
    "TransientError",
    "transient_errors",
    "user_message",
]
