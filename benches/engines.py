"""The transform benchmark's other engines: the same union, flatten, dedupe and summaries as
scoreland's transform, on the same staged parts, written as zstd parquet partitioned by
score_date. Run by benches/transform.sh as `python engines.py ENGINE OUT PART...`, and
`python engines.py compare DUCKDB_OUT SCORELAND_OUT` to check that two outputs agree."""
import sys
import time

MODELS = ["churn_risk", "purchase_propensity"]
T = "_acmeretail"


def duckdb_run(out, files):
    import duckdb

    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    src = "read_parquet([{}], union_by_name = true)".format(", ".join(f"'{f}'" for f in files))
    selects = []
    for m in MODELS:
        b = f"{T}.CustomerAI.{m}"
        selects.append(
            f"""SELECT '{m}' AS model, {T}.identity.id AS identity, {T}.identity.namespace.code AS identity_namespace,
                {b}.score AS score, {b}.probability AS probability, {b}.percentile AS percentile,
                {b}.propensityType AS propensity_type, {b}.scoreDate AS score_date,
                {b}.influentialFactors AS influential_factors, _id AS record_id,
                'B' AS batch_id, TIMESTAMPTZ '2026-11-16 04:00:00+00' AS batch_created
              FROM {src} WHERE {b} IS NOT NULL"""
        )
    con.execute("CREATE VIEW flat AS " + " UNION ALL ".join(selects))
    con.execute(
        f"""COPY (SELECT * FROM flat WHERE identity IS NOT NULL
                  QUALIFY row_number() OVER (PARTITION BY identity, model
                      ORDER BY score_date DESC NULLS LAST, batch_created DESC, batch_id DESC, record_id ASC NULLS LAST) = 1)
            TO '{out}/scores' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (score_date), OVERWRITE_OR_IGNORE)"""
    )
    counts = con.execute("SELECT count(*), count(identity) FROM flat").fetchone()
    hist = ", ".join(
        f"sum(CASE WHEN score >= {b*10} AND score {'<=' if b == 9 else '<'} {b*10+10} THEN 1 ELSE 0 END) AS hist_{b*10:02}"
        for b in range(10)
    )
    deciles = ", ".join(f"quantile_cont(score, 0.{p}) AS p{p}0" for p in range(1, 10))
    con.execute(
        f"""COPY (SELECT model, score_date, count(*) AS rows, count(DISTINCT identity) AS distinct_identities,
                   count(*) - count(score) AS score_nulls, count(*) - count(probability) AS probability_nulls,
                   min(score), max(score), avg(score), stddev_pop(score),
                   min(probability), max(probability), avg(probability), stddev_pop(probability),
                   {deciles}, {hist},
                   sum(CASE WHEN score < 25 THEN 1 ELSE 0 END) AS tier_low,
                   sum(CASE WHEN score >= 25 AND score < 75 THEN 1 ELSE 0 END) AS tier_medium,
                   sum(CASE WHEN score >= 75 THEN 1 ELSE 0 END) AS tier_high
            FROM read_parquet('{out}/scores/**/*.parquet', hive_partitioning = true)
            GROUP BY model, score_date) TO '{out}/summary.parquet' (FORMAT parquet, COMPRESSION zstd)"""
    )
    con.execute(
        f"""COPY (SELECT model, score_date, f.code AS code, count(*) AS n FROM
                (SELECT model, score_date, unnest(influential_factors) AS f
                 FROM read_parquet('{out}/scores/**/*.parquet', hive_partitioning = true))
              GROUP BY ALL) TO '{out}/factors.parquet' (FORMAT parquet)"""
    )
    rows_out = con.execute(f"SELECT count(*) FROM read_parquet('{out}/scores/**/*.parquet')").fetchone()[0]
    return counts[0], rows_out


