//! The warehouse against local disk and against real S3 (moto) and Azure Blob (azurite) servers
//! that scripts/test-services.sh starts on loopback: Delta tables (partition replaces, two
//! datasets, transaction identifiers, time travel), locks, and the old layout's conversion; GCS
//! as far as its emulator (fake-gcs-server) allows: reading a landed Delta table, and the
//! writability probe, as it refuses object_store's writes.
//! Without those servers (a plain `cargo test`), the remote runs are skipped with a note;
//! under CI (`CI` set) their absence is a failure.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use scoreland_sink::{SinkConfig, SinkError, Warehouse};

const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn remote(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        // scripts/test.sh (the README's test command) and CI start the servers: there, a
        // missing one fails the test instead of skipping it.
        Err(_)
            if std::env::var_os("CI").is_some()
                || std::env::var_os("SCORELAND_REQUIRE_SERVICES").is_some() =>
        {
            panic!(
                "{var} is not set: run the tests through scripts/test.sh, which starts the servers"
            )
        }
        Err(_) => {
            eprintln!("skipped: {var} is not set (scripts/test.sh starts the test servers)");
            None
        }
    }
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn s3(prefix: &str) -> Option<SinkConfig> {
    let endpoint = remote("SCORELAND_TEST_S3_ENDPOINT")?;
    let options: BTreeMap<String, String> = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Some(SinkConfig {
        url: format!("s3://scoreland-test/{prefix}"),
        options,
        single_writer: false,
    })
}

fn azure(prefix: &str) -> Option<SinkConfig> {
    let url = remote("SCORELAND_TEST_AZURITE_URL")?;
    let options: BTreeMap<String, String> = [
        ("azure_storage_account_name", "devstoreaccount1".to_string()),
        ("azure_storage_account_key", AZURITE_KEY.to_string()),
        ("azure_storage_endpoint", format!("{url}/devstoreaccount1")),
        ("azure_allow_http", "true".to_string()),
        // Azurite ignores `startFrom` in listings; in emulator mode object_store filters them
        // itself (Delta lists its log from an offset). The URL comes from
        // AZURITE_BLOB_STORAGE_URL, which scripts/test-services.sh sets.
        ("azure_storage_use_emulator", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Some(SinkConfig {
        url: format!("az://scoreland-test/{prefix}"),
        options,
        single_writer: false,
    })
}

/// Locks and the old layout's conversion, against one warehouse.
async fn conformance(wh: Warehouse) {
    let tmp = tempfile::tempdir().unwrap();
    // Locks: one holder at a time; a stale lock is taken over.
    let lock = wh
        .lock("nightly", "run-1", Duration::from_secs(3600), &|| {})
        .await
        .unwrap();
    let err = wh
        .lock("nightly", "run-2", Duration::from_secs(3600), &|| {})
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SinkError::Locked { ref run_id, .. } if run_id == "run-1"),
        "{err}"
    );
    lock.release().await.unwrap();
    let _held = wh
        .lock("nightly", "run-3", Duration::from_secs(3600), &|| {})
        .await
        .unwrap();
    let taken = wh
        .lock("nightly", "run-4", Duration::ZERO, &|| {})
        .await
        .unwrap();
    taken.release().await.unwrap();
    // A lock is renewed while its run lives: not stale after its stale time.
    let short = Duration::from_millis(800);
    let live = wh.lock("heartbeat", "run-a", short, &|| {}).await.unwrap();
    tokio::time::sleep(short * 2).await;
    let err = wh
        .lock("heartbeat", "run-b", short, &|| {})
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SinkError::Locked { ref run_id, .. } if run_id == "run-a"),
        "{err}"
    );
    live.check_held().unwrap();
    // Taken over (as if its run were dead): the run learns it, and its release leaves the
    // other run's lock alone.
    let other = wh
        .lock("heartbeat", "run-c", Duration::ZERO, &|| {})
        .await
        .unwrap();
    tokio::time::sleep(short).await;
    assert!(
        matches!(live.check_held(), Err(SinkError::LockLost { .. })),
        "the takeover went unnoticed"
    );
    live.release().await.unwrap();
    let err = wh
        .lock("heartbeat", "run-d", Duration::from_secs(3600), &|| {})
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SinkError::Locked { ref run_id, .. } if run_id == "run-c"),
        "{err}"
    );
    other.release().await.unwrap();
    // Released: free for the next run at once.
    wh.lock("heartbeat", "run-e", Duration::from_secs(3600), &|| {})
        .await
        .unwrap()
        .release()
        .await
        .unwrap();

    // A table of the old layout (commit records listing live files) becomes a Delta table
    // with the same rows, and the old records go.
    let old = tmp.path().join("old");
    scores_output(&old, None, &[("2026-11-15", 6), ("2026-11-16", 9)], 2.0);
    let root = wh.url().path().trim_matches('/').to_string();
    let mut live = Vec::new();
    for day in ["2026-11-15", "2026-11-16"] {
        let rel = format!("score_date={day}/part-old-00000.parquet");
        let bytes = std::fs::read(old.join(format!("score_date={day}/part-0.parquet"))).unwrap();
        let key = if wh.url().scheme() == "file" {
            format!("scores/{rel}")
        } else {
            format!("{root}/scores/{rel}")
        };
        object_store::ObjectStoreExt::put(
            wh.store().as_ref(),
            &object_store::path::Path::from(key),
            bytes.into(),
        )
        .await
        .unwrap();
        live.push(serde_json::json!({"path": rel, "partition": format!("score_date={day}"), "rows": 0, "bytes": 0}));
    }
    wh.put_json(
        "scores/_commits/00000000000000000000.json",
        &serde_json::json!({
            "table": "scores", "seq": 0, "run_id": "old-run", "batches": ["B0"],
            "committed_at": "2026-11-16T06:00:00Z", "added": live, "removed": [], "live": live,
        }),
    )
    .await
    .unwrap();
    assert!(wh.is_legacy("scores").await.unwrap());
    let scratch = tempfile::tempdir().unwrap();
    let converted = wh
        .convert_legacy("scores", "ds-old", true, scratch.path())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(converted.replaced_dates, ["2026-11-15", "2026-11-16"]);
    assert!(!wh.is_legacy("scores").await.unwrap());
    assert_eq!(
        delta_rows(&wh, None).await,
        vec![
            ("ds-old".to_string(), "2026-11-15".to_string(), 6, 12.0),
            ("ds-old".into(), "2026-11-16".into(), 9, 18.0),
        ]
    );
}

