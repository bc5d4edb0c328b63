"""The feedback loop's records: every prediction the service made (the inference log), what clinicians said
about them (feedback), the images they chose to keep (a content-addressed store), and frozen training-data
snapshots built from the base data set plus accepted feedback.

Why in core: the service writes these records, the command line and the retraining flows read them, and
both may only share core. One schema for SQLite (the default, under ``runs/``) and PostgreSQL (compose),
changed only through the Alembic migrations in ``migrations/`` (:meth:`FeedbackStore.migrate`).
"""
