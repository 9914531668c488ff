//! One conformance suite for the commit protocol, run against local disk and against real S3
//! (moto) and Azure Blob (azurite) servers that scripts/test-services.sh starts on loopback; GCS
//! as far as its emulator (fake-gcs-server) allows: reading a landed warehouse, and the
//! writability probe, as it refuses object_store's writes.
//! Without those servers (a plain `cargo test`), the remote runs are skipped with a note;
//! under CI (`CI` set) their absence is a failure.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use scoreland_sink::{SinkConfig, SinkError, Warehouse};

const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn write_parquet(path: &Path, rows: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows)),
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("v{i}")),
            )),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A run's local output: `score_date=…/x.parquet` files with the given row counts.
fn local_run(dir: &Path, parts: &[(&str, i64)]) {
    for (i, (partition, rows)) in parts.iter().enumerate() {
        write_parquet(&dir.join(partition).join(format!("f{i}.parquet")), *rows);
    }
}

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
    })
}

/// The whole protocol against one warehouse.
async fn conformance(wh: Warehouse) {
    let tmp = tempfile::tempdir().unwrap();
    assert!(wh.latest_commit("scores").await.unwrap().is_none());
    assert!(wh.live_files("scores").await.unwrap().is_empty());

    // Run 1: two partitions.
    let run1 = tmp.path().join("run1");
    local_run(
        &run1,
        &[
            ("score_date=2026-11-15", 10),
            ("score_date=2026-11-16", 20),
            ("score_date=2026-11-16", 5),
        ],
    );
    let c1 = wh
        .publish("scores", &run1, "r1", &["B1".into()])
        .await
        .unwrap();
    assert_eq!(c1.seq, 0);
    assert_eq!(c1.added.len(), 3);
    assert_eq!(c1.rows(), 35);
    assert!(c1.added.iter().all(|f| f.path.contains("part-r1-")));
    let latest: serde_json::Value = wh.get_json("scores/_latest.json").await.unwrap().unwrap();
    assert_eq!(latest["rows"], 35);
    assert_eq!(latest["files"].as_array().unwrap().len(), 3);
    assert!(
        latest["files"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with(wh.url().as_str().trim_end_matches('/'))
    );

    // Run 2 re-lands 2026-11-16 only: that partition is replaced, 2026-11-15 stays.
    let run2 = tmp.path().join("run2");
    local_run(&run2, &[("score_date=2026-11-16", 7)]);
    let c2 = wh
        .publish("scores", &run2, "r2", &["B2".into()])
        .await
        .unwrap();
    assert_eq!(c2.seq, 1);
    assert_eq!(c2.rows(), 17);
    assert_eq!(c2.removed.len(), 2);
    let live = wh.live_files("scores").await.unwrap();
    assert_eq!(live.len(), 2);
    assert_eq!(wh.latest_commit("scores").await.unwrap().unwrap(), c2);

    // A crash between data files and commit: files are uploaded, no commit record. Readers
    // still see commit 1; vacuum removes the orphans and nothing live.
    let crashed = tmp.path().join("crashed");
    local_run(&crashed, &[("score_date=2026-11-16", 3)]);
    let orphan = wh.store();
    // Local warehouses are rooted at their directory; object stores at the URL's path.
    let root = if wh.url().scheme() == "file" {
        String::new()
    } else {
        format!("{}/", wh.url().path().trim_matches('/'))
    };
    let orphan_path = object_store::path::Path::from(format!(
        "{root}scores/score_date=2026-11-16/part-dead-00000.parquet"
    ));
    object_store::ObjectStoreExt::put(
        orphan.as_ref(),
        &orphan_path,
        std::fs::read(crashed.join("score_date=2026-11-16/f0.parquet"))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    assert_eq!(wh.live_files("scores").await.unwrap(), live);
    let report = wh.vacuum("scores", false).await.unwrap();
    assert_eq!(
        report.deleted,
        vec!["score_date=2026-11-16/part-dead-00000.parquet".to_string()]
    );
    // Replaced files go only when asked.
    let report = wh.vacuum("scores", true).await.unwrap();
    assert_eq!(report.deleted.len(), 2);
    assert_eq!(wh.live_files("scores").await.unwrap(), live);

    // Two writers racing for the same commit, forced: both plan commit N on the same parent,
    // the first write wins and the second is refused.
    let run3 = tmp.path().join("run3");
    local_run(&run3, &[("score_date=2026-11-17", 1)]);
    let up_a = wh.upload_table("scores", &run3, "r3a").await.unwrap();
    let up_b = wh.upload_table("scores", &run3, "r3b").await.unwrap();
    let plan_a = wh.plan_commit(up_a, &[]).await.unwrap();
    let plan_b = wh.plan_commit(up_b, &[]).await.unwrap();
    assert_eq!(plan_a.seq, plan_b.seq);
    let won = wh.write_commit(plan_a).await.unwrap();
    match wh.write_commit(plan_b).await {
        Err(SinkError::CommitConflict { seq, .. }) => assert_eq!(seq, won.seq),
        other => panic!("the second writer must be refused, got {other:?}"),
    }
    assert_eq!(
        wh.latest_commit("scores").await.unwrap().unwrap().run_id,
        "r3a"
    );

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
}

#[tokio::test]
async fn local_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = SinkConfig {
        url: tmp.path().join("wh").display().to_string(),
        options: Default::default(),
    }
    .build()
    .await
    .unwrap();
    conformance(wh).await;
}

#[tokio::test]
async fn s3_moto() {
    let Some(cfg) = s3(&unique()) else { return };
    conformance(cfg.build().await.unwrap()).await;
}

#[tokio::test]
async fn azure_azurite() {
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
    let local = SinkConfig {
        url: local_dir.display().to_string(),
        options: Default::default(),
    }
    .build()
    .await
    .unwrap();
    let run = tmp.path().join("run");
    local_run(
        &run,
        &[("score_date=2026-11-15", 10), ("score_date=2026-11-16", 20)],
    );
    let landed = local
        .publish("scores", &run, "r1", &["B1".into()])
        .await
        .unwrap();

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
    };
    let wh = cfg.open().unwrap();
    let commit = wh.latest_commit("scores").await.unwrap().unwrap();
    assert_eq!(commit, landed);
    assert_eq!(commit.rows(), 30);
    let live = wh.live_files("scores").await.unwrap();
    assert_eq!(live.len(), 2);
    for (url, file) in live.iter().zip(&commit.live) {
        assert!(url.as_str().starts_with("gs://scoreland-test/"), "{url}");
        let path = object_store::path::Path::from(url.path());
        let bytes = object_store::ObjectStoreExt::get(&wh.store(), &path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let on_disk = std::fs::read(local_dir.join("scores").join(&file.path)).unwrap();
        assert_eq!(bytes.as_ref(), on_disk.as_slice(), "{url}");
    }

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
/// `identity`, `score` and the `score_date` column itself, as the transform writes them.
fn scores_output(dir: &Path, days: &[(&str, i64)], score: f64) {
    use arrow::array::{Date32Array, Float64Array};
    for (day, rows) in days {
        let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let days_since = (date - epoch).num_days() as i32;
        let schema = Arc::new(Schema::new(vec![
            Field::new("identity", DataType::Utf8, false),
            Field::new("score", DataType::Float64, false),
            Field::new("score_date", DataType::Date32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..*rows).map(|i| format!("id-{i}")),
                )),
                Arc::new(Float64Array::from_iter_values((0..*rows).map(|_| score))),
                Arc::new(Date32Array::from_iter_values(
                    (0..*rows).map(|_| days_since),
                )),
            ],
        )
        .unwrap();
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
        app_id: "nightly",
        app_version: seq,
        metadata: serde_json::Map::from_iter([("run_id".to_string(), serde_json::json!(run))]),
    }
}

/// Delta tables on one warehouse: partition replaces per dataset and date, two datasets side
/// by side, the transaction identifier, time travel.
async fn delta_conformance(wh: Warehouse) {
    let tmp = tempfile::tempdir().unwrap();
    assert!(wh.delta_table("scores", None).await.unwrap().is_none());
    let one = tmp.path().join("one");
    scores_output(&one, &[("2026-11-15", 10), ("2026-11-16", 20)], 1.0);
    let c = wh.write_table(&write(&one, "ds-a", "r1", 1)).await.unwrap();
    assert_eq!((c.version, c.committed), (0, true));
    assert_eq!(c.replaced_dates, ["2026-11-15", "2026-11-16"]);

    // Another dataset on the same dates: its own partitions, a's rows untouched.
    let other = tmp.path().join("other");
    scores_output(&other, &[("2026-11-16", 7)], 5.0);
    let mut w = write(&other, "ds-b", "r2", 1);
    w.app_id = "other-pipeline";
    assert_eq!(wh.write_table(&w).await.unwrap().version, 1);

    // a's next night replaces its 2026-11-16 only.
    let two = tmp.path().join("two");
    scores_output(&two, &[("2026-11-16", 3), ("2026-11-17", 4)], 2.0);
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
async fn delta_local_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = SinkConfig {
        url: tmp.path().join("wh").display().to_string(),
        options: Default::default(),
    }
    .build()
    .await
    .unwrap();
    delta_conformance(wh).await;
}

#[tokio::test]
async fn delta_s3_moto() {
    let Some(cfg) = s3(&unique()) else { return };
    delta_conformance(cfg.build().await.unwrap()).await;
}

#[tokio::test]
async fn delta_azure_azurite() {
    let Some(cfg) = azure(&unique()) else { return };
    delta_conformance(cfg.build().await.unwrap()).await;
}
