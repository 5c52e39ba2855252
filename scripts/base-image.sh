#!/usr/bin/env bash
# A Debian base image made here, for machines that reach Debian's mirror but no container registry:
# debootstrap --variant=minbase from this machine's own apt sources, plus python3 (the same minor
# version as the wheelhouse's: bookworm has 3.11) and libgomp1 (OpenMP, for xgboost and lightgbm),
# imported into the container engine. Prints the image's name on its last line.
#
#   scripts/base-image.sh            -> localhost/modelyard-base:bookworm-<key>
#
# The key hashes the recipe (its number below, the suite, the packages), so the image is made once
# per change of it and reused after that (it lives in the engine's storage; the rootfs tarball is
# kept under $MODELYARD_CI_CACHE too, so an engine whose storage was wiped imports it in seconds).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/podman-setup.sh
source "$here/podman-setup.sh"

suite=${BASE_SUITE:-bookworm}
packages=${BASE_PACKAGES:-python3,libgomp1,ca-certificates}
recipe=2   # bump when what goes into the rootfs below changes
key=$(echo "$recipe $suite $packages" | sha256sum | cut -c1-12)
image="localhost/modelyard-base:$suite-$key"
cache=${MODELYARD_CI_CACHE:-$HOME/.cache/modelyard-ci}
tarball="$cache/base-$suite-$key.tar"

if $ENGINE image exists "$image" 2>/dev/null || $ENGINE image inspect "$image" >/dev/null 2>&1; then
  echo "base-image: $image is there already" >&2
  echo "$image"
  exit 0
fi

# The first deb URI of this machine's apt sources (deb822 .sources or one-line .list).
mirror() {
  local uri
  uri=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
    | grep -v security | head -n 1 || true)
  [ -n "$uri" ] || uri=$(grep -hE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    2>/dev/null | grep -v security | awk '{print $2}' | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || apt_install debootstrap
  url=$(mirror)
  root=$(mktemp -d "${TMPDIR:-/tmp}/modelyard-base.XXXXXX")
  trap 'as_root rm -rf "$root"' EXIT
  echo "base-image: debootstrap --variant=minbase $suite from $url (a few minutes, once)" >&2
  as_root debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$url" >&2
  # apt inside images built from this base uses the same mirror; no caches or lists kept; no
  # documentation, manual pages or translations, now or from later installs (as debian:*-slim)
  echo "deb $url $suite main" | as_root tee "$root/etc/apt/sources.list" >/dev/null
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    | as_root tee "$root/etc/dpkg/dpkg.cfg.d/modelyard-slim" >/dev/null
  as_root find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  as_root rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
  as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*
  mkdir -p "$cache"
  as_root tar -C "$root" --numeric-owner -cf "$tarball.part.$$" .
  as_root chown "$(id -u):$(id -g)" "$tarball.part.$$"
  mv "$tarball.part.$$" "$tarball"   # atomic: a base-image.sh running alongside reads a whole one
fi
echo "base-image: importing $tarball as $image" >&2
$ENGINE import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$image" >&2
# earlier versions of the base: their tarballs, and their images where nothing is built on them
find "$cache" -maxdepth 1 -name "base-$suite-*.tar" ! -name "$(basename "$tarball")" -delete
for old in $($ENGINE images --format '{{.Repository}}:{{.Tag}}' | grep "modelyard-base:$suite-" || true); do
  [ "$old" = "$image" ] || $ENGINE rmi "$old" >/dev/null 2>&1 || true
done
echo "$image"
