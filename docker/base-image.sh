#!/usr/bin/env bash
# Builds a Debian 12 base image without any container registry: mmdebstrap bootstraps a minimal
# bookworm from the Debian archives this machine's apt already uses, and `docker import` turns the
# tarball into an image. The loco image builds FROM it with --build-arg BASE=NAME (tests and
# offline machines); with a registry, the Dockerfile's default debian:bookworm-slim works as is.
#
#   docker/base-image.sh [NAME]        (default loco-base:bookworm; about 20 s and 120 MB)
set -euo pipefail
name=${1:-loco-base:bookworm}
docker=${DOCKER:-docker}

# "deb URI SUITE COMPONENT" for every Debian archive apt knows here (not third-party ones).
mapfile -t mirrors < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
  'Created-By: Packages' 'Origin: Debian' | sort -u | awk 'NF == 3 {print "deb " $1 " " $2 " " $3}')
if ((${#mirrors[@]} == 0)); then
  echo "base-image: apt knows no Debian archive here (run apt-get update first)" >&2
  exit 1
fi
hooks=/usr/share/mmdebstrap/hooks/merged-usr
if [[ ! -d $hooks ]]; then
  echo "base-image: $hooks is missing; apt-get install mmdebstrap" >&2
  exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! mmdebstrap --quiet --variant=minbase --hook-dir="$hooks" \
  --dpkgopt='path-exclude=/usr/share/{doc,man,info,locale}/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  bookworm - "${mirrors[@]}" 2>"$log" | "$docker" import --change 'CMD ["bash"]' - "$name" >/dev/null; then
  cat "$log" >&2
  echo "base-image: mmdebstrap or docker import failed" >&2
  exit 1
fi
echo "base-image: $name"
