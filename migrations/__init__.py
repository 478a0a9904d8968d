"""Alembic migrations of the audit database (``bmsreboot db upgrade``)."""
