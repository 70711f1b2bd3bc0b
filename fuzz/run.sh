#!/usr/bin/env bash
# Runs fuzz targets with libFuzzer through cargo-fuzz (nightly), each for SECONDS, PARALLEL at
# a time, at the lowest CPU priority. New corpus entries go to fuzz/corpus-run/<target>
# (ignored by git); the checked-in fuzz/corpus/<target> is read as seeds. Crashes land in
# fuzz/artifacts/<target>/. Logs: fuzz/logs/<target>.log (last lines: libFuzzer's stats).
#
#   bash fuzz/run.sh [SECONDS] [PARALLEL] [TARGET...]     # defaults: 600 s, 2, every target
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"; par="${2:-2}"; shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(idx_images idx_labels cifar_batch digits_csv image_decode tensorfile model_json state_dict int8_model text_lines)
fi
mkdir -p logs
# -a: debug assertions (integer overflow checks) on, as in the test profile.
nice -n 19 cargo +nightly fuzz build -a
run_one() {
  local t="$1"
  mkdir -p "corpus-run/$t"
  local rc=0 start=$SECONDS
  nice -n 19 cargo +nightly fuzz run -a "$t" "corpus-run/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
  echo "$t: exit $rc after $((SECONDS - start)) s, $(grep -E '^stat::number_of_executed_units' "logs/$t.log" || true)," \
    "corpus-run: $(ls "corpus-run/$t" | wc -l) files"
}
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$par" ]; then wait -n || true; running=$((running - 1)); fi
done
wait
