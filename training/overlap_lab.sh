#!/usr/bin/env bash
# Wall clock of each synchronization method on a WAN lab against loopback (README "Overlapped
# and gossip synchronization"): 4 peers, the 0.43M byte GPT, 300 inner steps, each configuration
# run on loopback and in a lab of 4 hosts (10 Mbit/s access links, 50 ms one way) back to back,
# so that the machine's load hits both alike. Prints one JSON line per run, then a table.
#
#   sudo training/overlap_lab.sh [OUT_DIR] [SEED]      (default: loco-overlap-lab, seed 1)
#
# Needs root (network namespaces) and a built tree. About 1-2 minutes per run on 2 idle cores.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
loco="${LOCO:-$here/build/cli/loco}"
out="${1:-loco-overlap-lab}"
seed="${2:-1}"
lab="${LAB_NAME:-olab}"
steps="${STEPS:-300}"
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"

# name | flags
configs=(
  "diloco-h30|--method diloco --inner-steps 30"
  "eager-h30|--method diloco --inner-steps 30 --overlap eager"
  "streaming-p2-t2-int4|--inner-steps 30 --method streaming --fragments 2 --overlap-steps 2 --wire int4"
  # no method flags: --method auto, i.e. streaming P=2 τ=5 with int4 Δ (the README says why)
  "default|"
  "noloco-h15|--inner-steps 15 --method noloco"
)
[ -n "${CONFIGS:-}" ] && IFS=';' read -r -a configs <<< "$CONFIGS"

"$loco" lab down "$lab" > /dev/null 2>&1 || true
"$loco" lab up "$lab" --hosts 4 --delay-ms 50 --rate-mbit 10 > "$out/lab.log" 2>&1
trap '"$loco" lab down "$lab" > /dev/null 2>&1 || true' EXIT

summarize() {  # name where dir status seconds
  python3 - "$@" <<'PY'
import glob, json, sys
name, where, d, status, secs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
lines = [json.loads(l) for l in open(f"{d}/run.jsonl") if l.strip()]
vals = [l["val_loss"] for l in lines if l["val_loss"] is not None]
util, peak, rb = [], [], []
for p in sorted(glob.glob(f"{d}/peer-*.jsonl")):
    pl = [json.loads(l) for l in open(p) if l.strip()]
    if pl and pl[-1].get("wall_s"):
        util.append(pl[-1]["utilization"])
        peak.append(pl[-1]["peak_round_bytes"])
        rb += [l["round_bytes"] for l in pl[1:]]
print(json.dumps({"run": name, "where": where, "exit": status, "command_s": round(secs, 1),
                  "wall_s": lines[-1]["wall_s"], "final_val_loss": vals[-1] if vals else None,
                  "utilization": round(sum(util) / len(util), 3) if util else None,
                  "peak_round_bytes": max(peak) if peak else None,
                  "mean_round_bytes": round(sum(rb) / len(rb)) if rb else None,
                  "digests_agree_every_round": all(l["digests_agree"] for l in lines)}))
PY
}

for entry in "${configs[@]}"; do
  name="${entry%%|*}"
  flags="${entry#*|}"
  for where in loopback lab; do
    dir="$out/$name-$where"
    rm -rf "$dir"
    extra=()
    # The lab's links are all alike, so its runs skip the topology probes (MEASURE_TOPOLOGY=on
    # keeps them: about 5 s of saturated 10 Mbit/s uplinks before the first round).
    [ "$where" = lab ] && extra=(--lab "$lab" --measure-topology "${MEASURE_TOPOLOGY:-off}")
    status=0
    t0=$(date +%s%N)
    # shellcheck disable=SC2086
    "$loco" local --peers 4 --steps "$steps" --seed "$seed" --out "$dir" --log-level warn \
      "${extra[@]}" $flags > "$dir.log" 2>&1 || status=$?
    t1=$(date +%s%N)
    summarize "$name" "$where" "$dir" "$status" "$(( (t1 - t0) / 1000000 ))e-3" | tee -a "$results"
  done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows: by.setdefault(r["run"], {})[r["where"]] = r
print(f"{'run':24} {'loopback s':>10} {'lab s':>8} {'lab/loop':>8} {'loop util':>9} {'lab util':>8} {'lab val':>8} {'loop val':>8} {'peak MB':>8}")
for name, d in by.items():
    lo, la = d.get("loopback"), d.get("lab")
    if not lo or not la: continue
    print(f"{name:24} {lo['command_s']:10.1f} {la['command_s']:8.1f} {la['command_s']/lo['command_s']:8.2f} "
          f"{lo['utilization']:9.2f} {la['utilization']:8.2f} {la['final_val_loss']:8.4f} {lo['final_val_loss']:8.4f} "
          f"{la['peak_round_bytes']/1e6:8.2f}")
PY
