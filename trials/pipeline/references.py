"""The radiologists' final reads as reference cases: the signed visits of a trial and, for each, its image
and the signed lesion mask (the validation job's reference and the training sets' masks).

The reference of a visit is what a radiologist signed: every present observation of a lesion not dropped
as a false positive, AI contours as kept or edited and lesions the reader added, at a visit whose current
RANO-BM assessment is confirmed or overridden. No torch here: the web processes export training sets.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from trials.choices import AssessmentStatus, Criteria
from trials.exceptions import MissingImageError
from trials.models import Assessment, Timepoint, Trial
from trials.storage import load_observation_mask, load_series_image, same_grid

SIGNED = (AssessmentStatus.CONFIRMED, AssessmentStatus.OVERRIDDEN)


def signed_visits(trial: Trial) -> list[Timepoint]:
    """Visits of the trial whose current RANO-BM assessment a radiologist signed, with a stored series."""
    return list(
        Timepoint.objects.filter(
            patient__trial=trial,
            assessments__is_current=True,
            assessments__criteria=Criteria.RANO_BM,
            assessments__status__in=SIGNED,
            series__volume_file__gt="",
        )
        .distinct()
        .select_related("patient")
        .order_by("patient__subject_id", "scan_date", "pk")
    )


def signed_assessment(visit: Timepoint) -> Assessment | None:
    """The visit's current RANO-BM assessment when a radiologist signed it (confirmed or overridden)."""
    return (
        Assessment.objects.filter(
            timepoint=visit, is_current=True, criteria=Criteria.RANO_BM, status__in=SIGNED
        )
        .select_related("signed_by")
        .first()
    )


def reference_case(visit: Timepoint) -> tuple[sitk.Image, sitk.Image]:
    """The visit's image and the signed lesion mask on its grid.

    Raises:
        MissingImageError: no stored volume, or a kept lesion without a stored contour.
    """
    series = visit.series.exclude(volume_file="").order_by("-pk").first()
    if series is None:
        raise MissingImageError(f"Visit {visit.visit_label} has no stored series.")
    image = load_series_image(series)
    mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=bool)
    observations = visit.observations.filter(present=True, lesion__is_false_positive=False).select_related(
        "lesion", "segmentation_run", "timepoint"
    )
    for observation in observations:
        contour = load_observation_mask(observation)
        if not same_grid(contour, image):
            raise MissingImageError(
                f"{observation.lesion.label} at {visit.visit_label} is not on the series grid."
            )
        mask |= sitk.GetArrayViewFromImage(contour) != 0
    reference = sitk.GetImageFromArray(mask.astype(np.uint8))
    reference.CopyInformation(image)
    return image, reference


__all__ = ["SIGNED", "reference_case", "signed_visits"]
