"""MetTrack's Celery worker: ``celery -A worker worker -Q gpu --concurrency 1`` (see worker/celery.py)."""

from worker.celery import app

__all__ = ["app"]
