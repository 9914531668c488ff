//! End-to-end tests of the `scoreland` binary: the demo pipeline, reruns, forced reruns, a
//! platform that keeps failing, a crash before the commit, invalid pipelines, `sql`, and
//! `validate` of every file in pipelines/.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scoreland_platform_sim::{ErrorBodyStyle, Fault, Route, SimConfig};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary, run from the repository with `args` and `envs` (no warehouse from the
/// environment, no colour unless a test removes `NO_COLOR`).
fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scoreland"));
    cmd.current_dir(repo())
        .args(args)
        .env_remove("SCORELAND_WAREHOUSE")
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

fn scoreland(args: &[&str], envs: &[(&str, &str)]) -> Output {
    command(args, envs)
        .output()
        .expect("the scoreland binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A test server's URL from scripts/test-services.sh; under it (or CI) a missing one fails.
fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_)
            if std::env::var_os("CI").is_some()
                || std::env::var_os("SCORELAND_REQUIRE_SERVICES").is_some() =>
        {
            panic!("{var} is not set: run the tests through scripts/test.sh")
        }
        Err(_) => {
            eprintln!("skipped: {var} is not set (scripts/test.sh starts the test servers)");
            None
        }
    }
}

/// A name no other test run uses, for objects on the shared test servers.
fn unique(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    )
}

struct Demo {
    tmp: tempfile::TempDir,
}

impl Demo {
    fn new() -> Self {
        Demo {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn wh(&self) -> String {
        self.tmp.path().join("wh").display().to_string()
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SCORELAND_WAREHOUSE", self.wh()),
            (
                "SCORELAND_STAGING",
                self.tmp.path().join("staging").display().to_string(),
            ),
        ]
    }
    fn run(&self, extra: &[&str], more_env: &[(&str, &str)]) -> Output {
        self.run_pipeline("pipelines/demo.toml", extra, more_env)
    }
    /// `run PIPELINE` with this demo's warehouse and staging (`more_env` wins over them).
    fn run_pipeline(&self, pipeline: &str, extra: &[&str], more_env: &[(&str, &str)]) -> Output {
        let mut args = vec!["run", pipeline];
        args.extend_from_slice(extra);
        let env = self.env();
        let mut envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        envs.extend_from_slice(more_env);
        scoreland(&args, &envs)
    }
    fn sql(&self, query: &str, format: &str) -> Output {
        scoreland(
            &["sql", query, "--warehouse", &self.wh(), "--format", format],
            &[],
        )
    }
    fn count(&self, query: &str) -> u64 {
        let o = self.sql(query, "json");
        assert!(o.status.success(), "{}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_u64()
            .unwrap()
    }
}

/// The bundled sample platform, served on a loopback port.
async fn sample_sim(config: SimConfig) -> scoreland_platform_sim::SimHandle {
    scoreland_platform_sim::serve_dir(
        &repo().join("sample-data/platform"),
        config,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// The simulator's first dataset in sandbox `prod`.
fn first_dataset(sim: &scoreland_platform_sim::SimHandle) -> String {
    sim.platform().sandboxes["prod"]
        .datasets
        .keys()
        .next()
        .unwrap()
        .clone()
}

/// Whether a lock is free: absent, or marked released by the run that held it.
fn released(lock: &Path) -> bool {
    match std::fs::read(lock) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap()["released"] == true,
        Err(_) => !lock.exists(),
    }
}

fn record(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn demo_then_nothing_new_then_forced() {
    let demo = Demo::new();
    let first = demo.run(&["--json"], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let r = record(&first);
    assert_eq!(r["status"], "landed");
    assert_eq!(r["parts"], 4);
    let rows_out = r["rows_out"].as_u64().unwrap();
    assert!(rows_out > 3000);
    assert_eq!(
        r["rows_in"].as_u64().unwrap(),
        rows_out
            + r["duplicates_dropped"].as_u64().unwrap()
            + r["null_identity_dropped"].as_u64().unwrap()
    );

    // `sql` over the landed output gives the transform's numbers.
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), rows_out);
    assert_eq!(
        demo.count("SELECT CAST(sum(rows) AS BIGINT) AS n FROM summary"),
        rows_out
    );
    assert_eq!(
        demo.count("SELECT count(*) AS n FROM (SELECT identity, model FROM scores GROUP BY 1, 2)"),
        rows_out
    );
    let csv = demo.sql(
        "SELECT model, count(*) AS n FROM scores GROUP BY model ORDER BY model",
        "csv",
    );
    let csv = String::from_utf8_lossy(&csv.stdout).to_string();
    assert!(csv.starts_with("model,n\nchurn_risk,"), "{csv}");
    // Discovery as `serve` answers it.
    let shown = demo.sql("SHOW TABLES", "csv");
    assert!(shown.status.success(), "{}", text(&shown));
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    for table in ["scores", "summary", "drift"] {
        assert!(shown.contains(&format!(",public,{table},")), "{shown}");
    }
    assert_eq!(
        demo.count(
            "SELECT count(*) AS n FROM information_schema.columns WHERE table_name = 'scores' AND column_name = 'score'"
        ),
        1
    );
    let described = demo.sql("DESCRIBE summary", "csv");
    assert!(
        String::from_utf8_lossy(&described.stdout).contains("score_date"),
        "{}",
        text(&described)
    );
    // `sql` only reads: no write to a table around the publish, no file written anywhere.
    let copy = demo.tmp.path().join("copy.parquet");
    let copy = copy.display();
    for hostile in [
        "INSERT INTO scores SELECT * FROM scores".to_string(),
        "DELETE FROM scores".to_string(),
        format!("COPY (SELECT * FROM scores) TO '{copy}'"),
        format!("EXPLAIN ANALYZE COPY scores TO '{copy}'"),
        format!("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{copy}'"),
        "CREATE VIEW v AS SELECT 1".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ] {
        let o = demo.sql(&hostile, "csv");
        assert_eq!(o.status.code(), Some(2), "{hostile}: {}", text(&o));
        assert!(
            text(&o).contains("`scoreland sql` only reads: "),
            "{hostile}: {}",
            text(&o)
        );
    }
    assert!(!demo.tmp.path().join("copy.parquet").exists());
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), rows_out);

    let again = demo.run(&["--json"], &[]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert_eq!(record(&again)["status"], "nothing_new");

    let forced = demo.run(&["--json", "--force"], &[]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced));
    let f = record(&forced);
    assert_eq!(
        f["parts_skipped"], 4,
        "verified parts are not downloaded again"
    );
    assert_eq!(f["tables"][0]["version"], 1);
    assert_eq!(f["tables"][0]["committed"], true);
    // The forced run replaced its partitions: still one row per identity and model.
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), rows_out);
    assert!(f["drift"][0]["psi"].as_f64().unwrap().abs() < 1e-12);
}

/// The versions `_published/<pipeline>.json` gives readers.
fn published(wh: &str, pipeline: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(Path::new(wh).join(format!("_published/{pipeline}.json"))).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_crash_between_two_tables_is_invisible_and_the_next_run_completes_it() {
    let demo = Demo::new();
    assert_eq!(demo.run(&[], &[]).status.code(), Some(0));
    let before = demo.count("SELECT count(*) AS n FROM scores");
    let drift_rows = demo.count("SELECT count(*) AS n FROM drift");
    // Between the first night and the next: what `--as-of` this time must show.
    let after_first = chrono::Utc::now().to_rfc3339();
    let crashed = demo.run(&["--force"], &[("SCORELAND_CRASH_AT", "between_tables")]);
    assert!(
        crashed.status.code().is_none() || crashed.status.code() == Some(134),
        "killed: {}",
        text(&crashed)
    );
    // `scores` has a new version, but readers still see what the last complete run published.
    let wh = demo.wh();
    assert!(
        Path::new(&wh)
            .join("scores/_delta_log/00000000000000000001.json")
            .exists()
    );
    assert!(
        !Path::new(&wh)
            .join("summary/_delta_log/00000000000000000001.json")
            .exists()
    );
    assert_eq!(published(&wh, "demo")["versions"]["scores"], 0);
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), before);
    // The next run takes over the dead run's lock and commits only what is missing: the
    // scores commit of the same run sequence is not made twice.
    let next = demo.run(&["--force", "--json"], &[]);
    assert_eq!(next.status.code(), Some(0), "{}", text(&next));
    let r = record(&next);
    assert_eq!(r["tables"][0]["table"], "scores");
    assert_eq!(r["tables"][0]["committed"], false);
    assert_eq!(r["tables"][0]["version"], 1);
    assert_eq!(r["tables"][1]["committed"], true);
    assert_eq!(r["tables"][2]["committed"], true);
    assert_eq!(published(&wh, "demo")["versions"]["scores"], 1);
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), before);
    // One drift row per model and run: the crashed run's were never committed.
    assert_eq!(
        demo.count("SELECT count(*) AS n FROM drift"),
        2 * drift_rows
    );
    // Time travel to the first night, then vacuum: files of replaced versions go.
    let first = scoreland(
        &[
            "sql",
            "SELECT count(*) AS n FROM scores",
            "--warehouse",
            &wh,
            "--as-of",
            "0",
            "--format",
            "json",
        ],
        &[],
    );
    assert!(first.status.success(), "{}", text(&first));
    // As of a time: between the nights, the first night's drift rows; now, both nights'.
    let as_of = |when: &str| {
        scoreland(
            &[
                "sql",
                "SELECT count(*) AS n FROM drift",
                "--warehouse",
                &wh,
                "--as-of",
                when,
                "--format",
                "json",
            ],
            &[],
        )
    };
    let between = as_of(&after_first);
    assert!(between.status.success(), "{}", text(&between));
    let v: Value = serde_json::from_slice(&between.stdout).unwrap();
    assert_eq!(v["n"].as_u64().unwrap(), drift_rows);
    let now = as_of(&chrono::Utc::now().to_rfc3339());
    assert!(now.status.success(), "{}", text(&now));
    let v: Value = serde_json::from_slice(&now.stdout).unwrap();
    assert_eq!(v["n"].as_u64().unwrap(), 2 * drift_rows);
    let parquet = |dir: &str| {
        walk(&Path::new(&wh).join(dir))
            .into_iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "parquet")
                    && !p.to_string_lossy().contains("_delta_log")
            })
            .count()
    };
    // An upload no version names (a run that died before its commit) is an orphan.
    let orphan_dir = walk(&Path::new(&wh).join("scores"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let orphan = orphan_dir.join("part-00000-orphan.zstd.parquet");
    std::fs::write(&orphan, b"PAR1 left by a dead run").unwrap();
    let files_before = parquet("scores");
    let vacuum = |extra: &[&str]| {
        let mut args = vec!["vacuum", "--warehouse", &wh, "--retention", "0s"];
        args.extend_from_slice(extra);
        scoreland(&args, &[])
    };
    // Under an hour, the retention must be asked for explicitly.
    let short = vacuum(&[]);
    assert_eq!(short.status.code(), Some(2), "{}", text(&short));
    assert!(
        text(&short).contains("--allow-short-retention"),
        "{}",
        text(&short)
    );
    // A publish under way (its lock held by a live run elsewhere) keeps vacuum out.
    let publish_lock = Path::new(&wh).join("_locks/_publish.lock");
    std::fs::write(
        &publish_lock,
        serde_json::json!({"run_id": "r-elsewhere", "pid": 1, "host": "elsewhere",
            "started_at": chrono::Utc::now().to_rfc3339()})
        .to_string(),
    )
    .unwrap();
    let busy = vacuum(&["--allow-short-retention"]);
    assert_eq!(busy.status.code(), Some(4), "{}", text(&busy));
    assert!(orphan.exists());
    std::fs::remove_file(&publish_lock).unwrap();
    let vacuumed = vacuum(&["--allow-short-retention"]);
    assert!(vacuumed.status.success(), "{}", text(&vacuumed));
    assert!(parquet("scores") < files_before, "{}", text(&vacuumed));
    assert!(!orphan.exists(), "the orphan was kept: {}", text(&vacuumed));
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), before);
    // Optimize rewrites the files, not the rows; readers follow it.
    let optimize = scoreland(&["optimize", "--warehouse", &wh], &[]);
    assert!(optimize.status.success(), "{}", text(&optimize));
    assert!(
        text(&optimize).contains("ordered by identity"),
        "{}",
        text(&optimize)
    );
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), before);
    let history = scoreland(&["history", "scores", "--warehouse", &wh, "--json"], &[]);
    assert!(history.status.success(), "{}", text(&history));
    let lines: Vec<Value> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Two nights written (the crashed run's scores commit among them: the table's creation),
    // then the vacuum and the optimize.
    let writes: Vec<&str> = lines
        .iter()
        .filter(|v| v["run"]["run_id"].is_string() && v["run"]["rows"].as_u64().unwrap() > 0)
        .map(|v| v["operation"].as_str().unwrap())
        .collect();
    assert_eq!(writes, ["WRITE", "CREATE TABLE"], "{lines:?}");
    assert_eq!(lines[0]["operation"], "OPTIMIZE");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_that_keeps_failing_exits_1_and_keeps_the_previous_night() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = sample_sim(SimConfig::default()).await;
    let info = sim.platform().info.clone();
    let dataset = first_dataset(&sim);
    let pipeline = tmp.path().join("nightly.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
staging = "${{SCORELAND_STAGING}}"

[source]
type = "aep"
platform_url = "{base}"
ims_url = "{base}"
org_id = "{org}"
sandbox = "prod"
client_id = "${{TEST_CLIENT_ID}}"
client_secret = "${{TEST_CLIENT_SECRET:?set it}}"
dataset = "{dataset}"
max_attempts = 3
max_retry_time = "5s"

[sink]
url = "{wh}"
"#,
            base = sim.base_url(),
            org = info.org_id,
            wh = tmp.path().join("wh").display(),
            dataset = dataset
        ),
    )
    .unwrap();
    let p = pipeline.display().to_string();
    let staging = tmp.path().join("staging").display().to_string();
    let run = |extra: Vec<String>| {
        let (p, staging, id, secret) = (
            p.clone(),
            staging.clone(),
            info.client_id.clone(),
            info.client_secret.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["run".to_string(), p, "--json".to_string()];
            args.extend(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            scoreland(
                &args,
                &[
                    ("TEST_CLIENT_ID", &id),
                    ("TEST_CLIENT_SECRET", &secret),
                    ("SCORELAND_STAGING", &staging),
                ],
            )
        })
    };
    let first = run(vec![]).await.unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert!(record(&first)["rows_out"].as_u64().unwrap() > 0);

    sim.push_fault(
        Route::CatalogBatches,
        Fault::Status {
            status: 503,
            retry_after: None,
            body: ErrorBodyStyle::Gateway,
        },
        1000,
    );
    let failed = run(vec!["--force".into()]).await.unwrap();
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let out = text(&failed);
    assert!(out.contains("gave up") && out.contains("503"), "{out}");
    assert!(
        !out.contains(&info.client_secret),
        "the secret leaked into the output"
    );
    let r = record(&failed);
    assert_eq!(r["status"], "failed");
    assert!(r["error"].as_str().unwrap().contains("503"));
    // Nothing was published: the previous night is intact.
    let wh = tmp.path().join("wh");
    assert_eq!(
        published(&wh.display().to_string(), "nightly")["versions"]["scores"],
        0
    );
    assert!(
        !wh.join("scores/_delta_log/00000000000000000001.json")
            .exists()
    );
    for f in walk(&wh) {
        let content = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&content).contains(&info.client_secret),
            "secret in {}",
            f.display()
        );
    }
    sim.clear_faults();
}

#[test]
fn an_invalid_pipeline_exits_2_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, "[source]\ntype = \"simulator\"\ndata = \"sample-data/platform\"\n\n[sink]\nurl = \"wh\"\nformatt = \"csv\"\n").unwrap();
    let o = scoreland(&["run", &p.display().to_string()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("bad.toml") && t.contains("line 7") && t.contains("formatt"),
        "{t}"
    );
    let o = scoreland(&["validate", &p.display().to_string()], &[]);
    assert_eq!(o.status.code(), Some(2));
    let missing = tmp.path().join("missing.toml");
    std::fs::write(&missing, "[source]\ntype = \"simulator\"\ndata = \"x\"\n[sink]\nurl = \"${NOT_SET_ANYWHERE:?point it at the warehouse}\"\n").unwrap();
    let o = scoreland(&["run", &missing.display().to_string()], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("point it at the warehouse"),
        "{}",
        text(&o)
    );
    let out = tmp.path().join("staging").display().to_string();
    let o = scoreland(
        &[
            "download",
            "--dataset",
            "d",
            "--out",
            &out,
            "--concurrency",
            "0",
        ],
        &[
            ("SCORELAND_PLATFORM_URL", "http://127.0.0.1:9"),
            ("SCORELAND_IMS_URL", "http://127.0.0.1:9"),
            ("SCORELAND_ORG_ID", "org"),
            ("SCORELAND_SANDBOX", "prod"),
            ("SCORELAND_ACCESS_TOKEN", "token"),
            ("SCORELAND_API_KEY", "key"),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--concurrency 0: must be from 1 to 256"),
        "{}",
        text(&o)
    );
}

#[test]
fn every_pipeline_file_validates() {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let o = scoreland(&args, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).matches("ok: ").count(),
        files.len()
    );
}

