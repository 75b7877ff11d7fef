"""Web dashboard of MetTrack (Django templates + plotly), mounted at ``/`` by ``trials.urls``.

Modules:
    common       access helpers: trial-scoped lookups (404 outside the user's trials), capability checks
    queries      constant-query data gathering for the pages (no N+1)
    home         trial list and trial home (patients with latest response, BOR, pending reviews...)
    patient      patient timeline: visits, charts, lesion tables, upload with progress
    viewer       visit page: slice viewer (server-side PNG slices, contour/caliper overlays), review forms
    registered   the comparison panel resampled onto the visit's grid (stored rigid registrations)
    review       POST endpoints of the reader-review verbs (``trials.actions.review``, ``.assessments``)
    upload       series upload from the patient timeline, answering the job to follow
    quality      data-management pages: the export form and the data-quality report
    imaging      slice rendering: cached volumes, window/level, PNG encoder, contour edges
    trial_plots  waterfall, spider and swimmer plots of a trial
    assets       plotly.js from the installed plotly package and the dashboard's own script/style
"""
