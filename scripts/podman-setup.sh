#!/usr/bin/env bash
# The container engine the image build and the compose test use: docker when its daemon answers,
# else podman (installed from Debian's packages, with podman-compose, runc and debootstrap, when
# missing). Without systemd podman runs with the project's deploy/podman/containers.conf
# (cgroupfs, runc, no default ulimits).
#
#   bash scripts/podman-setup.sh     install what is missing, check the engine runs, print
#                                    ENGINE=, COMPOSE= and CONTAINERS_CONF= lines
#   source scripts/podman-setup.sh   the same, then ENGINE, COMPOSE and BUILD_ARGS are set here
#
# MODELYARD_ENGINE=podman|docker picks one.
set -euo pipefail

_setup_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  echo "podman-setup: installing $*" >&2
  as_root apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

_docker_up() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

ENGINE=${MODELYARD_ENGINE:-}
if [ -z "$ENGINE" ]; then
  if _docker_up; then ENGINE=docker; else ENGINE=podman; fi
fi

if [ "$ENGINE" = podman ]; then
  missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v podman-compose >/dev/null || missing+=(podman-compose)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  if [ -z "${CONTAINERS_CONF:-}" ] && [ ! -d /run/systemd/system ]; then
    CONTAINERS_CONF="$(cd "$_setup_dir/../deploy/podman" && pwd)/containers.conf"
    export CONTAINERS_CONF
  fi
  COMPOSE="podman-compose"
  # HEALTHCHECK is a Docker-format field: podman's default OCI format would drop it
  # --network host: RUN steps that need the network (apt on python:*-slim) use the host's; no
  # build-time bridge (buildah's CNI bridge shadowed netavark's 10.88.0.0/16 route here)
  BUILD_ARGS="--format docker --network host"
  podman info >/dev/null || { echo "podman-setup: podman does not run here" >&2; exit 1; }
else
  _docker_up || { echo "podman-setup: the docker daemon does not answer" >&2; exit 1; }
  COMPOSE="docker compose"
  BUILD_ARGS=""
fi
export ENGINE COMPOSE BUILD_ARGS

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "podman-setup: $ENGINE ($($ENGINE --version)) and ${COMPOSE} are ready" >&2
  # for callers that run the engine themselves (tests/deploy/compose_stack.py)
  echo "ENGINE=$ENGINE"
  echo "COMPOSE=$COMPOSE"
  echo "CONTAINERS_CONF=${CONTAINERS_CONF:-}"
fi
