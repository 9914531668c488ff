"""The serve benchmark's clients (run by benches/serve.sh): one query set, run through
`scoreland serve` with psycopg and by DuckDB in process on the same Delta table.

    python serve_queries.py serve PORT IDENTITIES.json        (venv with psycopg)
    python serve_queries.py duckdb TABLE_DIR IDENTITIES.json   (venv with duckdb + delta)

Prints one JSON line: queries, wall seconds, p50 and p99 in ms."""
import json
import statistics
import sys
import time

mode, where, ids_file = sys.argv[1:4]
identities = json.load(open(ids_file))
# 10 rounds of 9 lookups of one identity and 1 scan of the whole table, as a dashboard mixes them.
queries = []
for r in range(10):
    for k in range(9):
        queries.append(("SELECT model, score, percentile, score_date FROM scores WHERE identity = '%s'"
                        % identities[(r * 9 + k) % len(identities)]))
    queries.append("SELECT model, score_date, count(*) AS n, avg(score) AS mean FROM scores GROUP BY 1, 2")

if mode == "serve":
    import psycopg
    conn = psycopg.connect(f"host=127.0.0.1 port={where} dbname=datafusion user=bench", autocommit=True)
    run = lambda q: conn.execute(q).fetchall()
else:
    import duckdb
    import duckdb_extension_delta, os
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    ext = os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions")
    path = [os.path.join(d, f) for d, _, fs in os.walk(ext) for f in fs if f.endswith(".duckdb_extension")][0]
    con.execute(f"LOAD '{path}'")
    con.execute(f"CREATE VIEW scores AS SELECT * FROM delta_scan('{where}')")
    run = lambda q: con.execute(q).fetchall()

# Warm: open the table and read it once, as a long-running server (and the page cache) has.
run(queries[0])
run(queries[9])
lat = []
started = time.perf_counter()
for q in queries:
    t = time.perf_counter()
    rows = run(q)
    lat.append(time.perf_counter() - t)
    assert rows, q
wall = time.perf_counter() - started
pct = statistics.quantiles(lat, n=100)
print(json.dumps({"engine": mode, "queries": len(queries), "wall_s": round(wall, 2),
                  "p50_ms": round(pct[49] * 1e3, 1), "p99_ms": round(pct[98] * 1e3, 1)}))