/// A warehouse on local disk under `dir`.
async fn local_warehouse(dir: &Path) -> Warehouse {
    SinkConfig {
        url: dir.join("wh").display().to_string(),
        options: Default::default(),
        single_writer: false,
    }
    .build()
    .await
    .unwrap()
}

#[tokio::test]
async fn local_disk() {
    let tmp = tempfile::tempdir().unwrap();
    delta_conformance(local_warehouse(tmp.path()).await).await;
    conformance(local_warehouse(&tmp.path().join("other")).await).await;
}

#[tokio::test]
async fn s3_moto() {
    let Some(cfg) = s3(&unique()) else { return };
    delta_conformance(cfg.build().await.unwrap()).await;
    let Some(cfg) = s3(&unique()) else { return };
    conformance(cfg.build().await.unwrap()).await;
}

#[tokio::test]
async fn azure_azurite() {
    let Some(cfg) = azure(&unique()) else { return };
    delta_conformance(cfg.build().await.unwrap()).await;
    // ADLS Gen2's URL form names the same container through the same store.
    let Some(mut cfg) = azure(&unique()) else {
        return;
    };
    cfg.url = cfg.url.replacen(
        "az://scoreland-test/",
        "abfss://scoreland-test@devstoreaccount1.dfs.core.windows.net/",
        1,
    );
    delta_conformance(cfg.build().await.unwrap()).await;
    let Some(cfg) = azure(&unique()) else { return };
    conformance(cfg.build().await.unwrap()).await;
}

#[tokio::test]
async fn a_missing_bucket_fails_before_any_data() {
    if let Some(mut cfg) = s3("x") {
        cfg.url = "s3://no-such-bucket-scoreland/x".into();
        let err = cfg.build().await.unwrap_err();
        assert!(matches!(err, SinkError::NotWritable { .. }), "{err}");
        assert!(err.to_string().contains("bucket"), "{err}");
    }
    let err = SinkConfig {
        url: "/proc/scoreland-cannot-write-here".into(),
        options: Default::default(),
        single_writer: false,
    }
    .build()
    .await
    .unwrap_err();
    assert!(
        matches!(err, SinkError::Local { .. } | SinkError::NotWritable { .. }),
        "{err}"
    );
    let err = SinkConfig {
        url: "ftp://host/x".into(),
        options: Default::default(),
        single_writer: false,
    }
    .build()
    .await
    .unwrap_err();
    assert!(matches!(err, SinkError::Url { .. }), "{err}");
}

