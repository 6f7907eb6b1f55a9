#!/bin/bash
# HEALTHCHECK: GET /healthz at LOCO_HTTP (the --http twin; a wildcard host means this container)
# answers 200. Uses bash's /dev/tcp, so the image needs no HTTP client.
set -eu
host=${LOCO_HTTP%:*}
port=${LOCO_HTTP##*:}
[[ $host == 0.0.0.0 || -z $host ]] && host=127.0.0.1
exec 3<>"/dev/tcp/$host/$port"
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 2 status <&3
[[ $status == *" 200 "* ]]
