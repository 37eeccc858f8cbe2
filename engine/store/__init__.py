"""Storage adapters: SQLAlchemy models, the ledger unit of work, keys, idempotency.

This package is the only place that talks to the database. The domain core
(`engine.model`, `engine.rating`, `engine.ledger_rules`) never imports it.
"""
