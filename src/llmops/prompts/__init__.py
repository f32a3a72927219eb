"""Versioned prompt templates (registry.py)."""
