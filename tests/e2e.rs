//! End-to-end tests of the `scoreland` binary: the demo pipeline, reruns, forced reruns, a
//! platform that keeps failing, a crash before the commit, invalid pipelines, `sql`, and
//! `validate` of every file in pipelines/.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scoreland_platform_sim::{ErrorBodyStyle, Fault, Route, SimConfig};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scoreland(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scoreland"));
    cmd.current_dir(repo())
        .args(args)
        .env_remove("SCORELAND_WAREHOUSE")
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("the scoreland binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
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
        let mut args = vec!["run", "pipelines/demo.toml"];
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
    assert_eq!(f["tables"][0]["commit"], 1);
    // The forced run replaced its partitions: still one row per identity and model.
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), rows_out);
    assert!(f["drift"][0]["psi"].as_f64().unwrap().abs() < 1e-12);
}

#[test]
fn a_crash_before_the_commit_leaves_the_previous_night_and_the_next_run_completes() {
    let demo = Demo::new();
    assert_eq!(demo.run(&[], &[]).status.code(), Some(0));
    let before = demo.count("SELECT count(*) AS n FROM scores");
    let crashed = demo.run(&["--force"], &[("SCORELAND_CRASH_AT", "before_commit")]);
    assert!(
        crashed.status.code().is_none() || crashed.status.code() == Some(134),
        "killed: {}",
        text(&crashed)
    );
    // Uploaded data files of the dead run exist, but readers still see commit 0.
    let orphans = walk(&Path::new(&demo.wh()).join("scores"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert!(orphans > 2, "the dead run uploaded its files");
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), before);
    let latest: Value = serde_json::from_slice(
        &std::fs::read(Path::new(&demo.wh()).join("scores/_latest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(latest["seq"], 0);
    // The next run takes over the dead run's lock, cleans up and lands.
    let next = demo.run(&["--force", "--json"], &[]);
    assert_eq!(next.status.code(), Some(0), "{}", text(&next));
    assert_eq!(record(&next)["tables"][0]["commit"], 1);
    assert_eq!(demo.count("SELECT count(*) AS n FROM scores"), before);
    let vacuum = scoreland(&["vacuum", "--warehouse", &demo.wh(), "--replaced"], &[]);
    assert!(vacuum.status.success(), "{}", text(&vacuum));
    let left = walk(&Path::new(&demo.wh()).join("scores"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert_eq!(
        left as u64,
        latest["files"].as_array().unwrap().len() as u64,
        "only the live files remain"
    );
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
    let sim = scoreland_platform_sim::serve_dir(
        &repo().join("sample-data/platform"),
        SimConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let info = sim.platform().info.clone();
    let dataset = sim.platform().sandboxes["prod"]
        .datasets
        .keys()
        .next()
        .unwrap()
        .clone();
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
    let landed = record(&first)["rows_out"].as_u64().unwrap();

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
    let latest: Value =
        serde_json::from_slice(&std::fs::read(wh.join("scores/_latest.json")).unwrap()).unwrap();
    assert_eq!(latest["seq"], 0);
    assert_eq!(latest["rows"].as_u64().unwrap(), landed);
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
