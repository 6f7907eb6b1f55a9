#!/bin/sh
# The image's entrypoint: `loco ARGS...`. Started as root (compose's peers and gateways, which need
# NET_ADMIN), it first adds the routes in LOCO_ROUTES ("SUBNET via GATEWAY[;...]", how a
# datacenter's peers reach the other datacenter through their WAN gateway), then drops to user
# loco with no capabilities left. Started as loco (the image's default), it only execs loco.
set -eu
if [ "$(id -u)" = 0 ]; then
  if [ -n "${LOCO_ROUTES:-}" ]; then
    echo "$LOCO_ROUTES" | tr ';' '\n' | while read -r route; do
      [ -n "$route" ] && ip route replace $route
    done
  fi
  chown loco:loco /var/lib/loco
  exec setpriv --reuid=loco --regid=loco --init-groups --inh-caps=-all --bounding-set=-all \
    loco "$@"
fi
exec loco "$@"
