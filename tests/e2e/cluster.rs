//! `scoreland cluster local` and `sql --cluster`: the same answers as `sql` here, exactly one
//! published version read, and the faults: an unreachable scheduler, a bad URL, an executor
//! killed mid-query.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// `scoreland cluster local` on a free port, stopped on drop.
struct LocalCluster {
    child: Child,
    url: String,
    executors: Vec<u32>,
    work: tempfile::TempDir,
}

impl LocalCluster {
    fn start(executors: usize) -> Self {
        Self::start_with(executors, &[])
    }

    /// With `env` added to the cluster's environment (which its executors inherit).
    fn start_with(executors: usize, env: &[(&str, &str)]) -> Self {
        let work = tempfile::tempdir().unwrap();
        let n = executors.to_string();
        let dir = work.path().display().to_string();
        let mut child = command(
            &[
                "cluster",
                "local",
                "--executors",
                &n,
                "--vcores",
                "1",
                "--port",
                "0",
                "--work-dir",
                &dir,
            ],
            &[&[("SCORELAND_LOG", "warn,ballista_executor=info")], env].concat(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines.next().expect("the cluster prints its URL").unwrap();
        assert!(url.starts_with("df://127.0.0.1:"), "{url}");
        let pids = lines.next().expect("and its executors").unwrap();
        let executors: Vec<u32> = pids
            .strip_prefix("executors ")
            .unwrap()
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(executors.len(), n.parse::<usize>().unwrap(), "{pids}");
        LocalCluster {
            child,
            url,
            executors,
            work,
        }
    }

    /// Kills executor 0 a second after it has started a task; returns when it started waiting.
    fn kill_first_executor_once_busy(&self) -> Instant {
        let log = self.work.path().join("executor-0.log");
        let started = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Received task")
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "executor 0 ran no task"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs(1));
        kill(self.executors[0]);
        started
    }

    /// Tasks the executors' logs say they ran.
    fn tasks_run(&self) -> usize {
        std::fs::read_dir(self.work.path())
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension().is_some_and(|x| x == "log")).then_some(p)
            })
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .matches("Finished task")
                    .count()
            })
            .sum()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: u32) {
    // SAFETY: signals a process this test started.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill {pid}");
}

/// JSON lines equal, but for the last bits of floating-point sums (a distributed sum adds in
/// another order).
fn assert_same(here: &str, there: &str, query: &str) {
    fn close(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, a), (kb, b))| ka == kb && close(a, b))
            }
            _ => a == b,
        }
    }
    let lines = |s: &str| -> Vec<Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (h, t) = (lines(here), lines(there));
    assert!(
        h.len() == t.len() && h.iter().zip(&t).all(|(a, b)| close(a, b)),
        "{query}\nhere:\n{here}\non the cluster:\n{there}"
    );
}

/// `sql` here and on the cluster, as JSON lines.
fn both(demo: &Demo, cluster: &LocalCluster, query: &str) -> (String, String) {
    let here = demo.sql(query, "json");
    assert!(here.status.success(), "{query}: {}", text(&here));
    let there = scoreland(
        &[
            "sql",
            query,
            "--warehouse",
            &demo.wh(),
            "--format",
            "json",
            "--cluster",
            &cluster.url,
        ],
        &[],
    );
    assert!(
        there.status.success(),
        "{query} on the cluster: {}",
        text(&there)
    );
    (
        String::from_utf8(here.stdout).unwrap(),
        String::from_utf8(there.stdout).unwrap(),
    )
}

