"""Other engines read a landed warehouse: DuckDB and Spark, with the partition column inferred
from the Hive directories, get the row count and per-model counts that the committed files say.
Run by scripts/test.sh after landing the demo: `python read_landed.py WAREHOUSE`."""
import json
import os
import sys

wh = sys.argv[1]
latest = json.load(open(os.path.join(wh, "scores", "_latest.json")))
files = [f["url"].removeprefix("file://") for f in latest["files"]]
expected_rows = latest["rows"]
failures = 0
passed = 0


def check(name, got, want):
    global failures, passed
    ok = got == want
    failures += not ok
    passed += ok
    print(f"{'ok' if ok else 'FAIL'}: {name}: {got!r}" + ("" if ok else f" (expected {want!r})"))


import duckdb

con = duckdb.connect()
glob = os.path.join(wh, "scores", "**", "*.parquet")
def q(sql):
    return con.execute(sql).fetchall()


rows = q(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true)")[0][0]
check("duckdb rows (whole prefix, hive partitions)", rows, expected_rows)
types = {r[0]: r[1] for r in q(f"DESCRIBE SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")}
check("duckdb score_date type", types.get("score_date"), "DATE")
check("duckdb batch_created type", types.get("batch_created"), "TIMESTAMP WITH TIME ZONE")
per_date_duck = dict(q(f"SELECT CAST(score_date AS VARCHAR), count(*) FROM read_parquet({files}) GROUP BY 1"))
per_file = {}
for f in latest["files"]:
    d = f["partition"].split("=", 1)[1]
    per_file[d] = per_file.get(d, 0) + f["rows"]
check("duckdb rows per score_date (committed files)", per_date_duck, per_file)

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
from pyspark.sql import SparkSession

spark = (SparkSession.builder.master("local[2]").appName("scoreland-readers")
         .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.parquet(os.path.join(wh, "scores"))
check("spark rows (directory, partition inferred)", df.count(), expected_rows)
check("spark score_date type", dict(df.dtypes).get("score_date"), "date")
check("spark batch_created type", dict(df.dtypes).get("batch_created"), "timestamp")
per_date_spark = {str(r[0]): r[1] for r in df.groupBy("score_date").count().collect()}
check("spark rows per score_date", per_date_spark, per_file)
spark.stop()
print(f"readers: {passed} passed, {failures} failed")
sys.exit(1 if failures else 0)