def polars_run(out, files):
    import polars as pl

    lf = pl.scan_parquet(files)
    frames = []
    for m in MODELS:
        s = pl.col(T).struct.field("CustomerAI").struct.field(m)
        frames.append(
            lf.filter(s.is_not_null()).select(
                pl.lit(m).alias("model"),
                pl.col(T).struct.field("identity").struct.field("id").alias("identity"),
                pl.col(T).struct.field("identity").struct.field("namespace").struct.field("code").alias("identity_namespace"),
                s.struct.field("score").alias("score"),
                s.struct.field("probability").alias("probability"),
                s.struct.field("percentile").alias("percentile"),
                s.struct.field("propensityType").alias("propensity_type"),
                s.struct.field("scoreDate").alias("score_date"),
                s.struct.field("influentialFactors").alias("influential_factors"),
                pl.col("_id").alias("record_id"),
                pl.lit("B").alias("batch_id"),
            )
        )
    flat = pl.concat(frames)
    rows_in = flat.select(pl.len()).collect().item()
    dedup = (
        flat.filter(pl.col("identity").is_not_null())
        .sort(["score_date", "batch_id", "record_id"], descending=[True, True, False], nulls_last=True)
        .unique(subset=["identity", "model"], keep="first")
        .collect()
    )
    dedup.write_parquet(f"{out}/scores", compression="zstd", partition_by="score_date")
    scores = pl.scan_parquet(f"{out}/scores/**/*.parquet", hive_partitioning=True)
    sc = pl.col("score")
    aggs = [
        pl.len().alias("rows"),
        pl.col("identity").n_unique().alias("distinct_identities"),
        sc.null_count().alias("score_nulls"),
        pl.col("probability").null_count().alias("probability_nulls"),
        sc.min(), sc.max().alias("score_max"), sc.mean().alias("score_mean"), sc.std(ddof=0).alias("score_stddev"),
        pl.col("probability").mean().alias("probability_mean"),
        pl.col("probability").std(ddof=0).alias("probability_stddev"),
    ]
    aggs += [sc.quantile(p / 10, "linear").alias(f"p{p}0") for p in range(1, 10)]
    aggs += [
        ((sc >= b * 10) & ((sc <= 100) if b == 9 else (sc < b * 10 + 10))).sum().alias(f"hist_{b*10:02}")
        for b in range(10)
    ]
    aggs += [(sc < 25).sum().alias("tier_low"), ((sc >= 25) & (sc < 75)).sum().alias("tier_medium"), (sc >= 75).sum().alias("tier_high")]
    scores.group_by(["model", "score_date"]).agg(aggs).collect().write_parquet(f"{out}/summary.parquet", compression="zstd")
    (
        scores.select("model", "score_date", pl.col("influential_factors").explode().struct.field("code").alias("code"))
        .group_by(["model", "score_date", "code"]).len().collect()
        .write_parquet(f"{out}/factors.parquet")
    )
    return rows_in, dedup.height


def compare(reference, other):
    """Fails unless `other` (scoreland's output) kept the same rows as `reference` (DuckDB's),
    with the same values, and its summaries agree: row counts, histogram, tiers and deciles per
    (model, score_date), and the counts of the factor codes it lists."""
    import duckdb

    con = duckdb.connect()
    cols = ("identity, model, score_date, record_id, score, probability, percentile, "
            "propensity_type, identity_namespace, influential_factors")
    # DuckDB leaves the partition column out of its files; scoreland keeps it in them.
    digest = lambda d, hive: con.execute(
        f"SELECT count(*), sum(hash({cols})::HUGEINT) FROM read_parquet('{d}/scores/**/*.parquet', hive_partitioning = {hive})"
    ).fetchone()
    ref, got = digest(reference, "true"), digest(other, "false")
    if ref != got:
        sys.exit(f"scores differ: duckdb {ref}, scoreland {got}")
    ref = {(r[0], r[1]): r[2:] for r in con.execute(
        f"""SELECT model, score_date, rows, {", ".join(f"p{p}0" for p in range(1, 10))},
                   {", ".join(f"hist_{b*10:02}" for b in range(10))}, tier_low, tier_medium, tier_high
            FROM '{reference}/summary.parquet'""").fetchall()}
    deciles = ", ".join(f"score_p{p}0" if p != 5 else "score_median" for p in range(1, 10))
    got = {(r[0], r[1]): r[2:] for r in con.execute(
        f"""SELECT model, score_date, rows, {deciles},
                   {", ".join(f"hist_{b*10:02}_{b*10+10:02}" for b in range(10))}, tier_low, tier_medium, tier_high
            FROM read_parquet('{other}/summary/**/*.parquet', hive_partitioning = false)""").fetchall()}
    if ref.keys() != got.keys():
        sys.exit(f"summary groups differ: {sorted(ref)} against {sorted(got)}")
    for k in ref:
        a, b = ref[k], got[k]
        same = all((abs(x - y) <= 1e-9 * max(1, abs(x))) if isinstance(x, float) else x == y for x, y in zip(a, b))
        if not same:
            sys.exit(f"summary of {k} differs: duckdb {a}, scoreland {b}")
    counts = {(m, d, c): n for m, d, c, n in con.execute(f"SELECT * FROM '{reference}/factors.parquet'").fetchall()}
    for m, d, top in con.execute(
            f"SELECT model, score_date, top_factors FROM read_parquet('{other}/summary/**/*.parquet', hive_partitioning = false)").fetchall():
        listed = [t.rsplit(":", 1) for t in top.split(",")]
        best = sorted((n for (mm, dd, _), n in counts.items() if (mm, dd) == (m, d)), reverse=True)
        if [int(n) for _, n in listed] != best[:len(listed)] or any(counts[(m, d, c)] != int(n) for c, n in listed):
            sys.exit(f"top factors of {(m, d)} differ: {top} against {best[:3]}")
    print(f"outputs agree: {ref and sum(v[0] for v in ref.values())} rows, {len(ref)} summary groups", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
        sys.exit(0)
    engine, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    t = time.time()
    rows_in, rows_out = {"duckdb": duckdb_run, "polars": polars_run}[engine](out, files)
    print(f"{engine}: {rows_in} rows in, {rows_out} rows out in {time.time() - t:.2f} s", file=sys.stderr)
