"""Data model of MetTrack trials (see ../shared/design.md, "Data model").

What is here:
    Trial            code, title, and the RANO-BM criteria settings (rano-bm.md section 9) as fields
                     (percent thresholds as ``*_pct`` fields); ``Trial.criteria_settings()`` returns them
                     keyed by the section 9 / ``rano.settings.ResponseSettings`` names (``pr_threshold``),
                     and is stored with every assessment.
    Site             a trial site (code unique per trial).
    TrialMembership  user x trial (x optional site) x role (investigator | data_manager | radiologist | admin).
    Patient          pseudonymous ``subject_id`` (unique per trial), enrolment and treatment-start dates.
    Timepoint        visit: ``visit_label`` (unique per patient), ``scan_date``, ``is_baseline`` (one baseline
                     per patient), corticosteroid and clinical status.
    ImagingSeries    one MR series of a visit: Study/Series Instance UID (unique), geometry, stored volume,
                     sha256 checksum, source.
    ModelVersion     segmentation model: architecture, config, weights and config sha256 (unique together:
                     its identity), provenance, metrics, lifecycle registered | validated | retired and
                     the validation report.
    TrialModel       a model version in one trial: approved for use (signed by a trial admin), active
                     (at most one per trial: the model the pipeline runs there) or retired.
    SegmentationRun  one model over one series (unique per series + model version), outputs, timings.
    Lesion           stable per-patient label (L1, L2, ...), role target | non_target, reader flags.
    LesionObservation one lesion at one visit: every measurement of rano-bm.md section 1 in physical mm.
    Assessment       response at one visit for one criteria (rano_bm | volumetric): sums, % changes, nadir,
                     target / non-target / new-lesion / overall response, reasons, settings, engine version,
                     review status and signature; ``supersedes`` chains overrides, ``is_current`` marks the
                     live one (one current per visit and criteria).
    AuditEvent       append-only audit trail; updates and deletes are refused by the model, the queryset
                     and a database trigger.
    ProcessingJob    background work shown as progress (kind, generic object, Celery task id, state, %).
    TrialPacsSettings how a trial's incoming studies are routed (protocol id, series rules, visit window).
    SubjectMapping   a site's Patient ID (as an HMAC only) standing for a trial subject.
    ReceivedStudy    a study received from a PACS or a modality, its routing decision and outcome (inbox).
    PacsDestination  where a trial's results go (C-STORE AE or STOW-RS URL), what and when.
    PacsDelivery     one send of a run's SEG/RTSTRUCT to one destination: state, attempts, last error.

Models hold fields, constraints and small derived properties only. Every state change goes through
an action (``trials.actions``) or a row helper (``trials.records``) so that it is audited.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from knox.models import AbstractAuthToken
from simple_history.models import HistoricalRecords

from rano.errors import SettingsError
from rano.settings import ResponseSettings
from trials.choices import (
    AssessmentSource,
    AssessmentStatus,
    ClinicalStatus,
    CorticosteroidStatus,
    Criteria,
    DeliveryProtocol,
    DeliveryState,
    DeliveryTrigger,
    JobKind,
    JobState,
    LesionRole,
    MembershipRole,
    ModelLifecycle,
    NewLesionStatus,
    ObservationSource,
    ReceiveChannel,
    ReceivedStudyState,
    ResponseChoices,
    RunStatus,
    SeriesSource,
    SignatureMeaning,
    TrialModelStatus,
)
from trials.validators import (
    FREE_TEXT_MAX_CHARS,
    FREE_TEXT_VALIDATORS,
    validate_code,
    validate_label,
    validate_name,
)


class AuditImmutableError(Exception):
    """Raised on any attempt to update or delete an AuditEvent row."""


class Trial(models.Model):
    """A clinical trial and the protocol settings of its response criteria.

    The settings default to rano-bm.md section 9. Percent thresholds are signed percentages of change
    (``pr_threshold_pct = -30`` means "a decrease of at least 30%").
    """

    code = models.CharField(
        max_length=32,
        unique=True,
        validators=[validate_code],
        help_text="Short protocol code, e.g. DEMO-BM (letters, digits, . _ -).",
        error_messages={"unique": "A trial with this code already exists."},
    )
    title = models.CharField(max_length=255, validators=[validate_name])
    description = models.TextField(
        blank=True, max_length=FREE_TEXT_MAX_CHARS, validators=FREE_TEXT_VALIDATORS
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # rano-bm.md section 9: protocol settings, never constants in code.
    max_targets = models.PositiveSmallIntegerField(default=5, validators=[MinValueValidator(1)])
    measurable_min_ld_mm = models.FloatField(default=10.0, validators=[MinValueValidator(0.0)])
    min_lesion_volume_mm3 = models.FloatField(default=5.0, validators=[MinValueValidator(0.0)])
    too_small_mm = models.FloatField(default=5.0, validators=[MinValueValidator(0.0)])
    new_lesion_min_ld_mm = models.FloatField(default=5.0, validators=[MinValueValidator(0.0)])
    confirmation_days = models.PositiveIntegerField(default=28)
    min_sd_days = models.PositiveIntegerField(default=42)
    pr_threshold_pct = models.FloatField(default=-30.0, validators=[MaxValueValidator(0.0)])
    pd_threshold_pct = models.FloatField(default=20.0, validators=[MinValueValidator(0.0)])
    pd_min_lesion_increase_mm = models.FloatField(default=5.0, validators=[MinValueValidator(0.0)])
    vol_pr_threshold_pct = models.FloatField(default=-65.0, validators=[MaxValueValidator(0.0)])
    vol_pd_threshold_pct = models.FloatField(default=73.0, validators=[MinValueValidator(0.0)])
    immunotherapy = models.BooleanField(
        default=False, help_text="When on, new lesions alone do not define progression (rano-bm.md 5)."
    )
    is_demo = models.BooleanField(
        default=False,
        help_text="Demo trial on synthetic data: the demo model may run here without approval. "
        "Not for clinical use.",
    )

    history = HistoricalRecords()

    #: Field names of the criteria settings, in rano-bm.md section 9 order.
    CRITERIA_SETTING_FIELDS: tuple[str, ...] = (
        "max_targets",
        "measurable_min_ld_mm",
        "min_lesion_volume_mm3",
        "too_small_mm",
        "new_lesion_min_ld_mm",
        "confirmation_days",
        "min_sd_days",
        "pr_threshold_pct",
        "pd_threshold_pct",
        "pd_min_lesion_increase_mm",
        "vol_pr_threshold_pct",
        "vol_pd_threshold_pct",
        "immunotherapy",
    )

    #: Model field name -> settings key of rano-bm.md section 9 (and of rano.settings.ResponseSettings).
    CRITERIA_SETTING_KEYS: dict[str, str] = {
        name: name.removesuffix("_pct") for name in CRITERIA_SETTING_FIELDS
    }

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code

    def criteria_settings(self) -> dict[str, Any]:
        """Return the response-criteria settings as a JSON-safe dict, keyed by rano-bm.md section 9 names.

        The keys are those of ``rano.settings.ResponseSettings`` (``pr_threshold``, not the field name
        ``pr_threshold_pct``), so ``ResponseSettings.from_dict(trial.criteria_settings())`` builds the
        engine's settings. Percent thresholds are signed percentages (``{"pr_threshold": -30.0, ...}``).
        Stored verbatim in ``Assessment.settings``.
        """
        return {key: getattr(self, name) for name, key in self.CRITERIA_SETTING_KEYS.items()}

    def response_settings(self) -> ResponseSettings:
        """The trial's criteria settings as the rules engine's :class:`rano.settings.ResponseSettings`
        (the one conversion: the pipeline, the review and the exports all use it)."""
        return ResponseSettings.from_dict(self.criteria_settings())

    def clean(self) -> None:
        """Validate the settings with the rules engine itself, so a trial never stores settings it rejects."""
        super().clean()
        try:
            self.response_settings()
        except SettingsError as exc:
            raise ValidationError(f"Invalid response-criteria settings: {exc}") from exc


class Site(models.Model):
    """A participating site of a trial."""

    trial = models.ForeignKey(Trial, on_delete=models.PROTECT, related_name="sites")
    code = models.CharField(max_length=32, validators=[validate_code])
    name = models.CharField(max_length=255, validators=[validate_name])
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["trial_id", "code"]
        constraints = [
            models.UniqueConstraint(
                fields=["trial", "code"],
                name="unique_site_code_per_trial",
                violation_error_message="A site with this code already exists in this trial.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.trial_id}:{self.code}"


class TrialMembership(models.Model):
    """A user's role in one trial. A user may hold several roles in a trial (one row each)."""

    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    trial = models.ForeignKey(Trial, on_delete=models.CASCADE, related_name="memberships")
    site = models.ForeignKey(
        Site,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="memberships",
        help_text="Optional: the site the user belongs to.",
    )
    role = models.CharField(max_length=20, choices=MembershipRole.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["trial_id", "user_id", "role"]
        constraints = [
            models.UniqueConstraint(
                fields=["trial", "user", "role"],
                name="unique_membership_role",
                violation_error_message="This user already has this role in this trial.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.trial_id}:{self.role}"


class Patient(models.Model):
    """A trial subject, identified only by a pseudonymous subject id (no names are ever stored)."""

    trial = models.ForeignKey(Trial, on_delete=models.PROTECT, related_name="patients")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="patients")
    subject_id = models.CharField(
        max_length=64,
        validators=[validate_label],
        help_text="Pseudonymous subject id, unique within the trial (letters, digits, spaces, . _ -).",
    )
    enrolment_date = models.DateField(null=True, blank=True)
    treatment_start_date = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["trial_id", "subject_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["trial", "subject_id"],
                name="unique_subject_id_per_trial",
                violation_error_message="A patient with this subject id already exists in this trial.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return self.subject_id


class Timepoint(models.Model):
    """One imaging visit of a patient."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="timepoints")
    visit_label = models.CharField(
        max_length=32, validators=[validate_label], help_text="e.g. BASELINE, FU1, FU2."
    )
    scan_date = models.DateField()
    is_baseline = models.BooleanField(default=False)
    corticosteroid_status = models.CharField(
        max_length=12, choices=CorticosteroidStatus.choices, default=CorticosteroidStatus.NONE
    )
    clinical_status = models.CharField(
        max_length=12, choices=ClinicalStatus.choices, default=ClinicalStatus.STABLE
    )
    notes = models.TextField(blank=True, max_length=FREE_TEXT_MAX_CHARS, validators=FREE_TEXT_VALIDATORS)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["patient_id", "scan_date", "visit_label"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "visit_label"],
                name="unique_visit_label_per_patient",
                violation_error_message="This patient already has a visit with this label.",
                violation_error_code="duplicate",
            ),
            models.UniqueConstraint(
                fields=["patient"],
                condition=Q(is_baseline=True),
                name="one_baseline_per_patient",
                violation_error_message="This patient already has a baseline visit.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.patient_id}:{self.visit_label}"

    def clean(self) -> None:
        """Follow-ups come after the baseline (rano-bm.md: responses are measured from the baseline on;
        a follow-up dated before it would never be assessed, or keep a response it no longer has)."""
        super().clean()
        if self.scan_date is None or self.patient_id is None:
            return
        others = Timepoint.objects.filter(patient_id=self.patient_id).exclude(pk=self.pk)
        if self.is_baseline:
            if others.filter(is_baseline=True).exists():
                return  # a second baseline: the uniqueness rule answers (409)
            early = others.filter(scan_date__lte=self.scan_date).order_by("scan_date").first()
            if early is not None:
                raise ValidationError(
                    {
                        "scan_date": f"The baseline must come before every follow-up: {early.visit_label} "
                        f"was scanned on {early.scan_date.isoformat()}."
                    }
                )
            return
        baseline = others.filter(is_baseline=True).first()
        if baseline is not None and self.scan_date <= baseline.scan_date:
            raise ValidationError(
                {
                    "scan_date": f"A follow-up visit must be scanned after the baseline "
                    f"({baseline.visit_label}, {baseline.scan_date.isoformat()})."
                }
            )


class ImagingSeries(models.Model):
    """One MR series of a visit (DICOM PS3.3 General Study C.7.2.1 / General Series C.7.3.1 modules).

    Geometry is of the stored volume, in LPS physical coordinates as SimpleITK reports it.
    """

    timepoint = models.ForeignKey(Timepoint, on_delete=models.PROTECT, related_name="series")
    study_instance_uid = models.CharField(max_length=64, blank=True)
    series_instance_uid = models.CharField(
        max_length=64,
        unique=True,
        error_messages={"unique": "A series with this Series Instance UID already exists."},
    )
    modality = models.CharField(max_length=16, default="MR")
    # Cleaned of everything but MR terms (segmentation.descriptors, PS3.15 Clean Descriptors): scanners let
    # technologists type names and dates there. The client's upload file name is never stored.
    series_description = models.CharField(max_length=255, blank=True)
    # Geometry: (x, y, z) order, as SimpleITK GetSize/GetSpacing/GetOrigin; direction is 9 floats row-major.
    size_voxels = models.JSONField(null=True, blank=True, help_text="[x, y, z] voxel counts.")
    spacing_mm = models.JSONField(null=True, blank=True, help_text="[x, y, z] voxel spacing in mm.")
    origin_mm = models.JSONField(null=True, blank=True, help_text="[x, y, z] physical origin in mm (LPS).")
    direction = models.JSONField(
        null=True, blank=True, help_text="3x3 direction cosines, row-major (9 floats)."
    )
    volume_file = models.FileField(upload_to="series/", blank=True, help_text="Stored volume (NIfTI).")
    checksum_sha256 = models.CharField(max_length=64, blank=True)
    source = models.CharField(max_length=16, choices=SeriesSource.choices, default=SeriesSource.UPLOAD_DICOM)
    uploaded_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Written by the analysis stage (trials.pipeline.analysis): the rigid transform from the patient's
    # common space (the grid of the first analysed series, "fixed") to this series ("moving"), so the
    # viewer can show any two visits on one grid without registering again.
    registration = models.JSONField(
        null=True,
        blank=True,
        help_text=(
            "Rigid registration to the patient's common space: fixed_series_id, moving_series_id, "
            "type, parameters and fixed_parameters of the SimpleITK transform (fixed -> moving points, "
            "mm, LPS), metric_value."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["timepoint_id", "id"]
        verbose_name_plural = "imaging series"

    def __str__(self) -> str:
        return self.series_instance_uid


class ModelVersion(models.Model):
    """A registered segmentation model (a MONAI bundle-like model card in database form).

    Its identity is its weights *and* its configuration: ``weights_sha256`` and ``config_sha256``
    (:func:`segmentation.modeldir.config_sha256`) are unique together, so an edited ``config.json`` (a
    threshold, the spacing) is a new version that must be validated and approved like any other.
    """

    name = models.CharField(max_length=100)
    version = models.CharField(max_length=32)
    architecture = models.CharField(max_length=100, help_text="e.g. MONAI UNETR.")
    config = models.JSONField(default=dict, blank=True, help_text="Network and inference configuration.")
    weights_sha256 = models.CharField(max_length=64)
    config_sha256 = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="sha256 of the canonical JSON of the configuration (ONNX export left out).",
    )
    weights_path = models.CharField(max_length=500, blank=True)
    training_provenance = models.JSONField(default=dict, blank=True, help_text="Command, seed, data, commit.")
    validation_metrics = models.JSONField(default=dict, blank=True)
    intended_use = models.TextField(blank=True)
    is_demo = models.BooleanField(default=False, help_text="Demo weights: not for clinical use.")
    is_active = models.BooleanField(default=True)
    lifecycle = models.CharField(
        max_length=12, choices=ModelLifecycle.choices, default=ModelLifecycle.REGISTERED
    )
    validation_report = models.FileField(
        upload_to="model-reports/", blank=True, help_text="The validation report (HTML, bm-validate)."
    )
    validation_summary = models.JSONField(
        default=dict, blank=True, help_text="Aggregate metrics and data description of the report."
    )
    validated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["name", "version"]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "version"],
                name="unique_model_name_version",
                violation_error_message="A model with this name and version already exists.",
                violation_error_code="duplicate",
            ),
            models.UniqueConstraint(
                fields=["weights_sha256", "config_sha256"],
                name="unique_model_weights_config",
                violation_error_message="A model version with these weights and this configuration "
                "(sha256) is already registered.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class TrialModel(models.Model):
    """A model version in one trial: a shadow candidate, approved for use there (an e-signature), active,
    or retired.

    At most one row per trial is ``active``: the model the pipeline runs on the trial's new series.

    Shadow runs (README "Model governance", "Shadow runs") are a *status* of this row rather than a
    separate table or flag: a candidate is a model version considered for one trial, which is what this
    row is, and a status keeps the lifecycle one straight line, ``shadow`` (or ``shadow_stopped``) ->
    ``approved`` -> ``active`` -> ``retired``, with the approval signed on the very row that collected
    the shadow evidence. A shadow row carries no signature (``approved_at`` empty): shadow never means
    approved, and the pipeline's registry only ever runs the ``active`` row. At most one row per trial is
    ``shadow``. ``shadow_agreement`` holds the latest agreement of the candidate with the active model on
    the trial's visits (computed by the shadow job, shown on the quality page).
    """

    trial = models.ForeignKey(Trial, on_delete=models.PROTECT, related_name="models")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="trial_models")
    status = models.CharField(
        max_length=16, choices=TrialModelStatus.choices, default=TrialModelStatus.APPROVED
    )
    approved_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    approved_by_name = models.CharField(
        max_length=150, blank=True, help_text="Who signed (copied; 'system' for a migration or command)."
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    signature_meaning = models.CharField(max_length=24, choices=SignatureMeaning.choices, blank=True)
    reason = models.TextField(max_length=FREE_TEXT_MAX_CHARS, validators=FREE_TEXT_VALIDATORS)
    activated_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    shadow_started_at = models.DateTimeField(null=True, blank=True)
    shadow_stopped_at = models.DateTimeField(null=True, blank=True)
    shadow_agreement = models.JSONField(
        default=dict,
        blank=True,
        help_text="Agreement of the shadow candidate with the active model (detection, volumes, responses).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["trial_id", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["trial", "model_version"],
                name="unique_model_per_trial",
                violation_error_message="This model version is already approved for this trial.",
                violation_error_code="duplicate",
            ),
            models.UniqueConstraint(
                fields=["trial"],
                condition=Q(status="active"),
                name="one_active_model_per_trial",
                violation_error_message="This trial already has an active model.",
                violation_error_code="duplicate",
            ),
            models.UniqueConstraint(
                fields=["trial"],
                condition=Q(status="shadow"),
                name="one_shadow_model_per_trial",
                violation_error_message="This trial already has a model in shadow.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_version} in {self.trial_id} ({self.status})"


class TrainingSet(models.Model):
    """The signed reads of a trial exported as a training set (README "Learning from the readers").

    The files (``<case>_t1c.nii.gz``, ``<case>_mask.nii.gz``, ``<case>_ai_mask.nii.gz``, ``manifest.json``)
    lie under MEDIA_ROOT at ``directory``, in the layout ``bm-train --data`` reads. The patients held out
    (those of a validation set) are listed, as are the training patients: a version fine-tuned from this
    set is never validated on them.
    """

    trial = models.ForeignKey(Trial, on_delete=models.PROTECT, related_name="training_sets")
    directory = models.CharField(max_length=300, help_text="Folder under MEDIA_ROOT.")
    manifest = models.JSONField(default=dict, blank=True)
    manifest_sha256 = models.CharField(max_length=64)
    n_cases = models.PositiveIntegerField(default=0)
    training_patients = models.JSONField(default=list, blank=True, help_text="Subject ids (pseudonymous).")
    held_out_patients = models.JSONField(default=list, blank=True, help_text="Subject ids (pseudonymous).")
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"training set {self.pk} of {self.trial_id} ({self.n_cases} cases)"


class SegmentationRun(models.Model):
    """One segmentation model applied to one series.

    One run per series and model version (weights and configuration), kept by the database itself so a
    re-run of the same model on the same series never creates a second row. ``model_weights_sha256``
    copies ``model_version.weights_sha256`` for the results' provenance.

    A *shadow* run (``is_shadow``) is a trial's shadow candidate on a visit's series, next to the active
    model's run: it stores its mask and ``lesion_table`` (one ``rano.measure`` record per lesion) and
    drives nothing (no lesion, observation or assessment; never the visit's result).

    ``findings`` says which labels of the mask a stage after the network added (the small-lesion stage,
    :mod:`segmentation.small_lesions`) and what that stage measured on each, so a reader sees which of
    the AI's lesions the network itself did not draw.
    """

    series = models.ForeignKey(ImagingSeries, on_delete=models.PROTECT, related_name="segmentation_runs")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="runs")
    model_weights_sha256 = models.CharField(max_length=64)
    device = models.CharField(max_length=32, blank=True, help_text="e.g. cpu, cuda:0.")
    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED)
    timings_s = models.JSONField(default=dict, blank=True, help_text="Seconds per stage.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    mask_file = models.FileField(upload_to="masks/", blank=True)
    rtstruct_file = models.FileField(upload_to="rtstruct/", blank=True)
    seg_file = models.FileField(upload_to="seg/", blank=True)
    error = models.TextField(blank=True)
    is_shadow = models.BooleanField(
        default=False, help_text="A shadow candidate's run: stored for comparison, drives nothing."
    )
    lesion_table = models.JSONField(
        default=list, blank=True, help_text="Shadow runs: one rano.measure record per lesion (mm, mm3)."
    )
    findings = models.JSONField(
        default=dict,
        blank=True,
        help_text='Labels of the mask that a stage after the network added, by label: {"4": {"stage": '
        '"small_lesions", "features": {...}}}; a label not here is the network\'s.',
    )
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["series_id", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["series", "model_version"],
                name="unique_run_per_series_and_model",
                violation_error_message="This series has already been segmented with this model version.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of series {self.series_id}"


class Lesion(models.Model):
    """A lesion of a patient, followed across visits under a stable label that never changes."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="lesions")
    label = models.CharField(max_length=16, validators=[validate_label], help_text="Stable label L1, L2, ...")
    role = models.CharField(max_length=12, choices=LesionRole.choices, default=LesionRole.NON_TARGET)
    role_set_by_reader = models.BooleanField(
        default=False, help_text="The reader changed the engine's target selection (rano-bm.md 2)."
    )
    first_seen_timepoint = models.ForeignKey(
        Timepoint, on_delete=models.PROTECT, null=True, blank=True, related_name="first_seen_lesions"
    )
    # Reader flags (rano-bm.md section 2).
    is_cystic = models.BooleanField(default=False)
    is_dural = models.BooleanField(default=False)
    is_bony = models.BooleanField(default=False)
    is_leptomeningeal = models.BooleanField(default=False)
    previously_irradiated = models.BooleanField(default=False)
    progressing_since_treatment = models.BooleanField(
        default=False, help_text="Irradiated lesion the reader marks as progressing: eligible as a target."
    )
    too_small_to_measure = models.BooleanField(default=False)
    is_false_positive = models.BooleanField(default=False, help_text="Dropped by a reader as not a lesion.")
    notes = models.TextField(blank=True, max_length=FREE_TEXT_MAX_CHARS, validators=FREE_TEXT_VALIDATORS)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["patient_id", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "label"],
                name="unique_lesion_label_per_patient",
                violation_error_message="This patient already has a lesion with this label.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.patient_id}:{self.label}"


def finding_at(findings: Any, component_label: int | None) -> dict[str, Any] | None:
    """A run's ``findings`` at one label of its mask: what the stage that added that lesion after the
    network measured, or None (the network's lesion, or no label)."""
    if component_label is None or not isinstance(findings, dict):
        return None
    finding = findings.get(str(component_label))
    return finding if isinstance(finding, dict) else None


class LesionObservation(models.Model):
    """One lesion at one visit, with every measurement of rano-bm.md section 1 (physical mm).

    One observation per lesion and visit: a reader's edit updates the row (source becomes ``edited``)
    and the AI values stay in the row history. A split lesion's fragments are summed into one row
    (``fragment_count``). ``present=False`` records a lesion absent at this visit (counts 0 mm).
    """

    lesion = models.ForeignKey(Lesion, on_delete=models.PROTECT, related_name="observations")
    timepoint = models.ForeignKey(Timepoint, on_delete=models.PROTECT, related_name="observations")
    segmentation_run = models.ForeignKey(
        SegmentationRun, on_delete=models.PROTECT, null=True, blank=True, related_name="observations"
    )
    source = models.CharField(max_length=8, choices=ObservationSource.choices, default=ObservationSource.AI)
    present = models.BooleanField(default=True)
    component_label = models.PositiveIntegerField(
        null=True, blank=True, help_text="Label value of this lesion in the run's labelled mask."
    )
    fragment_count = models.PositiveSmallIntegerField(default=1)

    longest_diameter_mm = models.FloatField(null=True, blank=True)
    perpendicular_diameter_mm = models.FloatField(null=True, blank=True)
    volume_mm3 = models.FloatField(null=True, blank=True)
    max_3d_diameter_mm = models.FloatField(null=True, blank=True)
    centroid_x_mm = models.FloatField(null=True, blank=True)
    centroid_y_mm = models.FloatField(null=True, blank=True)
    centroid_z_mm = models.FloatField(null=True, blank=True)
    slice_count = models.PositiveIntegerField(null=True, blank=True)
    ld_slice_index = models.IntegerField(null=True, blank=True, help_text="Axial slice index of the LD.")
    caliper_points_mm = models.JSONField(
        null=True, blank=True, help_text="LD end points: [[x, y, z], [x, y, z]] physical mm (LPS)."
    )
    perpendicular_points_mm = models.JSONField(
        null=True, blank=True, help_text="Perpendicular diameter end points: [[x, y, z], [x, y, z]] mm."
    )
    intensity_mean = models.FloatField(null=True, blank=True)
    intensity_sd = models.FloatField(null=True, blank=True)
    intensity_min = models.FloatField(null=True, blank=True)
    intensity_max = models.FloatField(null=True, blank=True)
    measurable = models.BooleanField(default=False)
    measurable_reason = models.CharField(max_length=255, blank=True)
    unequivocal_progression = models.BooleanField(
        default=False, help_text="Reader judgement: unequivocal progression of a non-target (rano-bm.md 4)."
    )
    merged_into = models.ForeignKey(
        Lesion,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="absorbed_observations",
        help_text="The lesion whose mass absorbed this one at this visit (present=False, counts 0 mm, but "
        "not disappeared: rano-bm.md section 3).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    #: Fields a writer (the pipeline, a reader through an action) may set; the API serialises the same.
    WRITABLE_FIELDS: tuple[str, ...] = (
        "segmentation_run",
        "source",
        "present",
        "merged_into",
        "component_label",
        "fragment_count",
        "longest_diameter_mm",
        "perpendicular_diameter_mm",
        "volume_mm3",
        "max_3d_diameter_mm",
        "centroid_x_mm",
        "centroid_y_mm",
        "centroid_z_mm",
        "slice_count",
        "ld_slice_index",
        "caliper_points_mm",
        "perpendicular_points_mm",
        "intensity_mean",
        "intensity_sd",
        "intensity_min",
        "intensity_max",
        "measurable",
        "measurable_reason",
        "unequivocal_progression",
    )

    class Meta:
        ordering = ["timepoint_id", "lesion_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["lesion", "timepoint"],
                name="unique_observation_per_lesion_visit",
                violation_error_message="This lesion already has an observation at this visit.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.lesion_id}@{self.timepoint_id}"

    @property
    def finding(self) -> dict[str, Any] | None:
        """What the pipeline stage that added this lesion to its run's mask measured (the run's
        ``findings`` at ``component_label``), or None: the network drew it, or a reader did."""
        if self.segmentation_run_id is None:
            return None
        return finding_at(self.segmentation_run.findings, self.component_label)  # type: ignore[union-attr]


class Assessment(models.Model):
    """Response of one visit under one criteria, by the rules engine or a radiologist.

    Diameter sums are in mm (RANO-BM), volume sums in mm3 (volumetric); percent changes are signed.
    An override creates a new row that ``supersedes`` the previous one; exactly one row per visit and
    criteria is ``is_current``.
    """

    timepoint = models.ForeignKey(Timepoint, on_delete=models.PROTECT, related_name="assessments")
    criteria = models.CharField(max_length=12, choices=Criteria.choices, default=Criteria.RANO_BM)
    source = models.CharField(max_length=12, choices=AssessmentSource.choices, default=AssessmentSource.AI)
    model_version = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The model whose segmentation of the visit the rules engine assessed (engine rows).",
    )

    sum_ld_mm = models.FloatField(null=True, blank=True)
    baseline_sum_ld_mm = models.FloatField(null=True, blank=True)
    nadir_sum_ld_mm = models.FloatField(null=True, blank=True)
    sum_volume_mm3 = models.FloatField(null=True, blank=True)
    baseline_sum_volume_mm3 = models.FloatField(null=True, blank=True)
    nadir_sum_volume_mm3 = models.FloatField(null=True, blank=True)
    pct_change_from_baseline = models.FloatField(null=True, blank=True)
    pct_change_from_nadir = models.FloatField(null=True, blank=True)
    nadir_timepoint = models.ForeignKey(
        Timepoint, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    target_response = models.CharField(max_length=16, choices=ResponseChoices.choices, blank=True)
    non_target_response = models.CharField(max_length=16, choices=ResponseChoices.choices, blank=True)
    new_lesion_status = models.CharField(
        max_length=12, choices=NewLesionStatus.choices, default=NewLesionStatus.NONE
    )
    overall_response = models.CharField(
        max_length=16, choices=ResponseChoices.choices, blank=True, help_text="Blank at baseline."
    )
    volumetric_response = models.CharField(
        max_length=16,
        choices=ResponseChoices.choices,
        blank=True,
        help_text="Volumetric response computed alongside (rano-bm.md 8), for disagreement reporting.",
    )
    confirmed = models.BooleanField(
        default=False, help_text="CR/PR confirmed by a later visit (rano-bm.md 7)."
    )
    best_overall_response = models.CharField(
        max_length=16, choices=ResponseChoices.choices, blank=True, help_text="BOR up to this visit."
    )
    progression_date = models.DateField(null=True, blank=True, help_text="Possibly backdated (rano-bm.md 5).")
    reasons = models.JSONField(
        default=list, blank=True, help_text="Rule outcomes, in words a reader can check."
    )
    settings = models.JSONField(default=dict, blank=True, help_text="Trial.criteria_settings() used.")
    engine_version = models.CharField(max_length=32, blank=True)

    status = models.CharField(max_length=12, choices=AssessmentStatus.choices, default=AssessmentStatus.DRAFT)
    signed_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    signature_meaning = models.CharField(max_length=24, choices=SignatureMeaning.choices, blank=True)
    comment = models.TextField(blank=True, max_length=FREE_TEXT_MAX_CHARS, validators=FREE_TEXT_VALIDATORS)
    supersedes = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="superseded_by"
    )
    is_current = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    #: Result fields of an assessment (what the rules engine, or a reader's override, sets).
    RESULT_FIELDS: tuple[str, ...] = (
        "sum_ld_mm",
        "baseline_sum_ld_mm",
        "nadir_sum_ld_mm",
        "sum_volume_mm3",
        "baseline_sum_volume_mm3",
        "nadir_sum_volume_mm3",
        "pct_change_from_baseline",
        "pct_change_from_nadir",
        "nadir_timepoint",
        "target_response",
        "non_target_response",
        "new_lesion_status",
        "overall_response",
        "volumetric_response",
        "confirmed",
        "best_overall_response",
        "progression_date",
        "reasons",
        "settings",
        "engine_version",
        "comment",
    )

    class Meta:
        ordering = ["timepoint_id", "criteria", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["timepoint", "criteria"],
                condition=Q(is_current=True),
                name="one_current_assessment_per_visit_criteria",
                violation_error_message="This visit already has a current assessment for these criteria.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.timepoint_id}:{self.criteria}:{self.overall_response or '-'}"


class AuditEventQuerySet(models.QuerySet):
    """QuerySet that refuses bulk updates and deletes of audit rows."""

    def update(self, **kwargs: Any) -> int:
        raise AuditImmutableError("Audit events are append-only: they cannot be updated.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AuditImmutableError("Audit events are append-only: they cannot be deleted.")

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> int:
        raise AuditImmutableError("Audit events are append-only: they cannot be updated.")

    def update_or_create(self, *args: Any, **kwargs: Any) -> Any:
        raise AuditImmutableError("Audit events are append-only: use trials.audit.record_audit_event.")


class AuditEvent(models.Model):
    """One entry of the append-only audit trail, written by ``trials.audit.record_audit_event`` in the same transaction
    as the change it records. Rows are never updated or deleted (model, queryset and database trigger).

    ``actor_name`` copies the user name so the entry keeps its meaning if the account is renamed.

    Tamper evidence: events form a hash chain. ``seq`` numbers them without gaps (1, 2, ...), ``prev_hash``
    is the previous event's ``hash``, and ``hash`` is the SHA-256 of this event's content and
    ``prev_hash`` (``trials.audit.event_hash``). An edited, deleted, inserted or reordered row breaks the
    chain at that point; ``manage.py verify_audit_chain`` finds the first broken link.
    """

    # Set by record_audit_event before the hash is computed (the hash covers it).
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    seq = models.PositiveBigIntegerField(unique=True, null=True, help_text="Position in the hash chain.")
    prev_hash = models.CharField(max_length=64, blank=True, help_text="hash of the event before (seq - 1).")
    hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the content and prev_hash.")
    actor = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Null for the system (pipeline).",
    )
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    trial = models.ForeignKey(
        Trial,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="audit_events",
        help_text="Trial the object belongs to, for per-trial access.",
    )
    object_type = models.CharField(max_length=100, help_text="app_label.model of the object.")
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=255, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    correlation_id = models.CharField(max_length=64, blank=True, db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object_idx")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.object_type}#{self.object_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Insert the row; refuse to save a row that already exists."""
        if self.pk is not None and not self._state.adding:
            raise AuditImmutableError("Audit events are append-only: an existing event cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Always refused."""
        raise AuditImmutableError("Audit events are append-only: they cannot be deleted.")


class AuditChainHead(models.Model):
    """The end of the audit hash chain: one row, locked by every append so that appends are serialised
    (``SELECT ... FOR UPDATE``; its UPDATE holds SQLite's write lock) and read without scanning the trail.

    Not evidence itself: ``verify_audit_chain`` recomputes the chain from the events and only checks that
    this row names the last of them (a cut-off tail shows there).
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_seq = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name = "audit chain head"

    def __str__(self) -> str:
        return f"audit chain at {self.last_seq}"


class ProcessingJob(models.Model):
    """Background work (ingest, segmentation, assessment, export) shown as progress.

    The job row is saved first and the Celery task is enqueued on commit, so a task never runs for a
    job that does not exist. ``content_object`` points at what the job works on (a series, a patient...).

    ``celery_task_id`` is the id of the job's current dispatch (its first task): a delivery carrying
    another id belongs to an earlier dispatch and does nothing. A running job's worker refreshes
    ``heartbeat_at``; a job whose heartbeat is older than the lease lost its worker and is sent again.
    """

    kind = models.CharField(max_length=16, choices=JobKind.choices)
    trial = models.ForeignKey(Trial, on_delete=models.PROTECT, null=True, blank=True, related_name="jobs")
    content_type = models.ForeignKey(ContentType, on_delete=models.PROTECT, null=True, blank=True)
    object_id = models.PositiveBigIntegerField(null=True, blank=True)
    content_object = GenericForeignKey("content_type", "object_id")
    params = models.JSONField(default=dict, blank=True, help_text="Task arguments (ids only).")
    result = models.JSONField(default=dict, blank=True)
    celery_task_id = models.CharField(max_length=255, blank=True, db_index=True)
    state = models.CharField(max_length=12, choices=JobState.choices, default=JobState.QUEUED)
    progress_pct = models.PositiveSmallIntegerField(
        default=0, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )
    stage = models.CharField(max_length=64, blank=True)
    message = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    correlation_id = models.CharField(max_length=64, blank=True, db_index=True)
    time_limit_s = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    enqueued_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="When the current dispatch was handed to the broker."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life of the worker running the job."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-enqueued_at", "-id"]
        indexes = [models.Index(fields=["content_type", "object_id"], name="job_object_idx")]
        constraints = [
            models.CheckConstraint(condition=Q(progress_pct__lte=100), name="job_progress_pct_lte_100"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} ({self.state})"

    @property
    def duration_s(self) -> float | None:
        """Seconds between start and finish, or None while not finished."""
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class ApiToken(AbstractAuthToken):
    """An API token (django-rest-knox): only its SHA-512 digest and first characters are stored.

    ``password_fingerprint`` is the user's session hash at issue time (HMAC of the password hash, as
    Django's sessions use): once the password changes the token no longer authenticates, whichever way
    the password was changed. Expiry is knox's ``expiry``; revoking deletes the row (audited by
    ``trials.actions.accounts``).
    """

    password_fingerprint = models.CharField(max_length=128)
    created_by_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.token_key}… of {self.user_id}"


class TrialPacsSettings(models.Model):
    """How a trial recognises and routes the studies a PACS or a modality sends (README "PACS").

    ``protocol_id`` is the Clinical Trial Protocol ID (0012,0020, PS3.3 C.7.1.3) sites set for this
    trial (the trial's code when empty); ``series_rules`` are ``segmentation.routing.SeriesRules`` as a
    JSON object (missing keys keep their defaults); ``visit_window_days`` is the largest distance between
    a study date and a visit's scan date for the study to belong to that visit.
    """

    trial = models.OneToOneField(Trial, on_delete=models.CASCADE, related_name="pacs_settings")
    protocol_id = models.CharField(max_length=64, blank=True)
    series_rules = models.JSONField(default=dict, blank=True)
    visit_window_days = models.PositiveSmallIntegerField(default=14)
    viewer_url_template = models.CharField(
        max_length=500,
        blank=True,
        help_text="PACS viewer URL with {study_instance_uid}, e.g. http://pacs/ohif/viewer?StudyInstanceUIDs="
        "{study_instance_uid}.",
    )

    history = HistoricalRecords()

    class Meta:
        verbose_name = "trial PACS settings"
        verbose_name_plural = "trial PACS settings"

    def __str__(self) -> str:
        return f"PACS settings of {self.trial_id}"


class SubjectMapping(models.Model):
    """A site's Patient ID standing for a trial subject, kept as a keyed hash (HMAC-SHA256) only.

    The only link to a real identity MetTrack keeps; the Patient ID itself is never stored, shown or
    exported (``trials.actions.pacs.patient_key`` computes the hash with ``DICOM_ID_KEY``).
    """

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="subject_mappings")
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="subject_mappings")
    patient_id_hmac = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["site_id", "patient_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["site", "patient_id_hmac"],
                name="unique_patient_id_per_site",
                violation_error_message="This Patient ID is already mapped to a subject of this site.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"mapping of {self.patient_id} at site {self.site_id}"


class ReceivedStudy(models.Model):
    """A study received by C-STORE, STOW-RS or a DICOMweb pull, and what routing decided about it.

    One row per received study: its sender, study date and series list (descriptions and UIDs, no
    patient information), the routing ``decision`` with every reason, and the outcome (``state``). A
    study that could not be routed waits in the inbox with its raw instances under ``DICOM_INBOX_DIR``
    until a data manager assigns it to a patient and visit, or discards it.
    """

    channel = models.CharField(max_length=8, choices=ReceiveChannel.choices)
    sender_ae_title = models.CharField(max_length=16, blank=True)
    sender_host = models.CharField(max_length=255, blank=True)
    study_instance_uid = models.CharField(max_length=64, db_index=True)
    study_date = models.DateField(null=True, blank=True)
    patient_key = models.CharField(
        max_length=64, blank=True, help_text="HMAC of the sender's Patient ID (never the ID itself)."
    )
    clinical_trial = models.JSONField(
        default=dict, blank=True, help_text="Clinical Trial attributes of the study (PS3.3 C.7.1.3)."
    )
    series = models.JSONField(default=list, blank=True, help_text="Received series and their attributes.")
    state = models.CharField(max_length=10, choices=ReceivedStudyState.choices)
    reason = models.TextField(blank=True, help_text="Why it landed in the inbox, or what became of it.")
    decision = models.JSONField(default=dict, blank=True, help_text="Patient, visit and series decisions.")
    trial = models.ForeignKey(
        Trial, on_delete=models.PROTECT, null=True, blank=True, related_name="received_studies"
    )
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, null=True, blank=True, related_name="received_studies"
    )
    timepoint = models.ForeignKey(
        Timepoint, on_delete=models.PROTECT, null=True, blank=True, related_name="received_studies"
    )
    imaging_series = models.ForeignKey(
        ImagingSeries, on_delete=models.PROTECT, null=True, blank=True, related_name="received_studies"
    )
    proposed_visit_label = models.CharField(max_length=32, blank=True)
    inbox_folder = models.CharField(max_length=255, blank=True, help_text="Raw instances while in the inbox.")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    resolved_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name_plural = "received studies"
        indexes = [models.Index(fields=["state", "trial"], name="received_state_trial_idx")]

    def __str__(self) -> str:
        return f"received study {self.pk} ({self.state})"


class PacsDestination(models.Model):
    """Where a trial's results go: a PACS, a viewer's archive, a treatment-planning system.

    ``protocol`` C-STORE (``ae_title`` at ``host``:``port``, MetTrack calling as ``DICOM_AE_TITLE``) or
    STOW-RS (``url``, the DICOMweb root); ``sends`` lists what it gets (``seg``, ``rtstruct``);
    ``trigger`` when: as soon as the AI results exist, or only after a radiologist signed.
    """

    trial = models.ForeignKey(Trial, on_delete=models.CASCADE, related_name="pacs_destinations")
    name = models.CharField(max_length=64)
    protocol = models.CharField(max_length=8, choices=DeliveryProtocol.choices)
    ae_title = models.CharField(max_length=16, blank=True)
    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    url = models.CharField(max_length=500, blank=True)
    sends = models.JSONField(default=list, help_text='What it gets: ["seg", "rtstruct"].')
    trigger = models.CharField(
        max_length=10, choices=DeliveryTrigger.choices, default=DeliveryTrigger.AI_DRAFT
    )
    is_active = models.BooleanField(default=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["trial_id", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["trial", "name"],
                name="unique_destination_name_per_trial",
                violation_error_message="This trial already has a destination with this name.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.protocol})"


class PacsDelivery(models.Model):
    """One send of a run's results (SEG, RTSTRUCT) to one destination, retried until delivered.

    Unique per destination and run: results are sent once, however often the pipeline or a signature
    asks. A failed delivery never blocks the assessment; it is shown on the visit page and in the API.
    """

    destination = models.ForeignKey(PacsDestination, on_delete=models.PROTECT, related_name="deliveries")
    segmentation_run = models.ForeignKey(SegmentationRun, on_delete=models.PROTECT, related_name="deliveries")
    timepoint = models.ForeignKey(Timepoint, on_delete=models.PROTECT, related_name="deliveries")
    sent_objects = models.JSONField(default=list, help_text="Kinds sent (seg, rtstruct).")
    state = models.CharField(max_length=10, choices=DeliveryState.choices, default=DeliveryState.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["timepoint_id", "id"]
        verbose_name_plural = "PACS deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["destination", "segmentation_run"],
                name="unique_delivery_per_destination_run",
                violation_error_message="These results were already sent to this destination.",
                violation_error_code="duplicate",
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} to {self.destination_id} ({self.state})"
