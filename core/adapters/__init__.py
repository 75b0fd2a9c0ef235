"""Implementations of the ports that need no server: the SQLite log bus and the SQL label store."""
