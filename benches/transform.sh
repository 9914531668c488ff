#!/usr/bin/env bash
# Transform benchmark (release build): ROWS rows (default 20 M) in 40 parts from the sample
# generator; scoreland's union + flatten + dedupe + summaries against DuckDB and Polars doing
# the same work on the same staged files, in the same run, with wall time and peak RSS; then
# scoreland again under a 1 GiB memory limit. Each scoreland output is checked against DuckDB's
# (the same rows kept, the same summaries: `engines.py compare`); the script fails if they differ.
#   benches/transform.sh [ROWS]
# ENGINES="scoreland scoreland_1gib" leaves Polars out (at 20 M rows it runs ~10 min, then dies
# out of memory); DuckDB, the baseline, always runs. Engines cluster1, cluster2 and cluster4 run
# `scoreland transform --cluster` on a local Ballista cluster of 1, 2 or 4 executors (started
# before the clock, the machine's cores shared among them); their shuffle files are measured.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-20000000}
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")
BIN=target/release/scoreland
mkdir -p "$WORK"
cargo build --release --quiet -p scoreland --features cluster
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
run_cluster() { "$BIN" -q transform --staging "$STAGING" --dataset "$DATASET" --out "$1" --cluster "$CLUSTER_URL"; }
run_cluster1() { run_cluster "$@"; }
run_cluster2() { run_cluster "$@"; }
run_cluster4() { run_cluster "$@"; }
export -f run_duckdb run_polars run_scoreland run_scoreland_1gib run_cluster run_cluster1 run_cluster2 run_cluster4

# A local cluster of N executors sharing the cores (URL in CLUSTER_URL); stop_cluster ends it.
start_cluster() {
  local n=$1 slots=$(( $(nproc) / $1 ))
  [ "$slots" -ge 1 ] || slots=1
  rm -rf "$WORK/cluster"; mkdir -p "$WORK/cluster"
  "$BIN" cluster local --executors "$n" --vcores "$slots" --port 0 --work-dir "$WORK/cluster" \
    > "$WORK/cluster.out" 2> "$WORK/cluster.log" &
  CLUSTER_PID=$!
  for _ in $(seq 1 600); do [ "$(wc -l < "$WORK/cluster.out")" -ge 2 ] && break; sleep 0.1; done
  CLUSTER_URL=$(head -1 "$WORK/cluster.out")
  [[ $CLUSTER_URL == df://* ]] || { cat "$WORK/cluster.log" >&2; exit 1; }
  export CLUSTER_URL
}
stop_cluster() { kill "$CLUSTER_PID"; wait "$CLUSTER_PID" 2>/dev/null || true; }
# Samples the executors' work directory five times a second; its largest size in cluster-peak.
sample_peak() {
  local max=0 b
  echo 0 > "$WORK/cluster-peak"
  while :; do
    b=$(du -sb --exclude='*.log' "$WORK/cluster" 2>/dev/null | cut -f1)
    if [ "${b:-0}" -gt "$max" ]; then max=$b; echo "$max" > "$WORK/cluster-peak"; fi
    sleep 0.2
  done
}
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
  case $e in cluster*) start_cluster "${e#cluster}"; sample_peak & SAMPLER=$! ;; esac
  read -r s mb < <(measure "$e")
  case $e in cluster*)
    kill "$SAMPLER"; wait "$SAMPLER" 2>/dev/null || true
    # The executors' files at their fullest (the shuffle, removed when the job ends) and what
    # is left after it (the job's answer, kept until the cluster stops).
    left=$(du -sb --exclude='*.log' "$WORK/cluster" | cut -f1)
    stop_cluster
    echo "$e: shuffle files at their peak $(calc "$(cat "$WORK/cluster-peak")/1000000") MB, answer $(calc "$left/1000000") MB" >&2 ;;
  esac
  if [ "$s" = failed ]; then printf '%-24s failed (see %s)\n' "$e" "$WORK/log-$e"; continue; fi
  printf '%-24s %8s s  peak RSS %7s MB  %.2fx duckdb time\n' "$e" "$s" "$mb" "$(calc "$s/$base_s")"
  # scoreland must keep the rows DuckDB keeps, and agree on the summaries (exits non-zero if not).
  case $e in scoreland*|cluster*) "$WORK/venv/bin/python" benches/engines.py compare "$WORK/out-duckdb" "$WORK/out-$e" ;; esac
done
grep -h "rows in" "$WORK"/log-* >&2 || true
