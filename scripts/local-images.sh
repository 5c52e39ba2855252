#!/usr/bin/env bash
# The image deploy/compose.local.yaml runs PostgreSQL, Redis, Prometheus and the S3 store (moto)
# from, for machines that reach no container registry: deploy/local/Dockerfile on the Debian base
# of scripts/base-image.sh, moto from a wheelhouse built here. Made once per change of its inputs
# (kept in the engine's storage). Prints the image's name on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/podman-setup.sh
source scripts/podman-setup.sh

base=$(bash scripts/base-image.sh | tail -n 1)
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
requirements=("moto[s3]>=5.0" "flask" "flask-cors")  # moto_server for S3 alone
key=$( (cat deploy/local/Dockerfile deploy/local/postgres-entrypoint; echo "$base ${requirements[*]}"; \
  "$python" -V) | sha256sum | cut -c1-12)
image="localhost/modelyard-local-services:$key"
if $ENGINE image inspect "$image" >/dev/null 2>&1; then
  echo "local-images: $image is there already" >&2
  echo "$image"
  exit 0
fi

started=$(date +%s)
mkdir -p build
context=$(mktemp -d build/local-services.XXXXXX)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/wheels"
echo "local-images: moto's wheelhouse (pip wheel ${requirements[*]})" >&2
"$python" -m pip wheel -q --wheel-dir "$context/wheels" pip "${requirements[@]}" >&2
cp deploy/local/postgres-entrypoint "$context/"
echo "local-images: $ENGINE build $image (PostgreSQL, Redis, Prometheus from Debian; moto)" >&2
# shellcheck disable=SC2086  # BUILD_ARGS: flags
$ENGINE build $BUILD_ARGS -f deploy/local/Dockerfile --build-arg "BASE_IMAGE=$base" -t "$image" "$context" >&2
echo "local-images: built $image in $(($(date +%s) - started)) s" >&2
# earlier versions of this image, and of the base they were built on
for old in $($ENGINE images --format '{{.Repository}}:{{.Tag}}' | grep -E 'modelyard-(local-services|base):' || true); do
  [ "$old" = "$image" ] || [ "$old" = "$base" ] || $ENGINE rmi "$old" >/dev/null 2>&1 || true
done
echo "$image"
