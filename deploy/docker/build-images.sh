#!/usr/bin/env bash
# Builds the llmops images:  deploy/docker/build-images.sh [cpu] [gpu]   (both by default; `make images`)
# Environment:
#   IMAGE_SOURCE=auto|hub|local  base images from Docker Hub (the Dockerfiles' defaults) or stand-ins built from
#                                Debian packages (local-bases.sh); auto: hub when its image is here or pulls
#   PIP_CA=FILE                  CA bundle for pip inside the build (a TLS-intercepting proxy's); a BuildKit
#                                secret, never in a layer. Default: pip's own `cert` setting on this machine
#   LOCAL_WHEELS=DIR             where a local CPU torch wheel lies (default: pip's find-links here); linked into
#                                deploy/docker/wheels/ so the build installs it instead of downloading torch
#   BAKE_MODELS=0|1              weights in the image (1, the default) or on a volume at run time
# Writes one line per image to deploy/docker/.build-times (seconds, size) for the report.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/docker/engine.sh
. deploy/docker/engine.sh
ensure_engine

targets=("$@"); ((${#targets[@]})) || targets=(cpu gpu)
IMAGE_SOURCE=${IMAGE_SOURCE:-auto}
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' deploy/docker/Dockerfile.cpu)
pip_setting() { python3 -m pip config get "global.$1" 2>/dev/null || true; }

base_for() {  # $1: the official image; prints the one to build on
  local official=$1
  if [[ $IMAGE_SOURCE == hub ]] || { [[ $IMAGE_SOURCE == auto ]] && { "$DOCKER" image inspect "$official" >/dev/null 2>&1 \
        || timeout 60 "$DOCKER" pull -q "$official" >/dev/null 2>&1; }; }; then
    echo "$official"
  else
    deploy/docker/local-bases.sh >&2 || return 1  # (a failure inside $(...) would not stop the script)
    echo "${LOCAL_PYTHON_IMAGE:-llmops-local/python:3.11-bookworm}"
  fi
}

args=(--build-arg "BAKE_MODELS=${BAKE_MODELS:-1}")
ca=${PIP_CA:-${PIP_CERT:-$(pip_setting cert)}}
[[ -n "$ca" && -s "$ca" ]] && args+=(--secret "id=pip_ca,src=$ca")
wheels=${LOCAL_WHEELS:-${PIP_FIND_LINKS:-$(pip_setting find-links)}}
rm -f deploy/docker/wheels/*.whl
for whl in "${wheels:-/nonexistent}"/torch-"$TORCH_VERSION"+cpu-*.whl; do
  [[ -f "$whl" ]] || continue
  ln "$whl" deploy/docker/wheels/ 2>/dev/null || cp "$whl" deploy/docker/wheels/
  args+=(--build-arg TORCH_INDEX_URL=)   # the local wheel is the CPU build: no second index
  echo "images: torch from the local wheel $(basename "$whl")"
done

for target in "${targets[@]}"; do
  case $target in
    cpu) base=$(base_for python:3.11-slim-bookworm); extra=(--build-arg "PYTHON_IMAGE=$base") ;;
    gpu) official=$(sed -n 's/^ARG CUDA_IMAGE=//p' deploy/docker/Dockerfile.gpu)
         base=$(base_for "$official"); extra=(--build-arg "CUDA_IMAGE=$base")
         # on the real CUDA base, torch is PyPI's CUDA build: not the local CPU wheel
         [[ $base == "$official" ]] && rm -f deploy/docker/wheels/*.whl ;;
    *) echo "unknown image $target (cpu, gpu)" >&2; exit 2 ;;
  esac
  echo "images: building llmops:$target on $base"
  previous=$("$DOCKER" image inspect -f '{{.Id}}' "llmops:$target" 2>/dev/null || true)
  start=$(date +%s)
  "${BUILD[@]}" --progress=plain "${args[@]}" "${extra[@]}" -f "deploy/docker/Dockerfile.$target" -t "llmops:$target" . \
    >"deploy/docker/.build-$target.log" 2>&1 || { tail -n 40 "deploy/docker/.build-$target.log" >&2; exit 1; }
  secs=$(($(date +%s) - start))
  size=$("$DOCKER" image inspect -f '{{.Size}}' "llmops:$target")
  # the image this build replaced is left untagged: remove it (about 2.4 GB a rebuild filled the disk),
  # unless a container still uses it
  if [[ -n $previous && $previous != $("$DOCKER" image inspect -f '{{.Id}}' "llmops:$target") ]]; then
    "$DOCKER" image rm "$previous" >/dev/null 2>&1 || true
  fi
  echo "images: llmops:$target built in ${secs}s, $((size / 1000000)) MB (log deploy/docker/.build-$target.log)"
  echo "$(date -u +%FT%TZ) llmops:$target base=$base build_s=$secs size_mb=$((size / 1000000))" >>deploy/docker/.build-times
done
