#!/usr/bin/env bash
# Build modelyard's container image with docker or podman (whichever runs here), offline: the
# Python packages come from a wheelhouse built on this machine (`pip wheel`), copied into the build.
# Prints the tag it built on its last line.
#
#   scripts/image.sh              -> modelyard/modelyard:<version>      (Dockerfile, extras: all)
#   scripts/image.sh --gpu        -> modelyard/modelyard:<version>-gpu  (Dockerfile.gpu, + torch, NVML)
#   scripts/image.sh --print-tag  the tag, building nothing
#
# Environment:
#   BASE_IMAGE   the image to build on. Default python:3.11-slim; when no registry is reachable and
#                it is not there already, `local`: a Debian base made here (scripts/base-image.sh)
#   IMAGE        the name to tag (default modelyard/modelyard; the Kubernetes manifests use it)
#   PYTHON       the Python that builds the wheelhouse: the same minor version as the image's
#                (default: python3.11, else python3)
#   MODELYARD_WHEELHOUSE  where wheelhouses are kept, one per set of requirements (those of
#                modelyard[<extras>], the Python version, the machine); default
#                ~/.cache/modelyard/wheelhouse. Only the modelyard wheel is built every time.
#   TORCH_INDEX_URL  (--gpu) an index with torch's CUDA build for another CUDA version, besides PyPI
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

gpu=0
print_tag=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --print-tag) print_tag=1 ;;
    *) echo "image: unknown argument $arg (use --gpu, --print-tag)" >&2; exit 2 ;;
  esac
done

image=${IMAGE:-modelyard/modelyard}
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
[ -n "$version" ] || { echo "image: no version in pyproject.toml" >&2; exit 1; }
if [ "$gpu" = 1 ]; then
  tag="$image:$version-gpu"
  dockerfile=Dockerfile.gpu
  # the CUDA builds: torch from PyPI carries its CUDA libraries; xgboost (not -cpu) and
  # onnxruntime-gpu replace the CPU builds in the image (each pair owns the same files)
  extras="all,torch,gpu"
  extra_reqs=("xgboost>=2.0" "onnxruntime-gpu>=1.17")
  # torch's CUDA build: PyPI's Linux wheel is one (TORCH_INDEX_URL adds an index for another CUDA
  # version, e.g. https://download.pytorch.org/whl/cu126); the machine's own wheel folders (pip's
  # find-links) may hold a CPU build, so they are left out
  wheel_env=(PIP_FIND_LINKS=)
  wheel_args=()
  [ -z "${TORCH_INDEX_URL:-}" ] || wheel_args=(--extra-index-url "$TORCH_INDEX_URL")
else
  tag="$image:$version"
  dockerfile=Dockerfile
  extras="all"
  extra_reqs=()
  wheel_env=()
  wheel_args=()
fi
# wheels that markers on the exact Python version pull in, for a base whose patch release is older
# than the host's (bookworm's 3.11.2): redis needs async-timeout before 3.11.3
extra_reqs+=("async-timeout>=4.0.3")
if [ "$print_tag" = 1 ]; then echo "$tag"; exit 0; fi

started=$(date +%s)
# shellcheck source=scripts/podman-setup.sh
source scripts/podman-setup.sh

# -- the base -------------------------------------------------------------------------------------
image_there() { $ENGINE image inspect "$1" >/dev/null 2>&1; }
base=${BASE_IMAGE:-}
if [ -z "$base" ]; then
  base=python:3.11-slim
  if ! image_there "$base" && ! $ENGINE pull -q "$base" >/dev/null 2>&1; then
    echo "image: $base cannot be pulled here (no registry?): building on a Debian base made here" >&2
    base=local
  fi
fi
if [ "$base" = local ]; then
  base=$(bash scripts/base-image.sh | tail -n 1)