/// A `scoreland` process left running, whose stderr is read line by line as it comes, so a
/// test can act on an event (a log line) rather than after a sleep.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Running {
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Running {
        let mut child = command(args, envs)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the scoreland binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits (at most a minute) for a stderr line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.stderr.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} on stderr; got:\n{}",
                    self.stderr.join("\n")
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Exit code, stdout, and all of stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        use std::io::Read;
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        self.stderr.extend(self.lines.iter());
        (status.code(), stdout, self.stderr.join("\n"))
    }
}

/// Operating the nightly job: locks, signals, exit codes, output for schedulers, state.
mod operations {
    use super::*;

    fn write_lock(demo: &Demo, run_id: &str, started_at: &str) {
        let dir = Path::new(&demo.wh()).join("_locks");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("demo.lock"),
            format!(
                r#"{{"run_id":"{run_id}","pid":1,"host":"elsewhere","started_at":"{started_at}"}}"#
            ),
        )
        .unwrap();
    }

    #[test]
    fn a_held_lock_exits_4_even_when_its_time_is_in_the_future() {
        let demo = Demo::new();
        write_lock(&demo, "run-from-2099", "2099-01-01T00:00:00+00:00");
        let o = demo.run(&[], &[]);
        assert_eq!(o.status.code(), Some(4), "{}", text(&o));
        assert!(text(&o).contains("run-from-2099"), "{}", text(&o));
        write_lock(&demo, "run-unreadable", "not a time");
        assert_eq!(demo.run(&[], &[]).status.code(), Some(4));
        // A lock of 2000 is stale and taken over.
        write_lock(&demo, "run-from-2000", "2000-01-01T00:00:00+00:00");
        let o = demo.run(&[], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(released(&Path::new(&demo.wh()).join("_locks/demo.lock")));
    }

    #[test]
    fn two_runs_taking_over_one_stale_lock_never_both_run() {
        let demo = Demo::new();
        write_lock(&demo, "run-long-dead", "2000-01-01T00:00:00+00:00");
        let go_a = demo.tmp.path().join("go-a");
        let go_b = demo.tmp.path().join("go-b");
        let env = demo.env();
        let mut envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let pause_a = format!("lock_takeover:{}", go_a.display());
        let pause_b = format!("before_commit:{}", go_b.display());
        // A finds the lock stale and stops just before replacing it.
        envs.push(("SCORELAND_PAUSE_AT", &pause_a));
        let mut a = Running::start(&["run", "pipelines/demo.toml"], &envs);
        a.wait_for("SCORELAND_PAUSE_AT=lock_takeover");
        // B finds it stale too, takes it over and runs up to its commit.
        envs.pop();
        envs.push(("SCORELAND_PAUSE_AT", &pause_b));
        let mut b = Running::start(&["run", "pipelines/demo.toml"], &envs);
        b.wait_for("SCORELAND_PAUSE_AT=before_commit");
        // A goes on: its swap must fail, as the lock is now B's.
        std::fs::write(&go_a, "").unwrap();
        let (code_a, _, err_a) = a.finish();
        assert_eq!(code_a, Some(4), "{err_a}");
        assert!(err_a.contains("is already running"), "{err_a}");
        std::fs::write(&go_b, "").unwrap();
        let (code_b, _, err_b) = b.finish();
        assert_eq!(code_b, Some(0), "{err_b}");
        assert!(demo.count("SELECT count(*) AS n FROM scores") > 0);
    }

    #[test]
    fn sigterm_while_publishing_finishes_the_publish() {
        let demo = Demo::new();
        let go = demo.tmp.path().join("go");
        let pause = format!("before_commit:{}", go.display());
        let env = demo.env();
        let mut envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        envs.push(("SCORELAND_PAUSE_AT", &pause));
        let mut run = Running::start(&["run", "pipelines/demo.toml", "--json"], &envs);
        run.wait_for("SCORELAND_PAUSE_AT=before_commit");
        run.signal("TERM");
        std::fs::write(&go, "").unwrap();
        let (code, stdout, stderr) = run.finish();
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            stderr.contains("SIGTERM arrived while publishing; the publish was finished"),
            "{stderr}"
        );
        let r: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(r["status"], "landed");
        let rows = r["rows_out"].as_u64().unwrap();
        assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), rows);
        assert!(released(&Path::new(&demo.wh()).join("_locks/demo.lock")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_while_downloading_publishes_nothing_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        // Slow enough that the download is under way when the signal comes.
        let sim = sample_sim(SimConfig {
            bandwidth_per_connection: Some(20_000),
            ..SimConfig::default()
        })
        .await;
        let env = sim_env(&sim, tmp.path());
        let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut run = Running::start(
                &["run", "pipelines/customer-ai-nightly.toml", "--json"],
                &envs,
            );
            run.wait_for("downloading batch");
            run.signal("TERM");
            run.finish()
        })
        .await
        .unwrap();
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(
                "interrupted by SIGTERM before publishing; nothing of this run was published"
            ),
            "{stderr}"
        );
        let r: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(r["status"], "failed");
        let wh = tmp.path().join("wh");
        assert!(!wh.join("scores").exists(), "nothing was published");
        assert!(!wh.join("_state").exists());
        assert!(released(&wh.join("_locks/customer-ai-nightly.lock")));
        let work = tmp.path().join("staging/.work");
        assert!(
            !work.exists() || std::fs::read_dir(&work).unwrap().next().is_none(),
            "the run's work directory is removed"
        );
    }

    /// The variables `pipelines/customer-ai-nightly.toml` names, pointed at a simulator.
    fn sim_env(sim: &scoreland_platform_sim::SimHandle, tmp: &Path) -> Vec<(&'static str, String)> {
        let info = sim.platform().info.clone();
        let dataset = first_dataset(sim);
        vec![
            ("SCORELAND_PLATFORM_URL", sim.base_url().to_string()),
            ("SCORELAND_IMS_URL", sim.ims_url().to_string()),
            ("SCORELAND_ORG_ID", info.org_id),
            ("SCORELAND_SANDBOX", "prod".into()),
            ("SCORELAND_CLIENT_ID", info.client_id),
            ("SCORELAND_CLIENT_SECRET", info.client_secret),
            ("SCORELAND_DATASET_ID", dataset),
            ("SCORELAND_WAREHOUSE", tmp.join("wh").display().to_string()),
            (
                "SCORELAND_STAGING",
                tmp.join("staging").display().to_string(),
            ),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_nightly_template_catches_up_from_its_state() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("platform");
        let summary = scoreland_platform_sim::generate(&scoreland_platform_sim::GenerateOptions {
            out: out.clone(),
            rows: 300,
            parts: 2,
            batches: 3,
            seed: 11,
            ..Default::default()
        })
        .unwrap();
        let scoring: Vec<_> = summary
            .batches
            .iter()
            .filter(|b| b.created_client == "acp_foundation_push" && b.status == "success")
            .map(|b| b.id.clone())
            .collect();
        assert_eq!(scoring.len(), 3);
        let sim = scoreland_platform_sim::serve_dir(
            &out,
            SimConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let env = sim_env(&sim, tmp.path());
        let template =
            std::fs::read_to_string(repo().join("pipelines/customer-ai-nightly.toml")).unwrap();
        // Night one lands the oldest batch only; the template's catch-up does the rest.
        let first_only = tmp.path().join("first.toml");
        std::fs::write(
            &first_only,
            template.replace(
                r#"batches = { mode = "catch_up" }"#,
                &format!(r#"batches = {{ mode = "batch", id = "{}" }}"#, scoring[0]),
            ),
        )
        .unwrap();
        let run = |pipeline: PathBuf| {
            let env = env.clone();
            tokio::task::spawn_blocking(move || {
                let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                scoreland(&["run", &pipeline.display().to_string(), "--json"], &envs)
            })
        };
        let one = run(first_only).await.unwrap();
        assert_eq!(one.status.code(), Some(0), "{}", text(&one));
        assert_eq!(record(&one)["batches"][0], scoring[0].as_str());
        let nightly = repo().join("pipelines/customer-ai-nightly.toml");
        let two = run(nightly.clone()).await.unwrap();
        assert_eq!(two.status.code(), Some(0), "{}", text(&two));
        // The third batch replaced the second: landing both would count its rows twice.
        assert_eq!(
            record(&two)["batches"],
            serde_json::json!([scoring[2].as_str()])
        );
        let state: Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join("wh/_state/customer-ai-nightly.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            state["landed_batches"],
            serde_json::json!([scoring[2].as_str()])
        );
        assert!(state["last_batch_created"].as_i64().unwrap() > 0);
        let three = run(nightly).await.unwrap();
        assert_eq!(three.status.code(), Some(3), "{}", text(&three));
    }

    #[test]
    fn dry_run_lands_nothing_and_run_json_is_one_line_without_colour() {
        let demo = Demo::new();
        let dry = demo.run(&["--dry-run", "--json"], &[]);
        assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
        let r = record(&dry);
        assert_eq!(r["status"], "dry_run");
        assert_eq!(r["parts"], 4);
        assert!(r["bytes"].as_u64().unwrap() > 0);
        assert!(!Path::new(&demo.wh()).join("scores").exists());
        assert!(!Path::new(&demo.wh()).join("_state").exists());

        // Logs to a pipe: no colour, even without NO_COLOR.
        let env = demo.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = command(&["run", "pipelines/demo.toml", "--json"], &envs)
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.lines().count(), 1, "JSON Lines: {stdout}");
        let r: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(r["status"], "landed");
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains('\x1b'),
            "colour codes in a pipe"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_from_the_environment_never_sees_a_loopback_platform() {
        let sim = sample_sim(SimConfig::default()).await;
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        proxy.set_nonblocking(true).unwrap();
        let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let mut env = sim_env(&sim, tmp.path());
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
        ] {
            env.push((var, proxy_url.clone()));
        }
        let dataset = env
            .iter()
            .find(|(k, _)| *k == "SCORELAND_DATASET_ID")
            .unwrap()
            .1
            .clone();
        let o = tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            scoreland(&["batches", "--dataset", &dataset], &envs)
        })
        .await
        .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            proxy.accept().is_err(),
            "the proxy was sent a request meant for the loopback platform"
        );
    }
}

/// Two pipelines, two datasets, one warehouse.
mod shared_warehouse {
    use super::*;

    fn platform(dir: &Path, seed: u64) -> String {
        let summary = scoreland_platform_sim::generate(&scoreland_platform_sim::GenerateOptions {
            out: dir.to_path_buf(),
            rows: 400,
            parts: 2,
            batches: 1,
            seed,
            ..Default::default()
        })
        .unwrap();
        summary.dataset_id
    }

    fn pipeline(tmp: &Path, name: &str, data: &Path) -> PathBuf {
        let p = tmp.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\nstaging = \"{}\"\n[source]\ntype = \"simulator\"\ndata = \"{}\"\n[sink]\nurl = \"{}\"\n",
                tmp.join(format!("staging-{name}")).display(),
                data.display(),
                tmp.join("wh").display()
            ),
        )
        .unwrap();
        p
    }

    #[test]
    fn two_pipelines_landing_at_the_same_moment_keep_each_others_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let (da, db) = (tmp.path().join("pa"), tmp.path().join("pb"));
        let (ds_a, ds_b) = (platform(&da, 1), platform(&db, 2));
        assert_ne!(ds_a, ds_b);
        let (pa, pb) = (
            pipeline(tmp.path(), "a", &da),
            pipeline(tmp.path(), "b", &db),
        );
        // a stops with its tables ready and uncommitted; b lands all of its own meanwhile;
        // then a commits on top of b's versions.
        let go = tmp.path().join("go");
        let pause = format!("before_commit:{}", go.display());
        let mut a = Running::start(
            &["run", &pa.display().to_string(), "--json"],
            &[("SCORELAND_PAUSE_AT", &pause)],
        );
        a.wait_for("SCORELAND_PAUSE_AT=before_commit");
        let b = scoreland(&["run", &pb.display().to_string(), "--json"], &[]);
        assert_eq!(b.status.code(), Some(0), "{}", text(&b));
        std::fs::write(&go, "").unwrap();
        let (code, stdout, stderr) = a.finish();
        assert_eq!(code, Some(0), "{stderr}");
        let ra: Value = serde_json::from_str(stdout.trim()).unwrap();
        let rb = record(&b);
        let wh = tmp.path().join("wh").display().to_string();
        let count = |sql: &str| {
            let o = scoreland(&["sql", sql, "--warehouse", &wh, "--format", "json"], &[]);
            assert!(o.status.success(), "{}", text(&o));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            v["n"].as_u64().unwrap()
        };
        assert_eq!(
            count(&format!(
                "SELECT count(*) AS n FROM scores WHERE dataset_id = '{ds_a}'"
            )),
            ra["rows_out"].as_u64().unwrap()
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) AS n FROM scores WHERE dataset_id = '{ds_b}'"
            )),
            rb["rows_out"].as_u64().unwrap()
        );
        assert_eq!(
            count(&format!(
                "SELECT count(DISTINCT run_id) AS n FROM scores WHERE dataset_id = '{ds_a}'"
            )),
            1
        );
        // a committed after b: its versions are the newer ones, and both runs' rows are there.
        assert!(ra["tables"][0]["version"].as_u64() > rb["tables"][0]["version"].as_u64());
    }

    /// Two platforms of their own datasets, and pipelines `a` and `b` landing them into one
    /// warehouse.
    struct Two {
        ds_a: String,
        ds_b: String,
        pa: String,
        pb: String,
        wh: String,
    }

    fn two(tmp: &Path, (seed_a, seed_b): (u64, u64)) -> Two {
        let (da, db) = (tmp.join("pa"), tmp.join("pb"));
        Two {
            ds_a: platform(&da, seed_a),
            ds_b: platform(&db, seed_b),
            pa: pipeline(tmp, "a", &da).display().to_string(),
            pb: pipeline(tmp, "b", &db).display().to_string(),
            wh: tmp.join("wh").display().to_string(),
        }
    }

    /// The `n` of a one-row query over the warehouse.
    fn n(wh: &str, sql: &str) -> u64 {
        let o = scoreland(&["sql", sql, "--warehouse", wh, "--format", "json"], &[]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["n"]
            .as_u64()
            .unwrap()
    }

    #[test]
    fn a_second_publish_waits_for_the_first_and_both_land() {
        let tmp = tempfile::tempdir().unwrap();
        let Two {
            ds_a,
            ds_b,
            pa,
            pb,
            wh,
        } = two(tmp.path(), (3, 4));
        let count = |ds: &str| {
            n(
                &wh,
                &format!("SELECT count(*) AS n FROM scores WHERE dataset_id = '{ds}'"),
            )
        };
        // a stops inside its publish, about to commit (first while no table exists, then on
        // a table b has written to): b, ready to publish meanwhile, waits for a's publish
        // to end rather than commit between a's tables. Then both land, one after the other.
        for round in ["create", "commit"] {
            let go = tmp.path().join(format!("go-{round}"));
            let pause = format!("delta_commit:{}", go.display());
            let mut a = Running::start(
                &["run", &pa, "--json", "--force"],
                &[("SCORELAND_PAUSE_AT", pause.as_str())],
            );
            a.wait_for("SCORELAND_PAUSE_AT=delta_commit");
            let mut b = Running::start(&["run", &pb, "--json", "--force", "-v"], &[]);
            b.wait_for("waiting for another run's publish");
            std::fs::write(&go, "").unwrap();
            let (ca, out_a, err_a) = a.finish();
            let (cb, out_b, err_b) = b.finish();
            assert_eq!(ca, Some(0), "{round}: {err_a}");
            assert_eq!(cb, Some(0), "{round}: {err_b}");
            let ra: Value = serde_json::from_str(out_a.trim()).unwrap();
            let rb: Value = serde_json::from_str(out_b.trim()).unwrap();
            for (ta, tb) in ra["tables"]
                .as_array()
                .unwrap()
                .iter()
                .zip(rb["tables"].as_array().unwrap())
            {
                assert_eq!(ta["table"], tb["table"]);
                assert!(ta["committed"].as_bool().unwrap() && tb["committed"].as_bool().unwrap());
                // b's commits all come after a's.
                assert!(
                    ta["version"].as_u64() < tb["version"].as_u64(),
                    "{round}: {ra} {rb}"
                );
            }
            assert_eq!(count(&ds_a), ra["rows_out"].as_u64().unwrap(), "{round}");
            assert_eq!(count(&ds_b), rb["rows_out"].as_u64().unwrap(), "{round}");
        }
    }

    #[test]
    fn another_pipelines_crashed_publish_is_finished_before_this_one_publishes() {
        let tmp = tempfile::tempdir().unwrap();
        let Two {
            ds_a,
            ds_b,
            pa,
            pb,
            wh,
        } = two(tmp.path(), (5, 6));
        let crashed = scoreland(
            &["run", &pa, "--json"],
            &[("SCORELAND_CRASH_AT", "between_tables")],
        );
        assert!(
            crashed.status.code().is_none() || crashed.status.code() == Some(134),
            "{}",
            text(&crashed)
        );
        let b = scoreland(&["run", &pb, "--json"], &[]);
        assert_eq!(b.status.code(), Some(0), "{}", text(&b));
        let rb = record(&b);
        assert!(
            rb["warnings"].to_string().contains("pipeline a's publish"),
            "{rb}"
        );
        // a's night is whole for readers: its scores and its summary, published under a.
        let n = |sql: String| n(&wh, &sql);
        let a_rows = n(format!(
            "SELECT count(*) AS n FROM scores WHERE dataset_id = '{ds_a}'"
        ));
        assert!(a_rows > 0);
        assert_eq!(
            n(format!(
                "SELECT CAST(sum(rows) AS BIGINT) AS n FROM summary WHERE dataset_id = '{ds_a}'"
            )),
            a_rows
        );
        assert!(
            n(format!(
                "SELECT count(*) AS n FROM scores WHERE dataset_id = '{ds_b}'"
            )) > 0
        );
        assert!(tmp.path().join("wh/_published/a.json").exists());
        assert!(!tmp.path().join("wh/_state/a.publishing.json").exists());
        // a's next run finds its night landed.
        let again = scoreland(&["run", &pa, "--json"], &[]);
        assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    }
}

