"""An application with its own Alembic migrations that also runs dramatiq-opmetrics' migrations."""
