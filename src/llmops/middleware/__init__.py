"""Pure ASGI middleware, one concern per module; the order is set in app.build_middleware."""
