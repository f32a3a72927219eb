"""Metrics, structured logs and tracing."""
