# Sourced by the image and deploy-test scripts: a running Docker engine and a CLI that builds with BuildKit.
#   ensure_engine   starts dockerd (as root, logging to $DOCKERD_LOG) when none answers; says why when it cannot
#   DOCKER          the docker CLI to use; BUILD: the command that builds with BuildKit (RUN --mount, secrets)
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/llmops-dockerd.log}

ensure_engine() {
  DOCKER=${DOCKER:-docker}
  command -v "$DOCKER" >/dev/null || { echo "no Docker CLI ($DOCKER): apt-get install docker.io" >&2; return 1; }
  if ! "$DOCKER" info >/dev/null 2>&1; then
    if [[ $(id -u) != 0 ]] || ! command -v dockerd >/dev/null; then
      echo "no Docker engine answers and this user cannot start one (needs root and dockerd)" >&2; return 1
    fi
    echo "starting dockerd (log: $DOCKERD_LOG)" >&2
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    local i
    for i in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || { echo "dockerd did not start: tail $DOCKERD_LOG" >&2; tail -n 5 "$DOCKERD_LOG" >&2; return 1; }
  fi
  # BuildKit: `docker buildx build` where the buildx plugin exists; else a CLI older than 23 with its built-in
  # BuildKit client (Debian's docker.io ships one at /usr/bin/docker; a newer CLI without buildx cannot).
  if "$DOCKER" buildx version >/dev/null 2>&1; then
    BUILD=("$DOCKER" buildx build --load)
  else
    local cli
    for cli in "$DOCKER" /usr/bin/docker; do
      local major
      major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
      if [[ -n "$major" && "$major" -lt 23 ]]; then BUILD=(env DOCKER_BUILDKIT=1 "$cli" build); return 0; fi
    done
    echo "no BuildKit-capable docker CLI: install the buildx plugin (docker-buildx)" >&2; return 1
  fi
}
