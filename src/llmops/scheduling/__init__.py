"""Which engine serves a request, and when: the model pool, fan-out of n choices (admission and
batching policies grow here)."""
