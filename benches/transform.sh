#!/usr/bin/env bash
# Transform benchmark (release build): ROWS rows (default 20 M) in 40 parts from the sample
# generator; scoreland's union + flatten + dedupe + summaries against DuckDB and Polars doing
# the same work on the same staged files, in the same run, with wall time and peak RSS; then
# scoreland again under a 1 GiB memory limit. Each scoreland output is checked against DuckDB's
# (the same rows kept, the same summaries: `engines.py compare`); the script fails if they differ.
#   benches/transform.sh [ROWS]
# ENGINES="scoreland scoreland_1gib" leaves Polars out (at 20 M rows it runs ~10 min, then dies
# out of memory); DuckDB, the baseline, always runs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-20000000}
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")
BIN=target/release/scoreland
mkdir -p "$WORK"
cargo build --release --quiet -p scoreland
source benches/sim-env.sh
[ -x "$WORK/venv/bin/python" ] || { python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q duckdb polars pyarrow; }

PLATFORM="$WORK/platform-tf-$ROWS"
STAGING="$WORK/staging-tf-$ROWS"
if [ ! -f "$PLATFORM/platform.json" ]; then
  rm -rf "$PLATFORM" "$STAGING"
  echo "generating $ROWS rows in 40 parts…" >&2
  "$BIN" sim generate --out "$PLATFORM" --rows "$ROWS" --parts 40 --batches 1 --seed 2 > /dev/null
fi
# Stage the batch once, through the simulator at full speed (not timed).
start_sim "$PLATFORM"
"$BIN" -q download --dataset "$DATASET" --out "$STAGING" > /dev/null
kill $SIM
mapfile -t PARTS < <(find "$STAGING/$DATASET" -name '*.parquet' | sort)
BYTES=$(du -cb "${PARTS[@]}" | tail -1 | cut -f1)

calc() { awk "BEGIN { print $* }"; }
# Each engine reads PARTS and writes into the directory it is given.
run_duckdb() { "$WORK/venv/bin/python" benches/engines.py duckdb "$1" "${PARTS[@]}"; }
run_polars() { "$WORK/venv/bin/python" benches/engines.py polars "$1" "${PARTS[@]}"; }
run_scoreland() { "$BIN" -q transform --staging "$STAGING" --dataset "$DATASET" --out "$1"; }
run_scoreland_1gib() { "$BIN" -q transform --staging "$STAGING" --dataset "$DATASET" --out "$1" --memory-limit 1GiB; }
export -f run_duckdb run_polars run_scoreland run_scoreland_1gib
export WORK BIN STAGING DATASET
export PARTS_LIST="${PARTS[*]}"

measure() { # name -> "seconds peak_mb"
  local name=$1 out="$WORK/out-$1"
  rm -rf "$out"; mkdir -p "$out"
  /usr/bin/time -f '%e %M' -o "$WORK/time-$name" bash -c "PARTS=(\$PARTS_LIST); run_$name '$out'" \
    > "$WORK/log-$name" 2>&1 || { cat "$WORK/log-$name" >&2; echo "failed 0"; return; }
  read -r s kib < "$WORK/time-$name"
  echo "$s $(calc "$kib/1024")"
}

echo "input: ${#PARTS[@]} parts, $(calc "$BYTES/1000000") MB, $ROWS rows; $(nproc) cores"
read -r base_s base_mb < <(measure duckdb)
printf '%-24s %8s s  peak RSS %7s MB\n' "duckdb (baseline)" "$base_s" "$base_mb"
for e in ${ENGINES:-polars scoreland scoreland_1gib}; do
  read -r s mb < <(measure "$e")
  if [ "$s" = failed ]; then printf '%-24s failed (see %s)\n' "$e" "$WORK/log-$e"; continue; fi
  printf '%-24s %8s s  peak RSS %7s MB  %.2fx duckdb time\n' "$e" "$s" "$mb" "$(calc "$s/$base_s")"
  # scoreland must keep the rows DuckDB keeps, and agree on the summaries (exits non-zero if not).
  case $e in scoreland*) "$WORK/venv/bin/python" benches/engines.py compare "$WORK/out-duckdb" "$WORK/out-$e" ;; esac
done
grep -h "rows in" "$WORK"/log-* >&2 || true
