#!/usr/bin/env bash
# Issue 14's adaptive-batch experiments with `loco local` (4 peers, the fortunes corpus):
#   E7  DiLoCo H=30 with the norm test (η 0.8, batch 4 -> at most 64) against fixed-batch DiLoCo
#       H=30 (batch 16): rounds (outer syncs) the norm run needs to reach the fixed run's final
#       validation loss; holds when that is at most 0.7x the fixed run's rounds. Samples and bytes
#       are reported too. Two norm runs: the learning-rate schedule counting samples (the
#       default) and counting steps (--lr-schedule steps), one criterion line each.
#   E8  switch mode: one peer asks for a batch 8x its measured b_max within a memory budget;
#       holds when it completes inside the budget (GNU time's peak resident set); the same batch
#       in one pass is reported beside it.
#
#   E10 speed-aware allocation on heterogeneous hosts (needs root: a lab): 4 hosts (100 Mbit/s,
#       25 ms one way), host 4 at cpu=0.33 (a cgroup quota), 4 peers (peer 3 sits in host 4), the
#       same run with --allocation equal and speed. Holds when speed processes >= 1.5x the tokens
#       per wall second, reaches a lower val loss at the wall time speed needed (equal's val loss
#       interpolated there), and the slow peer's local phase never exceeds the slowest other
#       peer's by more than 10 % after the first round (which runs before any speed is known).
#
#   MIT multi-instance training against one instance at equal samples: DiLoCo H=30, fixed batch
#       16 per peer (K=1), against K=4 instances of batch 4 each, merged every 5 rounds (4 -> 2
#       -> 1; a merged instance trains both batches, so every peer draws 16 windows per step
#       throughout), under both merge policies. Then the same under the norm test (η 0.8, up to
#       64, --lr-schedule steps), both starting at 4 windows per peer per step: K=1 at batch 4
#       against K=4 at batch 1 each. No target: one line per seed with the val losses, wall times,
#       tokens and bytes.
#
#   training/batch_experiments.sh [OUT_DIR] [SEEDS...]   (default: loco-batch-experiments, 1 2)
#
# Model and schedule as training/experiments.sh (width 128, 2 layers, context 64, 600 steps) unless
# MODEL is set, e.g. MODEL="--width 64 --context 32 --steps 300" for a quick look (E10: 300 steps,
# E10_STEPS). ONLY=E7|E8|E10|MIT runs one of them. Prints one JSON
# line per run and one per criterion and seed ({"check":"E7",...,"holds":...}).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
loco="${LOCO:-$here/build/cli/loco}"
out="${1:-loco-batch-experiments}"
shift || true
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(1 2)
# Every run is DiLoCo (the batch test and the speed split need whole rounds), whatever the default.
model=(--method diloco ${MODEL:-})
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
  [ -n "${ONLY:-}" ] && [ "${ONLY}" != E7 ] && break
  run fixed-h30 "$seed" --inner-steps 30
  run norm-h30 "$seed" --inner-steps 30 --batch 4 --batch-test norm --batch-eta 0.8 --max-batch 64
  run norm-h30-steps "$seed" --inner-steps 30 --batch 4 --batch-test norm --batch-eta 0.8 \
    --max-batch 64 --lr-schedule steps
  for name in norm-h30 norm-h30-steps; do
  python3 - "$results" "$seed" "$name" <<'PY' | tee -a "$results"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
seed, name = int(sys.argv[2]), sys.argv[3]
fixed = next(r for r in rows if r.get("run") == "fixed-h30" and r["seed"] == seed)
norm = next(r for r in rows if r.get("run") == name and r["seed"] == seed)
target = fixed["final_val_loss"]
reached = next((s for s, v in norm["val_by_round"] if v <= target), None)
ratio = reached / fixed["outer_steps"] if reached else None
print(json.dumps({"check": "E7", "run": name, "seed": seed, "target_val_loss": target,
                  "fixed_rounds": fixed["outer_steps"], "norm_rounds_to_target": reached,
                  "ratio": ratio, "holds": ratio is not None and ratio <= 0.7,
                  "norm_tokens_over_fixed": norm["tokens_all_peers"] / fixed["tokens_all_peers"],
                  "norm_bytes_over_fixed": norm["bytes_sent"] / fixed["bytes_sent"]}))
PY
  done
done

