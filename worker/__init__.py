"""MetTrack's Celery worker: ``celery -A worker worker -Q gpu --concurrency 1`` (tasks in worker/tasks.py;
the app is configuration, config/celery.py)."""

from config.celery import app

__all__ = ["app"]
