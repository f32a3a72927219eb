"""Baseline (b): LitServe (the pip package) serving the guide's LitAPI over transformers with
max_batch_size=4 and batch_timeout=0.05, as the guide configures it.

As printed, the guide's `predict(inputs: dict)` breaks once batching is on: LitServe then hands it a list
of decoded requests. This version gives it what batching needs: `predict` takes the list and runs one
left-padded `generate` over it (sampling settings of the first request), and LitServe's default
`unbatch` splits the list of answers back to the requests."""



import argparse
from typing import Any

import litserve as ls

from bench.targets.hf_gemma import load


class LLMServingAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, threads: int) -> None:
        super().__init__(max_batch_size=4, batch_timeout=0.05, api_path="/v1/chat/completions")
        self.threads = threads

    def setup(self, device: str) -> None:
        self.tok, self.model = load(self.threads)
        self.tok.padding_side = "left"

    def decode_request(self, request: dict) -> dict:  # type: ignore[type-arg]  (LitServe reads this annotation)
        return {"prompt": request["messages"][-1]["content"], "max_tokens": request.get("max_tokens", 512),
                "temperature": request.get("temperature", 0.7) or 0.7}

    def predict(self, inputs: list[dict[str, Any]]) -> list[str]:
        import torch

        batch = self.tok([x["prompt"] for x in inputs], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = self.model.generate(**batch, max_new_tokens=max(x["max_tokens"] for x in inputs),
                                      temperature=inputs[0]["temperature"], do_sample=True, top_p=0.9,
                                      pad_token_id=self.tok.eos_token_id)
        width = batch["input_ids"].shape[1]
        return [str(self.tok.decode(row[width:], skip_special_tokens=True)) for row in out]

    def encode_response(self, output: str) -> dict[str, Any]:
        return {"choices": [{"message": {"role": "assistant", "content": output}}]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    server = ls.LitServer(LLMServingAPI(a.threads), accelerator="cpu", devices=1, timeout=600, workers_per_device=1)
    server.run(host="127.0.0.1", port=a.port, generate_client_file=False, num_api_servers=1)


if __name__ == "__main__":
    main()
