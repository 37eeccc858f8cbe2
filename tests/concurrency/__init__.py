"""Concurrency tests: several real server processes against one PostgreSQL database."""
