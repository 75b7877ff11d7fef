"""``manage.py verify_audit_chain``: recompute the audit trail's hash chain and report the first broken link.

Exit status 0 when every event links to the one before and matches its hash; 1 (with the event number
and what is wrong) when an event was changed, removed, added or moved, or the end was cut off. Run it
from cron or the monitoring, and keep the printed head hash somewhere the database cannot reach (a
log, a ticket): a trail rewritten from the start would still be consistent, but not with that hash.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from trials.audit import verify_chain
from trials.models import AuditChainHead


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exit 1 at the first broken link."

    def handle(self, *args: Any, **options: Any) -> None:
        report = verify_chain()
        if not report.ok:
            raise CommandError(
                f"Audit chain broken at event #{report.broken_at}: {report.problem}. "
                f"{report.checked} events before it are intact."
            )
        head = AuditChainHead.objects.filter(pk=1).first()
        head_hash = head.last_hash if head is not None else ""
        self.stdout.write(
            self.style.SUCCESS(f"Audit chain intact: {report.checked} events, head {head_hash}")
        )
