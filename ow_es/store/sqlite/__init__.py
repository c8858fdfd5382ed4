"""The SQLite adapter: store, rebuild, wake channel."""
