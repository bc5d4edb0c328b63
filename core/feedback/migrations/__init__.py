"""Alembic migrations of the inference log (run by :meth:`robustdx.core.feedback.store.FeedbackStore.migrate`)."""
