#!/usr/bin/env bash
# Sink benchmark (release build): land the deduplicated scores table that benches/transform.sh
# produced (32.6 M rows at its default 20 M input rows) into a Delta warehouse on local disk:
# the transform's last stage writes it again as zstd parquet partitioned by score_date, with the
# run's run_id ("write"), then the files are uploaded into the table and committed ("landing").
# Against DuckDB's COPY … (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (score_date)) of the
# same table, in the same run. Throughput is the parquet written (MB) over wall time; peak RSS.
#   benches/sink.sh [SOURCE_DIR]   (default: target/bench/out-scoreland/scores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")
SOURCE=$(realpath -m "${1:-$WORK/out-scoreland/scores}")
[ -d "$SOURCE" ] || { echo "no table at $SOURCE: run benches/transform.sh first" >&2; exit 2; }
[ -x "$WORK/venv/bin/python" ] || { python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q duckdb polars pyarrow; }
# Builds the bench target (release) and names its executable.
BENCH=$(cargo bench -p scoreland --bench sink --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "sink"][0])')

calc() { awk "BEGIN { print $* }"; }
rows=$("$WORK/venv/bin/python" -c "import duckdb; print(duckdb.sql(\"SELECT count(*) FROM read_parquet('$SOURCE/**/*.parquet')\").fetchall()[0][0])")
echo "table: $rows rows, $(du -sb "$SOURCE" | cut -f1 | xargs -I{} awk 'BEGIN { print {}/1e6 }') MB of zstd parquet in $SOURCE; $(nproc) cores"

rm -rf "$WORK/sink-duckdb"; mkdir -p "$WORK/sink-duckdb"; sync
/usr/bin/time -f '%e %M' -o "$WORK/time-sink-duckdb" "$WORK/venv/bin/python" -c "
import duckdb
duckdb.sql('SET enable_progress_bar = false')
duckdb.sql(\"COPY (SELECT * FROM read_parquet('$SOURCE/**/*.parquet')) TO '$WORK/sink-duckdb/scores' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (score_date))\")"
read -r d_s d_kib < "$WORK/time-sink-duckdb"
d_bytes=$(du -sb "$WORK/sink-duckdb" | cut -f1)

rm -rf "$WORK/sink-scoreland" "$WORK/sink-work"; mkdir -p "$WORK/sink-scoreland"; sync
/usr/bin/time -f '%e %M' -o "$WORK/time-sink-scoreland" "$BENCH" "$SOURCE" "$WORK/sink-scoreland" "$WORK/sink-work" > "$WORK/log-sink-scoreland"
read -r s_s s_kib < "$WORK/time-sink-scoreland"
s_bytes=$(du -sb "$WORK/sink-scoreland/scores" | cut -f1)
s_rows=$(python3 -c "import json; print(json.load(open('$WORK/log-sink-scoreland'))['rows'])")
[ "$s_rows" = "$rows" ] || { echo "scoreland landed $s_rows rows, expected $rows" >&2; exit 1; }

printf '%-28s %7.1f s  %7.1f MB written  %6.1f MB/s  %6.2f M rows/s  peak RSS %6.0f MB\n' \
  "duckdb COPY (baseline)" "$d_s" "$(calc "$d_bytes/1e6")" "$(calc "$d_bytes/1e6/$d_s")" "$(calc "$rows/1e6/$d_s")" "$(calc "$d_kib/1024")"
printf '%-28s %7.1f s  %7.1f MB written  %6.1f MB/s  %6.2f M rows/s  peak RSS %6.0f MB  %.2fx duckdb time\n' \
  "scoreland write+publish" "$s_s" "$(calc "$s_bytes/1e6")" "$(calc "$s_bytes/1e6/$s_s")" "$(calc "$rows/1e6/$s_s")" "$(calc "$s_kib/1024")" "$(calc "$s_s/$d_s")"
# The landing proper: the files the write made go into the table as they are (upload, then one
# Delta commit); what the pipeline does after its transform wrote them.
publish_s=$(python3 -c "import json; print(json.load(open('$WORK/log-sink-scoreland'))['publish_s'])")
printf '%-28s %7.1f s  %.2fx duckdb time\n' "scoreland landing alone" "$publish_s" "$(calc "$publish_s/$d_s")"
cat "$WORK/log-sink-scoreland"
