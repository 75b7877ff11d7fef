"""Actions: every state change a user or an interface asks for, one function each.

An action is the whole operation, consequences included (re-assessment of the patient, the jobs it
queues), in one transaction with its audit event; follow-up work is enqueued after commit. The API
(serializers and views), the admin, the dashboard views and the management commands call only actions;
the row helpers (``trials.records``) and the pipeline's stages (``trials.pipeline``) sit below them.
Permission checks are the caller's (``trials.permissions``); actions check consistency.

Conventions: keyword-only ``actor`` (a user, or ``None`` for the system), ``reason`` (why, for the audit
trail) and ``correlation_id`` (request or job id; a new one when empty). Bad input raises
``trials.exceptions.InvalidInputError`` (field messages in ``field_errors``), a duplicate
``DuplicateError``, a verb in the wrong state ``InvalidStateError``; never an ``IntegrityError``.

    trials       create_trial, update_trial (a criteria change queues the re-assessment of every patient),
                 create_site, update_site, add_membership, update_membership, remove_membership
    patients     create_patient, update_patient, create_timepoint, edit_timepoint (re-assesses)
    imaging      upload_series (stores, records, queues the pipeline job), resegment_series
    lesions      add_lesion, edit_lesion, add_observation, edit_observation (each re-assesses)
    review       drop_lesion, restore_lesion, add_lesion_from_seed, merge_lesions, split_lesion,
                 set_target_selection, set_lesion_flags, set_unequivocal_progression, set_clinical_context
    assessments  confirm_assessment, override_assessment (electronic signatures), verify_signature
    jobs         retry_job
    exports      export_trial (a CSV download, audited)
    backups      create_backup, restore_backup (database and stored files; audited)
    accounts     record_login, record_login_failure, issue_token, rotate_token, revoke_token,
                 revoke_all_tokens, record_signature_failure, save_user, change_password, record_download
"""
