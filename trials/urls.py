"""Routes of the web pages, mounted at ``/`` by ``config/urls.py``.

Two namespaces: ``dashboard`` (trials, patients, visits, the viewer and the review verbs, uploads) and
``exports`` (the data managers' export form and data-quality report).
"""

from django.urls import path

from trials.views import assets, home, pacs, patient, quality, review, trial_plots, upload, viewer

app_name = "dashboard"

urlpatterns = [
    path("", home.home, name="home"),
    path("trials/<int:trial_id>/", home.trial_home, name="trial"),
    path("trials/<int:trial_id>/plots/", trial_plots.trial_plots, name="trial-plots"),
    path("patients/<int:patient_id>/", patient.patient_detail, name="patient"),
    path("visits/<int:timepoint_id>/", viewer.visit_detail, name="visit"),
    path("visits/<int:timepoint_id>/review/<slug:action>/", review.review_action, name="review"),
    path("visits/<int:timepoint_id>/upload/", upload.upload_series, name="upload"),
    path("series/<int:series_id>/slices/<int:k>.png", viewer.slice_png, name="slice"),
    path("series/<int:series_id>/overlay/<int:k>.json", viewer.slice_overlay, name="overlay"),
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
    path("trials/<int:trial_id>/quality/", quality.quality_page, name="quality"),
]
