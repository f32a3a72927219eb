"""Inference engines behind one small interface (base.py), registered by name (registry.py)."""
