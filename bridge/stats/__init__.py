"""The state database (SQLite or PostgreSQL; store, schema, migrations), request tracking,
aggregates (perf, live) and Prometheus metrics."""
