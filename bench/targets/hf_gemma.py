"""What the guide's LLMEngine loads, made runnable offline: the Gemma GGUF's converted checkpoint (the
one llmops' transformers engine caches) in bf16 on the CPU."""

from __future__ import annotations

from typing import Any

from llmops.engines.transformers import TransformersEngine, TransformersOptions


def tokenizer() -> Any:
    import transformers

    source, _ = TransformersEngine("bench", TransformersOptions()).checkpoint_source()
    return transformers.AutoTokenizer.from_pretrained(source)


def load(threads: int) -> tuple[Any, Any]:
    import torch
    import transformers

    torch.set_num_threads(threads)
    source, _ = TransformersEngine("bench", TransformersOptions()).checkpoint_source()
    tok = transformers.AutoTokenizer.from_pretrained(source)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()
    return tok, model