/// fake-gcs-server serves object_store's reads but refuses its writes (XML-API PUT), so the
/// warehouse is landed on local disk, copied in through the emulator's JSON API, and read back
/// through `gs://`; the writability probe must then say, before any data, that it cannot write.
#[tokio::test]
async fn gcs_fake_server_reads_a_landed_warehouse_and_the_probe_reports_refused_writes() {
    let Some(base) = remote("SCORELAND_TEST_GCS_URL") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let local_dir = tmp.path().join("wh");
    let local = local_warehouse(tmp.path()).await;
    let run = tmp.path().join("run");
    scores_output(
        &run,
        Some("r1"),
        &[("2026-11-15", 10), ("2026-11-16", 20)],
        1.0,
    );
    local
        .write_table(&write(&run, "ds-a", "r1", 1))
        .await
        .unwrap();
    let landed = delta_rows(&local, None).await;

    let prefix = unique();
    let http = reqwest::Client::new();
    let mut files = Vec::new();
    collect(&local_dir, &mut files);
    for file in &files {
        let rel = file.strip_prefix(&local_dir).unwrap().to_str().unwrap();
        let resp = http
            .post(format!("{base}/upload/storage/v1/b/scoreland-test/o"))
            .query(&[
                ("uploadType", "media"),
                ("name", &format!("{prefix}/{rel}")),
            ])
            .body(std::fs::read(file).unwrap())
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "seeding {rel}: {}",
            resp.status()
        );
    }

    let key = serde_json::json!({
        "gcs_base_url": base, "disable_oauth": true,
        "client_email": "", "private_key": "", "private_key_id": "",
    });
    let cfg = SinkConfig {
        url: format!("gs://scoreland-test/{prefix}"),
        options: [("google_service_account_key".to_string(), key.to_string())].into(),
        single_writer: false,
    };
    // The Delta table reads the same through gs:// as on local disk.
    let wh = cfg.open().unwrap();
    assert_eq!(delta_rows(&wh, None).await, landed);
    assert_eq!(landed.iter().map(|r| r.2).sum::<i64>(), 30);

    let err = cfg.build().await.unwrap_err();
    assert!(matches!(err, SinkError::NotWritable { .. }), "{err}");
    assert!(err.to_string().contains("gs://scoreland-test/"), "{err}");
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A transform's output for one table: `score_date=D/part.parquet` files whose rows carry
/// `identity`, `score`, the `score_date` column itself and the run's `run_id` (none in the
/// old layout), as the transform writes them.
fn scores_output(dir: &Path, run: Option<&str>, days: &[(&str, i64)], score: f64) {
    use arrow::array::{ArrayRef, Date32Array, Float64Array};
    for (day, rows) in days {
        let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let days_since = (date - epoch).num_days() as i32;
        let mut fields = vec![
            Field::new("identity", DataType::Utf8, false),
            Field::new("score", DataType::Float64, false),
            Field::new("score_date", DataType::Date32, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                (0..*rows).map(|i| format!("id-{i}")),
            )),
            Arc::new(Float64Array::from_iter_values((0..*rows).map(|_| score))),
            Arc::new(Date32Array::from_iter_values(
                (0..*rows).map(|_| days_since),
            )),
        ];
        if let Some(run) = run {
            fields.push(Field::new("run_id", DataType::Utf8, false));
            columns.push(Arc::new(StringArray::from_iter_values(
                (0..*rows).map(|_| run),
            )));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let path = dir.join(format!("score_date={day}")).join("part-0.parquet");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema,
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
}

/// (dataset, score_date, rows, sum of score) of a table, read back through Delta.
async fn delta_rows(wh: &Warehouse, version: Option<u64>) -> Vec<(String, String, i64, f64)> {
    use deltalake::datafusion::prelude::SessionContext;
    let table = wh.delta_table("scores", version).await.unwrap().unwrap();
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("scores", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql(
            "SELECT dataset_id, CAST(score_date AS VARCHAR) AS d, count(*) AS n, sum(score) AS s \
             FROM scores GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        use arrow::array::AsArray;
        use arrow::datatypes::{Float64Type, Int64Type};
        let ds = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        let d = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        for i in 0..b.num_rows() {
            out.push((
                ds.as_string::<i32>().value(i).to_string(),
                d.as_string::<i32>().value(i).to_string(),
                b.column(2).as_primitive::<Int64Type>().value(i),
                b.column(3).as_primitive::<Float64Type>().value(i),
            ));
        }
    }
    out
}

fn write<'a>(
    dir: &'a Path,
    dataset: &'a str,
    run: &'a str,
    seq: i64,
) -> scoreland_sink::TableWrite<'a> {
    scoreland_sink::TableWrite {
        table: "scores",
        local_dir: dir,
        dataset_id: dataset,
        run_id: run,
        by_score_date: true,
        date_column: "score_date",
        replace_dataset: false,
        append: false,
        evolve_schema: false,
        app_id: "nightly",
        app_version: seq,
        metadata: serde_json::Map::from_iter([("run_id".to_string(), serde_json::json!(run))]),
        properties: Default::default(),
    }
}

