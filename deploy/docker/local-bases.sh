#!/usr/bin/env bash
# Stand-ins for the Docker Hub base images, built from Debian packages when Docker Hub cannot be reached.
#   deploy/docker/local-bases.sh            # builds what is missing, prints nothing else when all exist
# Images (each built once; delete one to rebuild it):
#   llmops-local/python:3.11-bookworm     debootstrap'd Debian 12 with python3.11 + venv, for PYTHON_IMAGE
#   llmops-local/services:bookworm        the same base + redis-server, prometheus, prometheus-alertmanager,
#                                         for deploy/compose.local.yaml (Redis, Prometheus, Alertmanager)
# Packages come from the Debian mirror apt uses on this machine (DEBIAN_MIRROR overrides it). Needs root,
# debootstrap and a running Docker engine.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/docker/engine.sh
. deploy/docker/engine.sh
ensure_engine  # DOCKER, and BUILD: a CLI that builds with BuildKit (a docker CLI of 23 or newer has no
               # builder of its own without the buildx plugin, so `DOCKER_BUILDKIT=1 docker build` fails there)
PYTHON_BASE=${LOCAL_PYTHON_IMAGE:-llmops-local/python:3.11-bookworm}
SERVICES=${LOCAL_SERVICES_IMAGE:-llmops-local/services:bookworm}
WORK=${LOCAL_BASE_WORK:-/var/tmp/llmops-local-bases}

mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '{print $2}' | grep -v -e security -e '^\[' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# debootstrap mounts /proc and /sys inside the root it builds; never delete through a live mount.
release_mounts() {
  local m
  for m in proc sys dev/pts dev; do mountpoint -q "$WORK/rootfs/$m" 2>/dev/null && umount -l "$WORK/rootfs/$m"; done
  return 0
}

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

if ! have "$PYTHON_BASE"; then
  command -v debootstrap >/dev/null || { echo "local-bases: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  release_mounts
  rm -rf "$WORK/rootfs" && mkdir -p "$WORK"
  echo "local-bases: debootstrap bookworm from $(mirror) (a few minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-distutils,ca-certificates,netbase,tzdata,passwd \
    bookworm "$WORK/rootfs" "$(mirror)" >"$WORK/debootstrap.log" 2>&1 \
    || { release_mounts; tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
  release_mounts
  # Slim it the way the official -slim images are: no apt lists, docs or man pages.
  rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/*.bin "$WORK"/rootfs/usr/share/doc/* \
         "$WORK"/rootfs/usr/share/man/* "$WORK"/rootfs/usr/share/info/* "$WORK"/rootfs/var/log/*.log
  ln -sf python3.11 "$WORK/rootfs/usr/bin/python3" && ln -sf python3 "$WORK/rootfs/usr/bin/python"
  tar -C "$WORK/rootfs" -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$PYTHON_BASE" >/dev/null
  rm -rf "$WORK/rootfs"
  echo "local-bases: built $PYTHON_BASE"
fi

if ! have "$SERVICES"; then
  "${BUILD[@]}" -q --build-arg "BASE_IMAGE=$PYTHON_BASE" -t "$SERVICES" \
    -f deploy/docker/Dockerfile.services deploy/docker >/dev/null
  echo "local-bases: built $SERVICES"
fi
