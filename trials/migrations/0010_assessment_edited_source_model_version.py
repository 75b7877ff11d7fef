"""The AI's own answer kept as delivered: engine results on edited data get a source of their own.

Before, every rules-engine row was of source ``ai``, including the rows re-computed after a reader's
edit, so "the AI's answer" (the latest ``ai`` row) showed the re-computed response. Existing rows are
relabelled from the audit trail: an engine row whose creating event does not share its correlation id
with a processing job (the pipeline's analysis of new imaging, a criteria-settings re-assessment) was
made by a person's edit and becomes ``edited``; so does any later engine row of the same visit and
criteria once one is (the edits still hold). Engine rows get the model of their visit's latest
succeeded segmentation. Reversible: ``edited`` becomes ``ai`` again.
"""

import django.db.models.deletion
from django.db import migrations, models


def relabel(apps, schema_editor):
    Assessment = apps.get_model("trials", "Assessment")
    AuditEvent = apps.get_model("trials", "AuditEvent")
    ProcessingJob = apps.get_model("trials", "ProcessingJob")
    SegmentationRun = apps.get_model("trials", "SegmentationRun")

    job_ids = set(ProcessingJob.objects.exclude(correlation_id="").values_list("correlation_id", flat=True))
    created_by = dict(
        AuditEvent.objects.filter(object_type="trials.assessment", action="create").values_list(
            "object_id", "correlation_id"
        )
    )
    on_edits: set[tuple[int, str]] = set()
    edited: list[int] = []
    for row in Assessment.objects.exclude(source="radiologist").order_by("created_at", "pk"):
        key = (row.timepoint_id, row.criteria)
        if key in on_edits or created_by.get(str(row.pk)) not in job_ids:
            on_edits.add(key)
            edited.append(row.pk)
    Assessment.objects.filter(pk__in=edited).update(source="edited")

    latest_model: dict[int, int] = {}
    runs = SegmentationRun.objects.filter(status="succeeded").order_by("finished_at", "pk")
    for timepoint_id, model_id in runs.values_list("series__timepoint_id", "model_version_id"):
        latest_model[timepoint_id] = model_id
    for timepoint_id, model_id in latest_model.items():
        Assessment.objects.filter(timepoint_id=timepoint_id).exclude(source="radiologist").update(
            model_version_id=model_id
        )


def unlabel(apps, schema_editor):
    apps.get_model("trials", "Assessment").objects.filter(source="edited").update(source="ai")


class Migration(migrations.Migration):

    dependencies = [
        ('trials', '0009_audit_hash_chain'),
    ]

    operations = [
        migrations.AddField(
            model_name='assessment',
            name='model_version',
            field=models.ForeignKey(blank=True, help_text='The model whose segmentation of the visit the rules engine assessed (engine rows).', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='trials.modelversion'),
        ),
        migrations.AddField(
            model_name='historicalassessment',
            name='model_version',
            field=models.ForeignKey(blank=True, db_constraint=False, help_text='The model whose segmentation of the visit the rules engine assessed (engine rows).', null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='trials.modelversion'),
        ),
        migrations.AlterField(
            model_name='assessment',
            name='source',
            field=models.CharField(choices=[('ai', "AI (rules engine on the AI's lesions)"), ('edited', 'Rules engine on edited data'), ('radiologist', 'Radiologist')], default='ai', max_length=12),
        ),
        migrations.AlterField(
            model_name='historicalassessment',
            name='source',
            field=models.CharField(choices=[('ai', "AI (rules engine on the AI's lesions)"), ('edited', 'Rules engine on edited data'), ('radiologist', 'Radiologist')], default='ai', max_length=12),
        ),
        migrations.RunPython(relabel, unlabel),
    ]