fi
base_python=$($ENGINE run --rm --entrypoint python3 "$base" -c \
  'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
[ -n "$base_python" ] || { echo "image: $base has no python3" >&2; exit 1; }

# -- the wheelhouse -------------------------------------------------------------------------------
python=${PYTHON:-}
if [ -z "$python" ]; then
  python=python3
  command -v "python$base_python" >/dev/null && python="python$base_python"
fi
host_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$host_python" != "$base_python" ]; then
  echo "image: $python is $host_python but $base has Python $base_python; wheels would not fit." >&2
  echo "       Set PYTHON to a Python $base_python, or BASE_IMAGE to python:$host_python-slim." >&2
  exit 1
fi
# keyed by what decides the wheels: the requirements of modelyard[$extras] (other extras and the
# rest of pyproject.toml can change without a new wheelhouse)
requirements=$("$python" - "$extras" 2>/dev/null <<'PY' || cat pyproject.toml  # (tomllib: Python >= 3.11)
import json, re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
optional = project.get("optional-dependencies", {})
todo, seen, reqs = sys.argv[1].split(","), set(), list(project["dependencies"])
while todo:
    extra = todo.pop()
    if extra not in seen:
        seen.add(extra)
        for req in optional.get(extra, []):
            nested = re.match(r"modelyard\[(.*)\]", req)
            todo.extend(nested.group(1).split(",")) if nested else reqs.append(req)
print(json.dumps([project.get("requires-python"), sorted(reqs)]))
PY
)
key=$( (echo "$requirements"; echo "$host_python $extras ${extra_reqs[*]:-} ${wheel_args[*]:-}"; uname -m) | sha256sum | cut -c1-16)
cache=${MODELYARD_WHEELHOUSE:-$HOME/.cache/modelyard/wheelhouse}
deps="$cache/$key"
if [ ! -f "$deps/.complete" ]; then
  echo "image: building the wheelhouse for .[$extras] with $python ($deps; once per requirements)" >&2
  # built aside and moved into place, so a build running at the same time never sees half of it
  partial="$deps.partial.$$"
  rm -rf "$partial"
  mkdir -p "$partial"
  env ${wheel_env[@]+"${wheel_env[@]}"} "$python" -m pip wheel -q --wheel-dir "$partial" \
    ${wheel_args[@]+"${wheel_args[@]}"} pip ".[$extras]" ${extra_reqs[@]+"${extra_reqs[@]}"} >&2
  rm -f "$partial"/modelyard-*.whl   # rebuilt from the working tree on every build, below
  if [ "$gpu" = 1 ] && ls "$partial"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    echo "image: the wheelhouse got torch's CPU build ($(basename "$partial"/torch-*.whl)); set TORCH_INDEX_URL" >&2
    rm -rf "$partial"
    exit 1
  fi
  touch "$partial/.complete"
  mv -T "$partial" "$deps" 2>/dev/null || rm -rf "$partial"   # another build got there first
else
  echo "image: wheelhouse $deps is warm" >&2
fi

# the build context: the wheels (hard links into the cache where the filesystem allows) and the
# modelyard wheel built from this working tree
mkdir -p "$repo/build"
context=$(mktemp -d "$repo/build/image.XXXXXX")   # one per build: builds may run side by side
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/wheels"
cp -al "$deps"/*.whl "$context/wheels/" 2>/dev/null || cp "$deps"/*.whl "$context/wheels/"
# from a copy, so setuptools' build/ and egg-info stay out of the working tree
mkdir -p "$context/src"
cp pyproject.toml README.md "$context/src/"
tar -C . --exclude='__pycache__' --exclude='*.egg-info' -cf - src | tar -C "$context/src" -xf -
"$python" -m pip wheel -q --no-deps --wheel-dir "$context/wheels" "$context/src" >&2
rm -rf "$context/src"
cp scripts/image_bytecode.py "$context/wheels/"

# -- the image ------------------------------------------------------------------------------------
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "image: $ENGINE build $tag from $dockerfile on $base" >&2
# shellcheck disable=SC2086  # BUILD_ARGS: the engine's flags (podman: --format docker --network host)
$ENGINE build $BUILD_ARGS -f "$repo/$dockerfile" \
  --build-arg "BASE_IMAGE=$base" --build-arg "EXTRAS=$extras" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" --label "io.modelyard.build=image" \
  -t "$tag" "$context" >&2
# what earlier builds left: their images, untagged since (the layers this build reused are parents
# of it, so they stay); only those older than half an hour, so no build still running loses its own
$ENGINE image prune -f --filter "label=io.modelyard.build=image" --filter "until=$((started - 1800))" \
  >/dev/null 2>&1 || true
size=$($ENGINE image inspect --format '{{.Size}}' "$tag")
echo "image: built $tag ($((size / 1000000)) MB) in $(($(date +%s) - started)) s" >&2
echo "$tag"
