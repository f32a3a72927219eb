"""Thin routers: parse the typed request, hand it on, shape the response."""
