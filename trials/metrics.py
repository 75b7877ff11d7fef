"""Prometheus metrics of MetTrack's own state, read at scrape time (``/metrics``).

django-prometheus counts and times every request (per view and method); this collector adds what the
service is doing: jobs by kind and state, the age of the oldest queued job, the depth of each Celery
queue in the broker, and the time the recent segmentation runs spent in each stage. They are read from
the database and the broker when Prometheus scrapes, so every web process reports the same numbers and
the workers, on other nodes, need no exporter of their own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily

from trials.choices import JobState, RunStatus
from trials.models import ProcessingJob, SegmentationRun

#: Recent succeeded runs whose stage timings make the segmentation summary.
RECENT_RUNS = 200


class MetTrackCollector:
    """A prometheus_client collector: each scrape runs three small queries and one broker round trip."""

    def collect(self) -> Iterator[Metric]:
        """Yield the jobs, queue and segmentation metrics (see the module docstring)."""
        yield from self._jobs()
        queues = self._queue_depths()
        if queues is not None:
            yield queues
        yield self._segmentation_stages()

    def _jobs(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "mettrack_jobs", "Background jobs by kind and state.", labels=["kind", "state"]
        )
        for row in ProcessingJob.objects.values("kind", "state").annotate(n=Count("id")).order_by():
            jobs.add_metric([row["kind"], row["state"]], row["n"])
        yield jobs
        oldest = GaugeMetricFamily(
            "mettrack_oldest_queued_job_age_seconds",
            "Age of the oldest queued job, by kind.",
            labels=["kind"],
        )
        now = timezone.now()
        queued = (
            ProcessingJob.objects.filter(state=JobState.QUEUED)
            .values("kind")
            .annotate(first=Min("enqueued_at"))
        )
        for kind, first in queued.order_by().values_list("kind", "first"):
            oldest.add_metric([kind], (now - first).total_seconds())
        yield oldest

    def _queue_depths(self) -> Metric | None:
        url = getattr(settings, "CELERY_BROKER_URL", "")
        if not url.startswith(("redis://", "rediss://")):
            return None
        import redis

        from trials.pipeline.queue import DEFAULT_QUEUE, GPU_QUEUE

        depth = GaugeMetricFamily(
            "mettrack_queue_depth", "Messages waiting in each Celery queue of the broker.", labels=["queue"]
        )
        try:
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            for queue in (GPU_QUEUE, DEFAULT_QUEUE):
                depth.add_metric([queue], client.llen(queue))
        except redis.RedisError:
            return None  # the broker is down: /readyz says so; a scrape must not fail for it
        return depth

    def _segmentation_stages(self) -> Metric:
        summary = SummaryMetricFamily(
            "mettrack_segmentation_stage_seconds",
            f"Seconds per stage of the last {RECENT_RUNS} succeeded segmentation runs.",
            labels=["stage"],
        )
        counts: dict[str, int] = defaultdict(int)
        sums: dict[str, float] = defaultdict(float)
        timings = (
            SegmentationRun.objects.filter(status=RunStatus.SUCCEEDED)
            .order_by("-finished_at")
            .values_list("timings_s", flat=True)[:RECENT_RUNS]
        )
        for stages in timings:
            for stage, seconds in (stages or {}).items():
                if isinstance(seconds, int | float):
                    counts[stage.removesuffix("_s")] += 1
                    sums[stage.removesuffix("_s")] += float(seconds)
        for stage in sorted(counts):
            summary.add_metric([stage], count_value=counts[stage], sum_value=sums[stage])
        return summary

    def describe(self) -> list[Any]:
        """Nothing to describe ahead of a scrape (registering must not query the database)."""
        return []


__all__ = ["RECENT_RUNS", "MetTrackCollector"]
