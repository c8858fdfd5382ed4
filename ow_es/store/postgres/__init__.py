"""The PostgreSQL adapter: store, one-statement appends, rebuild, wake channel."""