#[test]
fn a_warehouse_of_the_old_layout_is_refused_until_converted() {
    let demo = Demo::new();
    let commits = Path::new(&demo.wh()).join("scores/_commits");
    std::fs::create_dir_all(&commits).unwrap();
    std::fs::write(
        commits.join("00000000000000000000.json"),
        r#"{"table":"scores","seq":0,"run_id":"old","batches":[],"committed_at":"2026-11-01T00:00:00Z","added":[],"removed":[],"live":[]}"#,
    )
    .unwrap();
    let refused = demo.run(&[], &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("scoreland convert --warehouse"),
        "{}",
        text(&refused)
    );
    let convert = scoreland(
        &["convert", "--warehouse", &demo.wh(), "--dataset", "d"],
        &[],
    );
    assert!(convert.status.success(), "{}", text(&convert));
    assert!(text(&convert).contains("scores: nothing committed; old records removed"));
    let landed = demo.run(&[], &[]);
    assert_eq!(landed.status.code(), Some(0), "{}", text(&landed));
}

#[test]
fn a_pipeline_with_a_report_writes_it_after_the_night() {
    let demo = Demo::new();
    let pipeline = demo.tmp.path().join("demo-report.toml");
    let out = demo.tmp.path().join("reports/nightly.html");
    let text_of = std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap();
    std::fs::write(
        &pipeline,
        format!("report = {:?}\n{text_of}", out.display().to_string()),
    )
    .unwrap();
    let env = demo.env();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = scoreland(&["run", &pipeline.display().to_string()], &envs);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("<h2>churn_risk</h2>"), "{html}");
    assert!(html.contains("Score histogram, 2026-11-16"), "{html}");
    assert!(!html.contains("<script"), "{html}");
}

#[test]
fn extracts_are_plain_copies_of_the_night() {
    let demo = Demo::new();
    let pipeline = demo.tmp.path().join("demo-extracts.toml");
    let text_of = std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap();
    std::fs::write(
        &pipeline,
        text_of.replace(
            "[sink]\n",
            "[sink]\nextracts = [\"csv\", \"ndjson\", \"parquet\"]\n",
        ),
    )
    .unwrap();
    let env = demo.env();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = scoreland(&["run", &pipeline.display().to_string(), "--json"], &envs);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = record(&o);
    let rows = r["rows_out"].as_u64().unwrap();
    let ds = r["dataset"].as_str().unwrap();
    let dir = Path::new(&demo.wh()).join("_extracts/scores");
    let csv = std::fs::read_to_string(dir.join(format!("{ds}.csv"))).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("identity") && header.contains("influential_factors"),
        "{header}"
    );
    assert_eq!(lines.count() as u64, rows);
    let ndjson = std::fs::read_to_string(dir.join(format!("{ds}.json"))).unwrap();
    assert_eq!(ndjson.lines().count() as u64, rows);
    let first: Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    assert!(first["influential_factors"].is_string() || first["influential_factors"].is_null());
    assert_eq!(r["extracts"].as_array().unwrap().len(), 9);
    let pq = std::fs::File::open(dir.join(format!("{ds}.parquet"))).unwrap();
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(pq).unwrap(),
    )
    .file_metadata()
    .num_rows();
    assert_eq!(meta as u64, rows);
    assert!(
        Path::new(&demo.wh())
            .join(format!("_extracts/drift/{ds}.csv"))
            .exists()
    );
}

