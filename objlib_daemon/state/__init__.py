"""The durable state: SQLite via SQLAlchemy (files, queue, orphans, journal, config)."""
