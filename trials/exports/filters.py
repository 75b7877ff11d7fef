"""Export filters (site, scan-date range, only reviewed-and-signed visits) and their parsing."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Exists, OuterRef, Q

from trials.choices import AssessmentStatus, Criteria
from trials.models import Assessment, Trial


class ExportError(Exception):
    """Base class of export errors; ``message`` is shown to the user."""

    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidExportFilterError(ExportError, ValueError):
    """A filter value cannot be parsed or is inconsistent (HTTP 400)."""


class UnknownExportKindError(ExportError, LookupError):
    """The export kind is not one of ``EXPORT_KINDS`` (HTTP 404)."""

    http_status = 404


_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off", ""}


@dataclass(frozen=True)
class ExportFilters:
    """What part of a trial to export.

    Attributes:
        site_codes: only patients of these site codes (empty: every site).
        date_from: only visits scanned on or after this date.
        date_to: only visits scanned on or before this date.
        only_confirmed: only visits whose current RANO-BM assessment a reader has signed
            (status ``confirmed`` or ``overridden``), i.e. data ready for the case report form, and
            the baseline of every patient with such a follow-up (the reference of their responses).
    """

    site_codes: tuple[str, ...] = ()
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    only_confirmed: bool = False

    def __post_init__(self) -> None:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise InvalidExportFilterError(
                f"date_from {self.date_from.isoformat()} is after date_to {self.date_to.isoformat()}."
            )

    @classmethod
    def from_query(cls, params: Mapping[str, Any]) -> ExportFilters:
        """Parse URL query parameters.

        Accepted: ``site`` (a site code; repeat it or separate codes with commas), ``date_from`` and
        ``date_to`` (``YYYY-MM-DD``, inclusive), ``only_confirmed`` (``true``/``false``, ``1``/``0``).

        Raises:
            InvalidExportFilterError: a malformed date or flag, an unknown parameter, or
                ``date_from`` after ``date_to``.
        """
        known = {"site", "date_from", "date_to", "only_confirmed"}
        unknown = sorted(set(params) - known - {"format"})
        if unknown:
            raise InvalidExportFilterError(
                f"Unknown filter(s) {', '.join(unknown)}; use {', '.join(sorted(known))}."
            )
        getlist = getattr(params, "getlist", None)
        raw_sites = getlist("site") if getlist else ([params["site"]] if "site" in params else [])
        site_codes = tuple(code.strip() for raw in raw_sites for code in str(raw).split(",") if code.strip())
        flag = str(params.get("only_confirmed", "")).strip().lower()
        if flag not in _TRUE | _FALSE:
            raise InvalidExportFilterError(f"only_confirmed must be true or false, not {flag!r}.")
        return cls(
            site_codes=site_codes,
            date_from=_parse_date(params.get("date_from"), "date_from"),
            date_to=_parse_date(params.get("date_to"), "date_to"),
            only_confirmed=flag in _TRUE,
        )

    def check_sites(self, trial: Trial) -> None:
        """Refuse site codes the trial does not have (an unknown site would export only a header row).

        Raises:
            InvalidExportFilterError: a code in ``site_codes`` is not one of the trial's sites' codes.
        """
        if not self.site_codes:
            return
        known = list(trial.sites.order_by("code").values_list("code", flat=True))
        unknown = [code for code in dict.fromkeys(self.site_codes) if code not in known]
        if unknown:
            raise InvalidExportFilterError(
                f"Unknown site{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"trial {trial.code} has sites {', '.join(known) or '(none)'}."
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form, stored in the export's audit event."""
        return {
            "site": list(self.site_codes),
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "only_confirmed": self.only_confirmed,
        }

    def name_suffix(self) -> str:
        """The filters in a file name: ``""`` without filters, else e.g.
        ``_site-S01+S02_from-2024-01-01_to-2024-06-30_signed`` (only ``[A-Za-z0-9.+_-]``)."""
        parts = []
        if self.site_codes:
            parts.append("site-" + "+".join(re.sub(r"[^A-Za-z0-9.-]", "-", c) for c in self.site_codes))
        if self.date_from:
            parts.append(f"from-{self.date_from.isoformat()}")
        if self.date_to:
            parts.append(f"to-{self.date_to.isoformat()}")
        if self.only_confirmed:
            parts.append("signed")
        return "".join(f"_{part}" for part in parts)

    def patient_q(self, prefix: str = "") -> Q:
        """Condition on patients (``prefix`` is the lookup path to the patient, e.g. ``"timepoint__patient__"``)."""
        q = Q()
        if self.site_codes:
            q &= Q(**{f"{prefix}site__code__in": self.site_codes})
        return q

    def timepoint_q(self, prefix: str = "") -> Q:
        """Condition on visits (``prefix`` is the lookup path to the timepoint, e.g. ``"timepoint__"``)."""
        q = self.patient_q(f"{prefix}patient__")
        if self.date_from:
            q &= Q(**{f"{prefix}scan_date__gte": self.date_from})
        if self.date_to:
            q &= Q(**{f"{prefix}scan_date__lte": self.date_to})
        if self.only_confirmed:
            # EXISTS rather than a join: the caller's queryset may already join assessments.
            signed_rows = Assessment.objects.filter(
                criteria=Criteria.RANO_BM,
                is_current=True,
                status__in=(AssessmentStatus.CONFIRMED, AssessmentStatus.OVERRIDDEN),
            )
            signed = signed_rows.filter(timepoint=OuterRef(prefix.removesuffix("__") or "pk"))
            # A baseline has no response to sign; its measurements are what every signed follow-up's
            # response rests on, so it goes with the patient's first signed follow-up.
            signed_follow_up = signed_rows.filter(
                timepoint__patient=OuterRef(f"{prefix}patient"), timepoint__is_baseline=False
            )
            q &= Q(Exists(signed)) | (Q(**{f"{prefix}is_baseline": True}) & Q(Exists(signed_follow_up)))
        return q


def _parse_date(value: Any, name: str) -> dt.date | None:
    if value in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidExportFilterError(f"{name} must be a date YYYY-MM-DD, not {value!r}.") from None
