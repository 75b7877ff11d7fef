"""Routes of the web pages, mounted at ``/`` by ``config/urls.py``.

Two namespaces: ``dashboard`` (trials, patients, visits, the viewer and the review verbs, uploads) and
``exports`` (the data managers' export form and data-quality report).
"""

from django.urls import path

from trials.views import (
    assets,
    home,
    models,
    pacs,
    patient,
    quality,
    registered,
    report,
    review,
    trial_plots,
    upload,
    viewer,
)

app_name = "dashboard"

urlpatterns = [
    path("", home.home, name="home"),
    path("worklist/", home.review_worklist, name="worklist"),
    path("trials/<int:trial_id>/", home.trial_home, name="trial"),
    path("trials/<int:trial_id>/plots/", trial_plots.trial_plots, name="trial-plots"),
    path("trials/<int:trial_id>/models/", models.trial_models, name="trial-models"),
    path(
        "trials/<int:trial_id>/models/<int:version_id>/validate/",
        models.validate_model,
        name="trial-models-validate",
    ),
    path(
        "trials/<int:trial_id>/models/training-sets/",
        models.export_training_set,
        name="trial-training-sets",
    ),
    path(
        "trials/<int:trial_id>/models/training-sets/<int:set_id>/fine-tune/",
        models.fine_tune,
        name="trial-training-sets-fine-tune",
    ),
    path(
        "trials/<int:trial_id>/models/<int:version_id>/<slug:verb>/",
        models.model_verb,
        name="trial-models-verb",
    ),
    path("patients/<int:patient_id>/", patient.patient_detail, name="patient"),
    path("patients/<int:patient_id>/visits/", patient.add_visit, name="add-visit"),
    path("visits/<int:timepoint_id>/", viewer.visit_detail, name="visit"),
    path("visits/<int:timepoint_id>/edit/", patient.edit_visit, name="edit-visit"),
    path("visits/<int:timepoint_id>/review/<slug:action>/", review.review_action, name="review"),
    path("visits/<int:timepoint_id>/report/", report.visit_report, name="visit-report"),
    path("visits/<int:timepoint_id>/report.pdf", report.visit_report_pdf, name="visit-report-pdf"),
    path("visits/<int:timepoint_id>/upload/", upload.upload_series, name="upload"),
    path("series/<int:series_id>/volume.nii", viewer.series_volume, name="series-volume"),
    path("series/<int:series_id>/lesions.nii.gz", viewer.series_lesions, name="series-lesions"),
    path("series/<int:series_id>/calipers.nii.gz", viewer.series_calipers, name="series-calipers"),
    path(
        "series/<int:series_id>/on/<int:onto_id>/volume.nii",
        registered.registered_volume,
        name="series-volume-on",
    ),
    path(
        "series/<int:series_id>/on/<int:onto_id>/lesions.nii.gz",
        registered.registered_lesions,
        name="series-lesions-on",
    ),
    path(
        "series/<int:series_id>/on/<int:onto_id>/calipers.nii.gz",
        registered.registered_calipers,
        name="series-calipers-on",
    ),
    path("jobs/<int:job_id>/progress.json", patient.job_progress, name="job-progress"),
    path("jobs/<int:job_id>/retry/", patient.retry_job, name="job-retry"),
    path("inbox/", pacs.inbox, name="inbox"),
    path("inbox/<int:item_id>/assign/", pacs.inbox_assign, name="inbox-assign"),
    path("inbox/<int:item_id>/discard/", pacs.inbox_discard, name="inbox-discard"),
    path("assets/<str:name>", assets.asset, name="asset"),
]

#: Namespace ``exports``: included by ``config/urls.py`` as ``include((exports_urlpatterns, "exports"))``.
exports_urlpatterns = [
    path("trials/<int:trial_id>/exports/", quality.exports_page, name="trial"),
    path("trials/<int:trial_id>/exports/dictionary.md", quality.data_dictionary, name="dictionary"),
    path("trials/<int:trial_id>/exports/define.xml", quality.define_download, name="define-xml"),
    path("trials/<int:trial_id>/exports/<slug:name>.xpt", quality.submission_download, name="submission"),
    path("trials/<int:trial_id>/exports/<slug:kind>.csv", quality.export_download, name="download"),
    path("trials/<int:trial_id>/quality/", quality.quality_page, name="quality"),
]
