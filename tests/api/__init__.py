"""HTTP tests: a real `setapay serve` over a socket, on SQLite and PostgreSQL."""
