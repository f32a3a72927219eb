"""Servers the harness measures. Each module runs one OpenAI-compatible server on a given port."""
