//! The transform against expectations computed here, in plain Rust, from the generated rows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Date32Type, Field, Float64Type, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use scoreland_platform_sim::{GenerateOptions, GenerateSummary};
use scoreland_transform::{
    Mapping, ModelHistogram, ModelMapping, OutputFormat, StagedBatch, TransformConfig,
    TransformError,
};

/// One flat input row, read independently of DataFusion.
#[derive(Debug, Clone)]
struct Row {
    model: String,
    identity: Option<String>,
    score: f64,
    date: i32,
    batch: String,
    created: i64,
    record: String,
}

fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn staged(root: &Path, summary: &GenerateSummary, ids: &[&str]) -> Vec<StagedBatch> {
    ids.iter()
        .map(|id| {
            let b = summary.batches.iter().find(|b| b.id == *id).unwrap();
            StagedBatch {
                batch_id: b.id.clone(),
                created_ms: b.created,
                files: part_files(
                    &root
                        .join("prod")
                        .join(&summary.dataset_id)
                        .join(id)
                        .join(format!("{id}-1")),
                ),
            }
        })
        .collect()
}

fn read_rows(batches: &[StagedBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for sb in batches {
        for f in &sb.files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let ids = b.column(0).as_string::<i32>();
                let tenant = b.column(2).as_any().downcast_ref::<StructArray>().unwrap();
                let identity = tenant
                    .column(0)
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .unwrap();
                let id = identity.column(0).as_string::<i32>();
                let cai = tenant
                    .column(1)
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .unwrap();
                let DataType::Struct(models) = tenant.column(1).data_type() else {
                    panic!()
                };
                for (m, field) in models.iter().enumerate() {
                    let model = cai
                        .column(m)
                        .as_any()
                        .downcast_ref::<StructArray>()
                        .unwrap();
                    let score = model.column(0).as_primitive::<Float64Type>();
                    let date = model.column(4).as_primitive::<Date32Type>();
                    for i in 0..b.num_rows() {
                        if model.is_null(i) {
                            continue;
                        }
                        out.push(Row {
                            model: field.name().clone(),
                            identity: (!identity.is_null(i)).then(|| id.value(i).to_string()),
                            score: score.value(i),
                            date: date.value(i),
                            batch: sb.batch_id.clone(),
                            created: sb.created_ms,
                            record: ids.value(i).to_string(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The newest score date, then newest batch, then highest batch id, then smallest record id.
fn dedupe(rows: &[Row]) -> BTreeMap<(String, String), Row> {
    let mut best: BTreeMap<(String, String), Row> = BTreeMap::new();
    for r in rows {
        let Some(id) = &r.identity else { continue };
        let key = (id.clone(), r.model.clone());
        let better = match best.get(&key) {
            None => true,
            Some(b) => {
                (r.date, r.created, &r.batch, std::cmp::Reverse(&r.record))
                    > (b.date, b.created, &b.batch, std::cmp::Reverse(&b.record))
            }
        };
        if better {
            best.insert(key, r.clone());
        }
    }
    best
}

/// The scores under `dir` hold exactly the rows of `expected`, once each.
fn assert_kept(dir: &Path, expected: &BTreeMap<(String, String), Row>) {
    let mut got: BTreeMap<(String, String), (f64, i32, String, String)> = BTreeMap::new();
    for b in read_output(dir) {
        let identity = col(&b, "identity").as_string::<i32>();
        let model = col(&b, "model").as_string::<i32>();
        let score = col(&b, "score").as_primitive::<Float64Type>();
        let date = col(&b, "score_date").as_primitive::<Date32Type>();
        let batch = col(&b, "batch_id").as_string::<i32>();
        let record = col(&b, "record_id").as_string::<i32>();
        assert!(matches!(
            col(&b, "batch_created").data_type(),
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _)
        ));
        for i in 0..b.num_rows() {
            let prev = got.insert(
                (identity.value(i).to_string(), model.value(i).to_string()),
                (
                    score.value(i),
                    date.value(i),
                    batch.value(i).to_string(),
                    record.value(i).to_string(),
                ),
            );
            assert!(prev.is_none(), "one row per identity and model");
        }
    }
    assert_eq!(got.len(), expected.len());
    for (k, r) in expected {
        let g = &got[k];
        assert_eq!(
            (g.0, g.1, &g.2, &g.3),
            (r.score, r.date, &r.batch, &r.record),
            "{k:?}"
        );
    }
}

fn read_output(dir: &Path) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                let reader =
                    ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap())
                        .unwrap()
                        .build()
                        .unwrap();
                out.extend(reader.map(|b| b.unwrap()));
            }
        }
    }
    out
}

/// Runs `cfg` over `batches` with no previous histograms, spilling under `root/spill` and
/// writing under `root/work`.
async fn transform(
    root: &Path,
    cfg: TransformConfig,
    batches: &[StagedBatch],
    format: OutputFormat,
    work: &str,
) -> scoreland_transform::TransformOutput {
    cfg.build(&root.join("spill"))
        .unwrap()
        .run(batches, &format, &[], &root.join(work))
        .await
        .unwrap()
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    b.column(b.schema().index_of(name).unwrap())
}

fn generate(tmp: &Path, rows: u64, parts: u32, seed: u64) -> GenerateSummary {
    scoreland_platform_sim::generate(&GenerateOptions {
        out: tmp.join("p"),
        rows,
        parts,
        batches: 3,
        seed,
        ..Default::default()
    })
    .unwrap()
}

fn scoring_ids(s: &GenerateSummary) -> Vec<&str> {
    s.batches
        .iter()
        .filter(|b| b.created_client == "acp_foundation_push" && b.status == "success")
        .map(|b| b.id.as_str())
        .collect()
}

/// Exact percentile with linear interpolation (percentile_cont).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

mod scores {
    use super::*;

    /// Two batches (one without, one with the drift column): duplicates within parts, across
    /// parts and across batches, null identities.
    #[tokio::test]
    async fn union_flatten_dedupe_match_an_independent_computation() {
        let tmp = tempfile::tempdir().unwrap();
        let summary = generate(tmp.path(), 3000, 3, 5);
        let ids = scoring_ids(&summary);
        let batches = staged(&tmp.path().join("p"), &summary, &[ids[0], ids[2]]);
        let rows = read_rows(&batches);
        let expected = dedupe(&rows);
        let nulls = rows.iter().filter(|r| r.identity.is_none()).count() as u64;
        assert!(nulls > 0);

        let t = TransformConfig::default()
            .build(&tmp.path().join("spill"))
            .unwrap();
        let out = t
            .run(
                &batches,
                &OutputFormat::default(),
                &[],
                &tmp.path().join("work"),
            )
            .await
            .unwrap();
        assert_eq!(out.stats.rows_in, rows.len() as u64);
        assert_eq!(out.stats.null_identity_dropped, nulls);
        assert_eq!(out.stats.rows_out, expected.len() as u64);
        assert_eq!(
            out.stats.duplicates_dropped,
            rows.len() as u64 - nulls - expected.len() as u64
        );
        assert!(
            out.stats.duplicates_dropped > 3000,
            "across batches every identity repeats"
        );

        assert_kept(&out.scores_dir, &expected);
    }

    /// A memory limit too small for the dedupe's table of identities at once: it is built a
    /// range of identities at a time, and the same rows are kept.
    #[tokio::test]
    async fn a_table_larger_than_half_the_limit_is_built_in_ranges() {
        let tmp = tempfile::tempdir().unwrap();
        let summary = generate(tmp.path(), 60_000, 3, 13);
        let ids = scoring_ids(&summary);
        let batches = staged(&tmp.path().join("p"), &summary, &[ids[0], ids[2]]);
        let expected = dedupe(&read_rows(&batches));
        let cfg = TransformConfig {
            memory_limit: "8MiB".parse().unwrap(),
            ..Default::default()
        };
        let out = transform(tmp.path(), cfg, &batches, OutputFormat::default(), "w").await;
        assert!(out.stats.dedupe_passes > 1, "{:?}", out.stats);
        assert_eq!(out.stats.rows_out, expected.len() as u64);
        assert_kept(&out.scores_dir, &expected);
        let unlimited = TransformConfig {
            memory_limit: "unlimited".parse().unwrap(),
            ..Default::default()
        };
        let out = transform(
            tmp.path(),
            unlimited,
            &batches,
            OutputFormat::default(),
            "u",
        )
        .await;
        assert_eq!(out.stats.dedupe_passes, 1);
        assert_kept(&out.scores_dir, &expected);
    }

    #[tokio::test]
    async fn null_identities_can_be_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let summary = generate(tmp.path(), 2000, 2, 6);
        let ids = scoring_ids(&summary);
        let batches = staged(&tmp.path().join("p"), &summary, &[ids[2]]);
        let rows = read_rows(&batches);
        let nulls = rows.iter().filter(|r| r.identity.is_none()).count() as u64;
        let cfg = TransformConfig {
            keep_null_identities: true,
            ..Default::default()
        };
        let out = transform(tmp.path(), cfg, &batches, OutputFormat::default(), "w").await;
        assert_eq!(out.stats.null_identity_kept, nulls);
        assert_eq!(out.stats.rows_out, dedupe(&rows).len() as u64 + nulls);
    }

    /// `factors_as_json` writes each row's factors as a JSON array of the same structs; CSV
    /// output carries them as JSON text too, and its summaries equal the parquet run's.
    #[tokio::test]
    async fn influential_factors_as_json_text() {
        let tmp = tempfile::tempdir().unwrap();
        let summary = generate(tmp.path(), 2000, 2, 7);
        let ids = scoring_ids(&summary);
        let batches = staged(&tmp.path().join("p"), &summary, &[ids[2]]);
        let root = tmp.path();
        let lists = transform(
            root,
            TransformConfig::default(),
            &batches,
            OutputFormat::default(),
            "a",
        )
        .await;
        let json_cfg = TransformConfig {
            factors_as_json: true,
            ..Default::default()
        };
        let texts = transform(root, json_cfg, &batches, OutputFormat::default(), "b").await;
        let csv = transform(
            root,
            TransformConfig::default(),
            &batches,
            OutputFormat::Csv,
            "c",
        )
        .await;

        let key = |b: &RecordBatch, i: usize| {
            (
                col(b, "identity").as_string::<i32>().value(i).to_string(),
                col(b, "model").as_string::<i32>().value(i).to_string(),
            )
        };
        let mut expected: HashMap<(String, String), Vec<String>> = HashMap::new();
        for b in read_output(&lists.scores_dir) {
            let factors = col(&b, "influential_factors").as_list::<i32>();
            for i in 0..b.num_rows() {
                let list = factors.value(i);
                let codes = list.as_struct().column_by_name("code").unwrap().clone();
                let codes = codes.as_string::<i32>();
                let codes = (0..codes.len()).map(|j| codes.value(j).to_string());
                expected.insert(key(&b, i), codes.collect());
            }
        }
        let mut seen = 0;
        for b in read_output(&texts.scores_dir) {
            let text = col(&b, "influential_factors").as_string::<i32>();
            for i in 0..b.num_rows() {
                let parsed: Vec<serde_json::Value> = serde_json::from_str(text.value(i)).unwrap();
                let codes: Vec<String> = parsed
                    .iter()
                    .map(|f| f["code"].as_str().unwrap().to_string())
                    .collect();
                assert_eq!(codes, expected[&key(&b, i)]);
                seen += 1;
            }
        }
        assert_eq!(seen, expected.len());
        assert!(expected.values().any(|c| !c.is_empty()));

        let mut csv_rows = 0;
        let mut stack = vec![csv.scores_dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                assert_eq!(p.extension().unwrap(), "csv");
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(text.lines().next().unwrap().contains("influential_factors"));
                csv_rows += text.lines().count() - 1;
            }
        }
        assert_eq!(csv_rows as u64, csv.stats.rows_out);
        // Equal but for the last bits of sums, whose order the partitions decide.
        let (a, b) = (&csv.summary[0], &lists.summary[0]);
        assert_eq!(a.schema(), b.schema());
        assert_eq!(a.num_rows(), b.num_rows());
        for (x, y) in a.columns().iter().zip(b.columns()) {
            match x.data_type() {
                DataType::Float64 => {
                    let (x, y) = (
                        x.as_primitive::<Float64Type>(),
                        y.as_primitive::<Float64Type>(),
                    );
                    for i in 0..x.len() {
                        assert!(
                            (x.value(i) - y.value(i)).abs() <= 1e-9 * y.value(i).abs().max(1.0)
                        );
                    }
                }
                _ => assert_eq!(x, y),
            }
        }
    }

    #[tokio::test]
    async fn more_data_than_the_memory_limit_completes() {
        let tmp = tempfile::tempdir().unwrap();
        let summary = generate(tmp.path(), 150_000, 4, 8);
        let ids = scoring_ids(&summary);
        let batches = staged(&tmp.path().join("p"), &summary, &[ids[1], ids[2]]);
        let rows = read_rows(&batches);
        let expected = dedupe(&rows).len() as u64;
        // The decoded input alone is larger than the limit.
        let decoded: usize = batches
            .iter()
            .flat_map(|b| b.files.iter())
            .flat_map(|f| {
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
                    .unwrap()
                    .build()
                    .unwrap()
            })
            .map(|b| b.unwrap().get_array_memory_size())
            .sum();
        assert!(decoded > 64 << 20, "decoded input is only {decoded} bytes");
        let cfg = TransformConfig {
            memory_limit: "64MiB".parse().unwrap(),
            target_partitions: Some(2),
            ..Default::default()
        };
        let out = cfg
            .build(&tmp.path().join("spill"))
            .unwrap()
            .run(
                &batches,
                &OutputFormat::default(),
                &[],
                &tmp.path().join("w"),
            )
            .await
            .unwrap();
        assert_eq!(out.stats.rows_out, expected);
    }

    #[tokio::test]
    async fn an_empty_batch_gives_empty_tables() {
        let tmp = tempfile::tempdir().unwrap();
        let summary = generate(tmp.path(), 0, 2, 9);
        let ids = scoring_ids(&summary);
        let batches = staged(&tmp.path().join("p"), &summary, &[ids[2]]);
        let out = TransformConfig::default()
            .build(&tmp.path().join("spill"))
            .unwrap()
            .run(
                &batches,
                &OutputFormat::default(),
                &[],
                &tmp.path().join("w"),
            )
            .await
            .unwrap();
        assert_eq!(out.stats.rows_in, 0);
        assert_eq!(out.stats.rows_out, 0);
        assert!(out.summary.iter().all(|b| b.num_rows() == 0));
    }

    #[tokio::test]
    async fn an_incompatible_type_change_names_the_file_and_column() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good.parquet");
        let bad = tmp.path().join("bad.parquet");
        write_flat(&good, &[Some("a")], DataType::Float64);
        write_flat(&bad, &[Some("b")], DataType::Utf8);
        let batches = vec![StagedBatch {
            batch_id: "B1".into(),
            created_ms: 1,
            files: vec![good.clone(), bad.clone()],
        }];
        let err = TransformConfig {
            mapping: Some(flat_mapping()),
            ..Default::default()
        }
        .build(&tmp.path().join("spill"))
        .unwrap()
        .run(
            &batches,
            &OutputFormat::default(),
            &[],
            &tmp.path().join("w"),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, TransformError::IncompatibleColumn { .. }),
            "{text}"
        );
        assert!(
            text.contains("bad.parquet") && text.contains("s.score"),
            "{text}"
        );
    }
}

