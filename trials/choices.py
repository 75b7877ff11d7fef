"""Enumerations of the trials app, as ``TextChoices``.

Response values follow the CDISC controlled terminology for RANO-BM responses (RSORRES: CR, PR, SD, PD,
NE, NON-CR/NON-PD) so that exports need no mapping.
"""

from django.db import models


class MembershipRole(models.TextChoices):
    """Role of a user within one trial (see README, section "Roles")."""

    INVESTIGATOR = "investigator", "Investigator"
    DATA_MANAGER = "data_manager", "Data manager"
    RADIOLOGIST = "radiologist", "Radiologist"
    ADMIN = "admin", "Trial admin"


class CorticosteroidStatus(models.TextChoices):
    """Corticosteroid use compared with the previous visit (RANO-BM table, rano-bm.md section 6)."""

    NONE = "none", "None"
    DECREASED = "decreased", "Decreased"
    STABLE = "stable", "Stable"
    INCREASED = "increased", "Increased"


class ClinicalStatus(models.TextChoices):
    """Clinical status compared with the previous visit (rano-bm.md section 6)."""

    IMPROVED = "improved", "Improved"
    STABLE = "stable", "Stable"
    WORSE = "worse", "Worse"


class SeriesSource(models.TextChoices):
    """Where an imaging series came from."""

    UPLOAD_DICOM = "upload_dicom", "Uploaded DICOM"
    UPLOAD_NIFTI = "upload_nifti", "Uploaded NIfTI"
    PACS = "pacs", "Retrieved from PACS"
    SYNTHETIC = "synthetic", "Synthetic (demo)"


class RunStatus(models.TextChoices):
    """Status of a segmentation run."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class LesionRole(models.TextChoices):
    """Role of a lesion chosen at baseline (rano-bm.md section 2)."""

    TARGET = "target", "Target"
    NON_TARGET = "non_target", "Non-target"


class ObservationSource(models.TextChoices):
    """Who produced a lesion observation."""

    AI = "ai", "AI"
    MANUAL = "manual", "Manual (reader-added)"
    EDITED = "edited", "AI, edited by a reader"


class Criteria(models.TextChoices):
    """Response criteria of an assessment (rano-bm.md sections 3-8)."""

    RANO_BM = "rano_bm", "RANO-BM"
    VOLUMETRIC = "volumetric", "Volumetric RANO-BM"


class ModelLifecycle(models.TextChoices):
    """Where a model version stands, whatever the trial (README "Model governance")."""

    REGISTERED = "registered", "Registered"
    VALIDATED = "validated", "Validated (report attached)"
    RETIRED = "retired", "Retired"


class TrialModelStatus(models.TextChoices):
    """Where a model version stands in one trial: a shadow candidate (not approved), approved for it, its
    active model, or retired there."""

    SHADOW = "shadow", "In shadow (candidate, not approved)"
    SHADOW_STOPPED = "shadow_stopped", "Shadow stopped (not approved)"
    APPROVED = "approved", "Approved for use"
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"


class AssessmentSource(models.TextChoices):
    """Who produced an assessment.

    ``ai``: the AI's own answer, as the pipeline delivered it (the rules engine on the lesions the model
    found, with no one's edit). ``edited``: the rules engine again, after a reader's or data manager's
    edit of what it rests on (lesions, observations, flags, another visit's override, a visit's clinical
    data); a separate result, so the AI's answer stays as delivered. ``radiologist``: a signed override.
    """

    AI = "ai", "AI (rules engine on the AI's lesions)"
    EDITED = "edited", "Rules engine on edited data"
    RADIOLOGIST = "radiologist", "Radiologist"


class AssessmentStatus(models.TextChoices):
    """Review status of an assessment."""

    DRAFT = "draft", "Draft"
    CONFIRMED = "confirmed", "Confirmed"
    OVERRIDDEN = "overridden", "Overridden"


class ResponseChoices(models.TextChoices):
    """Response at a visit, CDISC RSORRES terms for RANO-BM."""

    CR = "CR", "Complete response"
    PR = "PR", "Partial response"
    SD = "SD", "Stable disease"
    PD = "PD", "Progressive disease"
    NE = "NE", "Not evaluable"
    NON_CR_NON_PD = "NON-CR/NON-PD", "Non-CR/non-PD"


class NewLesionStatus(models.TextChoices):
    """New-lesion finding at a visit (rano-bm.md section 5)."""

    NONE = "none", "No new lesion"
    EQUIVOCAL = "equivocal", "Equivocal new lesion"
    UNEQUIVOCAL = "unequivocal", "Unequivocal new lesion"


class SignatureMeaning(models.TextChoices):
    """Meaning of an electronic signature on an assessment (what the signer attests)."""

    REVIEWED_AND_CONFIRMED = "reviewed_confirmed", "Reviewed and confirmed the response"
    REVIEWED_AND_OVERRIDDEN = "reviewed_overridden", "Reviewed and overrode the response"
    APPROVED_FOR_USE = "approved_for_use", "Approved for use"


class JobKind(models.TextChoices):
    """Kind of background processing job."""

    INGEST = "ingest", "Ingest series"
    SEGMENT = "segment", "Segment series"
    MEASURE = "measure", "Measure and match lesions"
    ASSESS = "assess", "Assess response"
    PIPELINE = "pipeline", "Whole pipeline"
    EXPORT = "export", "Export"
    PACS = "pacs", "PACS query/retrieve"
    VALIDATE = "validate", "Validate a model"
    TRAIN = "train", "Fine-tune a model"
    SHADOW = "shadow", "Shadow segmentation (candidate model)"
    OTHER = "other", "Other"


class JobState(models.TextChoices):
    """State of a processing job."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class AuditAction(models.TextChoices):
    """Verbs recorded in the audit trail. Free text is allowed too; these are the common ones."""

    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"
    CONFIRM = "confirm", "Confirm"
    OVERRIDE = "override", "Override"
    ENQUEUE = "enqueue", "Enqueue"
    FINISH = "finish", "Finish"
    FAIL = "fail", "Fail"
    EXPORT = "export", "Export"


class ReceivedStudyState(models.TextChoices):
    """What became of a study received from a PACS or a modality (C-STORE, STOW-RS, pull)."""

    ROUTED = "routed", "Routed and stored"
    INBOX = "inbox", "In the inbox (could not be routed)"
    ASSIGNED = "assigned", "Assigned from the inbox and stored"
    DISCARDED = "discarded", "Discarded from the inbox"
    DUPLICATE = "duplicate", "Already stored (duplicate)"
    REJECTED = "rejected", "Rejected (not a usable series)"


class ReceiveChannel(models.TextChoices):
    """How a study reached MetTrack."""

    CSTORE = "cstore", "DICOM C-STORE"
    STOW = "stow", "DICOMweb STOW-RS"
    PULL = "pull", "DICOMweb pull (QIDO/WADO)"


class DeliveryTrigger(models.TextChoices):
    """When a PACS destination is sent a visit's results."""

    AI_DRAFT = "ai_draft", "As soon as the AI results exist"
    SIGNED = "signed", "Only after a radiologist signed the assessment"


class DeliveryProtocol(models.TextChoices):
    """How results reach a destination."""

    CSTORE = "cstore", "DICOM C-STORE"
    STOW = "stow", "DICOMweb STOW-RS"


class DeliveryState(models.TextChoices):
    """State of one send of results to one destination."""

    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (retries exhausted)"