/// `scoreland schema`: the demo dataset's XDM schema from the Schema Registry, as the columns
/// it lands as; a profile-export pipeline has no dataset schema to show.
#[test]
fn schema_shows_the_datasets_columns() {
    let o = scoreland(&["-q", "schema", "pipelines/demo.toml", "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let columns: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |name: &str| {
        columns
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no column {name} in {columns:?}"))
    };
    assert_eq!(find("_acmeretail_identity_id")["data_type"], "Utf8");
    assert_eq!(
        find("_acmeretail_identity_id")["path"],
        "_acmeretail.identity.id"
    );
    assert_eq!(find("timestamp")["xdm_type"], "date-time");
    assert_eq!(
        find("_acmeretail_CustomerAI_churn_risk_scoreDate")["data_type"],
        "Date32"
    );
    // One level: the tenant's objects stay structs.
    let o = scoreland(
        &[
            "-q",
            "schema",
            "pipelines/demo.toml",
            "--json",
            "--depth",
            "1",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"name\":\"_acmeretail_identity\""));
    // A dataset-export pipeline on the simulator: the same dataset, the same columns.
    let o = scoreland(
        &["-q", "schema", "pipelines/dataset-export.toml", "--json"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        columns.len()
    );
    let o = scoreland(&["schema", "pipelines/profile-export.toml"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("profile-export"), "{}", text(&o));
}

/// The quality gate: the demo's checks pass and land as the `checks` table; a failing `error`
/// check lands nothing (exit 5, each failure named), `--skip-checks` lands it as `overridden`,
/// an unknown name or a bad bound is a usage error.
#[test]
fn checks_gate_the_publish() {
    let demo = Demo::new();
    let first = demo.run(&["--json"], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let r = record(&first);
    let checks = r["checks"].as_array().unwrap();
    assert!(checks.len() >= 8, "{checks:?}");
    assert!(
        checks
            .iter()
            .all(|c| c["status"] == "pass" || c["status"] == "skipped"),
        "{checks:?}"
    );
    // The first night has no baseline for the change of volume, nor for drift.
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "volume.change_pct" && c["status"] == "skipped")
    );
    assert_eq!(
        demo.count("SELECT count(*) AS n FROM checks"),
        checks.len() as u64
    );
    assert_eq!(
        demo.count("SELECT count(*) AS n FROM checks WHERE status = 'pass' AND \"check\" = 'unique_key' AND value = 0"),
        1
    );
    let versions = |d: &Demo| {
        let o = d.sql("SELECT count(*) AS n, max(run_id) AS r FROM scores", "csv");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let landed = versions(&demo);

    // A bound the night cannot meet: nothing lands, and the message names each failure.
    let strict = demo.tmp.path().join("demo-strict.toml");
    let text_of = std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap();
    assert!(text_of.contains("model_rows = { min = 100 }"));
    std::fs::write(
        &strict,
        text_of
            .replace(
                "model_rows = { min = 100 }",
                "model_rows = { min = 1000000 }",
            )
            // The sample platform's newest scores are of 2026-11-16: days old, whenever this runs.
            .replace(
                "[checks]\n",
                "[checks]\nfreshness = { max_age_days = 1, level = \"warn\" }\n",
            ),
    )
    .unwrap();
    let strict = strict.display().to_string();
    let env = demo.env();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = scoreland(&["run", &strict, "--force", "--json"], &envs);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains("checks failed"), "{said}");
    assert!(
        said.contains("model_rows.churn_risk = 1623 (bound >= 1000000)")
            || said.contains("model_rows.churn_risk ="),
        "{said}"
    );
    let failed = record(&o);
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == "fail")
    );
    assert_eq!(
        versions(&demo),
        landed,
        "nothing of the failed night landed"
    );
    assert_eq!(
        demo.count("SELECT count(*) AS n FROM checks"),
        checks.len() as u64
    );

    // The operator lands it anyway: the failures are `overridden`, in the record and the table.
    let o = scoreland(
        &[
            "run",
            &strict,
            "--force",
            "--json",
            "--skip-checks",
            "model_rows",
        ],
        &envs,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let forced = record(&o);
    let skipped = forced["skipped_checks"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert_ne!(versions(&demo), landed);
    assert_eq!(
        demo.count("SELECT count(*) AS n FROM checks WHERE status = 'overridden'"),
        2
    );
    // Freshness counts days from the newest score date to the run's day; at level warn it lands.
    assert_eq!(
        demo.count("SELECT count(*) AS n FROM checks WHERE \"check\" = 'freshness' AND status = 'warn' AND value >= 19"),
        1
    );
    assert!(
        forced["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("check freshness = ")),
        "{forced}"
    );

    // An unknown check to skip, and a bound that makes no sense, are usage errors.
    let o = scoreland(
        &["run", &strict, "--force", "--skip-checks", "nosuch"],
        &envs,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--skip-checks nosuch"), "{}", text(&o));
    let bad = demo.tmp.path().join("demo-bad-checks.toml");
    std::fs::write(
        &bad,
        text_of.replace(
            "null_rate = { max_pct = { identity = 0, score = 0 } }",
            "null_rate = { max_pct = { score = 150 } }",
        ),
    )
    .unwrap();
    let o = scoreland(&["validate", &bad.display().to_string()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("checks.null_rate.max_pct.score = 150"),
        "{}",
        text(&o)
    );
}

/// Dataset exports (Flow Service): the dataflow made and run with `scoreland export`, its
/// folders landed by a `dataset-export` pipeline, checked against the generator's own truth.
mod dataset_exports {
    use super::*;
    use scoreland_platform_sim::{ExportFault, GenerateOptions, SimHandle};

    struct Exports {
        tmp: tempfile::TempDir,
        sim: SimHandle,
        summary: scoreland_platform_sim::GenerateSummary,
        pipeline: String,
        secret: String,
    }

    async fn setup(file_type: &str, extra_source: &str) -> Exports {
        setup_with(
            SimConfig::default(),
            &format!(
                "destination = \"s3\"\nbucket = \"lake\"\npath = \"aep\"\nfile_type = \"{file_type}\"\ncredentials = {{ access_key = \"AKIA-E2E\" }}"
            ),
            None,
            extra_source,
            400,
        )
        .await
    }

    /// A platform, its simulator (exporting under `<tmp>/exports` unless `config` says
    /// otherwise) and a pipeline whose flow has `destination` settings, reading `url` (default:
    /// the simulator's S3 directory).
    async fn setup_with(
        config: SimConfig,
        destination: &str,
        url: Option<&str>,
        extra_source: &str,
        rows: u64,
    ) -> Exports {
        let tmp = tempfile::tempdir().unwrap();
        let platform = tmp.path().join("platform");
        let summary = scoreland_platform_sim::generate(&GenerateOptions {
            out: platform.clone(),
            rows,
            parts: 2,
            batches: 3,
            seed: 11,
            ..Default::default()
        })
        .unwrap();
        let exports = tmp.path().join("exports");
        let sim = scoreland_platform_sim::serve_dir(
            &platform,
            SimConfig {
                export_root: exports.clone(),
                ..config
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let info = sim.platform().info.clone();
        let t = tmp.path().display();
        let url = url
            .map(str::to_string)
            .unwrap_or_else(|| format!("{t}/exports/s3/lake/aep"));
        let pipeline = tmp.path().join("exports.toml");
        std::fs::write(
            &pipeline,
            format!(
                r#"name = "exports-e2e"
staging = "{t}/staging"

[source]
type = "dataset-export"
url = "{url}"
dataset = "{ds}"
folders = "catch_up"
{extra_source}

[source.platform]
platform_url = "{base}"
ims_url = "{base}"
org_id = "{org}"
sandbox = "prod"
client_id = "{client}"
client_secret = "${{SIM_CLIENT_SECRET}}"

[source.flow]
name = "e2e-s3"
{destination}
compression = "GZIP"

[sink]
url = "{t}/wh"
"#,
                ds = summary.dataset_id,
                base = sim.base_url(),
                org = info.org_id,
                client = info.client_id,
            ),
        )
        .unwrap();
        Exports {
            pipeline: pipeline.display().to_string(),
            secret: info.client_secret,
            tmp,
            sim,
            summary,
        }
    }

    impl Exports {
        fn cli(&self, args: &[&str]) -> Output {
            self.cli_with(args, &[])
        }
        fn cli_with(&self, args: &[&str], more_env: &[(&str, &str)]) -> Output {
            let mut all: Vec<&str> = args.to_vec();
            all.insert(2.min(all.len()), &self.pipeline);
            let connection_string = azurite_connection_string();
            let mut envs = vec![
                ("SIM_CLIENT_SECRET", self.secret.as_str()),
                ("SCORELAND_EXPORT_SECRET_KEY", "test"),
                (
                    "SCORELAND_EXPORT_CONNECTION_STRING",
                    connection_string.as_str(),
                ),
                ("SCORELAND_EXPORT_SFTP_PASSWORD", "sftptest-password"),
            ];
            envs.extend_from_slice(more_env);
            scoreland(&all, &envs)
        }
        fn run(&self) -> Output {
            self.cli(&["run", "--json"])
        }
        fn wh(&self) -> String {
            self.tmp.path().join("wh").display().to_string()
        }
        /// The scores landed, by (identity, model).
        fn landed(&self) -> BTreeMap<(String, String), (f64, String)> {
            let o = scoreland(
                &[
                    "sql",
                    "SELECT identity, model, score, record_id FROM scores",
                    "--warehouse",
                    &self.wh(),
                    "--format",
                    "json",
                ],
                &[],
            );
            assert!(o.status.success(), "{}", text(&o));
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    (
                        (
                            v["identity"].as_str().unwrap().to_string(),
                            v["model"].as_str().unwrap().to_string(),
                        ),
                        (
                            v["score"].as_f64().unwrap(),
                            v["record_id"].as_str().unwrap().to_string(),
                        ),
                    )
                })
                .collect()
        }
        /// What landing must keep once the dataset's successful batches but the newest
        /// `held_back` were exported: those not replaced, in order of arrival.
        fn truth(&self, exported: &[&[usize]]) -> BTreeMap<(String, String), (f64, String)> {
            let mut success: Vec<_> = self
                .summary
                .batches
                .iter()
                .filter(|b| b.status == "success")
                .collect();
            success.sort_by_key(|b| b.created);
            let batches: Vec<(Vec<PathBuf>, i64)> = exported
                .iter()
                .enumerate()
                .flat_map(|(folder, idx)| idx.iter().map(move |i| (folder, *i)).collect::<Vec<_>>())
                .map(|(folder, i)| {
                    let parts = scoreland_platform_sim::truth::batch_parts(
                        &self.summary.out,
                        &self.summary.dataset_id,
                        &success[i].id,
                    )
                    .unwrap();
                    (parts, folder as i64)
                })
                .collect();
            scoreland_platform_sim::truth::newest_scores(&batches)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, (v.score, v.record_id)))
                .collect()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_export_then_two_increments_land_the_newest_scores() {
        let x = setup("PARQUET", "").await;
        // Successful batches, oldest first: three weekly scoring batches (each replacing the
        // one before) and another client's. Exports see all but the newest two at first.
        x.sim.set_export_hold_back(2);
        let created = x.cli(&["export", "create"]);
        assert!(created.status.success(), "{}", text(&created));
        assert!(
            text(&created).contains("created dataflow e2e-s3"),
            "{}",
            text(&created)
        );
        let again = x.cli(&["export", "create"]);
        assert!(
            text(&again).contains("found existing dataflow e2e-s3"),
            "{}",
            text(&again)
        );

        let nothing = x.run();
        assert_eq!(nothing.status.code(), Some(3), "{}", text(&nothing));

        let exported = x.cli(&["export", "run"]);
        assert!(exported.status.success(), "{}", text(&exported));
        // `export download` stages the newest complete folder without landing it.
        let out = x.tmp.path().join("download");
        let dl = x.cli(&["export", "download", "--out", out.to_str().unwrap()]);
        assert!(dl.status.success(), "{}", text(&dl));
        assert!(text(&dl).contains("succeeded with"), "{}", text(&dl));
        assert!(out.join(&x.summary.dataset_id).is_dir());
        let full = x.run();
        assert_eq!(full.status.code(), Some(0), "{}", text(&full));
        let r = record(&full);
        assert_eq!(r["export"]["folders"][0]["full"], true, "{r}");
        assert!(
            r["export"]["folders"][0]["complete"]
                .as_str()
                .unwrap()
                .contains("succeeded with"),
            "{r}"
        );
        // The second scoring batch replaced the first: only it is in the dataset.
        assert_eq!(x.landed(), x.truth(&[&[1]]));

        // The third scoring batch arrives: an increment, merged. It is written slowly: while
        // its run is in progress the folder is not landed, however many files it has.
        x.sim.set_export_hold_back(1);
        x.sim.script_export(ExportFault::Slow { millis: 700 });
        assert!(x.cli(&["export", "run", "--no-wait"]).status.success());
        let early = x.run();
        assert_eq!(early.status.code(), Some(3), "{}", text(&early));
        let inc = while_nothing_new(|| x.run(), 40, 250);
        assert_eq!(inc.status.code(), Some(0), "{}", text(&inc));
        let r = record(&inc);
        assert_eq!(r["export"]["folders"][0]["full"], false, "{r}");
        assert_eq!(x.landed(), x.truth(&[&[1], &[2]]));

        // Then another client's batch.
        x.sim.set_export_hold_back(0);
        assert!(x.cli(&["export", "run"]).status.success());
        let inc = x.run();
        assert_eq!(inc.status.code(), Some(0), "{}", text(&inc));
        let expected = x.truth(&[&[1], &[2], &[3]]);
        let landed = x.landed();
        assert_eq!(landed.len(), expected.len());
        assert_eq!(landed, expected);
        // The summaries are those of the merged rows.
        let summed = scoreland(
            &[
                "sql",
                "SELECT CAST(sum(rows) AS BIGINT) AS n FROM summary",
                "--warehouse",
                &x.wh(),
                "--format",
                "json",
            ],
            &[],
        );
        let v: Value = serde_json::from_slice(&summed.stdout).unwrap();
        assert_eq!(v["n"].as_u64(), Some(expected.len() as u64));

        let runs = x.cli(&["export", "runs", "--json"]);
        let runs: Value = serde_json::from_slice(&runs.stdout).unwrap();
        assert_eq!(runs.as_array().unwrap().len(), 3);
        let last = x.run();
        assert_eq!(last.status.code(), Some(3), "{}", text(&last));
    }

    /// `export plan` before the first night, and `export create` running it first: the
    /// dataset's eligibility, size and class, the schedule spelled out, the flow's datasets,
    /// the folder template; a failed check exits 2 and creates nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_export_plan_checks_before_anything_is_created() {
        let x = setup("PARQUET", "").await;
        let plan = x.cli(&["export", "plan"]);
        assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
        let out = text(&plan);
        for want in [
            "dataflow not created yet",
            "ok    eligible",
            "a profile dataset of",
            "ok    schedule",
            "a full export first, then what was added since, once a day",
            "six months after its start",
            "ok    folders",
            "first exports:",
            "(incremental)",
        ] {
            assert!(out.contains(want), "{want}: {out}");
        }
        let json = x.cli(&["export", "plan", "--json"]);
        assert_eq!(json.status.code(), Some(0), "{}", text(&json));
        let v: Value = serde_json::from_slice(&json.stdout).unwrap();
        let verdicts: BTreeMap<String, String> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["check"].as_str().unwrap().into(),
                    c["verdict"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            verdicts,
            BTreeMap::from_iter(
                ["eligible", "size", "schedule", "folders"]
                    .map(|c| (c.to_string(), "ok".to_string()))
            )
        );

        // `create` runs the plan first (on stderr); afterwards the plan reads the flow itself.
        let created = x.cli(&["export", "create"]);
        assert!(created.status.success(), "{}", text(&created));
        assert!(
            text(&created).contains("export plan for dataset"),
            "{}",
            text(&created)
        );
        let plan = x.cli(&["export", "plan"]);
        assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
        assert!(
            text(&plan).contains("exports this dataset alone"),
            "{}",
            text(&plan)
        );
        assert!(!text(&plan).contains("not created yet"), "{}", text(&plan));

        let base = std::fs::read_to_string(&x.pipeline).unwrap();
        let variant = |name: &str, text_of: String| {
            let p = x.tmp.path().join(name);
            std::fs::write(&p, text_of).unwrap();
            let mut envs = vec![("SIM_CLIENT_SECRET", x.secret.as_str())];
            envs.push(("SCORELAND_EXPORT_SECRET_KEY", "test"));
            let plan = scoreland(&["export", "plan", p.to_str().unwrap()], &envs);
            let create = scoreland(&["export", "create", p.to_str().unwrap()], &envs);
            (plan, create)
        };
        // Uncompressed parquet of a profile dataset: a warning with the limit and the fix.
        let (plan, _) = variant(
            "raw.toml",
            base.replace("name = \"e2e-s3\"", "name = \"e2e-raw\"")
                .replace("compression = \"GZIP\"", "compression = \"NONE\""),
        );
        assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
        assert!(text(&plan).contains("warn  size"), "{}", text(&plan));
        assert!(
            text(&plan).contains("fails such exports above 1000000 records"),
            "{}",
            text(&plan)
        );
        // The existing flow writes AEP's default folders; a pipeline reading another template
        // would never find them.
        let (plan, create) = variant(
            "template.toml",
            base.replace(
                "compression = \"GZIP\"",
                "compression = \"GZIP\"\nfoldername_template = \"%DATASET_ID%/%DATETIME(YYYYMMdd_HHmmss)%\"",
            ),
        );
        assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
        assert!(text(&plan).contains("FAIL  folders"), "{}", text(&plan));
        assert!(
            text(&plan).contains("the export plan has 1 failed check: folders"),
            "{}",
            text(&plan)
        );
        assert_eq!(create.status.code(), Some(2), "{}", text(&create));
        // A dataset the data lake does not offer: nothing is created.
        let (plan, create) = variant(
            "other.toml",
            base.replace("name = \"e2e-s3\"", "name = \"e2e-other\"")
                .replace(&x.summary.dataset_id, "000000000000000000000000"),
        );
        assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
        assert!(text(&plan).contains("FAIL  eligible"), "{}", text(&plan));
        assert_eq!(create.status.code(), Some(2), "{}", text(&create));
        assert!(
            !text(&create).contains("created dataflow"),
            "{}",
            text(&create)
        );
        // Only the plans that passed (with a warning, for e2e-raw) created their flow.
        let flows = x.cli(&["export", "list", "--json"]);
        let flows: Value = serde_json::from_slice(&flows.stdout).unwrap();
        let names: Vec<&str> = flows
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["e2e-raw", "e2e-s3"], "{flows}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aeps_manifest_decides_and_mixed_run_counts_only_warn() {
        let x = setup_with(
            SimConfig {
                export_manifests: true,
                ..Default::default()
            },
            "destination = \"s3\"\nbucket = \"lake\"\npath = \"aep\"\nfile_type = \"PARQUET\"\ncredentials = { access_key = \"AKIA-E2E\" }",
            None,
            "",
            400,
        )
        .await;
        x.sim.set_export_hold_back(2);
        assert!(x.cli(&["export", "create"]).status.success());
        // The run's counts include another export's: the manifest, all present, decides.
        x.sim.script_export(ExportFault::MixedCounts);
        assert!(x.cli(&["export", "run"]).status.success());
        let full = x.run();
        assert_eq!(full.status.code(), Some(0), "{}", text(&full));
        let r = record(&full);
        let complete = r["export"]["folders"][0]["complete"].as_str().unwrap();
        assert!(complete.contains("manifest"), "{r}");
        assert!(
            r["warnings"].to_string().contains("manifest is followed"),
            "{r}"
        );
        assert_eq!(x.landed(), x.truth(&[&[1]]));
        // A file the manifest lists is missing after its run succeeded: lost, so the run
        // fails naming it, and nothing of the folder lands.
        x.sim.set_export_hold_back(1);
        x.sim.script_export(ExportFault::MissingFile);
        assert!(x.cli(&["export", "run"]).status.success());
        let lost = x.run();
        assert_eq!(lost.status.code(), Some(1), "{}", text(&lost));
        assert!(
            text(&lost).contains("which the manifest lists"),
            "{}",
            text(&lost)
        );
        assert_eq!(x.landed(), x.truth(&[&[1]]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_while_publishing_a_folder_never_loses_the_next_one() {
        let x = setup("PARQUET", "").await;
        x.sim.set_export_hold_back(2);
        assert!(x.cli(&["export", "create"]).status.success());
        assert!(x.cli(&["export", "run"]).status.success());
        let crashed = x.cli_with(
            &["run", "--json"],
            &[("SCORELAND_CRASH_AT", "between_tables")],
        );
        assert!(
            crashed.status.code().is_none() || crashed.status.code() == Some(134),
            "{}",
            text(&crashed)
        );
        // The next folder arrives before the next night: the crashed full export is finished
        // first, then the increment is merged on top; no table is skipped.
        x.sim.set_export_hold_back(1);
        assert!(x.cli(&["export", "run"]).status.success());
        let next = x.run();
        assert_eq!(next.status.code(), Some(0), "{}", text(&next));
        let r = record(&next);
        assert!(r["warnings"].to_string().contains("interrupted"), "{r}");
        for t in r["tables"].as_array().unwrap() {
            assert_eq!(t["committed"], true, "{t}");
        }
        assert_eq!(x.landed(), x.truth(&[&[1], &[2]]));
        assert_eq!(x.run().status.code(), Some(3));
    }

    /// Runs `run` again, `pause_ms` apart, while it finds nothing new (exit 3): a folder still
    /// being written or settling. Gives the first other outcome, or the last after `tries`.
    fn while_nothing_new(run: impl Fn() -> Output, tries: u32, pause_ms: u64) -> Output {
        let mut out = run();
        for _ in 0..tries {
            if out.status.code() != Some(3) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
            out = run();
        }
        out
    }

    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn azurite_connection_string() -> String {
        let url = std::env::var("SCORELAND_TEST_AZURITE_URL").unwrap_or_default();
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={url}/devstoreaccount1;"
        )
    }

    /// The export written by the simulator to a real S3 server (moto) and to Azure Blob
    /// (azurite), with the base connection's credentials, then landed from there: a full export
    /// and an increment, each checked against the generator's truth.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_land_from_s3_and_azure_blob_servers() {
        let (Some(s3), Some(azurite)) = (
            service("SCORELAND_TEST_S3_ENDPOINT"),
            service("SCORELAND_TEST_AZURITE_URL"),
        ) else {
            return;
        };
        let prefix = unique("exports");
        let s3_source = format!(
            "options = {{ aws_endpoint = \"{s3}\", aws_allow_http = \"true\", aws_access_key_id = \"test\", aws_secret_access_key = \"test\", aws_region = \"us-east-1\" }}"
        );
        let az_source = format!(
            "options = {{ azure_storage_account_name = \"devstoreaccount1\", azure_storage_account_key = \"{AZURITE_KEY}\", azure_storage_endpoint = \"{azurite}/devstoreaccount1\", azure_allow_http = \"true\", azure_storage_use_emulator = \"true\" }}"
        );
        let cases = [
            (
                SimConfig {
                    export_s3_endpoint: Some(s3.clone()),
                    ..SimConfig::default()
                },
                format!(
                    "destination = \"s3\"\nbucket = \"scoreland-test\"\npath = \"{prefix}\"\ncredentials = {{ access_key = \"test\" }}"
                ),
                format!("s3://scoreland-test/{prefix}"),
                s3_source,
            ),
            (
                SimConfig::default(),
                format!(
                    "destination = \"azure_blob\"\nbucket = \"scoreland-test\"\npath = \"{prefix}\"\nfile_type = \"JSON\""
                ),
                format!("az://scoreland-test/{prefix}"),
                az_source,
            ),
        ];
        for (config, destination, url, source) in cases {
            let x = setup_with(config, &destination, Some(&url), &source, 400).await;
            x.sim.set_export_hold_back(2);
            let made = x.cli(&["export", "create"]);
            assert!(made.status.success(), "{}", text(&made));
            let exported = x.cli(&["export", "run"]);
            assert!(exported.status.success(), "{url}: {}", text(&exported));
            assert!(
                !x.tmp.path().join("exports/s3").exists()
                    && !x.tmp.path().join("exports/azure_blob").exists(),
                "{url}: written to the server, not to a directory"
            );
            let full = x.run();
            assert_eq!(full.status.code(), Some(0), "{url}: {}", text(&full));
            assert_eq!(x.landed(), x.truth(&[&[1]]), "{url}");
            x.sim.set_export_hold_back(0);
            assert!(x.cli(&["export", "run"]).status.success());
            let inc = x.run();
            assert_eq!(inc.status.code(), Some(0), "{url}: {}", text(&inc));
            assert_eq!(record(&inc)["export"]["folders"][0]["full"], false);
            assert_eq!(x.landed(), x.truth(&[&[1], &[2, 3]]), "{url}");
        }
    }

    /// The Data Landing Zone as an azurite container: the simulator signs SAS tokens for it; the
    /// first one handed out has expired, so the run is refused, asks for a new one, and lands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_data_landing_zone_refreshes_expired_credentials() {
        let Some(azurite) = service("SCORELAND_TEST_AZURITE_URL") else {
            return;
        };
        let prefix = unique("dlz");
        let x = setup_with(
            SimConfig {
                export_dlz: Some(scoreland_platform_sim::DlzServer {
                    endpoint: format!("{azurite}/devstoreaccount1"),
                    account: "devstoreaccount1".into(),
                    key: AZURITE_KEY.into(),
                    container: "scoreland-test".into(),
                }),
                ..SimConfig::default()
            },
            // A flow that AEP stops in five days: every run warns.
            &format!(
                "destination = \"dlz\"\npath = \"{prefix}\"\nend = \"{}\"",
                (chrono::Utc::now() + chrono::Duration::days(5)).to_rfc3339()
            ),
            Some(&format!("dlz:{prefix}")),
            "",
            400,
        )
        .await;
        x.sim.set_export_hold_back(2);
        assert!(x.cli(&["export", "create"]).status.success());
        let exported = x.cli(&["export", "run"]);
        assert!(exported.status.success(), "{}", text(&exported));
        assert!(
            !x.tmp.path().join("exports/dlz").exists(),
            "written to azurite"
        );
        x.sim.expire_dlz_credentials();
        let landed = x.run();
        assert_eq!(landed.status.code(), Some(0), "{}", text(&landed));
        assert!(
            text(&landed).contains("refused its credentials"),
            "{}",
            text(&landed)
        );
        assert_eq!(x.landed(), x.truth(&[&[1]]));
        let warned = record(&landed)["warnings"].to_string();
        assert!(
            warned.contains("ends in 5.0 days") || warned.contains("ends in 4.9 days"),
            "{warned}"
        );
    }

    /// OpenPGP-encrypted export files (`….gpg`, as AEP writes them for a destination given
    /// the user's public key): decrypted while staging with the key and passphrase from the
    /// environment; a wrong passphrase, a missing key or a tampered file lands nothing and
    /// names the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encrypted_exports_are_decrypted_and_a_bad_key_or_file_lands_nothing() {
        const PUBLIC: &str = include_str!("../crates/ingest/testdata/pgp-test-key.pub.asc");
        const SECRET: &str = include_str!("../crates/ingest/testdata/pgp-test-key.sec.asc");
        let x = setup_with(
            SimConfig {
                export_pgp_public_key: Some(PUBLIC.into()),
                ..SimConfig::default()
            },
            "destination = \"s3\"\nbucket = \"lake\"\npath = \"aep\"\nfile_type = \"PARQUET\"\ncredentials = { access_key = \"AKIA-E2E\" }",
            None,
            "pgp = {}",
            400,
        )
        .await;
        x.sim.set_export_hold_back(2);
        assert!(x.cli(&["export", "create"]).status.success());
        assert!(x.cli(&["export", "run"]).status.success());
        let encrypted: Vec<PathBuf> = walk(&x.tmp.path().join("exports"))
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".parquet.gpg"))
            .collect();
        assert!(!encrypted.is_empty());
        let run_with = |key: &str, pass: &str| {
            x.cli_with(
                &["run", "--json"],
                &[
                    ("SCORELAND_PGP_PRIVATE_KEY", key),
                    ("SCORELAND_PGP_PASSPHRASE", pass),
                ],
            )
        };
        // No key: refused before anything is read.
        let o = x.run();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("SCORELAND_PGP_PRIVATE_KEY is not set"),
            "{}",
            text(&o)
        );
        // The wrong passphrase: the file is named, nothing lands, the passphrase is not said.
        let o = run_with(SECRET, "wrong-passphrase");
        assert_ne!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains(".parquet.gpg"), "{}", text(&o));
        assert!(text(&o).contains("cannot be decrypted"), "{}", text(&o));
        assert!(!text(&o).contains("wrong-passphrase"), "{}", text(&o));
        assert!(!x.tmp.path().join("wh/scores").exists());
        // Tampered files (every one: a copy staged before is reused, so tamper them all): the
        // integrity check fails; nothing lands.
        let originals: Vec<Vec<u8>> = encrypted
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        for (f, original) in encrypted.iter().zip(&originals) {
            let mut tampered = original.clone();
            let n = tampered.len();
            for at in [n / 3, n / 2, 2 * n / 3] {
                tampered[at] ^= 0x01;
            }
            std::fs::write(f, tampered).unwrap();
        }
        let o = run_with(SECRET, "scoreland-test-passphrase");
        assert_ne!(o.status.code(), Some(0), "{}", text(&o));
        assert!(!x.tmp.path().join("wh/scores").exists());
        // The files as written: they land, as the unencrypted export would.
        for (f, original) in encrypted.iter().zip(originals) {
            std::fs::write(f, original).unwrap();
        }
        let o = run_with(SECRET, "scoreland-test-passphrase");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(x.landed(), x.truth(&[&[1]]));
    }

    /// Azure storage with an Entra ID service principal: client id, tenant and secret from the
    /// environment (object_store's `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_CLIENT_SECRET`),
    /// exchanged for a bearer token at the authority (the simulator's Entra ID endpoint), which
    /// azurite's OAuth checks. A night lands there and is read back; a wrong secret lands
    /// nothing and is never printed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn azure_storage_with_an_entra_id_service_principal() {
        let Some(azurite) = service("SCORELAND_TEST_AZURITE_OAUTH_URL") else {
            return;
        };
        let entra = scoreland_platform_sim::serve_dir(
            &repo().join("sample-data/platform"),
            SimConfig {
                entra_app: Some(scoreland_platform_sim::EntraApp {
                    tenant: "7f3c1a52-0000-4000-8000-00000000e17a".into(),
                    client_id: "scoreland-warehouse-writer".into(),
                    client_secret: "entra-secret-value".into(),
                }),
                ..SimConfig::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let demo = Demo::new();
        let warehouse = format!("az://scoreland-test/{}", unique("entra"));
        let staging = demo.tmp.path().join("staging").display().to_string();
        let authority = entra.base_url();
        let env = |secret: &'static str| {
            vec![
                ("SCORELAND_WAREHOUSE", warehouse.clone()),
                ("SCORELAND_STAGING", staging.clone()),
                ("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1".to_string()),
                (
                    "AZURE_STORAGE_ENDPOINT",
                    format!("{azurite}/devstoreaccount1"),
                ),
                ("AZURE_ALLOW_INVALID_CERTIFICATES", "true".to_string()),
                // The simulator's token endpoint is plain http on loopback.
                ("AZURE_ALLOW_HTTP", "true".to_string()),
                ("AZURE_AUTHORITY_HOST", authority.to_string()),
                (
                    "AZURE_TENANT_ID",
                    "7f3c1a52-0000-4000-8000-00000000e17a".to_string(),
                ),
                ("AZURE_CLIENT_ID", "scoreland-warehouse-writer".to_string()),
                ("AZURE_CLIENT_SECRET", secret.to_string()),
            ]
        };
        let run = |secret: &'static str| {
            let e = env(secret);
            let envs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
            scoreland(&["run", "pipelines/demo.toml", "--force"], &envs)
        };
        let o = run("not-the-secret");
        assert_ne!(o.status.code(), Some(0), "{}", text(&o));
        assert!(!text(&o).contains("not-the-secret"), "{}", text(&o));
        let o = run("entra-secret-value");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(!text(&o).contains("entra-secret-value"), "{}", text(&o));
        let e = env("entra-secret-value");
        let envs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = scoreland(
            &[
                "sql",
                "SELECT count(*) AS n FROM scores",
                "--warehouse",
                &warehouse,
                "--format",
                "csv",
            ],
            &envs,
        );
        assert!(o.status.success(), "{}", text(&o));
        let n: u64 = String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > 0);
        entra.stop().await;
    }

    /// The Data Landing Zone on AWS: a bucket on moto reached with session credentials from
    /// the platform's credentials call (`dlzPath`, `expiryTime`); credentials that expire
    /// within five minutes are renewed before they sign anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_aws_data_landing_zone_lands_with_renewed_session_credentials() {
        let Some(s3) = service("SCORELAND_TEST_S3_ENDPOINT") else {
            return;
        };
        for (lifetime, renews) in [(3600, false), (120, true)] {
            let prefix = unique("dlz-aws");
            let x = setup_with(
                SimConfig {
                    export_dlz_aws: Some(scoreland_platform_sim::DlzAws {
                        endpoint: s3.clone(),
                        bucket: "scoreland-test".into(),
                        folder: "dlz-destination".into(),
                        lifetime: std::time::Duration::from_secs(lifetime),
                    }),
                    ..SimConfig::default()
                },
                &format!("destination = \"dlz\"\npath = \"{prefix}\""),
                Some(&format!("dlz:{prefix}")),
                "",
                400,
            )
            .await;
            x.sim.set_export_hold_back(2);
            assert!(x.cli(&["export", "create"]).status.success());
            let exported = x.cli(&["export", "run"]);
            assert!(exported.status.success(), "{}", text(&exported));
            assert!(
                !x.tmp.path().join("exports/dlz").exists(),
                "written to moto"
            );
            let landed = x.run();
            assert_eq!(landed.status.code(), Some(0), "{}", text(&landed));
            assert_eq!(x.landed(), x.truth(&[&[1]]), "lifetime {lifetime}");
            let issued = x.sim.dlz_credentials_issued();
            assert_eq!(issued > 1, renews, "lifetime {lifetime}: {issued} issued");
        }
    }

    /// GCS through fake-gcs-server, which serves object_store's reads but refuses its writes:
    /// the simulator's folder is copied in through the emulator's JSON API, then landed from
    /// `gs://`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_land_from_a_gcs_server() {
        let Some(gcs) = service("SCORELAND_TEST_GCS_URL") else {
            return;
        };
        let prefix = unique("exports");
        let key = serde_json::json!({
            "gcs_base_url": gcs, "disable_oauth": true,
            "client_email": "", "private_key": "", "private_key_id": "",
        });
        let source = format!(
            "options = {{ google_service_account_key = {} }}",
            serde_json::to_string(&key.to_string()).unwrap()
        );
        let x = setup_with(
            SimConfig::default(),
            &format!(
                "destination = \"gcs\"\nbucket = \"scoreland-test\"\npath = \"{prefix}\"\ncredentials = {{ access_key = \"test\" }}"
            ),
            Some(&format!("gs://scoreland-test/{prefix}")),
            &source,
            400,
        )
        .await;
        x.sim.set_export_hold_back(2);
        assert!(x.cli(&["export", "create"]).status.success());
        let exported = x.cli(&["export", "run"]);
        assert!(exported.status.success(), "{}", text(&exported));
        let local = x
            .tmp
            .path()
            .join("exports/gcs/scoreland-test")
            .join(&prefix);
        let mut files = Vec::new();
        fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk_files(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        walk_files(&local, &mut files);
        assert!(!files.is_empty());
        for f in &files {
            let rel = f.strip_prefix(&local).unwrap().to_str().unwrap();
            let name = format!("{prefix}/{rel}");
            let up = Command::new("curl")
                .args(["-sf", "-X", "POST", "--data-binary"])
                .arg(format!("@{}", f.display()))
                .arg(format!(
                    "{gcs}/upload/storage/v1/b/scoreland-test/o?uploadType=media&name={}",
                    name.replace('=', "%3D")
                ))
                .output()
                .unwrap();
            assert!(up.status.success(), "uploading {name}: {}", text(&up));
        }
        let landed = x.run();
        assert_eq!(landed.status.code(), Some(0), "{}", text(&landed));
        assert_eq!(x.landed(), x.truth(&[&[1]]));
    }

    /// A TCP proxy on a free loopback port to `port`; the first connection through it is cut
    /// after `cut_after` bytes from the server (a server dropping the connection mid-file),
    /// later ones pass whole. Returns the port and how many connections it saw.
    async fn cutting_proxy(
        port: u16,
        cut_after: usize,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let server = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                tokio::spawn(async move {
                    let limit = if n == 0 { cut_after } else { usize::MAX };
                    let mut sent = 0usize;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let k = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => k.min(limit - sent),
                        };
                        if cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        sent += k;
                        if sent >= limit {
                            break; // dropping both halves closes the connection
                        }
                    }
                });
            }
        });
        (local, seen)
    }

    /// SFTP through OpenSSH's sshd: the host key is checked (unknown: refused, with its
    /// fingerprint; pinned: accepted), key and password logins, and a connection cut mid-file
    /// resumed where it stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_land_from_sftp_with_checked_host_keys_and_resumed_files() {
        let (Some(port), Some(root), Some(key), Some(known), Some(fingerprint)) = (
            service("SCORELAND_TEST_SFTP_PORT"),
            service("SCORELAND_TEST_SFTP_ROOT"),
            service("SCORELAND_TEST_SFTP_KEY"),
            service("SCORELAND_TEST_SFTP_KNOWN_HOSTS"),
            service("SCORELAND_TEST_SFTP_FINGERPRINT"),
        ) else {
            return;
        };
        let port: u16 = port.parse().unwrap();
        let prefix = unique("exports");
        let url = |port: u16| format!("sftp://sftptest@127.0.0.1:{port}{root}/{prefix}");
        // Big enough files that a cut lands inside one.
        let x = setup_with(
            SimConfig {
                export_sftp_root: Some(PathBuf::from(&root)),
                ..SimConfig::default()
            },
            &format!(
                "destination = \"sftp\"\npath = \"{prefix}\"\ncredentials = {{ host = \"127.0.0.1\", port = \"{port}\", username = \"sftptest\" }}"
            ),
            Some(&url(port)),
            &format!("options = {{ sftp_key_file = \"{key}\", sftp_known_hosts = \"{known}\" }}"),
            20_000,
        )
        .await;
        x.sim.set_export_hold_back(2);
        let made = x.cli(&["export", "create"]);
        assert!(made.status.success(), "{}", text(&made));
        let exported = x.cli(&["export", "run"]);
        assert!(exported.status.success(), "{}", text(&exported));

        // Each case rewrites the pipeline's url and options.
        let pipeline = std::fs::read_to_string(&x.pipeline).unwrap();
        let with = |url: &str, options: &str| {
            let mut p = String::new();
            for line in pipeline.lines() {
                if line.starts_with("url = \"sftp://") {
                    p.push_str(&format!("url = \"{url}\"\n"));
                } else if line.starts_with("options = ") {
                    p.push_str(options);
                    p.push('\n');
                } else {
                    p.push_str(line);
                    p.push('\n');
                }
            }
            std::fs::write(&x.pipeline, p).unwrap();
        };
        // An unknown host key is refused, with its fingerprint.
        let empty = x.tmp.path().join("empty_known_hosts");
        std::fs::write(&empty, "").unwrap();
        with(
            &url(port),
            &format!(
                "options = {{ sftp_key_file = \"{key}\", sftp_known_hosts = \"{}\" }}",
                empty.display()
            ),
        );
        let refused = x.run();
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        assert!(text(&refused).contains(&fingerprint), "{}", text(&refused));
        assert!(text(&refused).contains("is not in"), "{}", text(&refused));

        // A pinned fingerprint, a password login, and the server dropping the connection in
        // the middle of a file: the file is resumed and the folder lands whole.
        let (proxy, connections) = cutting_proxy(port, 160 * 1024).await;
        with(
            &url(proxy),
            &format!("options = {{ sftp_host_key_fingerprint = \"{fingerprint}\" }}"),
        );
        let o = scoreland(
            &["run", &x.pipeline, "--json"],
            &[
                ("SIM_CLIENT_SECRET", &x.secret),
                ("SCORELAND_SFTP_PASSWORD", "sftptest-password"),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains("resuming the file"), "{}", text(&o));
        assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        assert_eq!(x.landed(), x.truth(&[&[1]]));

        // Key login through known_hosts, for the increment.
        with(
            &url(port),
            &format!("options = {{ sftp_key_file = \"{key}\", sftp_known_hosts = \"{known}\" }}"),
        );
        x.sim.set_export_hold_back(0);
        assert!(x.cli(&["export", "run"]).status.success());
        let inc = x.run();
        assert_eq!(inc.status.code(), Some(0), "{}", text(&inc));
        assert_eq!(x.landed(), x.truth(&[&[1], &[2, 3]]));
    }

    /// pipelines/dataset-export.toml: the simulator exports the sample platform's dataset (its
    /// batches not replaced by a later one) to its Data Landing Zone, and the run lands it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bundled_dataset_export_pipeline_lands_the_sample_dataset() {
        let demo = Demo::new();
        let env = demo.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = scoreland(&["run", "pipelines/dataset-export.toml", "--json"], &envs);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        assert_eq!(r["export"]["folders"][0]["full"], true, "{r}");
        assert!(
            r["export"]["url"].as_str().unwrap().starts_with("dlz:"),
            "{r}"
        );
        let sim = sample_sim(SimConfig::default()).await;
        let sb = &sim.platform().sandboxes["prod"];
        let dataset = first_dataset(&sim);
        let scores = || {
            sb.batches
                .values()
                .filter(|b| b.status() == "success" && b.dataset_id == dataset)
        };
        let replaced: Vec<&str> = scores().flat_map(|b| b.replaces()).collect();
        let exported: Vec<(Vec<PathBuf>, i64)> = scores()
            .filter(|b| !replaced.contains(&b.id.as_str()))
            .map(|b| (b.part_paths(), 0))
            .collect();
        let truth = scoreland_platform_sim::truth::newest_scores(&exported).unwrap();
        assert_eq!(
            demo.count("SELECT count(*) AS n FROM scores"),
            truth.len() as u64
        );
        let sum: f64 = truth.values().map(|t| t.score).sum();
        let o = demo.sql("SELECT sum(score) AS s FROM scores", "json");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!((v["s"].as_f64().unwrap() - sum).abs() < 1e-6 * sum.abs().max(1.0));

        // Each run of this pipeline starts a new simulator, whose new flow exports in full
        // again: the rows are merged, and stay the same.
        let again = scoreland(&["run", "pipelines/dataset-export.toml", "--json"], &envs);
        assert_eq!(again.status.code(), Some(0), "{}", text(&again));
        assert_eq!(
            demo.count("SELECT count(*) AS n FROM scores"),
            truth.len() as u64
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_folder_missing_a_file_of_its_run_lands_nothing() {
        let x = setup("JSON", "").await;
        x.sim.set_export_hold_back(1);
        assert!(x.cli(&["export", "create"]).status.success());
        x.sim.script_export(ExportFault::MissingFile);
        assert!(x.cli(&["export", "run"]).status.success());
        let bad = x.run();
        assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
        assert!(
            text(&bad).contains("a file is missing or foreign"),
            "{}",
            text(&bad)
        );
        assert!(
            !Path::new(&x.wh()).join("scores").exists(),
            "nothing landed"
        );

        // The next export is whole; the broken folder stays behind it and is never landed
        // (catch-up refuses it until it is removed).
        assert!(x.cli(&["export", "run"]).status.success());
        let still = x.run();
        assert_eq!(still.status.code(), Some(1), "{}", text(&still));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_platform_access_a_folder_lands_once_settled() {
        let x = setup("JSON", r#"settle = "2s""#).await;
        x.sim.set_export_hold_back(2);
        assert!(x.cli(&["export", "create"]).status.success());
        assert!(x.cli(&["export", "run"]).status.success());
        // The same pipeline without [source.platform]: completeness by settle time.
        let text_of = std::fs::read_to_string(&x.pipeline).unwrap();
        let cut = text_of.find("[source.platform]").unwrap();
        let end = text_of.find("[source.flow]").unwrap();
        let offline = format!(
            "{}export_mode = \"FIRST_FULL_THEN_INCREMENTAL\"\n\n{}",
            &text_of[..cut],
            &text_of[end..]
        );
        let path = x.tmp.path().join("offline.toml");
        std::fs::write(&path, offline).unwrap();
        let run = || {
            scoreland(
                &["run", path.to_str().unwrap(), "--json"],
                &[("SCORELAND_EXPORT_SECRET_KEY", "s3-secret-e2e")],
            )
        };
        let first = while_nothing_new(run, 20, 500);
        assert_eq!(first.status.code(), Some(0), "{}", text(&first));
        let r = record(&first);
        assert!(
            r["export"]["folders"][0]["complete"]
                .as_str()
                .unwrap()
                .contains("settle 2s"),
            "{r}"
        );
        assert_eq!(r["export"]["folders"].as_array().unwrap().len(), 1);
        assert_eq!(x.landed(), x.truth(&[&[1]]));
        // A Spark job that started writing a folder and has not committed: the folder never
        // settles, however long nothing changes in it...
        x.sim.set_export_hold_back(1);
        x.sim.script_export(ExportFault::UncommittedSparkJob);
        assert!(x.cli(&["export", "run"]).status.success());
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let o = run();
            assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        }
        assert_eq!(x.landed(), x.truth(&[&[1]]));
        // ... until its commit marker arrives.
        let started = walk(&x.tmp.path().join("exports"))
            .into_iter()
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("_started_")
            })
            .unwrap();
        let txn = started.file_name().unwrap().to_string_lossy()["_started_".len()..].to_string();
        std::fs::write(started.with_file_name(format!("_committed_{txn}")), b"").unwrap();
        let committed = while_nothing_new(run, 20, 500);
        assert_eq!(committed.status.code(), Some(0), "{}", text(&committed));
        assert_eq!(x.landed(), x.truth(&[&[1], &[2]]));
        // Files keep appearing while the run lists the folder: it waits for them, and for the
        // settle time after the last.
        x.sim.set_export_hold_back(0);
        x.sim.script_export(ExportFault::Slow { millis: 1500 });
        let r2 = x.cli(&["export", "run", "--no-wait"]);
        assert!(r2.status.success(), "{}", text(&r2));
        let early = run();
        assert_eq!(early.status.code(), Some(3), "{}", text(&early));
        let second = while_nothing_new(run, 30, 500);
        assert_eq!(second.status.code(), Some(0), "{}", text(&second));
        assert_eq!(x.landed(), x.truth(&[&[1], &[2], &[3]]));
    }
}

