"""Storage: the SQLAlchemy models, the engine and migrations, and the queries the pipeline needs.

SQLite is the embedded default and PostgreSQL the scale-out backend; everything here is
written against SQLAlchemy Core/ORM constructs that both understand, with the one
dialect-specific point (claiming due sources) kept in ``sources.SourceStore.claim_due``.
Storage knows no domain rule: it imports nothing of ``config``, ``curate`` or ``normalize``,
takes ids and plain values, and returns records.
"""
