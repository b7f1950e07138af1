"""The SQLite store, request tracking, aggregates and Prometheus metrics."""