/// `scoreland segment-job` and `scoreland schedule` on the simulator.
mod segmentation {
    use super::*;

    pub(super) fn platform_env(
        sim: &scoreland_platform_sim::SimHandle,
    ) -> Vec<(&'static str, String)> {
        let info = &sim.platform().info;
        vec![
            ("SCORELAND_PLATFORM_URL", sim.base_url().to_string()),
            ("SCORELAND_IMS_URL", sim.ims_url().to_string()),
            ("SCORELAND_ORG_ID", info.org_id.clone()),
            ("SCORELAND_CLIENT_ID", info.client_id.clone()),
            ("SCORELAND_CLIENT_SECRET", info.client_secret.clone()),
        ]
    }

    pub(super) fn cli(env: &[(&'static str, String)], args: &[&str]) -> Output {
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        scoreland(args, &envs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segment_jobs_and_schedules_from_the_command_line() {
        let sim = sample_sim(SimConfig {
            job_duration: std::time::Duration::from_millis(300),
            ..SimConfig::default()
        })
        .await;
        let env = platform_env(&sim);
        let ran = cli(&env, &["segment-job", "run", "s1", "s2", "--json"]);
        assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
        let job = record(&ran);
        assert_eq!(job["status"], "SUCCEEDED");
        assert_eq!(job["segments"], serde_json::json!(["s1", "s2"]));

        sim.fail_next_segment_job("Segment s3 has no definition");
        let failed = cli(&env, &["segment-job", "run", "s3"]);
        assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
        assert!(
            text(&failed).contains("ended FAILED")
                && text(&failed).contains("Segment s3 has no definition"),
            "{}",
            text(&failed)
        );
        let listed = cli(&env, &["segment-job", "list", "--json"]);
        assert_eq!(record(&listed).as_array().unwrap().len(), 2);
        let id = job["id"].as_str().unwrap();
        let status = cli(&env, &["segment-job", "status", id]);
        assert!(text(&status).contains("SUCCEEDED"), "{}", text(&status));

        let hourly = cli(
            &env,
            &["schedule", "create", "--name", "n", "--cron", "0 0 * * * ?"],
        );
        assert_eq!(hourly.status.code(), Some(2), "{}", text(&hourly));
        let made = cli(
            &env,
            &[
                "schedule",
                "create",
                "--name",
                "nightly",
                "--cron",
                "0 0 2 * * ?",
                "--json",
            ],
        );
        assert_eq!(made.status.code(), Some(0), "{}", text(&made));
        let sid = record(&made)["id"].as_str().unwrap().to_string();
        assert!(cli(&env, &["schedule", "enable", &sid]).status.success());
        assert!(
            cli(&env, &["schedule", "set-cron", &sid, "0 15 4 * * ?"])
                .status
                .success()
        );
        let list = record(&cli(&env, &["schedule", "list", "--json"]));
        assert_eq!(list[0]["state"], "active");
        assert_eq!(list[0]["schedule"], "0 15 4 * * ?");
        assert!(cli(&env, &["schedule", "delete", &sid]).status.success());
        assert_eq!(
            record(&cli(&env, &["schedule", "list", "--json"])),
            serde_json::json!([])
        );
    }
}

mod profile_exports {
    //! The `profile-export` source against the simulator, checked against the generator's own
    //! profile store (read here, independently of the code under test).
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    use scoreland_platform_sim::ProfileExportFault;

    /// A platform with a profile store of `n` profiles in `segments` segments.
    fn platform(tmp: &Path, n: u64, segments: u32) -> (PathBuf, Vec<String>) {
        let out = tmp.join("platform");
        let made = scoreland(
            &[
                "sim",
                "generate",
                "--out",
                &out.display().to_string(),
                "--rows",
                "50",
                "--profiles",
                &n.to_string(),
                "--segments",
                &segments.to_string(),
                "-q",
            ],
            &[],
        );
        assert!(made.status.success(), "{}", text(&made));
        let ids: Vec<String> =
            serde_json::from_slice(&std::fs::read(out.join("profiles/segments.json")).unwrap())
                .unwrap();
        (out, ids)
    }

    fn pipeline(tmp: &Path, name: &str, source: &str) -> PathBuf {
        let path = tmp.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\nstaging = \"{}\"\n\n[source]\ntype = \"profile-export\"\n{source}\n\n[sink]\nurl = \"{}\"\n",
                tmp.join("staging").display(),
                tmp.join("wh").display()
            ),
        )
        .unwrap();
        path
    }

    fn rows(tmp: &Path, query: &str) -> Vec<Vec<String>> {
        let o = scoreland(
            &[
                "sql",
                query,
                "--warehouse",
                &tmp.join("wh").display().to_string(),
                "--format",
                "csv",
            ],
            &[],
        );
        assert!(o.status.success(), "{query}: {}", text(&o));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    }

    /// The primary identity of a stored profile, as the test reads `identityMap`.
    fn primary(p: &Value) -> (String, String) {
        for (ns, ids) in p["identityMap"].as_object().unwrap() {
            for id in ids.as_array().unwrap() {
                if id["primary"] == true {
                    return (ns.clone(), id["id"].as_str().unwrap().to_string());
                }
            }
        }
        panic!("no primary identity in {p}")
    }

    /// `…Z`, `+0000` or `YYYY-MM-DD HH:MM:SS` (UTC), as the CSV writer prints a UTC timestamp.
    fn truth_time(s: &str) -> Option<String> {
        let t = chrono::DateTime::parse_from_rfc3339(s)
            .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z"))
            .map(|t| t.naive_utc())
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
            .ok()?;
        Some(t.format("%Y-%m-%dT%H:%M:%S").to_string())
    }

    /// What the export of profiles in any of `segments` (realized or existing) must land:
    /// (identity, segment, status, time) per membership, and per segment the status counts.
    type Truth = (
        BTreeSet<(String, String, String, String)>,
        BTreeMap<String, [u64; 3]>,
        usize,
    );

    fn truth(platform: &Path, segments: &[String], statuses: &[&str]) -> Truth {
        let mut memberships = BTreeSet::new();
        let mut counts: BTreeMap<String, [u64; 3]> = BTreeMap::new();
        let mut profiles = 0;
        for p in scoreland_platform_sim::profiles::read_profiles(platform).unwrap() {
            let Some(ups) = p
                .pointer("/segmentMembership/ups")
                .and_then(Value::as_object)
            else {
                continue;
            };
            let taken = segments.iter().any(|s| {
                ups.get(s)
                    .and_then(|m| m["status"].as_str())
                    .is_some_and(|st| statuses.contains(&st))
            });
            if !taken {
                continue;
            }
            profiles += 1;
            let (_, id) = primary(&p);
            for (seg, m) in ups {
                let status = m["status"].as_str().unwrap().to_string();
                let k = ["realized", "existing", "exited"]
                    .iter()
                    .position(|s| *s == status)
                    .unwrap();
                counts.entry(seg.clone()).or_default()[k] += 1;
                let time = m["lastQualificationTime"]
                    .as_str()
                    .and_then(truth_time)
                    .unwrap_or_default();
                memberships.insert((id.clone(), seg.clone(), status, time));
            }
        }
        (memberships, counts, profiles)
    }

    #[test]
    fn a_crash_while_publishing_audiences_never_loses_the_next_nights() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, ids) = platform(tmp.path(), 500, 4);
        let night = |segment: &str| {
            pipeline(
                tmp.path(),
                "crashy",
                &format!(
                    "dataset_name = \"audiences crashy\"\nsegments = [\"{segment}\"]\nsimulator = {{ data = \"{}\" }}",
                    data.display()
                ),
            )
            .display()
            .to_string()
        };
        let crashed = scoreland(
            &["run", &night(&ids[0]), "--json"],
            &[("SCORELAND_CRASH_AT", "between_tables")],
        );
        assert!(
            crashed.status.code().is_none() || crashed.status.code() == Some(134),
            "{}",
            text(&crashed)
        );
        // The next night exports another segment: the crashed night is finished first, and
        // every table gets the new night's commit.
        let next = scoreland(&["run", &night(&ids[1]), "--json"], &[]);
        assert_eq!(next.status.code(), Some(0), "{}", text(&next));
        let r = record(&next);
        assert!(r["warnings"].to_string().contains("interrupted"), "{r}");
        for t in r["tables"].as_array().unwrap() {
            assert_eq!(t["committed"], true, "{t}");
        }
        let segments: BTreeSet<String> = rows(
            tmp.path(),
            "SELECT DISTINCT segment_id FROM audience_summary",
        )
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
        assert!(segments.contains(&ids[1]), "{segments:?}");
    }

