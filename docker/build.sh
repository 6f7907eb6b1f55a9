#!/usr/bin/env bash
# Builds the images docker/compose.yaml runs: loco:latest (loco and loco-train, user loco) and
# loco-prometheus:latest (Debian's Prometheus). Run from anywhere; BuildKit is required.
#
#   docker/build.sh             FROM debian:bookworm-slim (pulled once from a registry)
#   docker/build.sh --offline   FROM loco-base:bookworm, bootstrapped here by base-image.sh from
#                               the Debian archives apt uses: no registry at all
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
base=debian:bookworm-slim
case "${1:-}" in
  --offline)
    base=loco-base:bookworm
    docker image inspect "$base" >/dev/null 2>&1 || bash "$here/base-image.sh" "$base"
    ;;
  "") ;;
  *)
    echo "usage: docker/build.sh [--offline]" >&2
    exit 2
    ;;
esac
export DOCKER_BUILDKIT=1
docker build -f "$here/Dockerfile" --build-arg "BASE=$base" -t loco:latest "$src"
docker build -f "$here/Dockerfile" --build-arg "BASE=$base" --target prometheus \
  -t loco-prometheus:latest "$src"
echo "built loco:latest and loco-prometheus:latest (from $base)"
