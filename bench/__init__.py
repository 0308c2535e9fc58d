"""Benchmarks: the money core and the HTTP functions next to PostgreSQL's own limit (pgbench)."""