# MIT: multi-instance training at equal samples (see the top of this file).
for seed in "${seeds[@]}"; do
  [ -n "${ONLY:-}" ] && [ "${ONLY}" != MIT ] && break
  run mit-k1 "$seed" --inner-steps 30 --batch 16
  run mit-k4-wow "$seed" --inner-steps 30 --batch 4 --instances 4 --merge-every 5 \
    --merge-policy worst-with-worst
  run mit-k4-bow "$seed" --inner-steps 30 --batch 4 --instances 4 --merge-every 5 \
    --merge-policy best-with-worst
  norm=(--inner-steps 30 --batch-test norm --batch-eta 0.8 --max-batch 64 --lr-schedule steps)
  run mit-norm-k1 "$seed" "${norm[@]}" --batch 4
  run mit-norm-k4 "$seed" "${norm[@]}" --batch 1 --instances 4 --merge-every 5
  python3 - "$results" "$seed" <<'PY' | tee -a "$results"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
seed = int(sys.argv[2])
get = lambda name: next(r for r in rows if r.get("run") == name and r["seed"] == seed)
k1 = get("mit-k1")
out = {"check": "MIT", "seed": seed, "k1_val_loss": k1["final_val_loss"], "k1_wall_s": k1["wall_s"],
       "holds": None}
for name, base in (("mit-k4-wow", k1), ("mit-k4-bow", k1), ("mit-norm-k4", get("mit-norm-k1"))):
    r = get(name)
    out[name] = {"val_loss": r["final_val_loss"], "wall_s": r["wall_s"],
                 "val_over_k1": round(r["final_val_loss"] / base["final_val_loss"], 4),
                 "tokens_over_k1": round(r["tokens_all_peers"] / base["tokens_all_peers"], 3),
                 "bytes_over_k1": round(r["bytes_sent"] / base["bytes_sent"], 3),
                 "wall_over_k1": round(r["wall_s"] / base["wall_s"], 3)}
out["mit-norm-k1_val_loss"] = get("mit-norm-k1")["final_val_loss"]
print(json.dumps(out))
PY
done

# E8: switch mode. A short run measures this machine's b_max within the memory budget
# (E8_BUDGET_MIB, default 230: the default model's peer holds about 180 MiB before its first
# pass); then one peer trains a batch of 8·b_max under --switch-mode threshold with that budget,
# and once more without switch mode (one pass of the whole batch) for comparison. Holds when the
# switch-mode run completes with its peak resident set (GNU time, the largest process) inside
# the budget.
if [ -z "${ONLY:-}" ] || [ "${ONLY}" = E8 ]; then
budget="${E8_BUDGET_MIB:-230}"
e8() {  # name batch flags...
  local name="$1" batch="$2" dir="$out/e8-$1" status=0
  shift 2
  /usr/bin/time -f '%M' -o "$dir.rss" "$loco" local --peers 1 --out "$dir" --log-level warn \
    --restart-dead off \
    "${model[@]}" --steps 20 --inner-steps 10 --batch "$batch" "$@" > "$dir.log" 2>&1 \
    || status=$?
  echo "$status"
}
probe_status=$(e8 probe 16 --switch-mode threshold --memory-budget-mib "$budget")
b_max=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["b_max"])' \
  "$out/e8-probe/peer-1.jsonl" 2>/dev/null || echo 0)
if [ "$b_max" -gt 0 ]; then
  big=$((8 * b_max))
  switch_status=$(e8 switch "$big" --switch-mode threshold --memory-budget-mib "$budget")
  whole_status=$(e8 whole "$big")
  python3 - "$out" "$budget" "$b_max" "$big" "$switch_status" "$whole_status" <<'PY' | tee -a "$results"
import json, sys
out, budget, b_max, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
status = {"switch": int(sys.argv[5]), "whole": int(sys.argv[6])}
def run(name):
    lines = [json.loads(l) for l in open(f"{out}/e8-{name}/peer-1.jsonl") if l.strip()]
    rss_kib = int(open(f"{out}/e8-{name}.rss").read().split()[-1])
    return {"exit": status[name], "peak_rss_mib": round(rss_kib / 1024, 1),
            "micro_batches": lines[-1]["micro_batches"] if lines else None,
            "own_b_max": lines[-1]["b_max"] if lines else None,
            "own_b_mem": lines[-1]["b_mem"] if lines else None,
            "rounds": lines[-1]["step"] if lines else 0,
            "final_loss": lines[-1]["loss"] if lines else None}
