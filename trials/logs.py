"""Logging with the correlation id: every log line of a request or a job names the id its audit events
carry (``X-Request-ID``, or the job's), so web, worker and audit records line up.

``LOG_FORMAT=json`` (the containers) writes one JSON object a line (python-json-logger) with
``correlation_id`` among its fields; ``text`` (the default) a readable line ending in ``[cid=...]``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

_CORRELATION_ID: ContextVar[str] = ContextVar("mettrack_correlation_id", default="")


def current_correlation_id() -> str:
    """The correlation id of the request or job this code runs for ("" outside one)."""
    return _CORRELATION_ID.get()


@contextlib.contextmanager
def correlation_id_bound(correlation_id: str) -> Iterator[None]:
    """Tag the log lines written inside the block with ``correlation_id``."""
    token = _CORRELATION_ID.set(correlation_id)
    try:
        yield
    finally:
        _CORRELATION_ID.reset(token)


class CorrelationIdFilter(logging.Filter):
    """Adds ``record.correlation_id`` (a logging filter on the handlers of config.settings.LOGGING)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = _CORRELATION_ID.get()
        return True


__all__ = ["CorrelationIdFilter", "correlation_id_bound", "current_correlation_id"]