#[test]
fn sql_on_a_local_cluster_answers_as_sql_here_from_the_published_files_only() {
    let demo = Demo::new();
    let run = demo.run(&[], &[]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    // A file no version names (an upload of a run that died before its commit): a listing of
    // the table's directory would read it, the published version does not.
    let partition = std::fs::read_dir(Path::new(&demo.wh()).join("scores"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("dataset_id=")
        })
        .unwrap();
    let day = std::fs::read_dir(&partition)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let file = std::fs::read_dir(&day)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    std::fs::copy(&file, day.join("uncommitted-upload.parquet")).unwrap();

    let cluster = LocalCluster::start(2);
    for query in [
        "SELECT dataset_id, CAST(score_date AS VARCHAR) AS d, model, count(*) AS n, \
         sum(score) AS s, min(identity) AS lo, max(identity) AS hi \
         FROM scores GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        "SELECT * FROM summary ORDER BY model, score_date",
        "SELECT * FROM scores WHERE score_date = DATE '2026-11-16' AND model = 'churn_risk' \
         ORDER BY identity LIMIT 50",
        "SELECT s.model, count(*) AS n, avg(s.score - m.score_mean) AS centred \
         FROM scores s JOIN summary m ON s.model = m.model AND s.score_date = m.score_date \
         GROUP BY s.model ORDER BY s.model",
        "SELECT count(DISTINCT identity) AS identities FROM scores",
        "SELECT 1 AS one",
    ] {
        let (here, there) = both(&demo, &cluster, query);
        assert!(!here.trim().is_empty(), "{query}");
        assert_same(&here, &there, query);
    }
    assert!(
        cluster.tasks_run() > 0,
        "the executors ran no task: the queries did not reach the cluster"
    );
    // Only queries run there.
    let o = scoreland(
        &[
            "sql",
            "COPY (SELECT * FROM scores) TO '/tmp/scoreland-cluster-copy.parquet'",
            "--warehouse",
            &demo.wh(),
            "--cluster",
            &cluster.url,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("`scoreland sql` only reads: COPY"),
        "{}",
        text(&o)
    );
    assert!(!Path::new("/tmp/scoreland-cluster-copy.parquet").exists());
}

#[test]
fn a_scheduler_that_cannot_be_reached_or_named_fails_clearly() {
    let demo = Demo::new();
    let run = demo.run(&[], &[]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("df://127.0.0.1:{port}");
    let started = Instant::now();
    let o = scoreland(
        &[
            "sql",
            "SELECT count(*) FROM scores",
            "--warehouse",
            &demo.wh(),
            "--cluster",
            &url,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("scheduler at {url} cannot be reached")),
        "{}",
        text(&o)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    for bad in ["df://127.0.0.1", "s3://bucket:1", "df://a b:1"] {
        let o = scoreland(
            &[
                "sql",
                "SELECT 1",
                "--warehouse",
                &demo.wh(),
                "--cluster",
                bad,
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(text(&o).contains("df://HOST:PORT"), "{}", text(&o));
    }
    // A warehouse the executors cannot reach by path.
    let o = scoreland(
        &[
            "sql",
            "SELECT 1",
            "--warehouse",
            "s3://bucket/wh",
            "--cluster",
            &url,
        ],
        &[],
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn an_executor_killed_mid_query_is_replaced_by_the_other() {
    let demo = Demo::new();
    let run = demo.run(&[], &[]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let cluster = LocalCluster::start(2);
    // A self-join of each night's scores per model: millions of pairs, two shuffles.
    let query = "SELECT a.model, count(*) AS pairs, sum(a.score * b.score) AS s \
                 FROM scores a JOIN scores b \
                 ON a.model = b.model AND a.score_date = b.score_date AND a.identity <> b.identity \
                 GROUP BY a.model ORDER BY a.model";
    let here = demo.sql(query, "json");
    assert!(here.status.success(), "{}", text(&here));
    let child = command(
        &[
            "sql",
            query,
            "--warehouse",
            &demo.wh(),
            "--format",
            "json",
            "--cluster",
            &cluster.url,
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let started = cluster.kill_first_executor_once_busy();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(180));
    assert!(out.status.success(), "{}", text(&out));
    // Every group once, with the values computed here: a job that lost the executor is
    // cancelled and the query runs again (never its rows twice).
    assert_same(
        &String::from_utf8(here.stdout).unwrap(),
        &String::from_utf8(out.stdout).unwrap(),
        query,
    );
}

/// The run record's figures of the transform.
fn transform_figures(run: &Output) -> Vec<u64> {
    let record = record(run);
    [
        "rows_in",
        "rows_out",
        "duplicates_dropped",
        "null_identity_dropped",
    ]
    .iter()
    .map(|k| {
        record[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {record}"))
    })
    .collect()
}

/// `there` landed what `here` did: the same rows, value for value (only the run differs), and
/// the same summaries but for the last bits of float sums (added in another order); the rows'
/// count.
fn assert_lands_the_same(here: &Demo, there: &Demo) -> u64 {
    let rows = "SELECT * EXCLUDE (run_id) FROM scores ORDER BY model, identity";
    let (a, b) = (here.sql(rows, "json"), there.sql(rows, "json"));
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        text(&a),
        text(&b)
    );
    assert!(a.stdout == b.stdout, "the cluster landed other scores");
    let summary = "SELECT * EXCLUDE (run_id) FROM summary ORDER BY model, score_date";
    let (c, d) = (here.sql(summary, "json"), there.sql(summary, "json"));
    assert_same(
        &String::from_utf8(c.stdout).unwrap(),
        &String::from_utf8(d.stdout).unwrap(),
        summary,
    );
    a.stdout.iter().filter(|&&c| c == b'\n').count() as u64
}

#[test]
fn a_run_on_a_local_cluster_lands_what_a_run_here_lands() {
    let here = Demo::new();
    let run = here.run(&["--json"], &[]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let figures = transform_figures(&run);
    assert!(
        figures[2] > 0 && figures[3] > 0,
        "{figures:?}: duplicates and null identities to drop"
    );

    // A scheduler that cannot be reached stops the run before anything lands.
    let there = Demo::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("df://127.0.0.1:{port}");
    let o = there.run(&["--cluster", &unreachable], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&unreachable), "{}", text(&o));
    assert!(!Path::new(&there.wh()).join("scores").exists());

    let cluster = LocalCluster::start(2);
    // A profile export and a dataset landed from its schema run here only: refused before
    // anything is downloaded or landed.
    for (pipeline, table) in [
        ("pipelines/profile-export.toml", "profiles"),
        ("pipelines/web-events.toml", "web_events"),
    ] {
        let other = Demo::new();
        let o = other.run_pipeline(pipeline, &["--cluster", &cluster.url], &[]);
        assert_eq!(o.status.code(), Some(2), "{pipeline}: {}", text(&o));
        assert!(
            text(&o).contains("runs here only"),
            "{pipeline}: {}",
            text(&o)
        );
        let staged = other.tmp.path().join("staging");
        assert!(
            !staged.exists() || walk(&staged).is_empty(),
            "{pipeline}: {:?}",
            walk(&staged)
        );
        assert!(!Path::new(&other.wh()).join(table).exists(), "{pipeline}");
    }

    let o = there.run(&["--json", "--cluster", &cluster.url], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        cluster.tasks_run() > 0,
        "the executors ran no task: the transform did not reach the cluster"
    );
    assert_eq!(transform_figures(&o), figures);
    assert!(
        text(&o).contains("the executors wrote and summarised the kept rows (moved from"),
        "{}",
        text(&o)
    );
    assert_eq!(assert_lands_the_same(&here, &there), figures[1]);
}

/// The environment that reaches the S3 server at `endpoint` (moto takes any credentials).
fn aws_env(endpoint: &str) -> [(&'static str, String); 5] {
    [
        ("AWS_ENDPOINT", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The demo pipeline with `[transform] engine` on `cluster` and `staging`, written into `demo`'s
/// directory; its path.
fn staging_pipeline(demo: &Demo, cluster: &str, staging: &str) -> String {
    let pipeline = demo.tmp.path().join("demo-on-s3-staging.toml");
    let toml = std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap();
    let platform = repo().join("sample-data/platform").display().to_string();
    let toml = toml
        .replace("\"sample-data/platform\"", &format!("{platform:?}"))
        .replace(
            "memory_limit = \"1GiB\"",
            &format!(
                "memory_limit = \"1GiB\"\nengine = {{ cluster = \"{cluster}\", staging = \"{staging}\" }}"
            ),
        );
    assert!(toml.contains("staging = \"s3://"), "{toml}");
    std::fs::write(&pipeline, toml).unwrap();
    pipeline.display().to_string()
}

/// The objects under `prefix` in the test bucket of the S3 server at `endpoint`.
fn objects_under(endpoint: &str, prefix: &str) -> Vec<object_store::ObjectMeta> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name("scoreland-test")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()
            .unwrap();
        store
            .list(Some(&object_store::path::Path::from(prefix)))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    })
}

/// The staged parts on S3 (moto) for executors that do not mount this machine's staging
/// directory (`engine.staging`): copied there for the run, read there by the executors with
/// their own credentials, the kept rows written there by them, all removed after; the run lands
/// what a run here lands.
#[test]
fn a_run_on_a_local_cluster_reads_its_parts_from_an_s3_staging() {
    let Some(s3) = service("SCORELAND_TEST_S3_ENDPOINT") else {
        return;
    };
    let prefix = unique("cluster-staging");
    let aws = aws_env(&s3);
    let aws = borrowed(&aws);
    let here = Demo::new();
    let run = here.run(&["--json"], &[]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));

    // The executors write the kept rows in their work directory before uploading them, not in
    // TMPDIR (here a file, where nothing can be written).
    let not_a_dir = here.tmp.path().join("not-a-directory");
    std::fs::write(&not_a_dir, "").unwrap();
    let not_a_dir = not_a_dir.display().to_string();
    let cluster = LocalCluster::start_with(2, &[&aws[..], &[("TMPDIR", &not_a_dir)]].concat());
    let there = Demo::new();
    // A bucket that is not there: the run fails naming it, and nothing lands.
    let pipeline = staging_pipeline(
        &there,
        &cluster.url,
        &format!("s3://no-such-bucket-scoreland/{prefix}"),
    );
    let o = there.run_pipeline(&pipeline, &[], &aws);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("s3://no-such-bucket-scoreland/"),
        "{}",
        text(&o)
    );
    assert!(!Path::new(&there.wh()).join("scores").exists());
    let pipeline = staging_pipeline(
        &there,
        &cluster.url,
        &format!("s3://scoreland-test/{prefix}"),
    );
    let o = there.run_pipeline(&pipeline, &["--json"], &aws);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "copied the staged parts to s3://scoreland-test/{prefix}/"
        )),
        "{}",
        text(&o)
    );
    assert!(cluster.tasks_run() > 0, "the executors ran no task");
    assert_eq!(transform_figures(&o), transform_figures(&run));
    assert!(
        text(&o).contains(&format!(
            "the executors wrote and summarised the kept rows (fetched from \
             s3://scoreland-test/{prefix}/"
        )),
        "{}",
        text(&o)
    );
    assert_lands_the_same(&here, &there);
    // The copies and the kept rows' files are gone.
    let left = objects_under(&s3, &prefix);
    assert!(left.is_empty(), "copies left: {left:?}");
}

/// An S3 endpoint that refuses every request (403 AccessDenied), as a bucket does to
/// credentials without access; its address.
fn refusing_s3() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body =
                    "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

/// Executors that cannot read the staging bucket (refused: their credentials give no access)
/// fail the run with the store's answer, quickly (a refusal is not retried), and nothing lands;
/// the copies are removed.
#[test]
fn executors_refused_by_the_staging_bucket_fail_the_run_and_nothing_lands() {
    let Some(s3) = service("SCORELAND_TEST_S3_ENDPOINT") else {
        return;
    };
    let prefix = unique("cluster-refused");
    let aws = aws_env(&s3);
    let refused = aws_env(&refusing_s3());
    let cluster = LocalCluster::start_with(2, &borrowed(&refused));
    let there = Demo::new();
    let pipeline = staging_pipeline(
        &there,
        &cluster.url,
        &format!("s3://scoreland-test/{prefix}"),
    );
    let started = Instant::now();
    let o = there.run_pipeline(&pipeline, &[], &borrowed(&aws));
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the scores job failed on the cluster"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("403"), "{}", text(&o));
    assert!(
        text(&o).contains("credentials of their own environment"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains(&prefix), "{}", text(&o));
    // A fault of the store, not of an executor: not run again.
    assert!(!text(&o).contains("lost an executor"), "{}", text(&o));
    assert!(!Path::new(&there.wh()).join("scores").exists());
    let left = objects_under(&s3, &prefix);
    assert!(left.is_empty(), "copies left: {left:?}");
}

#[test]
fn an_executor_killed_mid_transform_lands_each_row_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A platform big enough that the transform's job runs for seconds.
    let platform = tmp.path().join("platform");
    let made = scoreland(
        &[
            "sim",
            "generate",
            "--out",
            &platform.display().to_string(),
            "--rows",
            "60000",
            "--parts",
            "4",
            "--batches",
            "1",
            "-q",
        ],
        &[],
    );
    assert!(made.status.success(), "{}", text(&made));
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"big\"\nstaging = \"${{SCORELAND_STAGING}}\"\n[source]\ntype = \"simulator\"\n\
             data = \"{}\"\n[sink]\nurl = \"${{SCORELAND_WAREHOUSE}}\"\n",
            platform.display()
        ),
    )
    .unwrap();
    let pipeline = pipeline.display().to_string();
    let (here, there) = (Demo::new(), Demo::new());
    let run = |d: &Demo, extra: &[&str]| {
        let mut args = vec!["run", pipeline.as_str(), "--json"];
        args.extend_from_slice(extra);
        let env = d.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        command(&args, &envs)
    };
    let local = run(&here, &[]).output().unwrap();
    assert_eq!(local.status.code(), Some(0), "{}", text(&local));

    let cluster = LocalCluster::start(2);
    let child = run(&there, &["--cluster", &cluster.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = cluster.kill_first_executor_once_busy();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(300));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("lost an executor"),
        "the job did not run again: {}",
        text(&out)
    );
    assert_eq!(transform_figures(&out), transform_figures(&local));
    // Neither the rows nor the summaries of the job given up are counted, nor are its files
    // left anywhere.
    assert_lands_the_same(&here, &there);
    let left: Vec<_> = walk(there.tmp.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".kept-"))
        .collect();
    assert!(left.is_empty(), "files of the executors left: {left:?}");
}

/// `serve` on port 0, its address read from its first line.
fn serve(wh: &str, extra: &[&str]) -> (Running, String) {
    serve_with(wh, extra, &[])
}

fn serve_with(wh: &str, extra: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let mut args = vec!["serve", "--warehouse", wh, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut server = Running::start(&args, env);
    server.wait_for("scoreland serve: listening on ");
    let line = server.stderr.last().unwrap().clone();
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    (server, addr)
}

/// psql's unaligned rows for `query` against the server at `addr`.
fn psql(addr: &str, query: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let o = Command::new("psql")
        .args(["-h", host, "-p", port, "-U", "scoreland", "-d", "scoreland"])
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (scripts/test-services.sh installs it)");
    assert!(o.status.success(), "psql {query}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn serve_on_a_local_cluster_answers_psql_as_serve_here() {
    let demo = Demo::new();
    let run = demo.run(&[], &[]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let cluster = LocalCluster::start(2);
    let (here_server, here) = serve(&demo.wh(), &[]);
    let (there_server, there) = serve(&demo.wh(), &["--cluster", &cluster.url]);
    assert!(
        there_server.stderr.last().unwrap().contains(&cluster.url),
        "{:?}",
        there_server.stderr
    );
    for query in [
        "SELECT dataset_id, CAST(score_date AS VARCHAR), model, count(*), \
         round(sum(score), 6), min(identity), max(identity) \
         FROM scores GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        "SELECT identity, model, score FROM scores WHERE model = 'churn_risk' \
         ORDER BY identity LIMIT 20",
        "SELECT model, count(*) FROM summary GROUP BY model ORDER BY model",
        // The catalog a BI tool reads at start-up answers here, whatever the engine.
        "SELECT relname FROM pg_catalog.pg_class WHERE relname IN ('scores', 'summary') \
         ORDER BY relname",
    ] {
        let (a, b) = (psql(&here, query), psql(&there, query));
        assert!(!a.trim().is_empty(), "{query}");
        assert_eq!(a, b, "{query}");
    }
    assert!(
        cluster.tasks_run() > 0,
        "the executors ran no task: serve's queries did not reach the cluster"
    );
    // Still read-only on the cluster.
    let (host, port) = there.rsplit_once(':').unwrap();
    let o = Command::new("psql")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-U",
            "scoreland",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args([
            "-c",
            "COPY (SELECT * FROM scores) TO '/tmp/scoreland-serve-cluster.parquet'",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!Path::new("/tmp/scoreland-serve-cluster.parquet").exists());
    for s in [here_server, there_server] {
        s.signal("TERM");
        let (code, _, err) = s.finish();
        assert_eq!(code, Some(0), "{err}");
    }
}

/// A warehouse on S3 (moto): `sql --cluster` and `serve --cluster` answer as they do here, the
/// executors reading the published files from the bucket with the credentials of their own
/// environment (none is in the plan).
#[test]
fn a_warehouse_on_s3_is_read_by_the_executors_with_their_own_credentials() {
    let Some(s3) = service("SCORELAND_TEST_S3_ENDPOINT") else {
        return;
    };
    let wh = format!("s3://scoreland-test/{}", unique("cluster-wh"));
    let secret = "cluster-secret-1234";
    let aws = [
        ("AWS_ENDPOINT", s3.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
    ];
    let demo = Demo::new();
    let landed = demo.run(
        &[],
        &[&aws[..], &[("SCORELAND_WAREHOUSE", wh.as_str())]].concat(),
    );
    assert_eq!(landed.status.code(), Some(0), "{}", text(&landed));
    let cluster = LocalCluster::start_with(2, &aws);
    let sql = |query: &str, cluster_url: Option<&str>| {
        let mut args = vec!["sql", query, "--warehouse", &wh, "--format", "json"];
        if let Some(url) = cluster_url {
            args.extend(["--cluster", url]);
        }
        let o = scoreland(&args, &aws);
        assert!(
            o.status.success(),
            "{query} ({cluster_url:?}): {}",
            text(&o)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    for query in [
        "SELECT dataset_id, score_date, model, count(*) AS n, sum(score) AS total, \
         min(identity) AS lo, max(identity) AS hi FROM scores GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        "SELECT model, score_date, rows, score_mean FROM summary ORDER BY model, score_date",
    ] {
        let (here, there) = (sql(query, None), sql(query, Some(&cluster.url)));
        assert!(here.lines().count() > 1, "{query}: {here}");
        assert_same(&here, &there, query);
    }
    assert!(cluster.tasks_run() > 0, "the executors ran no task");
    let (here_server, here) = serve_with(&wh, &[], &aws);
    let (there_server, there) = serve_with(&wh, &["--cluster", &cluster.url], &aws);
    let query = "SELECT model, count(*), min(identity), max(identity) FROM scores \
                 GROUP BY model ORDER BY model";
    let (a, b) = (psql(&here, query), psql(&there, query));
    assert!(a.lines().count() == 2, "{a}");
    assert_eq!(a, b, "{query}");
    for s in [here_server, there_server] {
        s.signal("TERM");
        let (code, _, err) = s.finish();
        assert_eq!(code, Some(0), "{err}");
    }
    // The secret is in no log the executors or the scheduler wrote.
    for log in walk(cluster.work.path()) {
        let written = std::fs::read(&log).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&written).contains(secret),
            "{} holds the secret",
            log.display()
        );
    }
}

#[test]
fn a_file_the_executors_cannot_read_fails_the_query_naming_it() {
    let demo = Demo::new();
    let run = demo.run(&[], &[]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    // A data file the published version names, gone from where the executors read it.
    let gone = walk(&Path::new(&demo.wh()).join("summary"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    std::fs::remove_file(&gone).unwrap();
    let cluster = LocalCluster::start(2);
    let o = scoreland(
        &[
            "sql",
            "SELECT model, sum(rows) FROM summary GROUP BY model",
            "--warehouse",
            &demo.wh(),
            "--cluster",
            &cluster.url,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let name = gone.file_name().unwrap().to_string_lossy().to_string();
    assert!(text(&o).contains(&name), "{}", text(&o));
    // A fault of the store, not of an executor: not run again.
    assert!(!text(&o).contains("lost an executor"), "{}", text(&o));
    assert!(o.stdout.is_empty(), "no partial answer: {}", text(&o));
}

#[test]
fn serve_on_a_local_cluster_masks_denied_columns_as_serve_here() {
    let sample = Demo::new();
    // Its `[serve] deny_labels = ["C2"]` masks the member's e-mail address.
    let o = sample.run_pipeline("pipelines/loyalty-members.toml", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let plain = sample.sql(
        "SELECT count(\"personalEmail_address\") AS n FROM loyalty_members",
        "csv",
    );
    assert!(
        text(&plain).contains("1100"),
        "the rows hold e-mails: {}",
        text(&plain)
    );
    let cluster = LocalCluster::start(2);
    let (here_server, here) = serve(&sample.wh(), &[]);
    let (there_server, there) = serve(&sample.wh(), &["--cluster", &cluster.url]);
    for (query, expect) in [
        (
            "SELECT count(*), count(\"personalEmail_address\") FROM loyalty_members",
            Some("1100|0\n"),
        ),
        // A filter on the masked column selects by its NULLs, never by the address.
        (
            "SELECT count(*) FROM loyalty_members \
             WHERE \"personalEmail_address\" LIKE 'member1%'",
            Some("0\n"),
        ),
        (
            "SELECT \"_acmeretail_loyalty_memberId\", \"personalEmail_address\", \
             \"_acmeretail_loyalty_points\" FROM loyalty_members \
             WHERE \"_acmeretail_loyalty_tier\" = 'gold' ORDER BY 1 LIMIT 20",
            None,
        ),
    ] {
        let (a, b) = (psql(&here, query), psql(&there, query));
        assert_eq!(a, b, "{query}");
        if let Some(expect) = expect {
            assert_eq!(b, expect, "{query}");
        }
    }
    assert!(
        cluster.tasks_run() > 0,
        "the queries did not reach the cluster"
    );
    for s in [here_server, there_server] {
        s.signal("TERM");
        let (code, _, err) = s.finish();
        assert_eq!(code, Some(0), "{err}");
    }
}

/// Whether process `pid` still runs (a zombie, left for a parent that never reaps it, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn a_killed_local_cluster_takes_its_executors_with_it() {
    let mut cluster = LocalCluster::start(2);
    assert!(cluster.executors.iter().all(|&pid| running(pid)));
    // SIGKILL: `cluster local` gets no chance to stop them itself.
    cluster.child.kill().unwrap();
    cluster.child.wait().unwrap();
    let started = Instant::now();
    while cluster.executors.iter().any(|&pid| running(pid)) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "executors {:?} outlived their local cluster",
            cluster.executors
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An executor of `cluster local` that exits before registering (its port taken in between)
/// is started again on other ports, three times in all; then the cluster says which one and
/// where its log is.
#[test]
fn an_executor_that_exits_before_registering_is_started_again() {
    let tmp = tempfile::tempdir().unwrap();
    // Executor 1 fails its first `fails` starts, then is the real executor.
    let bin = |fails: u32| {
        let script = tmp.path().join(format!("fails-{fails}.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 case \"$*\" in *executor-1*)\n\
                 n=$(cat {dir}/starts-{fails} 2>/dev/null || echo 0); echo $((n + 1)) > {dir}/starts-{fails}\n\
                 [ \"$n\" -lt {fails} ] && {{ echo 'Address already in use'; exit 1; }} ;;\n\
                 esac\n\
                 exec {bin} \"$@\"\n",
                dir = tmp.path().display(),
                bin = env!("CARGO_BIN_EXE_scoreland"),
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    };
    let starts = |fails: u32| {
        std::fs::read_to_string(tmp.path().join(format!("starts-{fails}")))
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let work = tmp.path().join("work-2");
        let cluster =
            scoreland_cluster::LocalCluster::start(&bin(2), 2, 1, 0, &work, Vec::new()).await;
        let cluster = cluster.expect("the third start registers");
        assert_eq!(cluster.registered().await, 2);
        assert_eq!(starts(2), 3);
        drop(cluster);

        let work = tmp.path().join("work-3");
        let started = Instant::now();
        let e = scoreland_cluster::LocalCluster::start(&bin(3), 2, 1, 0, &work, Vec::new())
            .await
            .err()
            .expect("an executor that never starts fails the cluster");
        let e = e.to_string();
        assert!(
            e.contains("executor 1") && e.contains("3 times") && e.contains("executor-1.log"),
            "{e}"
        );
        assert_eq!(starts(3), 3);
        assert!(started.elapsed() < Duration::from_secs(30));
    });
}
