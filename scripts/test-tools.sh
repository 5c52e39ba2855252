#!/usr/bin/env bash
# Programs the monitoring tests drive: Prometheus (real scrapes, PromQL) and Chromium (the dashboard's
# browser test, through Playwright). Installs Debian's packages when they are missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-tools: installing ${missing[*]}"
  as_root apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "test-tools: prometheus and chromium are installed"
# the container engine (podman and podman-compose unless docker runs) that
# tests/deploy/test_compose_e2e.py builds the images with and runs deploy/compose.yaml on
bash "$(dirname "$0")/podman-setup.sh" >/dev/null
