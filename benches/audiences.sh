#!/usr/bin/env bash
# Profile-export benchmark (release build): flattening segmentMembership of a generated export
# (default 5 M profiles × 20 segments, the simulator's export schema: map-typed identityMap and
# segmentMembership, 20 parquet parts) into one row per profile and membership, against DuckDB
# unnesting the same parquet into the same rows (primary identity, namespace, segment, status,
# lastQualificationTime parsed leniently to a timestamp, version, payload) written as zstd
# parquet. scoreland also writes the profiles table and the summary in the same time.
# Alternated, ROUNDS times each, with wall time and peak RSS; the row counts must agree.
#   benches/audiences.sh [PROFILES] [SEGMENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILES=${1:-5000000}
SEGMENTS=${2:-20}
ROUNDS=${ROUNDS:-2}
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")/audiences
mkdir -p "$WORK"
[ -x "$WORK/venv/bin/python" ] || { python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q duckdb; }
BENCH=${BENCH:-$(cargo bench -p scoreland --bench audiences --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "audiences"][0])')}
EXPORT="$WORK/export-$PROFILES-$SEGMENTS"
if [ ! -d "$EXPORT" ]; then
  echo "generating an export of $PROFILES profiles in $SEGMENTS segments…" >&2
  "$BENCH" generate "$EXPORT.tmp" "$PROFILES" "$SEGMENTS" > /dev/null
  mv "$EXPORT.tmp" "$EXPORT"
fi
echo "export: $PROFILES profiles, $(du -sb "$EXPORT" | cut -f1 | awk '{ print $1/1e6 }') MB of parquet in 20 parts; $(nproc) cores"

run_duckdb() {
  rm -rf "$WORK/out-duckdb"; mkdir -p "$WORK/out-duckdb"
  "$WORK/venv/bin/python" - "$EXPORT" "$WORK/out-duckdb/audiences.parquet" <<'PY'
import sys, duckdb
src, out = sys.argv[1], sys.argv[2]
duckdb.sql("SET enable_progress_bar = false")
duckdb.sql(f"""
COPY (
  WITH p AS (
    SELECT list_filter(flatten(list_transform(map_entries(identityMap),
             lambda e: list_transform(e.value, lambda i: {{'ns': e.key, 'id': i.id, 'p': i."primary"}}))),
             lambda x: x.p)[1] AS who,
           segmentMembership
    FROM read_parquet('{src}/*.parquet')
  ),
  n AS (SELECT who, unnest(map_entries(segmentMembership)) AS ns FROM p),
  m AS (SELECT who, ns.key AS namespace, unnest(map_entries(ns.value)) AS s FROM n)
  SELECT who.id AS primary_identity, who.ns AS primary_namespace, namespace,
         s.key AS segment_id, s.value.status AS status,
         coalesce(try_strptime(s.value.lastQualificationTime, '%Y-%m-%dT%H:%M:%SZ'),
                  try_strptime(s.value.lastQualificationTime, '%Y-%m-%dT%H:%M:%S%z'),
                  try_strptime(s.value.lastQualificationTime, '%Y-%m-%d %H:%M:%S')) AS last_qualification_time,
         s.value.version AS version, s.value.payload.payloadType AS payload_type,
         coalesce(s.value.payload.payloadStringValue,
                  CAST(s.value.payload.payloadNumberValue AS VARCHAR),
                  CAST(s.value.payload.payloadBooleanValue AS VARCHAR)) AS payload_value
  FROM m
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
""")
print(duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0])
PY
}
run_scoreland() {
  rm -rf "$WORK/out-scoreland"
  "$BENCH" flatten "$EXPORT" "$WORK/out-scoreland" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["memberships"])'
}

measure() { # engine -> "seconds peak-MB rows"
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/time-$1" bash -c "run_$1" > "$WORK/rows-$1"
  read -r s kib < "$WORK/time-$1"
  echo "$s $((kib / 1024)) $(tail -1 "$WORK/rows-$1")"
}
export -f run_duckdb run_scoreland
export WORK EXPORT BENCH
calc() { awk "BEGIN { printf \"%.2f\", $* }"; }
for round in $(seq 1 "$ROUNDS"); do
  read -r d_s d_mb d_rows < <(measure duckdb)
  read -r s_s s_mb s_rows < <(measure scoreland)
  [ "$d_rows" = "$s_rows" ] || { echo "row counts differ: duckdb $d_rows, scoreland $s_rows" >&2; exit 1; }
  printf 'round %d: %s membership rows; duckdb %6.2f s  peak RSS %5d MB | scoreland %6.2f s  peak RSS %5d MB  (%sx duckdb time)\n' \
    "$round" "$s_rows" "$d_s" "$d_mb" "$s_s" "$s_mb" "$(calc "$s_s/$d_s")"
done
# The same rows, not only as many: DuckDB hashes both outputs (identity, segment, status, time,
# version, payload).
"$WORK/venv/bin/python" - "$WORK" <<'PY'
import sys, duckdb
w = sys.argv[1]
q = """SELECT count(*), sum(hash(primary_identity, segment_id, status, last_qualification_time,
       version, payload_value)) FROM read_parquet('{}')"""
a = duckdb.sql(q.format(f"{w}/out-duckdb/audiences.parquet")).fetchall()
b = duckdb.sql(q.format(f"{w}/out-scoreland/audiences/night=*/*.parquet")).fetchall()
print(f"contents: {'identical' if a == b else 'DIFFERENT'} ({a[0][0]} rows)")
sys.exit(0 if a == b else 1)
PY
