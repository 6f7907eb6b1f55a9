#!/usr/bin/env bash
# ctest `dashboard_browser`: a local swarm (`loco local`, 2 peers) and its coordinator's dashboard
# in a real headless browser (Debian's Chromium, driven by playwright-core from npm). Exits 77
# (ctest: skipped) with the reason when Chromium, Node or playwright-core are not to be had.
#
#   dashboard_test.sh LOCO_BINARY WORK_DIR
set -uo pipefail
loco=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
skip() {
  echo "SKIPPED: $*"
  exit 77
}
command -v node >/dev/null || skip "node is not installed (bash .ci/install-deps)"
command -v npm >/dev/null || skip "npm is not installed (bash .ci/install-deps)"
chromium=${CHROMIUM:-/usr/bin/chromium}
[[ -x $chromium ]] || skip "$chromium is not installed (bash .ci/install-deps)"

mkdir -p "$work"
# playwright-core, pinned by package-lock.json, installed once per build tree.
if [[ ! -d $work/node_modules/playwright-core ]]; then
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  if ! (cd "$work" && timeout 180 npm ci --no-audit --no-fund >npm.log 2>&1); then
    skip "cannot install playwright-core from the npm registry (see $work/npm.log)"
  fi
fi
cp "$here/dashboard_test.mjs" "$work/"

run=$(mktemp -d "$work/run.XXXXXX")
cleanup() {
  if [[ -n ${swarm:-} ]] && kill -0 "$swarm" 2>/dev/null; then
    kill -TERM "$swarm"
    for _ in $(seq 1 50); do kill -0 "$swarm" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$swarm" 2>/dev/null
  fi
  rm -rf "$run"
}
trap cleanup EXIT

# `loco local` supervises its coordinator and peers and stops them all on SIGTERM.
"$loco" local --peers 2 --steps 400 --inner-steps 10 --out "$run/swarm" --http 127.0.0.1:0 \
  --timeout-ms 170000 >"$run/local.log" 2>&1 &
swarm=$!
port=""
for _ in $(seq 1 100); do
  port=$(cat "$run/swarm/coordinator.http-port" 2>/dev/null || true)
  [[ -n $port ]] && break
  sleep 0.2
done
if [[ -z $port ]]; then
  echo "the coordinator never wrote its --http port; loco local said:"
  cat "$run/local.log"
  exit 1
fi
node "$work/dashboard_test.mjs" "http://127.0.0.1:$port/" 2 "$work/dashboard.png" "$run/profile"
rc=$?
if ((rc != 0)); then
  echo "--- loco local:"
  tail -20 "$run/local.log"
else
  echo "screenshot: $work/dashboard.png"
fi
exit $rc