    #[test]
    fn audiences_land_as_the_profile_store_says_with_and_without_a_batch_per_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, ids) = platform(tmp.path(), 3_000, 8);
        let chosen = &ids[..3];
        let (want, want_counts, want_profiles) = truth(&data, chosen, &["realized", "existing"]);
        assert!(want_profiles > 100, "{want_profiles}");
        let segs = chosen
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for (name, per_segment) in [("per-segment", true), ("one-batch", false)] {
            let file = pipeline(
                tmp.path(),
                name,
                &format!(
                    "dataset_name = \"audiences {name}\"\nsegments = [{segs}]\nsegment_per_batch = {per_segment}\nevaluate = true\nfields = [\"person.name.firstName\"]\nsimulator = {{ data = \"{}\" }}",
                    data.display()
                ),
            );
            let ran = scoreland(&["run", &file.display().to_string(), "--json"], &[]);
            assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
            let rec = record(&ran);
            let pe = &rec["profile_export"];
            assert!(pe["segment_job"].is_string(), "{rec}");
            assert_eq!(
                rec["batches"].as_array().unwrap().len(),
                if per_segment { 3 } else { 1 }
            );
            assert_eq!(pe["stats"]["profiles"], want_profiles as u64, "{rec}");
            let dataset = rec["dataset"].as_str().unwrap();

            let got: BTreeSet<(String, String, String, String)> = rows(
                tmp.path(),
                &format!(
                    "SELECT primary_identity, segment_id, status, \
                     coalesce(to_char(last_qualification_time, '%Y-%m-%dT%H:%M:%S'), '') \
                     FROM audiences WHERE dataset_id = '{dataset}'"
                ),
            )
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()))
            .collect();
            assert_eq!(got.len(), want.len(), "{name}");
            assert!(got == want, "{name}: the audiences differ from the store");
            let n = rows(
                tmp.path(),
                &format!("SELECT count(*) FROM audiences WHERE dataset_id = '{dataset}'"),
            );
            assert_eq!(n[0][0], want.len().to_string(), "{name}: duplicate rows");

            let summary: BTreeMap<String, [u64; 3]> = rows(
                tmp.path(),
                &format!(
                    "SELECT segment_id, realized, existing, exited, qualified, entered_since_previous \
                     FROM audience_summary WHERE dataset_id = '{dataset}'"
                ),
            )
            .into_iter()
            .map(|r| {
                let n = |i: usize| r[i].parse::<u64>().unwrap();
                assert_eq!(n(4), n(1) + n(2));
                assert_eq!(n(5), n(4), "the first night: every qualified profile entered");
                (r[0].clone(), [n(1), n(2), n(3)])
            })
            .collect();
            assert_eq!(summary, want_counts, "{name}");
            let profiles = rows(
                tmp.path(),
                &format!(
                    "SELECT count(*), count(DISTINCT primary_identity), count(person_name_firstName) \
                     FROM profiles WHERE dataset_id = '{dataset}'"
                ),
            );
            assert_eq!(
                profiles[0],
                vec![want_profiles.to_string(); 3],
                "{name}: one row per profile"
            );
        }
    }

    #[test]
    fn incremental_nights_stay_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, ids) = platform(tmp.path(), 1_500, 6);
        let chosen = &ids[..2];
        let segs = format!("\"{}\", \"{}\"", chosen[0], chosen[1]);
        let file = pipeline(
            tmp.path(),
            "incremental",
            &format!(
                "dataset_name = \"incremental\"\nsegments = [{segs}]\nstatuses = [\"realized\", \"existing\", \"exited\"]\nmode = \"incremental\"\nsimulator = {{ data = \"{}\" }}",
                data.display()
            ),
        );
        let file = file.display().to_string();
        let audiences = || -> BTreeSet<(String, String, String, String)> {
            rows(
                tmp.path(),
                "SELECT primary_identity, segment_id, status, \
                 coalesce(to_char(last_qualification_time, '%Y-%m-%dT%H:%M:%S'), '') FROM audiences",
            )
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()))
            .collect()
        };
        let run = || {
            let ran = scoreland(&["run", &file, "--json"], &[]);
            assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
            record(&ran)["profile_export"].clone()
        };

        let first = run();
        assert!(first["increment_since"].is_null(), "{first}");
        let all = ["realized", "existing", "exited"];
        let (want, _, n) = truth(&data, chosen, &all);
        assert_eq!(audiences(), want);

        // Nothing was ingested since: an empty increment, the night kept whole.
        let second = run();
        assert!(second["increment_since"].is_string(), "{second}");
        assert_eq!(second["stats"]["rows_in"], 0, "{second}");
        assert_eq!(second["stats"]["carried_profiles"], n as u64, "{second}");
        assert_eq!(audiences(), want);

        // The store changes (every profile ingested again): the increment replaces them.
        let store = data.join("profiles/profiles-00000.jsonl");
        let changed = std::fs::read_to_string(&store)
            .unwrap()
            .replace("\"existing\"", "\"exited\"");
        std::fs::write(&store, changed).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let seg_file = data.join("profiles/segments.json");
        std::fs::write(&seg_file, std::fs::read(&seg_file).unwrap()).unwrap();
        let third = run();
        assert_eq!(third["stats"]["carried_profiles"], 0, "{third}");
        let (want, _, _) = truth(&data, chosen, &all);
        assert!(!want.iter().any(|m| m.2 == "existing"));
        assert_eq!(audiences(), want);
    }

    /// The pipeline against a simulator the test runs, so that it can script faults.
    fn platform_source(sim: &scoreland_platform_sim::SimHandle, extra: &str) -> String {
        let info = &sim.platform().info;
        format!(
            "dataset_name = \"faults\"\ndeadline = \"3s\"\n{extra}\n[source.platform]\nplatform_url = \"{}\"\nims_url = \"{}\"\norg_id = \"{}\"\nsandbox = \"prod\"\nclient_id = \"{}\"\nclient_secret = \"{}\"",
            sim.base_url(),
            sim.ims_url(),
            info.org_id,
            info.client_id,
            info.client_secret
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_stuck_and_empty_jobs_land_nothing_and_an_empty_export_lands_an_empty_night() {
        let tmp = tempfile::tempdir().unwrap();
        let sim = sample_sim(SimConfig {
            job_duration: std::time::Duration::from_millis(300),
            export_root: tmp.path().join("exports"),
            ..SimConfig::default()
        })
        .await;
        let file = pipeline(tmp.path(), "faults", &platform_source(&sim, ""));
        let run = || scoreland(&["run", &file.display().to_string()], &[]);

        sim.script_profile_export(ProfileExportFault::Fail(
            "Merge policy mp-1 is not found".into(),
        ));
        let failed = run();
        assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
        assert!(
            text(&failed).contains("export job 1 ended FAILED")
                && text(&failed).contains("Merge policy mp-1 is not found"),
            "{}",
            text(&failed)
        );

        sim.script_profile_export(ProfileExportFault::EmptyBatchId);
        let empty = run();
        assert_eq!(empty.status.code(), Some(1), "{}", text(&empty));
        assert!(
            text(&empty).contains("export job 2 succeeded without a batch id"),
            "{}",
            text(&empty)
        );

        sim.script_profile_export(ProfileExportFault::Stuck);
        let stuck = run();
        assert_eq!(stuck.status.code(), Some(1), "{}", text(&stuck));
        assert!(
            text(&stuck).contains("export job 3 did not end before the deadline")
                && text(&stuck).contains("export job 3 cancelled"),
            "{}",
            text(&stuck)
        );
        // Nothing was landed by any of them.
        assert!(!tmp.path().join("wh/audiences").exists());

        // A segment nobody is in: no profiles, an empty night that still lands.
        let none = pipeline(
            tmp.path(),
            "faults",
            &platform_source(&sim, "segments = [\"no-such-segment\"]"),
        );
        let ran = scoreland(&["run", &none.display().to_string(), "--json"], &[]);
        assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
        assert_eq!(record(&ran)["profile_export"]["stats"]["profiles"], 0);
        assert_eq!(
            rows(tmp.path(), "SELECT count(*) FROM profiles"),
            vec![vec!["0".to_string()]]
        );
        assert_eq!(
            rows(tmp.path(), "SELECT count(*) FROM audiences"),
            vec![vec!["0".to_string()]]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_cancels_the_job_and_a_killed_run_resumes_its_job() {
        let tmp = tempfile::tempdir().unwrap();
        let sim = sample_sim(SimConfig {
            job_duration: std::time::Duration::from_secs(4),
            export_root: tmp.path().join("exports"),
            ..SimConfig::default()
        })
        .await;
        let file = pipeline(
            tmp.path(),
            "stopped",
            &platform_source(&sim, "").replace("deadline = \"3s\"", "deadline = \"1m\""),
        );
        let file = file.display().to_string();

        sim.script_profile_export(ProfileExportFault::Stuck);
        let mut run = Running::start(&["run", &file], &[]);
        run.wait_for("export job started");
        run.signal("TERM");
        let (code, _, stderr) = run.finish();
        assert_ne!(code, Some(0), "{stderr}");
        assert!(
            stderr.contains("export job 1 cancelled (the run was stopped by SIGTERM)"),
            "{stderr}"
        );
        let env = super::segmentation::platform_env(&sim);
        let status = super::segmentation::cli(&env, &["export-job", "status", "1", "--json"]);
        assert_eq!(record(&status)["status"], "FAILED", "{}", text(&status));

        // Killed outright while job 2 runs: the next run waits for job 2, not a new export.
        let mut run = Running::start(&["run", &file], &[]);
        run.wait_for("export job started");
        run.signal("KILL");
        run.finish();
        let ran = scoreland(&["run", &file, "--json"], &[]);
        assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
        let rec = record(&ran);
        assert_eq!(rec["profile_export"]["export_job"], 2, "{rec}");
        assert_eq!(rec["profile_export"]["resumed"], true, "{rec}");
        let jobs = super::segmentation::cli(&env, &["export-job", "list", "--json"]);
        assert_eq!(
            record(&jobs).as_array().unwrap().len(),
            2,
            "{}",
            text(&jobs)
        );
    }

    #[test]
    fn the_bundled_pipeline_lands() {
        let tmp = tempfile::tempdir().unwrap();
        let ran = scoreland(
            &["run", "pipelines/profile-export.toml"],
            &[
                (
                    "SCORELAND_WAREHOUSE",
                    &tmp.path().join("wh").display().to_string(),
                ),
                (
                    "SCORELAND_STAGING",
                    &tmp.path().join("staging").display().to_string(),
                ),
            ],
        );
        assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
        let n = rows(
            tmp.path(),
            "SELECT count(*) FROM audience_summary WHERE qualified > 0",
        );
        assert!(n[0][0].parse::<u64>().unwrap() >= 3, "{n:?}");
    }
}

/// A run that crashed while publishing never costs the next night its batch: the next run
/// finishes the interrupted publish (or, without its files, lands under a transaction of its
/// own), and readers see whole runs.
mod recovery {
    use super::*;

    const OLDER: &str = "01KGCVEY6GZVBCRA013P7KT3G3";
    const NEWER: &str = "01KEB54V3PV18KZTBSXEYF906C";

    /// The demo pointed at one batch of the sample platform.
    fn pointed_at(demo: &Demo, batch: &str) -> String {
        let p = demo.tmp.path().join("pinned.toml");
        let text_of = std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap();
        std::fs::write(
            &p,
            text_of.replace(
                "# batches = { mode = \"newest\" }",
                &format!("batches = {{ mode = \"batch\", id = \"{batch}\" }}\n#"),
            ),
        )
        .unwrap();
        p.display().to_string()
    }

    fn run(demo: &Demo, pipeline: &str, envs: &[(&str, &str)]) -> Output {
        let env = demo.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(envs);
        scoreland(&["run", pipeline, "--json"], &all)
    }

    /// The distinct values of one column, sorted.
    fn distinct(demo: &Demo, query: &str) -> Vec<String> {
        let o = demo.sql(query, "csv");
        assert!(o.status.success(), "{}", text(&o));
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_crash_at_any_point_of_a_publish_never_loses_the_next_nights_batch() {
        for point in [
            "before_commit",
            "between_tables",
            "before_published",
            "before_state",
        ] {
            for files_kept in [true, false] {
                let demo = Demo::new();
                let crashed = run(
                    &demo,
                    &pointed_at(&demo, OLDER),
                    &[("SCORELAND_CRASH_AT", point)],
                );
                assert!(
                    crashed.status.code().is_none() || crashed.status.code() == Some(134),
                    "{point}: {}",
                    text(&crashed)
                );
                if !files_kept {
                    std::fs::remove_dir_all(demo.tmp.path().join("staging/.work")).unwrap();
                }
                let next = run(&demo, &pointed_at(&demo, NEWER), &[]);
                assert_eq!(next.status.code(), Some(0), "{point}: {}", text(&next));
                let r = record(&next);
                assert_eq!(r["batches"], serde_json::json!([NEWER]), "{point}");
                // Every table got this run's commit: none was skipped for holding the
                // crashed run's.
                for t in r["tables"].as_array().unwrap() {
                    assert_eq!(t["committed"], true, "{point}: {t}");
                }
                let batches = distinct(&demo, "SELECT DISTINCT batch_id FROM scores");
                assert!(
                    batches.contains(&NEWER.to_string()),
                    "{point}: scores holds {batches:?}"
                );
                // Readers see whole runs: the score dates of `scores` are those of `summary`
                // (the crashed night is either finished whole or absent), unless the crashed
                // run's files were gone after it had committed `scores`.
                let committed_scores = point != "before_commit";
                if files_kept || !committed_scores {
                    assert_eq!(
                        distinct(
                            &demo,
                            "SELECT DISTINCT CAST(score_date AS VARCHAR) FROM scores"
                        ),
                        distinct(
                            &demo,
                            "SELECT DISTINCT CAST(score_date AS VARCHAR) FROM summary"
                        ),
                        "{point}"
                    );
                }
                let warnings = r["warnings"].to_string();
                if committed_scores {
                    assert!(warnings.contains("interrupted"), "{point}: {warnings}");
                    if !files_kept {
                        assert!(warnings.contains("gone"), "{point}: {warnings}");
                    }
                }
                // And the night after is "nothing new" for the same batch.
                let again = run(&demo, &pointed_at(&demo, NEWER), &[]);
                assert_eq!(again.status.code(), Some(3), "{point}: {}", text(&again));
            }
        }
    }
}

/// Any ExperienceEvent dataset, landed from its Schema Registry schema with no mapping
/// (`[transform.dataset]`, `pipelines/web-events.toml`).
mod datasets {
    use scoreland_platform_sim::events::{EVENTS_DATASET, add_event_nights};

    use super::*;

    /// `pipelines/web-events.toml` pointed at `platform`, written into `demo`'s directory.
    fn pointed_at(demo: &Demo, platform: &Path) -> String {
        let p = demo.tmp.path().join("web-events.toml");
        let text_of = std::fs::read_to_string(repo().join("pipelines/web-events.toml")).unwrap();
        std::fs::write(
            &p,
            text_of.replace(
                "data = \"sample-data/platform\"",
                &format!("data = {:?}", platform.display().to_string()),
            ),
        )
        .unwrap();
        p.display().to_string()
    }

    fn run(demo: &Demo, pipeline: &str) -> Output {
        let env = demo.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        scoreland(&["run", pipeline, "--json"], &envs)
    }

    fn columns(demo: &Demo) -> Vec<String> {
        let o = demo.sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'web_events'",
            "csv",
        );
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_bundled_events_pipeline_lands_every_night() {
        let demo = Demo::new();
        let env = demo.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = scoreland(&["run", "pipelines/web-events.toml", "--json"], &envs);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        // Every night, from the first: 3 × 1,000 events, of which 2 × 30 re-sent.
        assert_eq!(
            (
                r["rows_in"].as_u64(),
                r["rows_out"].as_u64(),
                r["duplicates_dropped"].as_u64()
            ),
            (Some(3000), Some(2940), Some(60))
        );
        assert_eq!(r["batches"].as_array().map(Vec::len), Some(3));
        assert_eq!(r["dataset"], EVENTS_DATASET);
        // The third night's own events carry the new field; its re-sent ones landed before.
        assert_eq!(
            demo.count("SELECT count(DISTINCT _id) FROM web_events WHERE web_webPageDetails_isHomePage IS NOT NULL"),
            970
        );
        // The columns come with the schema's titles as Delta column comments.
        let log = std::fs::read_to_string(
            demo.tmp
                .path()
                .join("wh/web_events/_delta_log/00000000000000000000.json"),
        )
        .unwrap();
        assert!(log.contains(r#"\"comment\":\"Price Total\""#), "{log}");
        let o = scoreland(&["history", "web_events", "--warehouse", &demo.wh()], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains("CREATE TABLE"), "{}", text(&o));
        let o = scoreland(
            &["-q", "schema", "pipelines/web-events.toml", "--json"],
            &[],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            text(&o).contains("\"name\":\"web_webPageDetails_isHomePage\""),
            "{}",
            text(&o)
        );
    }

    /// `[checks]` on a dataset's night: freshness of the newest event date, volume, null rates
    /// of its columns and the uniqueness of `_id` (events) or the identity (records); a failed
    /// check lands nothing, `--skip-checks` lands it; the checks of scores are refused.
    #[test]
    fn a_datasets_night_passes_the_quality_gate_before_it_lands() {
        let demo = Demo::new();
        let base = std::fs::read_to_string(repo().join("pipelines/web-events.toml")).unwrap();
        let p = demo.tmp.path().join("checked.toml");
        std::fs::write(
            &p,
            format!(
                "{base}\n[checks]\nfreshness = {{ max_age_days = 3650 }}\n\
                 volume = {{ min_rows = 100 }}\nunique_key = {{}}\n\
                 null_rate = {{ max_pct = {{ _id = 0, web_webPageDetails_isHomePage = 50 }} }}\n"
            ),
        )
        .unwrap();
        let p = p.to_str().unwrap();
        let env = demo.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // Two of the three nights' events lack isHomePage: two thirds are null.
        let o = scoreland(&["run", p, "--json"], &envs);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        assert!(
            text(&o).contains("null_rate.web_webPageDetails_isHomePage = 67."),
            "{}",
            text(&o)
        );
        assert!(!demo.tmp.path().join("wh/web_events").exists());
        let o = scoreland(&["run", p, "--json", "--skip-checks", "null_rate"], &envs);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        let status = |check: &str| {
            r["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["check"] == check)
                .map(|c| c["status"].as_str().unwrap().to_string())
        };
        assert_eq!(status("freshness").as_deref(), Some("pass"));
        assert_eq!(status("volume.rows").as_deref(), Some("pass"));
        assert_eq!(status("unique_key").as_deref(), Some("pass"));
        assert_eq!(status("null_rate._id").as_deref(), Some("pass"));
        assert_eq!(
            status("null_rate.web_webPageDetails_isHomePage").as_deref(),
            Some("overridden")
        );
        assert_eq!(
            demo.count("SELECT count(*) FROM checks WHERE pipeline = 'web-events'"),
            5
        );
        assert_eq!(demo.count("SELECT count(*) FROM web_events"), 2940);

        // The checks of scores are not a dataset's; a record dataset has no date to be fresh.
        let o = scoreland(&["validate", p], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let scores_only = demo.tmp.path().join("drift.toml");
        std::fs::write(
            &scores_only,
            format!("{base}\n[checks]\ndrift = {{ max_psi = 0.2 }}\n"),
        )
        .unwrap();
        let o = scoreland(&["validate", scores_only.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("drift are checks of Customer AI scores"),
            "{}",
            text(&o)
        );
        let members =
            std::fs::read_to_string(repo().join("pipelines/loyalty-members.toml")).unwrap();
        let fresh = demo.tmp.path().join("fresh.toml");
        std::fs::write(
            &fresh,
            format!("{members}\n[checks]\nfreshness = {{ max_age_days = 3 }}\nunique_key = {{}}\n"),
        )
        .unwrap();
        let o = scoreland(&["run", fresh.to_str().unwrap()], &envs);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("a record dataset has none"),
            "{}",
            text(&o)
        );
        let unique = demo.tmp.path().join("unique.toml");
        std::fs::write(
            &unique,
            format!("{members}\n[checks]\nunique_key = {{}}\nvolume = {{ min_rows = 1000 }}\n"),
        )
        .unwrap();
        let o = scoreland(&["run", unique.to_str().unwrap(), "--json"], &envs);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        assert!(
            r["checks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["status"] == "pass"),
            "{r}"
        );
    }

    /// `pipelines/attribution-ai.toml`: Attribution AI's scored conversions, each once, their
    /// touchpoints a row each, and summaries that agree with the touchpoints they sum.
    #[test]
    fn the_bundled_attribution_pipeline_lands_conversions_touchpoints_and_summaries() {
        let demo = Demo::new();
        let env = demo.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = scoreland(&["run", "pipelines/attribution-ai.toml", "--json"], &envs);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        // 3 nights of 1,000 scored conversions; the second and third re-send 50 each.
        assert_eq!(
            (
                r["rows_in"].as_u64(),
                r["rows_out"].as_u64(),
                r["duplicates_dropped"].as_u64()
            ),
            (Some(3000), Some(2900), Some(100))
        );
        assert_eq!(
            demo.count("SELECT count(DISTINCT _id) FROM attribution"),
            2900
        );
        let touchpoints = demo.count(
            "SELECT CAST(sum(cardinality(\"_acmeretail_attributionAI_touchpointsDetail\")) AS BIGINT) FROM attribution",
        );
        assert_eq!(
            demo.count("SELECT count(*) FROM attribution_touchpoints"),
            touchpoints
        );
        // Every model shares each conversion's one unit of credit among its touchpoints.
        for model in [
            "first_touch",
            "last_touch",
            "linear",
            "u_shape",
            "decay_units",
            "algorithmic_influenced",
        ] {
            assert_eq!(
                demo.count(&format!(
                    "SELECT CAST(round(sum({model})) AS BIGINT) FROM attribution_summary"
                )),
                2900,
                "{model}"
            );
        }
        // Each summary row is what its date's touchpoints say, and no touchpoint is left out.
        let disagree = demo.count(
            "SELECT count(*) FROM attribution_summary s FULL JOIN ( \
               SELECT t.event_date, a._acmeretail_attributionAI_conversionName AS conversion_name, \
                 t.touchpointName AS touchpoint_name, count(DISTINCT t._id) AS conversions, \
                 count(*) AS touchpoints, sum(t.scores_linear) AS linear, \
                 sum(t.scores_firstTouch * a._acmeretail_attributionAI_conversion_priceTotal) AS revenue \
               FROM attribution_touchpoints t JOIN attribution a \
                 ON a._id = t._id AND a.event_date = t.event_date GROUP BY 1, 2, 3) x \
             ON s.event_date = x.event_date AND s.conversion_name = x.conversion_name \
               AND s.touchpoint_name = x.touchpoint_name \
             WHERE (s.conversions IS DISTINCT FROM x.conversions) \
               OR (s.touchpoints IS DISTINCT FROM x.touchpoints) \
               OR abs(s.linear - x.linear) > 1e-9 OR x.linear IS NULL OR s.linear IS NULL \
               OR abs(s.first_touch_revenue - x.revenue) > 1e-6",
        );
        assert_eq!(disagree, 0);
        let o = scoreland(&["run", "pipelines/attribution-ai.toml", "--json"], &envs);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    }

    /// Night by night: a re-sent event lands once, a field the schema gains becomes a new
    /// column (null in the nights before), and a dataset that is not an ExperienceEvent's is
    /// refused before anything lands.
    #[test]
    fn events_land_once_and_the_table_follows_the_schema() {
        let demo = Demo::new();
        let platform = demo.tmp.path().join("platform");
        scoreland_platform_sim::generate(&scoreland_platform_sim::GenerateOptions {
            out: platform.clone(),
            rows: 100,
            parts: 1,
            batches: 1,
            ..Default::default()
        })
        .unwrap();
        let pipeline = pointed_at(&demo, &platform);
        // With the items of productListItems as a child table too.
        let with_items = std::fs::read_to_string(&pipeline)
            .unwrap()
            .replace("depth = 3", "depth = 3\nexplode = [\"productListItems\"]");
        std::fs::write(&pipeline, with_items).unwrap();
        let night = |n: u32| add_event_nights(&platform, "prod", n, n + 1, 400, 42).unwrap();

        night(0);
        let o = run(&demo, &pipeline);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(record(&o)["rows_out"], 400);
        assert!(!columns(&demo).contains(&"web_webPageDetails_isHomePage".to_string()));

        // Night 1 re-sends 12 events of night 0: they are not landed again.
        night(1);
        let o = run(&demo, &pipeline);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        assert_eq!(
            (r["rows_out"].as_u64(), r["duplicates_dropped"].as_u64()),
            (Some(388), Some(12))
        );
        assert_eq!(demo.count("SELECT count(*) FROM web_events"), 788);

        // Night 2's rows carry a field the schema gains: the table gains the column.
        let third = night(2);
        assert!(third[0].new_field);
        let o = run(&demo, &pipeline);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(columns(&demo).contains(&"web_webPageDetails_isHomePage".to_string()));
        assert_eq!(demo.count("SELECT count(*) FROM web_events"), 1176);
        assert_eq!(
            demo.count("SELECT count(DISTINCT _id) FROM web_events"),
            1176
        );
        // One child row per item of each landed event, on its event's date.
        let items = demo
            .count("SELECT CAST(sum(cardinality(\"productListItems\")) AS BIGINT) FROM web_events");
        assert!(items > 0);
        assert_eq!(
            demo.count("SELECT count(*) FROM web_events_productlistitems"),
            items
        );
        assert_eq!(
            demo.count(
                "SELECT count(*) FROM web_events_productlistitems i JOIN web_events e \
                 ON i._id = e._id AND i.event_date = e.event_date"
            ),
            items
        );
        assert_eq!(
            demo.count("SELECT count(web_webPageDetails_isHomePage) FROM web_events"),
            388
        );
        // Every row is on the date of its timestamp.
        assert_eq!(
            demo.count(
                "SELECT count(*) FROM web_events WHERE CAST(timestamp AS DATE) <> event_date"
            ),
            0
        );
        let o = run(&demo, &pipeline);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert_eq!(record(&o)["status"], "nothing_new");
        // The third night forced again: every event is landed already, so nothing is added.
        let forced = std::fs::read_to_string(&pipeline).unwrap().replace(
            "batches = { mode = \"catch_up\" }",
            &format!(
                "batches = {{ mode = \"batch\", id = \"{}\" }}",
                third[0].batch_id
            ),
        );
        let forced_pipeline = demo.tmp.path().join("forced.toml");
        std::fs::write(&forced_pipeline, forced).unwrap();
        let env = demo.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = scoreland(
            &[
                "run",
                forced_pipeline.to_str().unwrap(),
                "--json",
                "--force",
            ],
            &envs,
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        assert_eq!(
            (r["rows_out"].as_u64(), r["duplicates_dropped"].as_u64()),
            (Some(0), Some(400))
        );
        assert_eq!(demo.count("SELECT count(*) FROM web_events"), 1176);

        // The Customer AI dataset is a record (of scores) whose schema marks no primary
        // identity: refused, nothing landed.
        let scores = std::fs::read_to_string(&pipeline)
            .unwrap()
            .replace(EVENTS_DATASET, &first_dataset_in(&platform))
            .replace("table = \"web_events\"", "table = \"scores_raw\"")
            .replace("name = \"web-events\"", "name = \"not-events\"");
        let scores_pipeline = demo.tmp.path().join("not-events.toml");
        std::fs::write(&scores_pipeline, scores).unwrap();
        let o = run(&demo, &scores_pipeline.display().to_string());
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("no primary identity descriptor"),
            "{}",
            text(&o)
        );
        // Refused from the schema, before a row is downloaded.
        assert!(!text(&o).contains("downloading batch"), "{}", text(&o));
        assert!(!demo.tmp.path().join("wh/scores_raw").exists());
    }

    /// The dataset-export route: the simulator exports the events dataset whole (a full export,
    /// every night in it, re-sent events included) and the folder lands as the Catalog route
    /// lands it; the next run's full export adds nothing.
    #[test]
    fn an_exported_events_dataset_lands_each_event_once() {
        let demo = Demo::new();
        let text_of = std::fs::read_to_string(repo().join("pipelines/dataset-export.toml"))
            .unwrap()
            .replace("name = \"dataset-export\"", "name = \"events-export\"")
            .replace(
                "simulator = { data = \"sample-data/platform\" }",
                &format!("simulator = {{ data = \"sample-data/platform\" }}\ndataset = \"{EVENTS_DATASET}\""),
            )
            .replace(
                "memory_limit = \"1GiB\"",
                "memory_limit = \"1GiB\"\n\n[transform.dataset]\ntable = \"web_events\"",
            );
        let p = demo.tmp.path().join("events-export.toml");
        std::fs::write(&p, text_of).unwrap();
        let p = p.display().to_string();
        let o = run(&demo, &p);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        // Three nights of 1,000 events, the second and third re-sending 30 each.
        assert_eq!(
            (
                r["rows_in"].as_u64(),
                r["rows_out"].as_u64(),
                r["duplicates_dropped"].as_u64()
            ),
            (Some(3000), Some(2940), Some(60))
        );
        assert_eq!(
            demo.count("SELECT count(DISTINCT _id) FROM web_events"),
            2940
        );
        let o = run(&demo, &p);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(record(&o)["rows_out"], 0);
        assert_eq!(demo.count("SELECT count(*) FROM web_events"), 2940);
        // A record dataset does not land from export folders: which row is newest is unknown.
        let records = std::fs::read_to_string(&p)
            .unwrap()
            .replace(
                EVENTS_DATASET,
                scoreland_platform_sim::records::RECORDS_DATASET,
            )
            .replace("table = \"web_events\"", "table = \"loyalty_members\"")
            .replace("name = \"events-export\"", "name = \"records-export\"");
        std::fs::write(&p, records).unwrap();
        let o = run(&demo, &p);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("land it through Catalog"), "{}", text(&o));
    }

    /// A record dataset (loyalty members): the primary identity from the schema's identity
    /// descriptor, one row per member, the newest, night after night.
    #[test]
    fn a_record_dataset_keeps_the_newest_row_per_identity() {
        use scoreland_platform_sim::records::{add_record_nights, member_at, member_id};
        let demo = Demo::new();
        let platform = demo.tmp.path().join("platform");
        scoreland_platform_sim::generate(&scoreland_platform_sim::GenerateOptions {
            out: platform.clone(),
            rows: 100,
            parts: 1,
            batches: 1,
            ..Default::default()
        })
        .unwrap();
        let text_of = std::fs::read_to_string(repo().join("pipelines/loyalty-members.toml"))
            .unwrap()
            .replace(
                "data = \"sample-data/platform\"",
                &format!("data = {:?}", platform.display().to_string()),
            );
        let p = demo.tmp.path().join("loyalty.toml");
        std::fs::write(&p, text_of).unwrap();
        let p = p.display().to_string();
        let points = |member: u64| {
            demo.count(&format!(
                "SELECT _acmeretail_loyalty_points FROM loyalty_members \
                 WHERE _acmeretail_loyalty_memberId = '{}'",
                member_id(member)
            ))
        };

        add_record_nights(&platform, "prod", 0, 1, 200, 42).unwrap();
        let o = run(&demo, &p);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(record(&o)["rows_out"], 200);
        // Night 1: 20 members updated (2 sent twice, the stale row first) and 10 new.
        add_record_nights(&platform, "prod", 1, 2, 200, 42).unwrap();
        let o = run(&demo, &p);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r = record(&o);
        assert_eq!(
            (
                r["rows_in"].as_u64(),
                r["rows_out"].as_u64(),
                r["duplicates_dropped"].as_u64()
            ),
            (Some(32), Some(210), Some(2))
        );
        assert_eq!(demo.count("SELECT count(*) FROM loyalty_members"), 210);
        assert_eq!(
            demo.count("SELECT count(DISTINCT _acmeretail_loyalty_memberId) FROM loyalty_members"),
            210
        );
        assert_eq!(points(1) as i64, member_at(1, 1).1);
        assert_eq!(points(2) as i64, member_at(2, 0).1);
        assert_eq!(points(205) as i64, member_at(205, 1).1);
        // The dataset's data usage labels landed with it, and what serve masks.
        let o = scoreland(
            &["history", "loyalty_members", "--warehouse", &demo.wh()],
            &[],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        for said in [
            "dataset (every field): C1",
            "personalEmail_address: C2, I1",
            "serve shows as NULL the columns labelled C2",
        ] {
            assert!(text(&o).contains(said), "{said}: {}", text(&o));
        }
        // Each member's rewards are rows of loyalty_rewards, as the member's newest row holds.
        let rewards = demo.count(
            "SELECT CAST(sum(cardinality(_acmeretail_loyalty_rewards)) AS BIGINT) FROM loyalty_members",
        );
        assert!(rewards > 0);
        assert_eq!(demo.count("SELECT count(*) FROM loyalty_rewards"), rewards);
        assert_eq!(
            demo.count(&format!(
                "SELECT count(*) FROM loyalty_rewards WHERE _acmeretail_loyalty_memberId = '{}'",
                member_id(1)
            )),
            scoreland_platform_sim::records::rewards_at(1, 1).len() as u64
        );
        // The bundled pipeline on the sample platform: three nights of 1,000 members, 50 new
        // each night after the first.
        let sample = Demo::new();
        let env = sample.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = scoreland(&["run", "pipelines/loyalty-members.toml", "--json"], &envs);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(record(&o)["rows_out"], 1100);
        // The night before is still there to read, as Delta time travel.
        let o = scoreland(
            &[
                "sql",
                "SELECT count(*) AS n FROM loyalty_members",
                "--warehouse",
                &demo.wh(),
                "--as-of",
                "0",
                "--format",
                "json",
            ],
            &[],
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("200"),
            "{}",
            text(&o)
        );
    }

    /// The scores dataset's id in a generated platform.
    fn first_dataset_in(platform: &Path) -> String {
        std::fs::read_dir(platform.join("prod"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .find(|d| d != EVENTS_DATASET && d != scoreland_platform_sim::records::RECORDS_DATASET)
            .unwrap()
    }

    #[test]
    fn a_dataset_pipeline_refuses_what_it_cannot_land() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::read_to_string(repo().join("pipelines/web-events.toml")).unwrap();
        for (change, expect) in [
            (
                base.replace("table = \"web_events\"", "table = \"scores\""),
                "one of scoreland's own tables",
            ),
            (
                base.replace("table = \"web_events\"", "table = \"Web-Events\""),
                "lower-case letters",
            ),
            (
                format!("{base}\n[checks]\nmodel_rows = {{ min = 1 }}\n"),
                "model_rows are checks of Customer AI scores",
            ),
            (
                base.replace("depth = 3", "depth = 3\n[transform.mapping]\nidentity = \"a\"\nmodels = [{ name = \"m\", score = \"s\" }]"),
                "exclude each other",
            ),
            (
                base.replace(
                    "type = \"simulator\"\ndata = \"sample-data/platform\"",
                    "type = \"dataset-export\"\nurl = \"/tmp/exports\"",
                )
                .replace("batches = { mode = \"catch_up\" }", ""),
                "give [source.platform]",
            ),
            (
                base.replace(
                    "depth = 3",
                    "depth = 3\nexplode = [{ column = \"productListItems\", table = \"web_events\" }]",
                ),
                "two tables of one name",
            ),
            (
                base.replace(
                    "depth = 3",
                    "depth = 3\nexplode = [{ column = \"productListItems\", table = \"../items\" }]",
                ),
                "not a plain table name",
            ),
            (
                base.replace("depth = 3", "depth = 3\nsummary = \"revenue\""),
                "unknown variant",
            ),
            (
                format!("{base}\n[serve]\ndeny_labels = [\"C2,I1\"]\n"),
                "is not a label",
            ),
            (
                format!(
                    "{}\n[serve]\ndeny_labels = [\"C2\"]\n",
                    std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap()
                ),
                "apply to a [transform.dataset] pipeline's tables",
            ),
        ] {
            let p = dir.path().join("p.toml");
            std::fs::write(&p, &change).unwrap();
            let o = scoreland(&["validate", &p.display().to_string()], &[]);
            assert_eq!(o.status.code(), Some(2), "{}", text(&o));
            assert!(text(&o).contains(expect), "{expect}: {}", text(&o));
        }
        // A summary the dataset's schema cannot give is refused when the schema is read,
        // before anything lands.
        let demo = Demo::new();
        let p = demo.tmp.path().join("summary.toml");
        std::fs::write(
            &p,
            base.replace("depth = 3", "depth = 3\nsummary = \"attribution\""),
        )
        .unwrap();
        let env = demo.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = scoreland(&["run", p.to_str().unwrap()], &envs);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("no touchpointsDetail array"),
            "{}",
            text(&o)
        );
        assert!(!demo.tmp.path().join("wh/web_events").exists());
    }
}

/// `scoreland forget`: an identity deleted from every table in one commit per table, with who
/// and why and never the identity itself; a later night does not land it again; hostile
/// identities delete nothing else.
#[test]
fn a_forgotten_identity_is_deleted_and_never_lands_again() {
    let demo = Demo::new();
    let o = demo.run(&[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let all = demo.count("SELECT count(*) FROM scores");
    let o = demo.sql(
        "SELECT identity FROM scores ORDER BY identity LIMIT 1",
        "csv",
    );
    let id = String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let held = demo.count(&format!(
        "SELECT count(*) FROM scores WHERE identity = '{id}'"
    ));
    assert!(held > 0);
    let wh = demo.wh();
    let forget = |args: &[&str]| {
        let mut all = vec!["forget", "--warehouse", wh.as_str()];
        all.extend_from_slice(args);
        scoreland(&all, &[])
    };
    // Hostile and careless requests: refused, or deleting nothing but what they name.
    let o = forget(&["--identity", &id]);
    assert_eq!(o.status.code(), Some(2), "no reason: {}", text(&o));
    let o = forget(&["--reason", "x"]);
    assert_eq!(o.status.code(), Some(2), "no identity: {}", text(&o));
    let o = forget(&[
        "--identity",
        "x' OR '1'='1",
        "--reason",
        "probe",
        "--by",
        "t",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(demo.count("SELECT count(*) FROM scores"), all);

    let o = forget(&[
        "--identity",
        &id,
        "--reason",
        "privacy job 42",
        "--by",
        "dpo",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("scores: {held} rows deleted")),
        "{}",
        text(&o)
    );
    assert_eq!(
        demo.count(&format!(
            "SELECT count(*) FROM scores WHERE identity = '{id}'"
        )),
        0
    );
    assert_eq!(demo.count("SELECT count(*) FROM scores"), all - held);
    let o = scoreland(&["history", "scores", "--warehouse", &wh], &[]);
    assert!(
        text(&o).contains("forget by dpo: privacy job 42"),
        "{}",
        text(&o)
    );
    // The identity is written nowhere new: not in the commit, not in the list kept.
    let log = std::fs::read_dir(demo.tmp.path().join("wh/scores/_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .max()
        .unwrap();
    assert!(!std::fs::read_to_string(log).unwrap().contains(&id));
    let kept = std::fs::read_to_string(demo.tmp.path().join("wh/_state/forgotten.json")).unwrap();
    assert!(!kept.contains(&id) && kept.contains("privacy job 42"));

    // The same night again: its batch holds the identity, which does not land again.
    let o = demo.run(&["--force", "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = record(&o);
    assert!(
        r["warnings"]
            .to_string()
            .contains("rows of forgotten identities"),
        "{r}"
    );
    assert_eq!(
        demo.count(&format!(
            "SELECT count(*) FROM scores WHERE identity = '{id}'"
        )),
        0
    );
    assert_eq!(demo.count("SELECT count(*) FROM scores"), all - held);
}

#[cfg(feature = "cluster")]
#[path = "e2e/cluster.rs"]
mod cluster;
