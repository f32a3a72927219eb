"""Stages that need the parsed request: accounting (budgets, tokens/min, cost), and later the cache,
guardrails and routing. The api layer calls them; they call scheduling and the stores."""