/// Delta tables on one warehouse: partition replaces per dataset and date, two datasets side
/// by side, the transaction identifier, time travel.
async fn delta_conformance(wh: Warehouse) {
    let tmp = tempfile::tempdir().unwrap();
    assert!(wh.delta_table("scores", None).await.unwrap().is_none());
    let one = tmp.path().join("one");
    scores_output(
        &one,
        Some("r1"),
        &[("2026-11-15", 10), ("2026-11-16", 20)],
        1.0,
    );
    let c = wh.write_table(&write(&one, "ds-a", "r1", 1)).await.unwrap();
    assert_eq!((c.version, c.committed), (0, true));
    assert_eq!(c.replaced_dates, ["2026-11-15", "2026-11-16"]);

    // Another dataset on the same dates: its own partitions, a's rows untouched.
    let other = tmp.path().join("other");
    scores_output(&other, Some("r2"), &[("2026-11-16", 7)], 5.0);
    let mut w = write(&other, "ds-b", "r2", 1);
    w.app_id = "other-pipeline";
    assert_eq!(wh.write_table(&w).await.unwrap().version, 1);

    // a's next night replaces its 2026-11-16 only.
    let two = tmp.path().join("two");
    scores_output(
        &two,
        Some("r3"),
        &[("2026-11-16", 3), ("2026-11-17", 4)],
        2.0,
    );
    assert_eq!(
        wh.write_table(&write(&two, "ds-a", "r3", 2))
            .await
            .unwrap()
            .version,
        2
    );
    let expected = vec![
        ("ds-a".to_string(), "2026-11-15".to_string(), 10, 10.0),
        ("ds-a".into(), "2026-11-16".into(), 3, 6.0),
        ("ds-a".into(), "2026-11-17".into(), 4, 8.0),
        ("ds-b".into(), "2026-11-16".into(), 7, 35.0),
    ];
    assert_eq!(delta_rows(&wh, None).await, expected);

    // The same run again (a rerun after a crash): its transaction is there, nothing is added.
    let again = wh
        .write_table(&write(&two, "ds-a", "r3-rerun", 2))
        .await
        .unwrap();
    assert_eq!((again.version, again.committed), (2, false));
    assert_eq!(delta_rows(&wh, None).await, expected);

    // Time travel: version 0 is the first night as it was.
    assert_eq!(
        delta_rows(&wh, Some(0)).await,
        vec![
            ("ds-a".to_string(), "2026-11-15".to_string(), 10, 10.0),
            ("ds-a".into(), "2026-11-16".into(), 20, 20.0),
        ]
    );
}

