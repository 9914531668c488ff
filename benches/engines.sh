#!/usr/bin/env bash
# The two distributed DataFusion engines #28 named, measured on the same queries over the same
# files (release builds, 2 workers sharing this machine's cores, one run each, after one warm-up
# run of every query on DataFusion alone so the files are in the page cache):
#   - DataFusion alone, in one process (the reference);
#   - datafusion-distributed 4 (benches/engines: two worker processes, the query planned and
#     coordinated by the client);
#   - Apache DataFusion Ballista 55 (`scoreland cluster local --executors 2`).
# The table is the scores table benches/transform.sh writes (32.6 M rows at 20 M profiles);
# every engine must give the same answer (the script fails if one differs). The build cost is
# measured apart: `cargo build --release --timings` of benches/engines in an empty target
# directory (docs/benchmarks.md gives the figures).
#   benches/engines.sh [TABLE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")
TABLE=$(realpath "${1:-$WORK/out-scoreland/scores}")
BIN=target/release/scoreland
ENGINES_TARGET=${ENGINES_TARGET:-$WORK/engines-target}
[ -d "$TABLE" ] || { echo "no table at $TABLE: run benches/transform.sh first" >&2; exit 1; }
cargo build --release --quiet -p scoreland --features cluster
(cd benches/engines && CARGO_TARGET_DIR="$ENGINES_TARGET" cargo build --release --quiet)
PROBE=$ENGINES_TARGET/release/engines
CORES=$(nproc)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

P1=$(free_port); P2=$(free_port)
"$PROBE" worker "$P1" & PIDS+=($!)
"$PROBE" worker "$P2" & PIDS+=($!)
mkdir -p "$WORK/engines-cluster"
"$BIN" cluster local --executors 2 --vcores $(( CORES / 2 > 0 ? CORES / 2 : 1 )) --port 0 \
  --work-dir "$WORK/engines-cluster" > "$WORK/engines-cluster.out" 2> "$WORK/engines-cluster.log" &
PIDS+=($!)
for _ in $(seq 1 600); do [ "$(wc -l < "$WORK/engines-cluster.out")" -ge 2 ] && break; sleep 0.1; done
BALLISTA=$(head -1 "$WORK/engines-cluster.out")
[[ $BALLISTA == df://* ]] || { cat "$WORK/engines-cluster.log" >&2; exit 1; }
sleep 1

QUERIES=(
  "SELECT model, count(*) AS n, round(sum(score), 2) AS total FROM scores GROUP BY model ORDER BY model"
  "SELECT count(*) AS identities FROM (SELECT identity FROM scores GROUP BY identity)"
  "SELECT count(*) AS kept, round(sum(score), 2) AS total FROM (SELECT score, row_number() OVER (PARTITION BY identity ORDER BY model DESC, score DESC) AS rn FROM scores) WHERE rn = 1"
)
echo "table: $TABLE ($(du -sh "$TABLE" | cut -f1)); $CORES cores; queries: aggregate, distinct identities, newest row per identity"
"$PROBE" run local "$TABLE" "$CORES" "${QUERIES[@]}" > /dev/null   # warm-up
status=0
for engine in local "dd=$P1,$P2" "ballista=$BALLISTA"; do
  "$PROBE" run "$engine" "$TABLE" "$CORES" "${QUERIES[@]}" > "$WORK/engines-$$.out" || { echo "$engine failed" >&2; status=1; continue; }
  paste <(printf '%s\n' aggregate distinct newest) "$WORK/engines-$$.out"
  if [ "$engine" = local ]; then cut -f3 "$WORK/engines-$$.out" > "$WORK/engines-expected"
  elif ! diff -q <(cut -f3 "$WORK/engines-$$.out") "$WORK/engines-expected" > /dev/null; then
    echo "$engine answered otherwise than DataFusion alone" >&2; status=1
  fi
done
rm -f "$WORK/engines-$$.out"
exit $status
