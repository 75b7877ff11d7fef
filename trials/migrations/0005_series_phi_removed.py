"""PHI out of stored series rows, their history and their audit events (issue 19).

* ``original_filename`` (the client's upload name, often the patient's name) is dropped from
  ``ImagingSeries`` and its history table.
* ``series_description`` is cleaned to MR terms (``segmentation.descriptors``, PS3.15 Clean
  Descriptors) in both tables.
* The same two keys are cleaned in the ``before``/``after`` snapshots of the audit events of series.
  The audit trail is append-only, so this one migration (run by the schema owner) lifts the trigger
  for its own UPDATE and puts it back in the same transaction, and records an audit event saying
  what it cleaned and how many events.
"""

import uuid

from django.db import migrations

from segmentation.descriptors import clean_series_description

PG_DISABLE = "ALTER TABLE trials_auditevent DISABLE TRIGGER trials_auditevent_append_only"
PG_ENABLE = "ALTER TABLE trials_auditevent ENABLE TRIGGER trials_auditevent_append_only"
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS trials_auditevent_no_update",
]
SQLITE_CREATE = [
    """
    CREATE TRIGGER IF NOT EXISTS trials_auditevent_no_update
    BEFORE UPDATE ON trials_auditevent
    BEGIN
        SELECT RAISE(ABORT, 'trials_auditevent is append-only: UPDATE refused');
    END;
    """,
]


def _clean_snapshot(data):
    if not isinstance(data, dict):
        return data, False
    changed = False
    cleaned = dict(data)
    if "original_filename" in cleaned:
        del cleaned["original_filename"]
        changed = True
    if "series_description" in cleaned:
        value = clean_series_description(cleaned["series_description"])
        changed = changed or value != cleaned["series_description"]
        cleaned["series_description"] = value
    return cleaned, changed


def _clean_rows(apps):
    for name in ("ImagingSeries", "HistoricalImagingSeries"):
        model = apps.get_model("trials", name)
        for row in model.objects.exclude(series_description="").only("pk", "series_description"):
            value = clean_series_description(row.series_description)
            if value != row.series_description:
                model.objects.filter(pk=row.pk).update(series_description=value)


def _clean_audit(apps, schema_editor):
    audit_event = apps.get_model("trials", "AuditEvent")
    vendor = schema_editor.connection.vendor
    cleaned_count = 0
    with schema_editor.connection.cursor() as cursor:
        if vendor == "postgresql":
            # Deferred foreign-key checks queued earlier in the transaction would block the ALTER.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(PG_DISABLE)
        else:
            for statement in SQLITE_DROP:
                cursor.execute(statement)
        for event in audit_event.objects.filter(object_type="trials.imagingseries").iterator():
            before, changed_before = _clean_snapshot(event.before)
            after, changed_after = _clean_snapshot(event.after)
            if changed_before or changed_after:
                # The queryset of the historical model is a plain one: the trigger is what refuses.
                audit_event.objects.filter(pk=event.pk).update(before=before, after=after)
                cleaned_count += 1
        if vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(PG_ENABLE)
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        else:
            for statement in SQLITE_CREATE:
                cursor.execute(statement)
    if cleaned_count:
        audit_event.objects.create(
            actor=None,
            actor_name="system",
            action="phi_cleaned",
            object_type="trials.auditevent",
            object_repr=f"{cleaned_count} series audit events",
            after={"removed": ["original_filename"], "cleaned": ["series_description"], "events": cleaned_count},
            reason="Upload file names and raw series descriptions removed from stored series and their "
            "audit events (migration 0004, PHI).",
            correlation_id=uuid.uuid4().hex,
        )


def forward(apps, schema_editor):
    _clean_rows(apps)
    _clean_audit(apps, schema_editor)


class Migration(migrations.Migration):
    dependencies = [
        ("trials", "0004_job_dispatch_and_heartbeat"),
    ]

    operations = [
        migrations.RemoveField(
            model_name="historicalimagingseries",
            name="original_filename",
        ),
        migrations.RemoveField(
            model_name="imagingseries",
            name="original_filename",
        ),
        migrations.RunPython(forward, migrations.RunPython.noop, elidable=False),
    ]
