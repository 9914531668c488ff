#!/usr/bin/env bash
# Download benchmark (release build): a 64-part batch of about 1 GB served by the simulator
# with 50 ms added per request and a 25 MiB/s cap per connection. Measures, in one run,
# one-part-at-a-time (the baseline) against scoreland's concurrency, with wall time and peak
# RSS of each, and the limit bytes / (concurrency × per-connection cap). Last, the same
# download from an unpaced simulator: what this machine can move at all, with the simulator
# sharing its cores.
#   [REPS=3] benches/download.sh [ROWS] [CONCURRENCY...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-11000000}
shift || true
CONCS=${*:-8 16 32}
LAT=50ms
CAP=25MiB/s
CAP_BYTES=$((25 * 1024 * 1024))
WORK=${SCORELAND_BENCH_DIR:-target/bench}
BIN=target/release/scoreland
cargo build --release --quiet -p scoreland
source benches/sim-env.sh

PLATFORM="$WORK/platform-dl-$ROWS"
if [ ! -f "$PLATFORM/platform.json" ]; then
  rm -rf "$PLATFORM"
  echo "generating $ROWS rows in 64 parts…" >&2
  "$BIN" sim generate --out "$PLATFORM" --rows "$ROWS" --parts 64 --batches 1 --seed 1 > /dev/null
fi

start_sim "$PLATFORM" --latency "$LAT" --bandwidth-per-connection "$CAP"

calc() { awk "BEGIN { print $* }"; }

run() { # concurrency -> "seconds peak_kib"
  local c=$1 out="$WORK/dl-$1"
  rm -rf "$out"; sync  # start each run on a quiet disk
  /usr/bin/time -f '%e %M' -o "$WORK/time-$c" "$BIN" -q download --dataset "$DATASET" --out "$out" --concurrency "$c" > /dev/null
  cat "$WORK/time-$c"
}

read -r base_s base_kib < <(run 1)
# The bytes of the batch downloaded (the platform holds other batches too).
BYTES=$(find "$WORK/dl-1" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s}')
printf 'batch: 64 parts, %.1f MB; simulator: %s per request, %s per connection\n' "$(calc "$BYTES/1000000")" "$LAT" "$CAP"
printf '%-22s %8.1f s %8.1f MB/s  peak RSS %6.1f MB\n' "one at a time" "$base_s" "$(calc "$BYTES/1000000/$base_s")" "$(calc "$base_kib/1024")"
for c in $CONCS; do
  # Each concurrency REPS times (default 3): the median run is reported, the others shown.
  runs=$(for _ in $(seq 1 "${REPS:-3}"); do run "$c"; done | sort -n)
  read -r s kib < <(sed -n "$(( (${REPS:-3} + 1) / 2 ))p" <<< "$runs")
  limit=$(calc "$BYTES/($c*$CAP_BYTES)")
  printf '%-22s %8.2f s %8.1f MB/s  peak RSS %6.1f MB  speed-up %5.1fx  vs limit %.2fx (limit %.2f s)  runs: %s\n' \
    "concurrency $c" "$s" "$(calc "$BYTES/1000000/$s")" "$(calc "$kib/1024")" \
    "$(calc "$base_s/$s")" "$(calc "$s/$limit")" "$limit" "$(awk '{printf "%s%s s", (NR>1 ? ", " : ""), $1}' <<< "$runs")"
done
kill $SIM
start_sim "$PLATFORM"
read -r s kib < <(run 16)
printf '%-22s %8.1f s %8.1f MB/s  peak RSS %6.1f MB  (no latency, no cap)\n' \
  "unpaced, concurrency 16" "$s" "$(calc "$BYTES/1000000/$s")" "$(calc "$kib/1024")"
