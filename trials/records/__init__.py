"""Row helpers: audited writes of single rows, below the actions and the pipeline.

Each function validates one row (or one small group, e.g. an assessment and the row it supersedes),
saves it and appends its ``AuditEvent`` in the caller's transaction, with no consequences beyond the
row: re-assessment, jobs and the rest of an operation are the caller's (``trials.actions``,
``trials.pipeline``). Interfaces (API, admin, dashboard, commands) never call them directly.

    base         create_row / update_row (validate, save, audit), check_fields, check_same_trial
    visits       update_timepoint
    imaging      register_series, update_series, register_model_version, create/update_segmentation_run
    lesions      create_lesion, update_lesion, record_observation, update_observation,
                 measurement_fields (a measurement as observation fields), next_lesion_label
    assessments  create_assessment (supersedes the current row), record_confirmation, record_override
    jobs         create_job (enqueued on commit), start_job, update_job_progress, finish_job, fail_job
"""
