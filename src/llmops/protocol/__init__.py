"""OpenAI wire schemas: pure pydantic, no I/O, nothing imported from the rest of llmops."""
