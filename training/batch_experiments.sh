#!/usr/bin/env bash
# Issue 14's adaptive-batch experiments with `loco local` (4 peers, the fortunes corpus):
#   E7  DiLoCo H=30 with the norm test (η 0.8, batch 4 -> at most 64) against fixed-batch DiLoCo
#       H=30 (batch 16): rounds (outer syncs) the norm run needs to reach the fixed run's final
#       validation loss; holds when that is at most 0.7x the fixed run's rounds. Samples and bytes
#       are reported too.
#   E8  gradient accumulation: one peer asks for a batch 8x --max-micro-batch; peak RSS with and
#       without accumulation (GNU time's maximum resident set of the largest process).
#
#   training/batch_experiments.sh [OUT_DIR] [SEEDS...]   (default: loco-batch-experiments, 1 2)
#
# Model and schedule as training/experiments.sh (width 128, 2 layers, context 64, 600 steps) unless
# MODEL is set, e.g. MODEL="--width 64 --context 32 --steps 300" for a quick look. Prints one JSON
# line per run and one per criterion and seed ({"check":"E7",...,"holds":...}).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
loco="${LOCO:-$here/build/cli/loco}"
out="${1:-loco-batch-experiments}"
shift || true
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(1 2)
model=(${MODEL:-})
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"

summarize() {  # name seed dir status
  python3 - "$@" <<'PY'
import glob, json, sys
name, seed, d, status = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lines = [json.loads(l) for l in open(f"{d}/run.jsonl") if l.strip()]
vals = [(l["step"], l["val_loss"]) for l in lines if l["val_loss"] is not None]
peer = [json.loads(l) for l in open(f"{d}/peer-1.jsonl") if l.strip()]
tokens = sum(l.get("tokens", 0) for l in peer)
print(json.dumps({"run": name, "seed": int(seed), "exit": status, "final_val_loss": vals[-1][1],
                  "val_by_round": vals, "outer_steps": lines[-1]["step"],
                  "bytes_sent": lines[-1]["bytes_sent"], "wall_s": lines[-1]["wall_s"],
                  "tokens_all_peers": tokens,
                  "batches": sorted({l.get("batch", 0) for l in peer}),
                  "digests_agree_every_round": all(l["digests_agree"] for l in lines)}))
PY
}

run() {  # name seed flags...
  local name="$1" seed="$2"
  shift 2
  local dir="$out/$name-seed$seed" status=0
  "$loco" local --seed "$seed" --out "$dir" --log-level warn "${model[@]}" "$@" > "$dir.log" 2>&1 \
    || status=$?
  summarize "$name" "$seed" "$dir" "$status" | tee -a "$results"
}

for seed in "${seeds[@]}"; do
  run fixed-h30 "$seed" --inner-steps 30
  run norm-h30 "$seed" --inner-steps 30 --batch 4 --batch-test norm --batch-eta 0.8 --max-batch 64
  python3 - "$results" "$seed" <<'PY' | tee -a "$results"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
seed = int(sys.argv[2])
fixed = next(r for r in rows if r.get("run") == "fixed-h30" and r["seed"] == seed)
norm = next(r for r in rows if r.get("run") == "norm-h30" and r["seed"] == seed)
target = fixed["final_val_loss"]
reached = next((s for s, v in norm["val_by_round"] if v <= target), None)
ratio = reached / fixed["outer_steps"] if reached else None
print(json.dumps({"check": "E7", "seed": seed, "target_val_loss": target,
                  "fixed_rounds": fixed["outer_steps"], "norm_rounds_to_target": reached,
                  "ratio": ratio, "holds": ratio is not None and ratio <= 0.7,
                  "norm_tokens_over_fixed": norm["tokens_all_peers"] / fixed["tokens_all_peers"],
                  "norm_bytes_over_fixed": norm["bytes_sent"] / fixed["bytes_sent"]}))
PY
done

# E8: a batch 8x the micro-batch, one peer, with and without accumulation.
for micro in 0 16; do
  dir="$out/e8-micro$micro"
  /usr/bin/time -f '%M' -o "$dir.rss" "$loco" local --peers 1 --out "$dir" --log-level warn \
    --steps 20 --inner-steps 10 --batch 128 --max-micro-batch "$micro" > "$dir.log" 2>&1 || true
  echo "{\"check\":\"E8\",\"max_micro_batch\":$micro,\"batch\":128,\"peak_rss_kib\":$(tail -1 "$dir.rss")}" \
    | tee -a "$results"
done
