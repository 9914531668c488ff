#!/usr/bin/env bash
# Serve benchmark (release build): the 32.6 M-row scores table that benches/sink.sh landed as
# Delta, copied and optimized (sorted by identity), then
#  - the bytes one identity lookup reads through `scoreland serve` (EXPLAIN ANALYZE), against
#    the table's bytes;
#  - one query set (90 identity lookups, 10 full-table aggregations) through serve with psycopg,
#    against DuckDB 1.5.5 running it in process with its delta extension on the same files.
#   benches/serve.sh        (after benches/transform.sh and benches/sink.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")
SVC=${SCORELAND_SVC_DIR:-$HOME/.cache/scoreland-test-services}
[ -d "$WORK/sink-scoreland/scores/_delta_log" ] || { echo "no Delta table at $WORK/sink-scoreland: run benches/sink.sh first" >&2; exit 2; }
SCORELAND_SVC_DIR=$SVC scripts/test-services.sh install > /dev/null
cargo build --release --quiet -p scoreland
BIN=$(realpath target/release/scoreland)
rm -rf "$WORK/serve-wh"; cp -r "$WORK/sink-scoreland" "$WORK/serve-wh"
/usr/bin/time -f '%e %M' -o "$WORK/time-optimize" "$BIN" -q optimize --warehouse "$WORK/serve-wh"
read -r o_s o_kib < "$WORK/time-optimize"
bytes=$("$SVC/venv-delta/bin/python" -c "
import os, sys
from deltalake import DeltaTable
print(sum(os.path.getsize(u.removeprefix('file://')) for u in DeltaTable(sys.argv[1]).file_uris()))" "$WORK/serve-wh/scores")
echo "optimize: ${o_s} s, peak RSS $((o_kib / 1024)) MB; live table $((bytes / 1000000)) MB"
"$SVC/venv-delta/bin/python" -c "
import duckdb, json, sys
ids = [r[0] for r in duckdb.sql(f\"SELECT identity FROM read_parquet('{sys.argv[1]}/scores/**/*.parquet') WHERE identity IS NOT NULL USING SAMPLE 200 ROWS\").fetchall()]
json.dump(ids, open(sys.argv[2], 'w'))" "$WORK/sink-scoreland" "$WORK/serve-ids.json"

"$BIN" serve --warehouse "$WORK/serve-wh" --listen 127.0.0.1:0 --query-timeout 10m 2> "$WORK/serve.log" &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "listening on" "$WORK/serve.log" && break; sleep 0.1; done
PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$WORK/serve.log" | cut -d: -f2)
id=$("$SVC/venv-delta/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))[0])" "$WORK/serve-ids.json")
scanned=$(psql -X -A -t -h 127.0.0.1 -p "$PORT" -U bench -d datafusion \
  -c "EXPLAIN ANALYZE SELECT model, score, percentile, score_date FROM scores WHERE identity = '$id'" \
  | python3 -c "
import re, sys
text = sys.stdin.read()
unit = {'K': 1e3, 'M': 1e6, 'G': 1e9}
print(int(sum(float(n) * unit.get(u, 1) for n, u in re.findall(r' bytes_scanned=([0-9.]+) ?([KMG]?)', text))))")
echo "one identity lookup through serve: $scanned bytes scanned of $bytes = $(awk "BEGIN { printf \"%.2f\", 100 * $scanned / $bytes }") % of the table"
# Alternated, twice each, so neither engine gets the quieter machine.
for round in 1 2; do
  "$SVC/venv-clients/bin/python" benches/serve_queries.py serve "$PORT" "$WORK/serve-ids.json" | tee "$WORK/serve-result-$round.json"
  "$SVC/venv-delta/bin/python" benches/serve_queries.py duckdb "$WORK/serve-wh/scores" "$WORK/serve-ids.json" | tee "$WORK/duckdb-result-$round.json"
done
python3 -c "
import json, sys
w = lambda e: sum(json.load(open(f'{sys.argv[1]}/{e}-result-{r}.json'))['wall_s'] for r in (1, 2))
print(f\"serve / DuckDB wall over both rounds: {w('serve') / w('duckdb'):.2f}x\")" "$WORK"
