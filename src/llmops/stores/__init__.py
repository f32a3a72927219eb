"""State behind one interface per kind: API keys today (memory for tests, SQLite for the embedded
default, surviving restarts)."""
