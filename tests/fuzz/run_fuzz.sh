#!/usr/bin/env bash
# Runs every libFuzzer target over its corpus for a bounded time: the fuzz_parsers test.
#
#   run_fuzz.sh SOURCE_DIR SECONDS_PER_TARGET WORK_DIR
#
# Builds the targets with the `fuzz` preset (clang, ASan, UBSan; in SOURCE_DIR/build-fuzz), then
# runs each one for SECONDS over tests/fuzz/corpus/<name> (read only: new inputs go to WORK_DIR).
# A crash, a leak, a timeout or an abort fails the test and names the input that caused it and
# the command that reproduces it. Exit 77 (skipped) without clang.
set -euo pipefail
src=$1
seconds=$2
work=$3
if ! command -v clang++ > /dev/null; then
  echo "skipped: clang++ is not installed (.ci/install-deps installs it)"
  exit 77
fi
cd "$src"
rm -rf "$work" "$work.configure.log" "$work.build.log"
mkdir -p "$(dirname "$work")"
cmake --preset fuzz > "$work.configure.log" 2>&1 || { cat "$work.configure.log"; exit 1; }
targets=(wire scenario)
binaries=()
for t in "${targets[@]}"; do binaries+=("loco_${t}_fuzz"); done
if ! cmake --build build-fuzz --target "${binaries[@]}" > "$work.build.log" 2>&1; then
  tail -40 "$work.build.log"
  exit 1
fi
failed=0
for t in "${targets[@]}"; do
  bin=build-fuzz/tests/fuzz/loco_${t}_fuzz
  mkdir -p "$work/$t/new" "$work/$t/artifacts"
  echo "== loco_${t}_fuzz: ${seconds} s over tests/fuzz/corpus/$t"
  if ! "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/$t/artifacts/" "$work/$t/new" "tests/fuzz/corpus/$t" \
      > "$work/$t/fuzz.log" 2>&1; then
    failed=1
    tail -60 "$work/$t/fuzz.log"
    for a in "$work/$t/artifacts"/*; do
      [ -e "$a" ] && echo "FAILED: $t on $a; reproduce with: $src/$bin $a"
    done
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added|^#[0-9]+ *DONE" "$work/$t/fuzz.log" || true
  fi
done
exit $failed