#[tokio::test]
async fn delta_logs_are_checkpointed_and_optimize_compacts_without_changing_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = local_warehouse(tmp.path()).await;
    // Twelve nights appended to one partition: twelve small files.
    for night in 0..12i64 {
        let dir = tmp.path().join(format!("n{night}"));
        scores_output(&dir, Some("r"), &[("2026-11-15", 5)], night as f64);
        let mut w = write(&dir, "ds-a", "r", night + 1);
        w.by_score_date = false;
        assert_eq!(wh.write_table(&w).await.unwrap().version, night as u64);
    }
    let log = tmp.path().join("wh/scores/_delta_log");
    let interval: u64 = scoreland_sink::CHECKPOINT_INTERVAL.parse().unwrap();
    // delta-rs checkpoints after every `interval`th commit (versions interval-1, 2·interval-1…).
    assert!(
        log.join(format!("{:020}.checkpoint.parquet", interval - 1))
            .exists(),
        "a checkpoint every {interval} commits"
    );
    assert!(log.join("_last_checkpoint").exists());
    let before = delta_rows(&wh, None).await;
    assert_eq!(
        before,
        vec![("ds-a".to_string(), "2026-11-15".to_string(), 60, 330.0)]
    );
    let report = wh
        .optimize_table("scores", &["identity"], 64 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.files_removed, 12);
    assert_eq!(report.files_added, 1);
    assert_eq!(delta_rows(&wh, None).await, before);
}

/// Writes `columns` (with `score_date` = `day` and `run_id` = `run` added) as the one file of
/// `dir`'s `score_date=day/`.
fn night_file(dir: &Path, day: &str, run: &str, columns: Vec<(&str, arrow::array::ArrayRef)>) {
    use arrow::array::{Array, Date32Array};
    let rows = columns[0].1.len();
    let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    let days = (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32;
    let mut all = columns;
    all.push((
        "score_date",
        Arc::new(Date32Array::from_iter_values((0..rows).map(|_| days))),
    ));
    all.push((
        "run_id",
        Arc::new(StringArray::from_iter_values((0..rows).map(|_| run))),
    ));
    let batch = RecordBatch::try_from_iter(all).unwrap();
    let path = dir.join(format!("score_date={day}")).join("part-0.parquet");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// An events table: each night's files join their dates (nothing replaced), a column the
/// files gain is added to the table only when the write allows it, and a type change is
/// refused with both types named.
#[tokio::test]
async fn appended_dates_keep_their_rows_and_new_columns_evolve_the_table() {
    use arrow::array::{ArrayRef, BooleanArray, Int64Array};
    let tmp = tempfile::tempdir().unwrap();
    let wh = local_warehouse(tmp.path()).await;
    let ids = |r: std::ops::Range<i64>| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(r.map(|i| format!("e{i}"))))
    };
    fn events(
        mut w: scoreland_sink::TableWrite<'_>,
        evolve: bool,
    ) -> scoreland_sink::TableWrite<'_> {
        w.table = "events";
        w.append = true;
        w.evolve_schema = evolve;
        w
    }
    let one = tmp.path().join("one");
    night_file(&one, "2026-11-16", "r1", vec![("_id", ids(0..5))]);
    let c = wh
        .write_table(&events(write(&one, "ds", "r1", 1), false))
        .await
        .unwrap();
    assert!(c.replaced_dates.is_empty());

    let two = tmp.path().join("two");
    night_file(
        &two,
        "2026-11-16",
        "r2",
        vec![
            ("_id", ids(5..8)),
            (
                "isHomePage",
                Arc::new(BooleanArray::from(vec![true, false, true])) as ArrayRef,
            ),
        ],
    );
    let e = wh
        .write_table(&events(write(&two, "ds", "r2", 2), false))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a column isHomePage that the table does not"),
        "{e}"
    );
    wh.write_table(&events(write(&two, "ds", "r2", 2), true))
        .await
        .unwrap();
    let q = wh
        .query(
            &["events"],
            scoreland_sink::AsOf::Version(1),
            "SELECT count(*) AS n, count(\"isHomePage\") AS home FROM events",
        )
        .await
        .unwrap();
    let b = &q.batches[0];
    let n = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    // Night one's five rows are still there (nulls in the new column), beside night two's three.
    assert_eq!((n(0), n(1)), (8, 3));

    let three = tmp.path().join("three");
    night_file(
        &three,
        "2026-11-17",
        "r3",
        vec![
            ("_id", ids(8..9)),
            (
                "isHomePage",
                Arc::new(StringArray::from(vec!["yes"])) as ArrayRef,
            ),
        ],
    );
    let e = wh
        .write_table(&events(write(&three, "ds", "r3", 3), true))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("column isHomePage is boolean in the table and string in the files"),
        "{e}"
    );
}
