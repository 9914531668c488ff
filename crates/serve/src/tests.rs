//! `serve` against a hostile client, over the real protocol (tokio-postgres, simple and
//! extended): writes, file access, DDL, settings and runaway queries are refused or bounded,
//! and nothing in the warehouse or the spill directory changes; cancel requests, the login
//! and idle timeouts, the connection slots, and Postgres' `21000` for a scalar subquery of
//! many rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Date32Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use scoreland_sink::{SinkConfig, TableWrite, Warehouse};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::{Limits, ServeOptions, Server};

/// Every file under a directory with its bytes (and every directory), to show nothing changed.
fn tree_digest(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(rel + "/", Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// A warehouse with a `scores` table of `rows` rows over two days, published as pipeline
/// `demo`.
async fn warehouse(dir: &Path, rows: usize) -> Warehouse {
    let wh = SinkConfig {
        url: dir.join("wh").to_string_lossy().into_owned(),
        options: BTreeMap::new(),
        single_writer: false,
    }
    .build()
    .await
    .unwrap();
    let local = dir.join("night");
    let schema = Arc::new(Schema::new(vec![
        Field::new("identity", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("score_date", DataType::Date32, false),
        Field::new("run_id", DataType::Utf8, false),
    ]));
    for (day, date) in [("2026-11-15", 20407), ("2026-11-16", 20408)] {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("id-{i}")),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| i as f64 / rows as f64),
                )),
                Arc::new(Date32Array::from_iter_values((0..rows).map(|_| date))),
                Arc::new(StringArray::from_iter_values((0..rows).map(|_| "r1"))),
            ],
        )
        .unwrap();
        let path = local.join(format!("score_date={day}/part-0.parquet"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema.clone(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let commit = wh
        .write_table(&TableWrite {
            table: "scores",
            local_dir: &local,
            dataset_id: "ds1",
            run_id: "r1",
            by_score_date: true,
            date_column: "score_date",
            replace_dataset: false,
            append: false,
            evolve_schema: false,
            app_id: "demo",
            app_version: 1,
            metadata: serde_json::Map::new(),
            properties: Default::default(),
        })
        .await
        .unwrap();
    wh.put_json(
        "_published/demo.json",
        &scoreland_sink::Published {
            run_id: "r1".into(),
            versions: [("scores".to_string(), commit.version)].into(),
        },
    )
    .await
    .unwrap();
    wh
}

struct Running {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(wh: Warehouse, spill: &Path, tune: impl FnOnce(&mut ServeOptions)) -> Running {
        let mut options = ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            login: None,
            tls: None,
            limits: Limits {
                query_memory: 64 << 20,
                query_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(600),
            },
            max_connections: 8,
            shutdown_grace: Duration::from_secs(1),
            login_timeout: Duration::from_secs(10),
            spill_dir: Some(spill.to_path_buf()),
            tables: vec!["scores".into(), "audiences".into()],
            deny_labels: Default::default(),
            cluster: None,
        };
        tune(&mut options);
        let server = Server::bind(wh, options).await.unwrap();
        let port = server.local_addr.port();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Running {
            port,
            stop: Some(stop),
            task,
        }
    }

    /// A server over a warehouse of 10 rows a day in a directory of its own (kept by the
    /// returned guard).
    async fn small(tune: impl FnOnce(&mut ServeOptions)) -> (tempfile::TempDir, Running) {
        let dir = tempfile::tempdir().unwrap();
        let wh = warehouse(dir.path(), 10).await;
        let server = Running::start(wh, &dir.path().join("spill"), tune).await;
        (dir, server)
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("scoreland")
            .dbname("datafusion")
            .connect_timeout(Duration::from_secs(5));
        c
    }

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config().connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// The SQLSTATE of a failed statement, or `ok`.
fn outcome<T>(r: Result<T, tokio_postgres::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.code() {
            Some(code) => code.code().to_string(),
            None => format!("no SQLSTATE: {e}"),
        },
    }
}

/// One value of a one-row simple query.
async fn value(client: &Client, sql: &str) -> String {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .unwrap()
}

/// Statements that write, read files, define things or change the server's settings: each
/// must fail with a SQLSTATE. `{wh}` and `{spill}` are the warehouse and spill directories.
const REFUSED: &[&str] = &[
    "COPY (SELECT 1 AS a) TO '{wh}/x.csv'",
    "EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{wh}/x.csv'",
    "EXPLAIN COPY (SELECT 1 AS a) TO '{wh}/x.csv'",
    "COPY (SELECT 1 AS a) TO 'x.csv'",
    "EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO 'x.csv'",
    "COPY scores TO '{wh}/_published/demo.json' STORED AS JSON",
    "EXPLAIN ANALYZE COPY scores TO '{wh}/_published/demo.json' STORED AS JSON",
    "COPY (SELECT 1 AS a) TO '{wh}/scores/_delta_log/00000000000000000009.json' STORED AS JSON",
    "COPY (SELECT 1 AS a) TO '{spill}/x.parquet'",
    "COPY (SELECT 1 AS a) TO STDOUT",
    "COPY scores FROM '/etc/passwd'",
    "SELECT 'fake' AS identity INTO audiences",
    "EXPLAIN ANALYZE SELECT 'fake' AS identity INTO audiences",
    "EXPLAIN SELECT 'fake' AS identity INTO audiences",
    "CREATE TABLE audiences AS SELECT 'fake' AS identity",
    "EXPLAIN ANALYZE CREATE TABLE audiences AS SELECT 'fake' AS identity",
    "CREATE TABLE t (a INT)",
    "CREATE VIEW v AS SELECT * FROM scores",
    "EXPLAIN ANALYZE CREATE VIEW v AS SELECT 1",
    "CREATE EXTERNAL TABLE ext STORED AS CSV LOCATION '/etc/passwd'",
    "CREATE EXTERNAL TABLE ext2 STORED AS PARQUET LOCATION '{wh}/scores/'",
    "CREATE SCHEMA s",
    "CREATE DATABASE d",
    "DROP TABLE scores",
    "DROP VIEW IF EXISTS v",
    "DROP SCHEMA public CASCADE",
    "INSERT INTO scores SELECT * FROM scores",
    "EXPLAIN ANALYZE INSERT INTO scores SELECT * FROM scores",
    "UPDATE scores SET score = 0",
    "DELETE FROM scores",
    "EXPLAIN ANALYZE DELETE FROM scores",
    "TRUNCATE scores",
    "ALTER TABLE scores RENAME TO x",
    "COMMENT ON TABLE scores IS 'x'",
    "GRANT SELECT ON scores TO public",
    "ANALYZE scores",
    "VACUUM scores",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "SET datafusion.runtime.memory_limit = '1000G'",
    "SET datafusion.runtime.temp_directory = '/tmp/elsewhere'",
    "SET datafusion.execution.target_partitions = 1024",
    "SET datafusion.catalog.information_schema = false",
    "SET LOCAL datafusion.runtime.memory_limit = '1000G'",
    "RESET datafusion.runtime.memory_limit",
    "SET work_mem = '64GB'",
    "SET statement_timeout = '24h'",
    "SET transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET ROLE postgres",
    "SELECT * FROM '{wh}/_state/demo.json'",
    "SELECT * FROM '/etc/passwd'",
    "LISTEN x",
    "CALL f()",
    // Through what compat.rs rewrites: still refused.
    "COPY (SELECT * FROM information_schema.columns) TO '{wh}/x.csv'",
    "COPY (SELECT format('%I', 'x') AS a) TO '{wh}/x.csv'",
    "CREATE TABLE t2 AS SELECT * FROM information_schema.table_constraints",
    "SELECT * INTO audiences FROM pg_catalog.pg_user",
    "COPY (SELECT s[i] AS a FROM generate_series(1, 1) AS i, string_to_array('a', ',') s) TO '{wh}/y.csv'",
    "CREATE VIEW v2 AS SELECT generate_series(1, 3) AS i",
];

/// Runaway reads: refused with a SQLSTATE, or answered, within the query timeout.
const BOUNDED: &[&str] = &[
    "SELECT count(*) FROM generate_series(1, 1000000000000)",
    "SELECT count(*) FROM generate_series(1, 1e12::BIGINT)",
    "EXPLAIN ANALYZE SELECT count(*) FROM generate_series(1, 1000000000000)",
    "SELECT count(*) FROM scores a, scores b, scores c, scores d, scores e",
    "SELECT a.identity, count(*) FROM scores a, scores b, scores c GROUP BY 1 ORDER BY 2 DESC",
    "SELECT x FROM generate_series(1, 1000000000000) t(x) ORDER BY x DESC LIMIT 1",
];

fn expand(sql: &str, wh: &Path, spill: &Path) -> String {
    sql.replace("{wh}", &wh.to_string_lossy())
        .replace("{spill}", &spill.to_string_lossy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path(), 200).await;
    let (wh_dir, spill) = (dir.path().join("wh"), dir.path().join("spill"));
    std::fs::create_dir_all(&spill).unwrap();
    let before = (tree_digest(&wh_dir), tree_digest(&spill));
    let server = Running::start(wh, &spill, |_| {}).await;
    let client = server.connect().await.unwrap();
    let rows_before = value(&client, "SELECT count(*) FROM scores").await;
    assert_eq!(rows_before, "400");
    let mut failures = Vec::new();
    for template in REFUSED {
        let sql = expand(template, &wh_dir, &spill);
        let simple = outcome(client.simple_query(&sql).await);
        let extended = outcome(client.query(sql.as_str(), &[]).await);
        for (protocol, got) in [("simple", &simple), ("extended", &extended)] {
            if got == "ok" || got.starts_with("no SQLSTATE") {
                failures.push(format!("{protocol}: {sql}: {got}"));
            }
        }
        // The session goes on.
        assert_eq!(value(&client, "SELECT 1").await, "1", "after {sql}");
    }
    for sql in BOUNDED {
        for protocol in ["simple", "extended"] {
            let t = Instant::now();
            let got = if protocol == "simple" {
                outcome(client.simple_query(sql).await)
            } else {
                outcome(client.query(*sql, &[]).await)
            };
            let took = t.elapsed();
            if took > Duration::from_secs(10) || got.starts_with("no SQLSTATE") {
                failures.push(format!("{protocol}: {sql}: {got} after {took:?}"));
            }
            assert_eq!(value(&client, "SELECT 1").await, "1", "after {sql}");
        }
    }
    assert!(
        failures.is_empty(),
        "not refused, or not bounded:\n{}",
        failures.join("\n")
    );
    // Nothing defined lingers for other sessions, and the settings are the server's.
    let other = server.connect().await.unwrap();
    assert_eq!(
        value(
            &other,
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN \
             ('audiences', 't', 'v', 'ext', 'ext2', 'x')"
        )
        .await,
        "0"
    );
    assert_eq!(
        value(
            &other,
            "SELECT value FROM information_schema.df_settings \
             WHERE name = 'datafusion.execution.target_partitions'"
        )
        .await,
        value(
            &client,
            "SELECT value FROM information_schema.df_settings \
             WHERE name = 'datafusion.execution.target_partitions'"
        )
        .await
    );
    assert_eq!(
        value(&other, "SELECT count(*) FROM scores").await,
        rows_before
    );
    server.stop().await;
    assert!(!Path::new("x.csv").exists(), "COPY wrote x.csv");
    assert!(
        tree_digest(&wh_dir) == before.0,
        "the warehouse changed under a read-only server"
    );
    assert!(
        tree_digest(&spill) == before.1,
        "the spill directory changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_drivers_send_are_accepted_and_statement_timeout_only_lowers() {
    let (_dir, server) = Running::small(|o| {
        o.limits.query_timeout = Duration::from_secs(30);
    })
    .await;
    let client = server.connect().await.unwrap();
    for sql in [
        "SET extra_float_digits = 3",
        "SET application_name = 'PostgreSQL JDBC Driver'",
        "SET client_encoding = 'UTF8'",
        "SET DateStyle = 'ISO'",
        "SET TIME ZONE 'UTC'",
        "SET search_path = public",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET client_min_messages = warning",
        "SET standard_conforming_strings = on",
    ] {
        assert_eq!(outcome(client.simple_query(sql).await), "ok", "{sql}");
        assert_eq!(outcome(client.query(sql, &[]).await), "ok", "{sql}");
    }
    // A client's statement_timeout below the server's ends its query sooner.
    client
        .simple_query("SET statement_timeout = '500ms'")
        .await
        .unwrap();
    let t = Instant::now();
    let got = outcome(
        client
            .simple_query("SELECT count(*) FROM generate_series(1, 1000000000000)")
            .await,
    );
    assert_eq!(got, "57014");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_the_query() {
    let (_dir, server) = Running::small(|o| {
        o.limits.query_timeout = Duration::from_secs(120);
    })
    .await;
    let client = server.connect().await.unwrap();
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let t = Instant::now();
    let got = client
        .simple_query("SELECT count(*) FROM generate_series(1, 1000000000000)")
        .await;
    canceller.await.unwrap().unwrap();
    let took = t.elapsed();
    assert_eq!(outcome(got), "57014");
    assert!(took < Duration::from_secs(20), "cancel took {took:?}");
    // Then the session goes on, over the extended protocol too.
    assert_eq!(value(&client, "SELECT 1").await, "1");
    let token = client.cancel_token();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let got = client
        .query(
            "SELECT count(*) FROM generate_series(1, 1000000000000)",
            &[],
        )
        .await;
    assert_eq!(outcome(got), "57014");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_log_in_lose_their_slot_and_idle_sessions_close() {
    use tokio::io::AsyncReadExt;
    let (_dir, server) = Running::small(|o| {
        o.max_connections = 2;
        o.login_timeout = Duration::from_secs(1);
        o.limits.idle_timeout = Duration::from_secs(2);
    })
    .await;
    // Two sockets that say nothing take the two login slots: a third client is told why.
    let mut idle: Vec<tokio::net::TcpStream> = Vec::new();
    for _ in 0..2 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", server.port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = server.connect().await;
    assert_eq!(outcome(refused), "53300");
    // After the login timeout they are closed, and clients log in again.
    for s in &mut idle {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed within the login timeout");
        assert_eq!(n.unwrap_or(0), 0);
    }
    let a = server.connect().await.unwrap();
    let b = server.connect().await.unwrap();
    // Logged-in sessions fill --max-connections: one more is refused.
    assert_eq!(outcome(server.connect().await), "53300");
    assert_eq!(value(&a, "SELECT 1").await, "1");
    // A session that runs nothing for the idle timeout is closed; one that keeps working is not.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(value(&a, "SELECT 1").await, "1");
    }
    assert!(b.simple_query("SELECT 1").await.is_err(), "b was idle");
    drop(a);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scalar_subquery_of_many_rows_is_an_error() {
    let (_dir, server) = Running::small(|_| {}).await;
    let client = server.connect().await.unwrap();
    let sql = "SELECT (SELECT identity FROM scores) AS one";
    assert_eq!(outcome(client.simple_query(sql).await), "21000");
    assert_eq!(outcome(client.query(sql, &[]).await), "21000");
    // One row is an answer; no row is NULL.
    assert_eq!(
        value(&client, "SELECT (SELECT max(identity) FROM scores) AS one").await,
        "id-9"
    );
    assert_eq!(
        value(
            &client,
            "SELECT (SELECT max(identity) FROM scores WHERE score > 2) AS one"
        )
        .await,
        "NULL"
    );
    server.stop().await;
}

/// The start-up and catalog queries of Metabase, Npgsql and Grafana (testdata/client_startup.sql,
/// each with its source), on both protocols: each is answered, with the same number of rows,
/// and holds the value its `-- expect:` line names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_startup_queries_are_answered() {
    let (_dir, server) = Running::small(|_| {}).await;
    let client = server.connect().await.unwrap();
    let file = include_str!("../testdata/client_startup.sql");
    let statements: Vec<&str> = file.split("\n;;\n").collect();
    assert!(statements.len() >= 20, "{} statements", statements.len());
    for sql in &statements {
        let source = sql
            .lines()
            .find_map(|l| l.strip_prefix("-- source: "))
            .expect("every statement names its source");
        let simple = match client.simple_query(sql).await {
            Ok(messages) => messages,
            Err(e) => panic!("{source}: simple protocol: {e:?}"),
        };
        let firsts: Vec<String> = simple
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
                _ => None,
            })
            .collect();
        if let Some(want) = sql.lines().find_map(|l| l.strip_prefix("-- expect: ")) {
            assert!(
                firsts.iter().any(|f| f == want),
                "{source}: no row holds {want:?}: {firsts:?}"
            );
        }
        let extended = match client.query(*sql, &[]).await {
            Ok(rows) => rows,
            Err(e) => panic!("{source}: extended protocol: {e:?}"),
        };
        assert_eq!(
            extended.len(),
            firsts.len(),
            "{source}: rows on each protocol"
        );
    }
    // Npgsql sends its four type-loading statements as one simple query.
    let npgsql: Vec<&str> = statements
        .iter()
        .filter(|s| s.contains("PostgresDatabaseInfo.cs"))
        .copied()
        .collect();
    assert_eq!(npgsql.len(), 4);
    let batch = client.simple_query(&npgsql.join("\n")).await.unwrap();
    let completes = batch
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(completes, 4, "one answer per statement of Npgsql's batch");
    // What compat.rs adds fails as Postgres would, with a SQLSTATE, and the session goes on.
    for sql in [
        "SELECT format('%s %s', 'one')",
        "SELECT format('%q', 1)",
        "SELECT format('%I', NULL)",
        "SELECT current_setting('no_such_setting')",
    ] {
        let got = outcome(client.simple_query(sql).await);
        assert!(
            got != "ok" && !got.starts_with("no SQLSTATE"),
            "{sql}: {got}"
        );
    }
    assert_eq!(
        value(
            &client,
            "SELECT format('%s.%I = %L', 'public', 'My Table', 'it''s')"
        )
        .await,
        "public.\"My Table\" = 'it''s'"
    );
    assert_eq!(value(&client, "SHOW timezone").await, "UTC");
    server.stop().await;
}

/// Writes a night of `people` (id, email, run_id), the email labelled `email_labels` (empty:
/// none), with the table's properties; returns the version committed.
async fn people_night(
    wh: &Warehouse,
    dir: &Path,
    run: &str,
    email_labels: &str,
    properties: &[(&str, &str)],
) -> u64 {
    use scoreland_runtime::labels::COLUMN_LABELS;
    let local = dir.join(run);
    std::fs::create_dir_all(&local).unwrap();
    let mut email = Field::new("email", DataType::Utf8, true);
    let mut meta = std::collections::HashMap::from([(
        "xdm_path".to_string(),
        "personalEmail.address".to_string(),
    )]);
    if !email_labels.is_empty() {
        meta.insert(COLUMN_LABELS.to_string(), email_labels.to_string());
    }
    email.set_metadata(meta);
    let id = Field::new("id", DataType::Utf8, true)
        .with_metadata([("xdm_path".to_string(), "memberId".to_string())].into());
    let schema = Arc::new(Schema::new(vec![
        id,
        email,
        Field::new("run_id", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["m1", "m2", "m3"])),
            Arc::new(StringArray::from(vec![
                "a@example.com",
                "b@example.com",
                "c@example.com",
            ])),
            Arc::new(StringArray::from(vec![run; 3])),
        ],
    )
    .unwrap();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(local.join("part-0.parquet")).unwrap(),
        schema,
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let commit = wh
        .write_table(&TableWrite {
            table: "people",
            local_dir: &local,
            dataset_id: "ds1",
            run_id: run,
            by_score_date: false,
            date_column: "score_date",
            replace_dataset: true,
            append: false,
            evolve_schema: true,
            app_id: "people",
            app_version: if run == "r1" { 1 } else { 2 },
            metadata: serde_json::Map::new(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await
        .unwrap();
    wh.put_json(
        "_published/people.json",
        &scoreland_sink::Published {
            run_id: run.into(),
            versions: [("people".to_string(), commit.version)].into(),
        },
    )
    .await
    .unwrap();
    commit.version
}

/// A column whose labels the table (or the server) denies reads as NULL however it is asked
/// for: selected, filtered on, aggregated, grouped, compared, joined; no filter on it reaches
/// the scan. When the labels change with a later night, the served table follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_with_denied_labels_read_as_null() {
    use scoreland_runtime::labels::{DENY_LABELS, TABLE_LABELS};
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path(), 10).await;
    people_night(
        &wh,
        dir.path(),
        "r1",
        "C2,I1",
        &[(DENY_LABELS, "C2"), (TABLE_LABELS, "C9")],
    )
    .await;
    let server = Running::start(wh.clone(), &dir.path().join("spill"), |o| {
        o.tables.push("people".into())
    })
    .await;
    let client = server.connect().await.unwrap();
    for (sql, want) in [
        ("SELECT count(*) FROM people", "3"),
        ("SELECT email FROM people LIMIT 1", "NULL"),
        ("SELECT count(email) FROM people", "0"),
        (
            "SELECT coalesce(max(email), 'hidden') FROM people",
            "hidden",
        ),
        (
            "SELECT count(*) FROM people WHERE email = 'a@example.com'",
            "0",
        ),
        ("SELECT count(*) FROM people WHERE email LIKE '%@%'", "0"),
        ("SELECT count(*) FROM people WHERE email IS NULL", "3"),
        (
            "SELECT count(*) FROM (SELECT email FROM people GROUP BY email) g",
            "1",
        ),
        (
            "SELECT count(*) FROM people WHERE length(email) > 0 OR email > ''",
            "0",
        ),
        (
            "SELECT count(*) FROM people p JOIN people q ON p.email = q.email",
            "0",
        ),
        (
            "SELECT string_agg(id, ',' ORDER BY id) FROM people",
            "m1,m2,m3",
        ),
        ("SELECT count(*) FROM people WHERE id = 'm1'", "1"),
        ("SELECT count(id) FROM people", "3"),
    ] {
        assert_eq!(value(&client, sql).await, want, "{sql}");
    }
    server.stop().await;

    // The server's own denial: C9 is the dataset's label, so every field of it is masked
    // (id and email), not scoreland's own columns.
    let server = Running::start(wh.clone(), &dir.path().join("spill"), |o| {
        o.tables.push("people".into());
        o.deny_labels = ["C9".to_string()].into();
    })
    .await;
    let client = server.connect().await.unwrap();
    assert_eq!(value(&client, "SELECT count(id) FROM people").await, "0");
    assert_eq!(
        value(&client, "SELECT count(run_id) FROM people").await,
        "3"
    );

    // A later night labels the email C5 only, and the dataset nothing: once published, the
    // email is served.
    people_night(
        &wh,
        dir.path(),
        "r2",
        "",
        &[(DENY_LABELS, "C2"), (TABLE_LABELS, "")],
    )
    .await;
    tokio::time::sleep(crate::live::REFRESH + Duration::from_millis(200)).await;
    assert_eq!(value(&client, "SELECT count(email) FROM people").await, "3");
    assert_eq!(value(&client, "SELECT count(id) FROM people").await, "3");
    server.stop().await;
}
