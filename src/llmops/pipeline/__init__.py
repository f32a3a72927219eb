"""The request path: every kind of work goes through the stages listed in `stages.py` (route, prompt,
guardrails, budget, cache, admission, engine, output guardrails, accounting, cache store). api/ builds the
request's context and work and calls it; it calls scheduling, the engines and the stores."""
