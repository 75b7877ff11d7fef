"""The longitudinal pipeline, one module per stage: upload -> segmentation -> lesion tracking -> RANO-BM.

One uploaded series is one ``ProcessingJob`` of kind ``pipeline`` followed through every stage:

1. :mod:`.upload` (web request, ``manage.py import_series``, through ``trials.actions.imaging``):
   validate, de-identify and store the series under ``MEDIA_ROOT/series/<folder>/``.
2. :mod:`.segmentation` (queue ``gpu``): the model of :mod:`.registry` over the stored volume, stored
   as a ``SegmentationRun``.
3. :mod:`.analysis` (queue ``default``): measure and match the lesions across the patient's visits,
   store ``Lesion`` / ``LesionObservation`` rows, write the RTSTRUCT and SEG (:mod:`.contours`), then
   re-assess the patient (:mod:`.assessment`).

:mod:`.queue` hands jobs to the workers by task name after commit, :mod:`.embedded` runs them in-process
without a broker, :mod:`.jobs` is a job's lifecycle as the stages see it, :mod:`.sweeps` the periodic
catch-up of jobs that never reached the broker or lost their worker, :mod:`.errors` the error policy.

Every state change goes through the row helpers of ``trials.records`` (validated, audited); a stage run
again (a redelivered message after a worker was killed) finds its earlier rows and reuses them:
idempotency comes from database constraints, not from checks done before inserting.
"""
