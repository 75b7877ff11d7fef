"""Django admin of the trials app.

The admin is a service client like any other: saves of trials, sites, memberships, patients and visits
call actions (``trials.actions``, so they are audited); everything clinical that the pipeline or readers produce
(series, runs, lesions, observations, assessments) is read-only here, and the audit trail can be
neither changed nor deleted.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.http import HttpRequest
from simple_history.admin import SimpleHistoryAdmin

from trials.actions import accounts, patients
from trials.actions import pacs as pacs_actions
from trials.actions import trials as trial_actions
from trials.models import (
    ApiToken,
    Assessment,
    AuditEvent,
    ImagingSeries,
    Lesion,
    LesionObservation,
    ModelVersion,
    PacsDelivery,
    PacsDestination,
    Patient,
    ProcessingJob,
    ReceivedStudy,
    SegmentationRun,
    Site,
    Timepoint,
    TrainingSet,
    Trial,
    TrialMembership,
    TrialModel,
    TrialPacsSettings,
)


def _audit(request: HttpRequest) -> dict[str, Any]:
    return {
        "actor": request.user,
        "reason": getattr(request, "audit_reason", "") or "added in the admin",
        "correlation_id": getattr(request, "correlation_id", ""),
    }


class AuditReasonForm(forms.ModelForm):
    """The model's form plus the reason the audit trail records; required for a change."""

    reason = forms.CharField(
        max_length=2000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why (audit trail). Required for a change.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        changed = [name for name in self.changed_data if name != "reason"]
        if self.instance.pk and changed and not (cleaned.get("reason") or "").strip():
            self.add_error("reason", "Say why: a change needs a reason for the audit trail.")
        return cleaned


class ServiceAdmin(SimpleHistoryAdmin):
    """Admin whose add/change call services; no delete (clinical data is never deleted). Every change
    carries the reason typed in the form (``AuditReasonForm``)."""

    form = AuditReasonForm

    def create_via_service(self, request: HttpRequest, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def update_via_service(self, request: HttpRequest, obj: Any, changes: dict[str, Any]) -> Any:
        raise NotImplementedError

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        request.audit_reason = (form.cleaned_data.get("reason") or "").strip()  # type: ignore[attr-defined]
        if change:
            changes = {name: form.cleaned_data[name] for name in form.changed_data if name != "reason"}
            if changes:
                self.update_via_service(request, obj, changes)
        else:
            data = {
                name: form.cleaned_data[name]
                for name in form.fields
                if name in form.cleaned_data and name != "reason"
            }
            created = self.create_via_service(request, data)
            # The admin goes on with ``obj`` (messages, redirect): make it the saved row.
            obj.pk = created.pk
            obj._state.adding = False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(SimpleHistoryAdmin):
    """Admin that only shows rows."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Trial)
class TrialAdmin(ServiceAdmin):
    list_display = [
        "code",
        "title",
        "is_demo",
        "max_targets",
        "measurable_min_ld_mm",
        "immunotherapy",
        "created_at",
    ]
    search_fields = ["code", "title"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["code", "is_demo"] if obj is not None else []

    def create_via_service(self, request: HttpRequest, data: dict[str, Any]) -> Trial:
        return trial_actions.create_trial(**data, **_audit(request))

    def update_via_service(self, request: HttpRequest, obj: Trial, changes: dict[str, Any]) -> Trial:
        return trial_actions.update_trial(obj, **changes, **_audit(request)).trial


@admin.register(Site)
class SiteAdmin(ServiceAdmin):
    list_display = ["code", "name", "trial"]
    list_filter = ["trial"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["trial"] if obj is not None else []

    def create_via_service(self, request: HttpRequest, data: dict[str, Any]) -> Site:
        return trial_actions.create_site(data.pop("trial"), **data, **_audit(request))

    def update_via_service(self, request: HttpRequest, obj: Site, changes: dict[str, Any]) -> Site:
        return trial_actions.update_site(obj, **changes, **_audit(request))


@admin.register(TrialMembership)
class TrialMembershipAdmin(ServiceAdmin):
    list_display = ["user", "trial", "role", "site"]
    list_filter = ["trial", "role"]
    list_select_related = ["user", "trial", "site"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["trial", "user"] if obj is not None else []

    def create_via_service(self, request: HttpRequest, data: dict[str, Any]) -> TrialMembership:
        return trial_actions.add_membership(data.pop("trial"), **data, **_audit(request))

    def update_via_service(self, request: HttpRequest, obj: TrialMembership, changes: dict[str, Any]) -> Any:
        return trial_actions.update_membership(obj, **changes, **_audit(request))


@admin.register(Patient)
class PatientAdmin(ServiceAdmin):
    list_display = ["subject_id", "trial", "site", "enrolment_date"]
    list_filter = ["trial", "site"]
    search_fields = ["subject_id"]
    list_select_related = ["trial", "site"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["trial"] if obj is not None else []

    def create_via_service(self, request: HttpRequest, data: dict[str, Any]) -> Patient:
        return patients.create_patient(data.pop("trial"), **data, **_audit(request))

    def update_via_service(self, request: HttpRequest, obj: Patient, changes: dict[str, Any]) -> Patient:
        return patients.update_patient(obj, **changes, **_audit(request))


@admin.register(Timepoint)
class TimepointAdmin(ServiceAdmin):
    list_display = ["patient", "visit_label", "scan_date", "is_baseline", "corticosteroid_status"]
    list_filter = ["patient__trial", "is_baseline"]
    search_fields = ["patient__subject_id", "visit_label"]
    list_select_related = ["patient"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["patient"] if obj is not None else []

    def create_via_service(self, request: HttpRequest, data: dict[str, Any]) -> Timepoint:
        return patients.create_timepoint(data.pop("patient"), **data, **_audit(request))

    def update_via_service(self, request: HttpRequest, obj: Timepoint, changes: dict[str, Any]) -> Timepoint:
        return patients.edit_timepoint(obj, **changes, **_audit(request))


@admin.register(ImagingSeries)
class ImagingSeriesAdmin(ReadOnlyAdmin):
    list_display = ["series_instance_uid", "timepoint", "source", "created_at"]
    search_fields = ["series_instance_uid", "study_instance_uid"]


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    """Model versions and their lifecycle; registering and validating are ``bm-validate`` and the
    ``model`` command's (README "Model governance")."""

    list_display = ["name", "version", "lifecycle", "not_for_clinical_use", "weights_short", "config_short"]
    list_filter = ["lifecycle", "is_demo"]

    @admin.display(boolean=True, description="demo — not for clinical use")
    def not_for_clinical_use(self, obj: ModelVersion) -> bool:
        return obj.is_demo

    @admin.display(description="weights sha256")
    def weights_short(self, obj: ModelVersion) -> str:
        return obj.weights_sha256[:12]

    @admin.display(description="config sha256")
    def config_short(self, obj: ModelVersion) -> str:
        return obj.config_sha256[:12]


@admin.register(TrialModel)
class TrialModelAdmin(ReadOnlyAdmin):
    """Which model each trial may use (approved, signed), uses (active), no longer uses (retired) or
    runs in shadow for comparison (shadow, not approved). Approving needs the signer's password: the
    dashboard's Models page or API, or ``manage.py model approve``."""

    list_display = ["trial", "model_version", "status", "approved_by_name", "approved_at", "activated_at"]
    list_filter = ["status", "trial"]


@admin.register(TrainingSet)
class TrainingSetAdmin(ReadOnlyAdmin):
    """Signed reads exported as training sets (``manage.py training_set export`` or the Models page)."""

    list_display = ["id", "trial", "n_cases", "created_by_name", "created_at", "manifest_sha256"]
    list_filter = ["trial"]


@admin.register(SegmentationRun)
class SegmentationRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "series", "model_version", "status", "is_shadow", "device", "finished_at"]
    list_filter = ["status", "is_shadow"]


@admin.register(Lesion)
class LesionAdmin(ReadOnlyAdmin):
    list_display = ["label", "patient", "role", "is_false_positive"]
    list_filter = ["role"]


@admin.register(LesionObservation)
class LesionObservationAdmin(ReadOnlyAdmin):
    list_display = ["lesion", "timepoint", "source", "present", "longest_diameter_mm", "volume_mm3"]


@admin.register(Assessment)
class AssessmentAdmin(ReadOnlyAdmin):
    list_display = ["timepoint", "criteria", "overall_response", "status", "is_current", "signed_by"]
    list_filter = ["criteria", "status", "is_current"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit trail: viewable, never added, changed or deleted (also not by superusers)."""

    list_display = ["created_at", "actor_name", "action", "object_type", "object_id", "object_repr"]
    list_filter = ["action", "object_type", "trial"]
    search_fields = ["object_repr", "actor_name", "correlation_id", "object_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ProcessingJob)
class ProcessingJobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "state", "progress_pct", "stage", "enqueued_at", "finished_at"]
    list_filter = ["kind", "state"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# ------------------------------------------------------------------------------------------ accounts


class _PasswordFormSavedByAction(AdminPasswordChangeForm):
    """The admin's password form sets the new hash; the action saves and audits it."""

    def save(self, commit: bool = True) -> Any:
        return super().save(commit=False)


class AuditedUserAdmin(DjangoUserAdmin):
    """Django's user admin whose every save is an audited action: superuser, staff and active flags,
    groups, permissions and passwords (``trials.actions.accounts``)."""

    change_password_form = _PasswordFormSavedByAction

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        accounts.save_user(
            obj,
            changed=list(form.changed_data),
            before=accounts.account_snapshot(obj) if change else None,
            # Groups and permissions are stored after save_model: the event records the ones submitted.
            m2m={
                name: sorted(str(item) for item in form.cleaned_data[name])
                for name in ("groups", "user_permissions")
                if name in form.changed_data
            },
            actor=request.user,
            reason="changed in the admin" if change else "created in the admin",
            correlation_id=getattr(request, "correlation_id", ""),
        )

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> Any:
        request.mettrack_password_change = True  # type: ignore[attr-defined]
        return super().user_change_password(request, id, form_url)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        if getattr(request, "mettrack_password_change", False):
            accounts.change_password(
                obj,
                actor=request.user,
                reason="set in the admin",
                correlation_id=getattr(request, "correlation_id", ""),
            )
        return super().log_change(request, obj, message)


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), AuditedUserAdmin)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API tokens: who holds one and until when; revoke (audited). The key itself is never stored."""

    list_display = ["token_key", "user", "created", "expiry", "created_by_ip"]
    list_select_related = ["user"]
    search_fields = ["user__username", "token_key"]
    actions = ["revoke"]
    fields = ("token_key", "user", "created", "expiry", "created_by_ip")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> Any:
        # Django's bulk delete would skip the audit trail; "revoke" goes through the action.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        for token in queryset.select_related("user"):
            accounts.revoke_token(
                token,
                actor=request.user,
                reason="revoked in the admin",
                correlation_id=getattr(request, "correlation_id", ""),
            )


@admin.register(TrialPacsSettings)
class TrialPacsSettingsAdmin(ServiceAdmin):
    """How a trial's received studies are routed (README "PACS")."""

    list_display = ["trial", "protocol_id", "visit_window_days", "viewer_url_template"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["trial"] if obj is not None else []

    def create_via_service(self, request: HttpRequest, data: dict[str, Any]) -> TrialPacsSettings:
        return pacs_actions.set_pacs_settings(data.pop("trial"), **data, **_audit(request))

    def update_via_service(
        self, request: HttpRequest, obj: TrialPacsSettings, changes: dict[str, Any]
    ) -> Any:
        return pacs_actions.set_pacs_settings(obj.trial, **changes, **_audit(request))


@admin.register(PacsDestination)
class PacsDestinationAdmin(ServiceAdmin):
    """Where a trial's results are sent, what and when."""

    list_display = ["name", "trial", "protocol", "ae_title", "host", "port", "url", "trigger", "is_active"]
    list_filter = ["trial", "protocol", "trigger"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["trial"] if obj is not None else []

    def create_via_service(self, request: HttpRequest, data: dict[str, Any]) -> PacsDestination:
        return pacs_actions.create_destination(data.pop("trial"), **data, **_audit(request))

    def update_via_service(self, request: HttpRequest, obj: PacsDestination, changes: dict[str, Any]) -> Any:
        return pacs_actions.update_destination(obj, **changes, **_audit(request))


@admin.register(PacsDelivery)
class PacsDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "destination", "timepoint", "state", "attempts", "delivered_at"]
    list_filter = ["state"]


@admin.register(ReceivedStudy)
class ReceivedStudyAdmin(ReadOnlyAdmin):
    """Received studies (the inbox is resolved on the dashboard's PACS inbox page)."""

    list_display = ["id", "channel", "sender_ae_title", "study_date", "state", "received_at"]
    list_filter = ["state", "channel"]
    exclude = ["patient_key", "inbox_folder"]