switch, whole = run("switch"), run("whole")
print(json.dumps({"check": "E8", "memory_budget_mib": budget, "b_max": b_max, "batch": big,
                  "switch_mode": switch, "one_pass": whole,
                  "holds": switch["exit"] == 0 and switch["rounds"] >= 2
                           and switch["peak_rss_mib"] <= budget}))
PY
else
  echo "{\"check\":\"E8\",\"holds\":false,\"why\":\"the probe run measured no b_max (exit $probe_status)\"}" \
    | tee -a "$results"
fi
fi

# E10: speed-aware allocation, host 4 of a lab at cpu=0.33 (see the top of this file).
if [ -z "${ONLY:-}" ] || [ "${ONLY}" = E10 ]; then
lab="${E10_LAB:-e10lab}"
"$loco" lab down "$lab" > /dev/null 2>&1 || true
"$loco" lab up "$lab" --hosts 4 --delay-ms 25 --rate-mbit 100 --host 4:cpu=0.33 \
  > "$out/e10-lab.log" 2>&1
trap '"$loco" lab down "$lab" > /dev/null 2>&1 || true' EXIT
for seed in "${seeds[@]}"; do
  for alloc in equal speed; do
    dir="$out/e10-$alloc-seed$seed"
    status=0
    "$loco" local --lab "$lab" --seed "$seed" --out "$dir" --log-level warn "${model[@]}" \
      --steps "${E10_STEPS:-300}" --inner-steps 30 --allocation "$alloc" > "$dir.log" 2>&1 \
      || status=$?
    echo "{\"run\":\"e10-$alloc\",\"seed\":$seed,\"exit\":$status}" | tee -a "$results"
  done
  python3 - "$out" "$seed" <<'PY' | tee -a "$results"
import glob, json, sys
out, seed = sys.argv[1], int(sys.argv[2])
def run(alloc):
    d = f"{out}/e10-{alloc}-seed{seed}"
    lines = [json.loads(l) for l in open(f"{d}/run.jsonl") if l.strip()]
    vals = [(l["wall_s"], l["val_loss"]) for l in lines if l["val_loss"] is not None]
    tokens = sum(l.get("tokens", 0) for l in lines)
    # Each peer's local phase per round: the difference of its cumulative compute_s.
    phase = {}
    for p in sorted(glob.glob(f"{d}/peer-*.jsonl")):
        prev, rounds = None, {}
        for l in (json.loads(x) for x in open(p) if x.strip()):
            if prev is not None and l["pid"] == prev["pid"] and l["step"] == prev["step"] + 1:
                rounds[l["step"]] = l["compute_s"] - prev["compute_s"]
            prev = l
        phase[p.split("/")[-1][:-6]] = rounds
    return {"wall_s": lines[-1]["wall_s"], "tokens": tokens, "vals": vals, "phase": phase,
            "final_val_loss": vals[-1][1]}
eq, sp = run("equal"), run("speed")
def val_at(vals, t):  # the val loss of a run at wall time t, linear between evaluations
    for (t0, v0), (t1, v1) in zip(vals, vals[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
    return vals[-1][1] if t >= vals[-1][0] else vals[0][1]
slow = "peer-3"  # in host 4
ratios = []
for step, mine in sp["phase"].get(slow, {}).items():
    others = [r[step] for name, r in sp["phase"].items() if name != slow and step in r]
    if step > 1 and others and max(others) > 0:
        ratios.append(mine / max(others))
tps = lambda r: r["tokens"] / r["wall_s"]
eq_at = val_at(eq["vals"], sp["wall_s"])
print(json.dumps({"check": "E10", "seed": seed,
                  "tokens_per_wall_s": {"equal": round(tps(eq)), "speed": round(tps(sp))},
                  "speed_over_equal": round(tps(sp) / tps(eq), 3),
                  "wall_s": {"equal": eq["wall_s"], "speed": sp["wall_s"]},
                  "val_loss_at_speed_end": {"equal": round(eq_at, 4), "speed": sp["final_val_loss"]},
                  "slow_phase_over_slowest_other_max": round(max(ratios), 3) if ratios else None,
                  "holds": tps(sp) >= 1.5 * tps(eq) and sp["final_val_loss"] < eq_at
                           and bool(ratios) and max(ratios) <= 1.10}))
PY
done
fi
