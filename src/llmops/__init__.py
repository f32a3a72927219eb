"""llmops: one OpenAI-compatible server for LLM chat and image generation, hardened for production."""

__version__ = "0.1.0"
