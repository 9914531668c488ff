#!/usr/bin/env bash
# Landing an ExperienceEvent dataset from its schema (release build): one night of the
# simulator's web and commerce events (default 5 M rows, one snappy parquet part per 250,000
# rows), flattened from the schema the Schema Registry serves for them into the `web_events`
# columns (nested objects as `a_b_c`, lists kept), each `_id` once, written as zstd parquet
# partitioned by event date; against DuckDB doing the same with hand-written SQL (the column
# list spelled out, DISTINCT ON (_id), COPY … PARTITION_BY (event_date)). Alternated, ROUNDS
# times each, with wall time and peak RSS; the outputs must hold the same rows.
#   benches/events.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-5000000}
ROUNDS=${ROUNDS:-2}
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")/events
mkdir -p "$WORK"
[ -x "$WORK/venv/bin/python" ] || { python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q duckdb; }
BENCH=${BENCH:-$(cargo bench -p scoreland --bench events --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "events"][0])')}
PLATFORM="$WORK/platform-$ROWS"
if [ ! -d "$PLATFORM" ]; then
  echo "generating a night of $ROWS events…" >&2
  "$BENCH" generate "$PLATFORM.tmp" "$ROWS" > /dev/null
  mv "$PLATFORM.tmp" "$PLATFORM"
fi
PARTS=$(dirname "$(find "$PLATFORM" -name '*.parquet' | head -1)")
echo "night: $ROWS events, $(du -sb "$PARTS" | cut -f1 | awk '{ print $1/1e6 }') MB of parquet in $(ls "$PARTS" | wc -l) parts; $(nproc) cores"

run_duckdb() {
  rm -rf "$WORK/out-duckdb"
  "$WORK/venv/bin/python" - "$PARTS" "$WORK/out-duckdb" <<'PY'
import sys, duckdb
src, out = sys.argv[1], sys.argv[2]
duckdb.sql("SET enable_progress_bar = false")
duckdb.sql("SET TimeZone = 'UTC'")
duckdb.sql(f"""
COPY (
  SELECT DISTINCT ON (_id)
    _acmeretail.identity.ecid AS _acmeretail_identity_ecid,
    _id,
    commerce."order".currencyCode AS commerce_order_currencyCode,
    commerce."order".priceTotal AS commerce_order_priceTotal,
    eventType,
    productListItems,
    "timestamp",
    web.webPageDetails.URL AS web_webPageDetails_URL,
    web.webPageDetails.name AS web_webPageDetails_name,
    web.webReferrer.URL AS web_webReferrer_URL,
    CAST("timestamp" AS DATE) AS event_date,
    'bench' AS batch_id,
    'bench' AS run_id
  FROM read_parquet('{src}/*.parquet')
) TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (event_date))
""")
print(duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/*/*.parquet')").fetchall()[0][0])
PY
}
run_scoreland() {
  rm -rf "$WORK/out-scoreland"
  "$BENCH" land "$PARTS" "$WORK/out-scoreland" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["rows_out"])'
}

measure() { # engine -> "seconds peak-MB rows"
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/time-$1" bash -c "run_$1" > "$WORK/rows-$1"
  read -r s kib < "$WORK/time-$1"
  echo "$s $((kib / 1024)) $(tail -1 "$WORK/rows-$1")"
}
export -f run_duckdb run_scoreland
export WORK PARTS BENCH
calc() { awk "BEGIN { printf \"%.2f\", $* }"; }
for round in $(seq 1 "$ROUNDS"); do
  read -r d_s d_mb d_rows < <(measure duckdb)
  read -r s_s s_mb s_rows < <(measure scoreland)
  [ "$d_rows" = "$s_rows" ] || { echo "row counts differ: duckdb $d_rows, scoreland $s_rows" >&2; exit 1; }
  printf 'round %d: %s rows; duckdb %6.2f s  peak RSS %5d MB | scoreland %6.2f s  peak RSS %5d MB  (%sx duckdb time)\n' \
    "$round" "$s_rows" "$d_s" "$d_mb" "$s_s" "$s_mb" "$(calc "$s_s/$d_s")"
done
# The same rows, not only as many: DuckDB hashes both outputs (id, event date, type, page,
# order total, items).
"$WORK/venv/bin/python" - "$WORK" <<'PY'
import sys, duckdb
w = sys.argv[1]
duckdb.sql("SET TimeZone = 'UTC'")
q = """SELECT count(*), sum(hash(_id, event_date, eventType, web_webPageDetails_name,
       commerce_order_priceTotal, "timestamp", list_transform(productListItems, lambda x: x.SKU)))
       FROM read_parquet('{}', hive_partitioning = true)"""
a = duckdb.sql(q.format(f"{w}/out-duckdb/*/*.parquet")).fetchall()
b = duckdb.sql(q.format(f"{w}/out-scoreland/*/*.parquet")).fetchall()
print(f"contents: {'identical' if a == b else 'DIFFERENT'} ({a[0][0]} rows)")
sys.exit(0 if a == b else 1)
PY