/// A flat dataset (not Customer AI): `id`, and `s {score, day}`.
fn write_flat(path: &Path, ids: &[Option<&str>], score_type: DataType) {
    let n = ids.len();
    let score: ArrayRef = match score_type {
        DataType::Float64 => Arc::new(Float64Array::from(vec![50.0; n])),
        _ => Arc::new(StringArray::from(vec!["fifty"; n])),
    };
    let s_fields = vec![
        Field::new("score", score_type, true),
        Field::new("day", DataType::Date32, true),
    ];
    let s = StructArray::new(
        s_fields.clone().into(),
        vec![score, Arc::new(Date32Array::from(vec![20_000; n]))],
        None,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("s", DataType::Struct(s_fields.into()), true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(ids.to_vec())), Arc::new(s)],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn flat_mapping() -> Mapping {
    Mapping {
        identity: "id".into(),
        identity_namespace: None,
        record_id: Some("id".into()),
        models: vec![ModelMapping {
            name: "attribution".into(),
            score: "s.score".into(),
            probability: None,
            percentile: None,
            propensity_type: None,
            score_date: Some("s.day".into()),
            influential_factors: None,
            present: None,
        }],
    }
}

mod summaries {
    use super::*;

    #[tokio::test]
    async fn summaries_and_drift_match_an_independent_computation() {
        let tmp = tempfile::tempdir().unwrap();
        let summary = generate(tmp.path(), 4000, 2, 12);
        let ids = scoring_ids(&summary);
        let batches = staged(&tmp.path().join("p"), &summary, &[ids[2]]);
        let kept: Vec<Row> = dedupe(&read_rows(&batches)).into_values().collect();
        let baseline = vec![ModelHistogram {
            model: "churn_risk".into(),
            buckets: [100, 90, 80, 70, 60, 50, 40, 30, 20, 10],
        }];
        let out = TransformConfig::default()
            .build(&tmp.path().join("spill"))
            .unwrap()
            .run(
                &batches,
                &OutputFormat::default(),
                &baseline,
                &tmp.path().join("w"),
            )
            .await
            .unwrap();

        let mut groups: BTreeMap<(String, i32), Vec<&Row>> = BTreeMap::new();
        for r in &kept {
            groups.entry((r.model.clone(), r.date)).or_default().push(r);
        }
        let mut seen = 0;
        for b in &out.summary {
            for i in 0..b.num_rows() {
                seen += 1;
                let model = col(b, "model").as_string::<i32>().value(i).to_string();
                let date = col(b, "score_date").as_primitive::<Date32Type>().value(i);
                let rows = &groups[&(model.clone(), date)];
                let mut scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
                scores.sort_by(f64::total_cmp);
                let n = scores.len() as f64;
                let mean = scores.iter().sum::<f64>() / n;
                let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
                let int = |name: &str| {
                    col(b, name)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .value(i)
                };
                let float = |name: &str| col(b, name).as_primitive::<Float64Type>().value(i);
                assert_eq!(int("rows"), rows.len() as i64);
                assert_eq!(int("distinct_identities"), rows.len() as i64);
                assert!((float("score_mean") - mean).abs() < 1e-9);
                assert!((float("score_stddev") - sd).abs() < 1e-9);
                assert_eq!(float("score_min"), scores[0]);
                assert_eq!(float("score_max"), *scores.last().unwrap());
                assert!((float("score_median") - percentile(&scores, 0.5)).abs() < 1e-9);
                assert!((float("score_p10") - percentile(&scores, 0.1)).abs() < 1e-9);
                assert!((float("score_p90") - percentile(&scores, 0.9)).abs() < 1e-9);
                for k in 0..10 {
                    let (lo, hi) = (k as f64 * 10.0, k as f64 * 10.0 + 10.0);
                    let expected = scores
                        .iter()
                        .filter(|&&s| s >= lo && (s < hi || (k == 9 && s <= hi)))
                        .count() as i64;
                    assert_eq!(
                        int(&format!("hist_{:02}_{:02}", k * 10, k * 10 + 10)),
                        expected
                    );
                }
                assert_eq!(
                    int("tier_low"),
                    scores.iter().filter(|&&s| s < 25.0).count() as i64
                );
                assert_eq!(
                    int("tier_medium"),
                    scores
                        .iter()
                        .filter(|&&s| (25.0..75.0).contains(&s))
                        .count() as i64
                );
                assert_eq!(
                    int("tier_high"),
                    scores.iter().filter(|&&s| s >= 75.0).count() as i64
                );
                assert!(!col(b, "top_factors").is_null(i));
            }
        }
        assert_eq!(seen, groups.len());

        // Drift of churn_risk against the baseline, by the formula, from our own histogram.
        let mut hist = [0u64; 10];
        for r in kept.iter().filter(|r| r.model == "churn_risk") {
            hist[((r.score / 10.0).floor() as usize).min(9)] += 1;
        }
        assert_eq!(
            out.histograms
                .iter()
                .find(|h| h.model == "churn_risk")
                .unwrap()
                .buckets,
            hist
        );
        let (nc, nb) = (hist.iter().sum::<u64>() as f64, 550.0);
        let psi: f64 = hist
            .iter()
            .zip(baseline[0].buckets.iter())
            .map(|(&c, &b)| {
                let p = (c as f64 / nc).max(1e-4);
                let q = (b as f64 / nb).max(1e-4);
                (p - q) * (p / q).ln()
            })
            .sum();
        let d = &out.drift[0];
        let models = col(d, "model").as_string::<i32>();
        let psis = col(d, "psi").as_primitive::<Float64Type>();
        let status = col(d, "status").as_string::<i32>();
        for i in 0..d.num_rows() {
            match models.value(i) {
                "churn_risk" => assert!((psis.value(i) - psi).abs() < 1e-12),
                _ => {
                    assert!(psis.is_null(i));
                    assert_eq!(status.value(i), "no_baseline");
                }
            }
        }
    }

    #[tokio::test]
    async fn all_equal_scores_with_an_explicit_mapping() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("flat.parquet");
        write_flat(
            &f,
            &[Some("a"), Some("b"), Some("c"), Some("a"), None],
            DataType::Float64,
        );
        let batches = vec![StagedBatch {
            batch_id: "B1".into(),
            created_ms: 1,
            files: vec![f],
        }];
        let out = TransformConfig {
            mapping: Some(flat_mapping()),
            ..Default::default()
        }
        .build(&tmp.path().join("spill"))
        .unwrap()
        .run(
            &batches,
            &OutputFormat::default(),
            &[],
            &tmp.path().join("w"),
        )
        .await
        .unwrap();
        assert_eq!(out.stats.rows_in, 5);
        assert_eq!(out.stats.rows_out, 3);
        assert_eq!(out.stats.duplicates_dropped, 1);
        assert_eq!(out.stats.null_identity_dropped, 1);
        let b = &out.summary[0];
        assert_eq!(b.num_rows(), 1);
        let float = |name: &str| col(b, name).as_primitive::<Float64Type>().value(0);
        assert_eq!(float("score_stddev"), 0.0);
        for p in [
            "score_p10",
            "score_median",
            "score_p90",
            "score_min",
            "score_max",
            "score_mean",
        ] {
            assert_eq!(float(p), 50.0, "{p}");
        }
        assert_eq!(
            col(b, "hist_50_60")
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            3
        );
        assert_eq!(
            col(b, "tier_medium")
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            3
        );
        let _ = HashMap::<u8, u8>::new();
    }
}
