#!/usr/bin/env bash
# Wheels the device machine lacks for bench/gpu_images.py (diffusers, and llmops' server dependencies), for
# its Python 3.12 on x86-64, into .whl/ at the repository root (git-ignored through .git/info/exclude). Run it
# HERE before the device call, then carry ".whl" (see bench/gpu_images.py's docstring). The machine already
# has torch, transformers, numpy, pillow, safetensors, huggingface-hub, regex, requests, filelock, anyio,
# h11, click, jinja2, pyyaml, httpx, prometheus-client, annotated-doc and zipp. Versions: those this
# project's tests run with (pydantic-core must match pydantic exactly). httpx2 and its two: starlette's
# TestClient (tests/gpu) warns without them, an error under the project's warning filter.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")" .whl
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 importlib-metadata==10.2.0 \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 fastapi-offline==1.7.7 python-multipart==0.0.34 \
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
  typing-extensions==4.16.0 typing-inspection==0.4.5 annotated-types==0.8.0 \
  structlog==26.1.0 opentelemetry-api==1.45.2 \
  httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
ls .whl && du -sh .whl
