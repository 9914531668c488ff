"""Other engines read the Delta tables of a landed warehouse and agree with `scoreland sql`:
the delta-rs Python binding, Polars and DuckDB's delta extension get the same row counts, the
same sums and the same partitions. Run by scripts/test.sh after landing the demo:
`python read_landed.py WAREHOUSE EXPECTED_DIR`, where EXPECTED_DIR holds what `scoreland sql
--format json` answered: scores.json (per "dataset/score_date" key `k`, rows `n` and score sum
`s`), counts.json (summary and drift rows) and events.json (the web_events table's rows and
non-null new field per event date)."""
import glob
import json
import os
import sys

wh, expected_dir = sys.argv[1], sys.argv[2]
lines = lambda name: [json.loads(l) for l in open(os.path.join(expected_dir, name)) if l.strip()]
expected = lines("counts.json")[0]
failures = 0
passed = 0


def check(name, got, want):
    global failures, passed
    ok = got == want
    failures += not ok
    passed += ok
    print(f"{'ok' if ok else 'FAIL'}: {name}: {got!r}" + ("" if ok else f" (expected {want!r})"))


def per_partition(rows):
    """[(dataset_id, score_date, n, sum)] -> {"dataset/date": [n, rounded sum]}"""
    return {f"{d}/{s}": [int(n), round(float(t), 6)] for d, s, n, t in rows}


want_scores = {r["k"]: [r["n"], round(r["s"], 6)] for r in lines("scores.json")}
table = lambda name: os.path.join(wh, name)

# delta-rs, the reference Python binding.
from deltalake import DeltaTable
import pyarrow.compute as pc

dt = DeltaTable(table("scores"))
check("deltalake partition columns", dt.metadata().partition_columns, ["dataset_id", "score_date"])
t = dt.to_pyarrow_table(columns=["dataset_id", "score_date", "score"])
rows = {}
for d, s, v in zip(t.column("dataset_id").to_pylist(), t.column("score_date").to_pylist(), t.column("score").to_pylist()):
    k = (d, str(s))
    n, total = rows.get(k, (0, 0.0))
    rows[k] = (n + 1, total + (v or 0.0))
check("deltalake scores per dataset and score_date", per_partition((k[0], k[1], n, s) for k, (n, s) in rows.items()), want_scores)
for name in ("summary", "drift"):
    check(f"deltalake {name} rows", DeltaTable(table(name)).to_pyarrow_table().num_rows, expected[name])

# Polars.
import polars as pl

df = pl.read_delta(table("scores"))
agg = df.group_by(["dataset_id", "score_date"]).agg(pl.len().alias("n"), pl.col("score").sum().alias("s"))
check("polars scores per dataset and score_date",
      per_partition((r["dataset_id"], str(r["score_date"]), r["n"], r["s"]) for r in agg.iter_rows(named=True)), want_scores)
check("polars score_date type", str(df.schema["score_date"]), "Date")

# DuckDB with its delta extension, loaded from the PyPI package (no network).
import duckdb
import duckdb_extension_delta

ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions", "*", "delta.duckdb_extension"))[0]
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{ext}'")
got = con.execute(
    f"SELECT dataset_id, CAST(score_date AS VARCHAR), count(*), sum(score) FROM delta_scan('{table('scores')}') GROUP BY 1, 2"
).fetchall()
check("duckdb delta_scan scores per dataset and score_date", per_partition(got), want_scores)
types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM delta_scan('{table('scores')}')").fetchall()}
check("duckdb score_date type", types.get("score_date"), "DATE")
check("duckdb batch_created type", types.get("batch_created"), "TIMESTAMP WITH TIME ZONE")
for name in ("summary", "drift"):
    n = con.execute(f"SELECT count(*) FROM delta_scan('{table(name)}')").fetchone()[0]
    check(f"duckdb {name} rows", n, expected[name])

# An events table landed from its XDM schema, whose schema grew in its second commit
# (events.json: per event date `k`, rows `n` and non-null `web_webPageDetails_isHomePage` `h`).
want_events = {r["k"]: [r["n"], r["h"]] for r in lines("events.json")}
check("events: two nights' worth of dates", len(want_events) >= 3, True)
events = table("web_events")
dt = DeltaTable(events)
check("deltalake web_events partition columns", dt.metadata().partition_columns, ["dataset_id", "event_date"])
field = next(f for f in dt.schema().fields if f.name == "commerce_order_priceTotal")
check("deltalake column comment", field.metadata.get("comment"), "Price Total")
t = dt.to_pyarrow_table(columns=["event_date", "web_webPageDetails_isHomePage"])
got = {}
for d, h in zip(t.column("event_date").to_pylist(), t.column("web_webPageDetails_isHomePage").to_pylist()):
    n, hs = got.get(str(d), (0, 0))
    got[str(d)] = (n + 1, hs + (h is not None))
check("deltalake web_events per event_date", {k: list(v) for k, v in got.items()}, want_events)
df = pl.read_delta(events)
agg = df.group_by("event_date").agg(pl.len().alias("n"), pl.col("web_webPageDetails_isHomePage").count().alias("h"))
check("polars web_events per event_date",
      {str(r["event_date"]): [r["n"], r["h"]] for r in agg.iter_rows(named=True)}, want_events)
got = con.execute(
    f"SELECT CAST(event_date AS VARCHAR), count(*), count(web_webPageDetails_isHomePage) FROM delta_scan('{events}') GROUP BY 1"
).fetchall()
check("duckdb delta_scan web_events per event_date", {k: [n, h] for k, n, h in got}, want_events)

print(f"readers: {passed} passed, {failures} failed")
sys.exit(1 if failures else 0)
