//! Ingest against the in-process simulator: discovery, listing, downloads, every fault kind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scoreland_ingest::{
    AepClient, BatchSelection, Credentials, DownloadOptions, IngestError, Manifest, NoProgress,
    PlatformConfig, RetryPolicy, RowCountCheck, SCORING_CLIENT, Secret,
};
use scoreland_platform_sim::{
    ErrorBodyStyle, Fault, GenerateOptions, GenerateSummary, Route, SimConfig, SimHandle,
};

struct Env {
    _tmp: tempfile::TempDir,
    sim: SimHandle,
    summary: GenerateSummary,
    staging: PathBuf,
}

async fn env_with(rows: u64, parts: u32, tweak: impl FnOnce(&Path, &GenerateSummary)) -> Env {
    env_full(rows, parts, 3, SimConfig::default(), tweak).await
}

async fn env_full(
    rows: u64,
    parts: u32,
    batches: u32,
    config: SimConfig,
    tweak: impl FnOnce(&Path, &GenerateSummary),
) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("platform");
    let summary = scoreland_platform_sim::generate(&GenerateOptions {
        out: out.clone(),
        rows,
        parts,
        batches,
        seed: 7,
        ..Default::default()
    })
    .unwrap();
    tweak(&out, &summary);
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = scoreland_platform_sim::serve_dir(&out, config, addr)
        .await
        .unwrap();
    let staging = tmp.path().join("staging");
    Env {
        _tmp: tmp,
        sim,
        summary,
        staging,
    }
}

async fn env() -> Env {
    env_with(400, 4, |_, _| {}).await
}

fn options() -> DownloadOptions {
    DownloadOptions {
        concurrency: 4,
        retry: RetryPolicy {
            max_attempts: 6,
            max_elapsed: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        },
        ..Default::default()
    }
}

fn client_with(env: &Env, options: DownloadOptions) -> AepClient {
    try_client(env, options).unwrap()
}

fn try_client(env: &Env, options: DownloadOptions) -> Result<AepClient, IngestError> {
    let info = &env.sim.platform().info;
    AepClient::new(
        PlatformConfig {
            platform_url: env.sim.base_url().parse().unwrap(),
            ims_url: env.sim.ims_url().parse().unwrap(),
            org_id: info.org_id.clone(),
            sandbox: "prod".into(),
            credentials: Credentials::OAuth {
                client_id: info.client_id.clone(),
                client_secret: Secret::new(info.client_secret.clone()),
                scopes: PlatformConfig::DEFAULT_SCOPES.into(),
            },
        },
        options,
    )
}

fn client(env: &Env) -> AepClient {
    client_with(env, options())
}

/// The successful batches of the scoring client, as generated (oldest first).
fn scoring_batches(
    summary: &GenerateSummary,
) -> Vec<&scoreland_platform_sim::generate::GeneratedBatch> {
    summary
        .batches
        .iter()
        .filter(|b| b.created_client == SCORING_CLIENT && b.status == "success")
        .collect()
}

fn newest_scoring(summary: &GenerateSummary) -> &scoreland_platform_sim::generate::GeneratedBatch {
    scoring_batches(summary)
        .into_iter()
        .max_by_key(|b| b.created)
        .unwrap()
}

/// The newest scoring batch's only part: where the simulator serves it from, and where its
/// partial file goes in staging.
fn only_part(env: &Env) -> (PathBuf, PathBuf) {
    let ds = &env.summary.dataset_id;
    let batch = newest_scoring(&env.summary);
    // The simulator keeps a part as <sandbox>/<dataset>/<batch>/<file>/<part>.
    let served = env.summary.out.join("prod").join(ds).join(&batch.id);
    let file = std::fs::read_dir(&served)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let part = std::fs::read_dir(&file)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let partial = Manifest::batch_dir(&env.staging, ds, &batch.id)
        .join("files")
        .join(file.file_name().unwrap())
        .join(scoreland_ingest::partial_name(
            part.file_name().unwrap().to_str().unwrap(),
        ));
    (part, partial)
}

async fn download_newest(
    env: &Env,
    c: &AepClient,
) -> Result<scoreland_ingest::DownloadReport, IngestError> {
    download_newest_observed(env, c, &NoProgress).await
}

async fn download_newest_observed(
    env: &Env,
    c: &AepClient,
    observer: &dyn scoreland_ingest::DownloadObserver,
) -> Result<scoreland_ingest::DownloadReport, IngestError> {
    let ds = &env.summary.dataset_id;
    let batches = c
        .select_batches(ds, SCORING_CLIENT, &BatchSelection::Newest)
        .await?;
    c.download_batch(ds, &batches[0], &env.staging, observer)
        .await
}

/// Every manifest checksum is the SHA-256 of the staged file, computed here from the file.
fn assert_checksums(report: &scoreland_ingest::DownloadReport) {
    use sha2::{Digest, Sha256};
    for part in &report.manifest.parts {
        let bytes = std::fs::read(report.batch_dir.join(&part.path)).unwrap();
        assert_eq!(
            part.sha256,
            hex::encode(Sha256::digest(&bytes)),
            "{}",
            part.path
        );
    }
}

mod discovery {
    use super::*;

    #[tokio::test]
    async fn newest_skips_failed_and_other_clients() {
        let env = env().await;
        let c = client(&env);
        let got = c
            .select_batches(
                &env.summary.dataset_id,
                SCORING_CLIENT,
                &BatchSelection::Newest,
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, newest_scoring(&env.summary).id);
        assert_eq!(got[0].records, Some(400));
        // Every batch is listed, newest first, with the other client's batch on top.
        let all = c
            .list_batches(&env.summary.dataset_id, &[], 100)
            .await
            .unwrap();
        assert_eq!(all.len(), env.summary.batches.len());
        assert_eq!(all[0].created_client, "mlops_backfill");
        assert!(all.iter().any(|b| b.status == "failure"));
    }

    #[tokio::test]
    async fn catch_up_skips_replaced_batches() {
        let env = env().await;
        let c = client(&env);
        let scoring = scoring_batches(&env.summary);
        let got = c
            .select_batches(
                &env.summary.dataset_id,
                SCORING_CLIENT,
                &BatchSelection::CatchUp {
                    after: Some(scoring[0].id.clone()),
                },
            )
            .await
            .unwrap();
        // Batches 2 and 3 came after 1, but 3 replaced 2: only 3 is worth landing.
        assert_eq!(
            got.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            vec![scoring[2].id.as_str()]
        );
    }

    #[tokio::test]
    async fn no_successful_batch_names_the_dataset() {
        let env = env().await;
        let err = client(&env)
            .select_batches(
                "0000000000000000deadbeef",
                SCORING_CLIENT,
                &BatchSelection::Newest,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::NoSuccessfulBatch { .. }));
        assert!(err.to_string().contains("0000000000000000deadbeef"));
        assert!(err.is_user_error());
    }

    #[tokio::test]
    async fn an_explicit_failed_batch_is_refused() {
        let env = env().await;
        let failed = env
            .summary
            .batches
            .iter()
            .find(|b| b.status == "failure")
            .unwrap();
        let err = client(&env)
            .select_batches(
                &env.summary.dataset_id,
                SCORING_CLIENT,
                &BatchSelection::Batch {
                    id: failed.id.clone(),
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, IngestError::BatchNotUsable { ref status, .. } if status == "failure"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_credentials_are_a_clear_auth_error() {
        let env = env().await;
        let info = &env.sim.platform().info;
        let c = AepClient::new(
            PlatformConfig {
                platform_url: env.sim.base_url().parse().unwrap(),
                ims_url: env.sim.ims_url().parse().unwrap(),
                org_id: info.org_id.clone(),
                sandbox: "prod".into(),
                credentials: Credentials::OAuth {
                    client_id: info.client_id.clone(),
                    client_secret: Secret::new("not-the-secret"),
                    scopes: "openid".into(),
                },
            },
            options(),
        )
        .unwrap();
        let err = c
            .list_batches(&env.summary.dataset_id, &[], 5)
            .await
            .unwrap_err();
        let text = format!("{err:#?} {err}");
        assert!(
            matches!(err, IngestError::Auth { status: 401, .. }),
            "{text}"
        );
        assert!(
            !text.contains("not-the-secret"),
            "the secret leaked: {text}"
        );
    }

    #[tokio::test]
    async fn plain_http_is_refused_off_loopback() {
        let err = AepClient::new(
            PlatformConfig {
                platform_url: "http://platform.example.com".parse().unwrap(),
                ims_url: "https://ims.example.com".parse().unwrap(),
                org_id: "x@AdobeOrg".into(),
                sandbox: "prod".into(),
                credentials: Credentials::StaticToken {
                    api_key: "k".into(),
                    token: Secret::new("t"),
                },
            },
            options(),
        )
        .unwrap_err();
        assert!(matches!(err, IngestError::InsecureUrl { .. }), "{err}");
    }
}

mod download {
    use super::*;

    #[tokio::test]
    async fn stages_verified_parts_and_a_manifest_then_skips_on_rerun() {
        let env = env().await;
        let c = client(&env);
        let report = download_newest(&env, &c).await.unwrap();
        assert_eq!(report.manifest.rows, 400);
        assert_eq!(report.manifest.parts.len(), 4);
        assert_eq!(report.downloaded_parts, 4);
        let on_disk: u64 = report
            .manifest
            .part_paths(&report.batch_dir)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(on_disk, report.manifest.bytes);
        assert_eq!(report.bytes_downloaded, report.manifest.bytes);
        assert!(Manifest::read(&report.batch_dir).unwrap().is_some());
        // The same bytes the simulator serves.
        let batch = &env.sim.platform().sandboxes["prod"].batches[&report.manifest.batch.id];
        for part in &batch.files[0].parts {
            let staged = report
                .batch_dir
                .join("files")
                .join(&batch.files[0].id)
                .join(&part.name);
            assert_eq!(
                std::fs::read(&staged).unwrap(),
                std::fs::read(&part.path).unwrap()
            );
        }
        let before = env.sim.request_count(Route::Download);
        let again = download_newest(&env, &c).await.unwrap();
        assert_eq!(again.skipped_parts, 4);
        assert_eq!(again.bytes_downloaded, 0);
        assert_checksums(&report);
        assert_checksums(&again);
        assert_eq!(env.sim.request_count(Route::Download), before);
    }

    #[tokio::test]
    async fn the_largest_parts_go_first() {
        #[derive(Default)]
        struct Order(std::sync::Mutex<Vec<String>>);
        impl scoreland_ingest::DownloadObserver for Order {
            fn on_part_done(&self, name: &str, _skipped: bool) {
                self.0.lock().unwrap().push(name.to_string());
            }
        }
        let env = env_with(3000, 6, |_, _| {}).await;
        let c = client_with(
            &env,
            DownloadOptions {
                concurrency: 1,
                ..options()
            },
        );
        let order = Order::default();
        let report = download_newest_observed(&env, &c, &order).await.unwrap();
        let mut by_size = report.manifest.parts.clone();
        by_size.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        assert!(by_size.first().unwrap().bytes > by_size.last().unwrap().bytes);
        let expected: Vec<String> = by_size.into_iter().map(|p| p.name).collect();
        assert_eq!(*order.0.lock().unwrap(), expected);
    }

    #[tokio::test]
    async fn concurrency_outside_1_to_256_is_refused() {
        let env = env().await;
        for bad in [0, scoreland_ingest::MAX_CONCURRENCY + 1] {
            let options = DownloadOptions {
                concurrency: bad,
                ..options()
            };
            match try_client(&env, options) {
                Err(IngestError::Config { field, message }) => {
                    assert_eq!(field, "concurrency");
                    assert_eq!(message, "must be from 1 to 256");
                }
                other => panic!(
                    "{bad}: expected a configuration error, got {:?}",
                    other.err()
                ),
            }
        }
    }

    #[tokio::test]
    async fn more_than_100_parts_with_small_pages() {
        let env = env_with(260, 130, |_, _| {}).await;
        env.sim.set_page_size(Some(7));
        let report = download_newest(&env, &client(&env)).await.unwrap();
        assert_eq!(report.manifest.parts.len(), 130);
        assert_eq!(report.manifest.rows, 260);
        assert!(env.sim.request_count(Route::FileListing) >= 19);
    }

    #[tokio::test]
    async fn every_retryable_fault_is_survived() {
        let env = env().await;
        let s = &env.sim;
        s.push_fault(
            Route::CatalogBatches,
            Fault::Status {
                status: 429,
                retry_after: Some("0".into()),
                body: ErrorBodyStyle::Problem,
            },
            1,
        );
        s.push_fault(
            Route::CatalogBatches,
            Fault::Status {
                status: 429,
                retry_after: None,
                body: ErrorBodyStyle::Gateway,
            },
            1,
        );
        s.push_fault(
            Route::BatchFiles,
            Fault::Status {
                status: 500,
                retry_after: None,
                body: ErrorBodyStyle::Empty,
            },
            1,
        );
        s.push_fault(
            Route::FileListing,
            Fault::Status {
                status: 502,
                retry_after: None,
                body: ErrorBodyStyle::Gateway,
            },
            1,
        );
        s.push_fault(
            Route::FileListing,
            Fault::TruncateBody { after_bytes: 40 },
            1,
        );
        s.push_fault(
            Route::Download,
            Fault::Status {
                status: 503,
                retry_after: Some("1".into()),
                body: ErrorBodyStyle::Gateway,
            },
            1,
        );
        s.push_fault(
            Route::Download,
            Fault::ResetMidBody { after_bytes: 5_000 },
            1,
        );
        s.push_fault(
            Route::Download,
            Fault::TruncateBody { after_bytes: 3_000 },
            1,
        );
        s.push_fault(
            Route::Download,
            Fault::Latency {
                delay: Duration::from_millis(200),
            },
            1,
        );
        s.push_fault(
            Route::Download,
            Fault::Bandwidth {
                bytes_per_sec: 200_000,
            },
            1,
        );
        let c = client(&env);
        let report = download_newest(&env, &c).await.unwrap();
        assert_eq!(report.manifest.rows, 400);
        assert!(c.retries() >= 7, "retries: {}", c.retries());
        for route in [
            Route::CatalogBatches,
            Route::BatchFiles,
            Route::FileListing,
            Route::Download,
        ] {
            assert_eq!(s.pending_faults(route), 0, "{route:?}");
        }
        // Resumed parts did not fetch their first bytes twice.
        assert_eq!(report.bytes_downloaded, report.manifest.bytes);
        assert_checksums(&report);
    }

    #[tokio::test]
    async fn an_interrupted_part_resumes_with_range() {
        let env = env_with(4000, 1, |_, _| {}).await;
        env.sim.push_fault(
            Route::Download,
            Fault::ResetMidBody {
                after_bytes: 100_000,
            },
            1,
        );
        let c = client(&env);
        let report = download_newest(&env, &c).await.unwrap();
        assert_eq!(env.sim.request_count(Route::Download), 2);
        assert_eq!(report.bytes_downloaded, report.manifest.bytes);
        assert_eq!(report.manifest.rows, 4000);
        // The checksum covers the bytes kept from the cut attempt too.
        assert_checksums(&report);
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_resumes() {
        let env = env_with(4000, 1, |_, _| {}).await;
        env.sim.push_fault(
            Route::Download,
            Fault::StallMidBody {
                after_bytes: 20_000,
                delay: Duration::from_secs(5),
            },
            1,
        );
        let c = client_with(
            &env,
            DownloadOptions {
                stall_timeout: Duration::from_millis(300),
                ..options()
            },
        );
        let started = std::time::Instant::now();
        let report = download_newest(&env, &c).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(env.sim.request_count(Route::Download), 2);
        assert_eq!(c.retries(), 1);
        // The second request asked only for what the first did not bring.
        assert_eq!(report.bytes_downloaded, report.manifest.bytes);
        assert_checksums(&report);
    }

    #[tokio::test]
    async fn a_leftover_partial_longer_than_the_part_is_started_over() {
        let env = env_with(4000, 1, |_, _| {}).await;
        let (served, partial) = only_part(&env);
        let len = std::fs::metadata(&served).unwrap().len() as usize;
        std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
        std::fs::write(&partial, vec![7u8; len + 10]).unwrap();
        let report = download_newest(&env, &client(&env)).await.unwrap();
        let staged = report.batch_dir.join(&report.manifest.parts[0].path);
        assert_eq!(
            std::fs::read(staged).unwrap(),
            std::fs::read(&served).unwrap()
        );
        assert_eq!(report.bytes_downloaded, len as u64);
        assert!(!partial.exists());
        assert_checksums(&report);
    }

    #[tokio::test]
    async fn a_part_that_cannot_be_written_fails_at_once_naming_its_file() {
        let env = env_with(400, 1, |_, _| {}).await;
        let ds = &env.summary.dataset_id;
        let batch = newest_scoring(&env.summary);
        let (_, partial) = only_part(&env);
        // A directory where the part's partial file has to go: every write to it fails.
        std::fs::create_dir_all(&partial).unwrap();
        let c = client(&env);
        let err = download_newest(&env, &c).await.unwrap_err();
        match &err {
            IngestError::Io { path, .. } => assert_eq!(path, &partial),
            other => panic!("expected a disk error, got {other}"),
        }
        assert_eq!(c.retries(), 0);
        assert!(
            !Manifest::batch_dir(&env.staging, ds, &batch.id)
                .join("manifest.json")
                .exists()
        );
    }

    #[tokio::test]
    async fn other_4xx_fail_at_once() {
        let env = env().await;
        env.sim.push_fault(
            Route::Download,
            Fault::Status {
                status: 404,
                retry_after: None,
                body: ErrorBodyStyle::Gateway,
            },
            1,
        );
        let c = client_with(
            &env,
            DownloadOptions {
                concurrency: 1,
                ..options()
            },
        );
        let err = download_newest(&env, &c).await.unwrap_err();
        assert!(
            matches!(err, IngestError::Status { status: 404, .. }),
            "{err}"
        );
        assert_eq!(c.retries(), 0);
        assert!(
            !Manifest::batch_dir(
                &env.staging,
                &env.summary.dataset_id,
                &newest_scoring(&env.summary).id
            )
            .join("manifest.json")
            .exists()
        );
    }

    #[tokio::test]
    async fn a_platform_that_keeps_failing_gives_up_within_its_budget() {
        let env = env().await;
        env.sim.push_fault(
            Route::BatchFiles,
            Fault::Status {
                status: 503,
                retry_after: None,
                body: ErrorBodyStyle::Gateway,
            },
            1000,
        );
        let c = client(&env);
        let err = download_newest(&env, &c).await.unwrap_err();
        assert!(
            matches!(err, IngestError::GaveUp { attempts: 6, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn token_expiring_mid_download_is_renewed() {
        let env = env().await;
        env.sim.push_fault(Route::Download, Fault::ExpireTokens, 1);
        let c = client_with(
            &env,
            DownloadOptions {
                concurrency: 1,
                ..options()
            },
        );
        let report = download_newest(&env, &c).await.unwrap();
        assert_eq!(report.manifest.rows, 400);
        assert_eq!(env.sim.request_count(Route::Ims), 2);
    }

    #[tokio::test]
    async fn a_repeating_next_link_is_an_error_not_a_loop() {
        let env = env().await;
        env.sim.set_page_size(Some(2));
        env.sim
            .push_fault(Route::FileListing, Fault::RepeatNextLink, 1);
        let err = download_newest(&env, &client(&env)).await.unwrap_err();
        assert!(matches!(err, IngestError::RepeatedNextLink { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_foreign_href_is_refused() {
        let env = env().await;
        env.sim.push_fault(
            Route::FileListing,
            Fault::ForeignHrefs {
                origin: "https://evil.example.com".into(),
            },
            1,
        );
        let err = download_newest(&env, &client(&env)).await.unwrap_err();
        assert!(matches!(err, IngestError::ForeignOrigin { .. }), "{err}");
        assert!(err.to_string().contains("evil.example.com"));
    }

    #[tokio::test]
    async fn unsafe_part_names_are_refused_before_writing() {
        let env = env_with(400, 2, |out, summary| {
            let newest = newest_scoring(summary);
            let dir = out
                .join("prod")
                .join(&summary.dataset_id)
                .join(&newest.id)
                .join(format!("{}-1", newest.id));
            let first = std::fs::read_dir(&dir)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            std::fs::rename(&first, dir.join("evil\\..\\name.parquet")).unwrap();
        })
        .await;
        let err = download_newest(&env, &client(&env)).await.unwrap_err();
        assert!(matches!(err, IngestError::UnsafeName { .. }), "{err}");
        let batch_dir = Manifest::batch_dir(
            &env.staging,
            &env.summary.dataset_id,
            &newest_scoring(&env.summary).id,
        );
        // Nothing but the staging lock.
        let written: Vec<_> = std::fs::read_dir(&batch_dir)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(written.iter().all(|n| n == ".lock"), "{written:?}");
    }

    #[tokio::test]
    async fn a_row_count_mismatch_fails_unless_configured_to_warn() {
        let env = env_with(400, 2, |out, summary| {
            let newest = newest_scoring(summary);
            let path = out
                .join("prod")
                .join(&summary.dataset_id)
                .join(&newest.id)
                .join("batch.json");
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            v["metrics"] = serde_json::json!({"outputRecordCount": 401});
            std::fs::write(&path, v.to_string()).unwrap();
        })
        .await;
        let err = download_newest(&env, &client(&env)).await.unwrap_err();
        assert!(
            matches!(
                err,
                IngestError::RowCountMismatch {
                    expected: 401,
                    actual: 400,
                    ..
                }
            ),
            "{err}"
        );
        let warn = client_with(
            &env,
            DownloadOptions {
                row_count_check: RowCountCheck::Warn,
                ..options()
            },
        );
        let report = download_newest(&env, &warn).await.unwrap();
        assert!(report.manifest.row_count_mismatch);
        // The verified parts of the failed attempt were kept and not fetched again.
        assert_eq!(report.skipped_parts, 2);
    }
}

/// What the simulator cannot be made to say: a bare HTTP/1.1 server on loopback that answers
/// every request with what `answer` gives for its request line.
async fn raw_server(answer: fn(&str) -> Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let line = text.lines().next().unwrap_or("").to_string();
                let _ = sock.write_all(&answer(&line)).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn http_response(status: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn client_for(base: &str, credentials: Credentials, options: DownloadOptions) -> AepClient {
    AepClient::new(
        PlatformConfig {
            platform_url: base.parse().unwrap(),
            ims_url: base.parse().unwrap(),
            org_id: "x@AdobeOrg".into(),
            sandbox: "prod".into(),
            credentials,
        },
        options,
    )
    .unwrap()
}

fn oauth() -> Credentials {
    Credentials::OAuth {
        client_id: "id".into(),
        client_secret: Secret::new("s3cr3t-value"),
        scopes: PlatformConfig::DEFAULT_SCOPES.into(),
    }
}

/// Review findings: platform input that must neither crash, hang nor lose data.
mod hardening {
    use super::*;

    #[tokio::test]
    async fn a_retry_after_beyond_the_budget_ends_at_once() {
        let env = env().await;
        env.sim.push_fault(
            Route::CatalogBatches,
            Fault::Status {
                status: 503,
                retry_after: Some("18446744073709551615".into()),
                body: ErrorBodyStyle::Gateway,
            },
            1,
        );
        let started = std::time::Instant::now();
        let err = client(&env)
            .list_batches(&env.summary.dataset_id, &[], 5)
            .await
            .unwrap_err();
        assert!(
            matches!(err, IngestError::RetryAfterTooLong { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("max_retry_time"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_huge_token_lifetime_does_not_overflow() {
        let base = raw_server(|line| {
            if line.starts_with("POST /ims/token/v3") {
                http_response(
                    "200 OK",
                    "",
                    br#"{"access_token":"t","token_type":"bearer","expires_in":18446744073709551615}"#,
                )
            } else {
                http_response("200 OK", "", b"{}")
            }
        })
        .await;
        let c = client_for(&base, oauth(), options());
        let got = c.list_batches("ds", &[], 5).await.unwrap();
        assert!(got.is_empty());
        // The token is cached: a second call works too.
        c.list_batches("ds", &[], 5).await.unwrap();
    }

    #[tokio::test]
    async fn an_invalid_scope_says_it_is_about_scopes() {
        let base = raw_server(|_| {
            http_response(
                "400 Bad Request",
                "",
                br#"{"error":"invalid_scope","error_description":"Invalid scope (AdobeID)"}"#,
            )
        })
        .await;
        let err = client_for(&base, oauth(), options())
            .list_batches("ds", &[], 5)
            .await
            .unwrap_err();
        let text = format!("{err:#?} {err}");
        assert!(text.contains("scopes"), "{text}");
        assert!(!text.contains("SCORELAND_"), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(err.is_user_error());
    }

    #[tokio::test]
    async fn a_body_over_16_mib_is_refused_naming_its_path() {
        let base = raw_server(|_| {
            let mut head =
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                    .to_vec();
            head.extend(std::iter::repeat_n(b' ', 17 << 20));
            head
        })
        .await;
        let token = Credentials::StaticToken {
            api_key: "k".into(),
            token: Secret::new("t"),
        };
        let err = client_for(&base, token, options())
            .list_batches("ds", &[], 5)
            .await
            .unwrap_err();
        match &err {
            IngestError::BodyTooLarge { url, limit, .. } => {
                assert_eq!(url, "/data/foundation/catalog/batches");
                assert_eq!(*limit, 16 << 20);
            }
            other => panic!("expected BodyTooLarge, got {other}"),
        }
    }

    #[tokio::test]
    async fn a_dribbling_body_is_abandoned_and_resumed() {
        let env = env_with(4000, 1, |_, _| {}).await;
        env.sim.push_fault(
            Route::Download,
            Fault::Drip {
                bytes: 200,
                every: Duration::from_millis(20),
            },
            1,
        );
        let c = client_with(
            &env,
            DownloadOptions {
                min_speed: 64 * 1024,
                min_speed_window: Duration::from_millis(300),
                ..options()
            },
        );
        let report = download_newest(&env, &c).await.unwrap();
        assert_eq!(c.retries(), 1);
        assert_eq!(env.sim.request_count(Route::Download), 2);
        assert_checksums(&report);
    }

    #[tokio::test]
    async fn a_body_that_only_ever_dribbles_gives_up_as_too_slow() {
        let env = env_with(4000, 1, |_, _| {}).await;
        env.sim.push_fault(
            Route::Download,
            Fault::Drip {
                bytes: 100,
                every: Duration::from_millis(20),
            },
            50,
        );
        let c = client_with(
            &env,
            DownloadOptions {
                min_speed: 64 * 1024,
                min_speed_window: Duration::from_millis(200),
                retry: RetryPolicy {
                    max_attempts: 3,
                    ..options().retry
                },
                ..options()
            },
        );
        let err = download_newest(&env, &c).await.unwrap_err();
        match &err {
            IngestError::GaveUp {
                attempts, source, ..
            } => {
                // Slow attempts move bytes, but do not count as progress.
                assert_eq!(*attempts, 3);
                assert!(matches!(**source, IngestError::TooSlow { .. }), "{source}");
            }
            other => panic!("expected GaveUp, got {other}"),
        }
    }

    #[tokio::test]
    async fn a_part_cut_every_time_finishes_while_each_attempt_makes_progress() {
        let config = SimConfig {
            bandwidth_per_connection: Some(400_000),
            ..SimConfig::default()
        };
        let env = env_full(20_000, 1, 3, config, |_, _| {}).await;
        env.sim.push_fault(
            Route::Download,
            Fault::ResponseCap {
                after: Duration::from_millis(150),
            },
            1000,
        );
        let c = client_with(
            &env,
            DownloadOptions {
                retry: RetryPolicy {
                    max_attempts: 3,
                    ..options().retry
                },
                ..options()
            },
        );
        let report = download_newest(&env, &c).await.unwrap();
        // Many more attempts than max_attempts, each one resumed where the last was cut.
        let attempts = env.sim.request_count(Route::Download);
        assert!(attempts > 3, "{attempts} attempts");
        assert_eq!(report.bytes_downloaded, report.manifest.bytes);
        assert_checksums(&report);
    }

    #[tokio::test]
    async fn a_shorter_range_than_asked_is_taken_and_the_rest_asked_for() {
        let env = env_with(4000, 1, |_, _| {}).await;
        env.sim.push_fault(
            Route::Download,
            Fault::ShortRange { max_bytes: 10_000 },
            1000,
        );
        let c = client(&env);
        let report = download_newest(&env, &c).await.unwrap();
        let bytes = report.manifest.bytes;
        assert!(
            bytes > 30_000,
            "a part of {bytes} bytes is too small for the test"
        );
        assert_eq!(
            env.sim.request_count(Route::Download),
            bytes.div_ceil(10_000)
        );
        assert_eq!(c.retries(), 0, "short ranges are not failures");
        assert_checksums(&report);
    }

    #[tokio::test]
    async fn a_200_to_a_ranged_request_starts_the_part_over() {
        let env = env_with(4000, 1, |_, _| {}).await;
        env.sim.push_fault(
            Route::Download,
            Fault::ResetMidBody {
                after_bytes: 20_000,
            },
            1,
        );
        env.sim.push_fault(Route::Download, Fault::IgnoreRange, 1);
        let c = client(&env);
        let report = download_newest(&env, &c).await.unwrap();
        assert_eq!(env.sim.request_count(Route::Download), 2);
        assert_checksums(&report);
    }

    #[tokio::test]
    async fn marker_files_in_listings_are_skipped() {
        let env = env().await;
        env.sim
            .push_fault(Route::FileListing, Fault::MarkerFiles, 100);
        let report = download_newest(&env, &client(&env)).await.unwrap();
        assert_eq!(report.manifest.parts.len(), 4);
        assert!(
            report
                .manifest
                .parts
                .iter()
                .all(|p| !p.name.starts_with('_'))
        );
        assert_eq!(report.manifest.rows, 400);
    }

    #[tokio::test]
    async fn an_overlapping_cursor_lists_each_part_once() {
        let env = env_with(400, 9, |_, _| {}).await;
        env.sim.set_page_size(Some(2));
        env.sim
            .push_fault(Route::FileListing, Fault::OverlappingCursor, 100);
        env.sim
            .push_fault(Route::BatchFiles, Fault::OverlappingCursor, 100);
        let report = download_newest(&env, &client(&env)).await.unwrap();
        assert_eq!(report.manifest.parts.len(), 9);
        assert_eq!(report.manifest.rows, 400);
        assert!(env.sim.request_count(Route::FileListing) >= 8);
    }

    #[tokio::test]
    async fn empty_pages_are_followed_but_not_forever() {
        let env = env().await;
        env.sim.push_fault(Route::FileListing, Fault::EmptyPage, 3);
        let report = download_newest(&env, &client(&env)).await.unwrap();
        assert_eq!(report.manifest.parts.len(), 4);

        let endless = super::env().await;
        endless
            .sim
            .push_fault(Route::FileListing, Fault::EmptyPage, 1000);
        let err = download_newest(&endless, &client(&endless))
            .await
            .unwrap_err();
        assert!(
            matches!(err, IngestError::ListingNotAdvancing { pages: 20, .. }),
            "{err}"
        );
        assert!(endless.sim.request_count(Route::FileListing) <= 21);
    }

    #[tokio::test]
    async fn a_catalog_that_ignores_start_is_an_error() {
        let env = env_full(2, 1, 101, SimConfig::default(), |_, _| {}).await;
        let c = client(&env);
        let all = c
            .list_batches(&env.summary.dataset_id, &[], 1000)
            .await
            .unwrap();
        assert_eq!(all.len(), env.summary.batches.len());
        assert!(all.len() > 100);
        env.sim
            .push_fault(Route::CatalogBatches, Fault::CatalogIgnoresStart, 1000);
        let err = c
            .list_batches(&env.summary.dataset_id, &[], 1000)
            .await
            .unwrap_err();
        assert!(
            matches!(err, IngestError::ListingNotAdvancing { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn relative_hrefs_are_resolved_against_their_page() {
        let env = env().await;
        env.sim
            .push_fault(Route::BatchFiles, Fault::RelativeHrefs, 100);
        env.sim
            .push_fault(Route::FileListing, Fault::RelativeHrefs, 100);
        let report = download_newest(&env, &client(&env)).await.unwrap();
        assert_eq!(report.manifest.parts.len(), 4);
        assert_eq!(report.manifest.rows, 400);
    }

    #[tokio::test]
    async fn catch_up_goes_on_when_the_last_landed_batch_is_gone_from_catalog() {
        let env = env().await;
        let c = client(&env);
        let scoring = scoring_batches(&env.summary);
        // The state keeps the last landed batch's creation time; its id need not exist.
        let got = c
            .batches_after(
                &env.summary.dataset_id,
                SCORING_CLIENT,
                "batch-that-catalog-forgot",
                scoring[0].created,
            )
            .await
            .unwrap();
        assert_eq!(
            got.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            vec![scoring[2].id.as_str()]
        );
    }

    #[tokio::test]
    async fn a_staged_part_changed_since_it_was_verified_is_downloaded_again() {
        let env = env().await;
        let c = client(&env);
        let first = download_newest(&env, &c).await.unwrap();
        let victim = first.batch_dir.join(&first.manifest.parts[1].path);
        let mut bytes = std::fs::read(&victim).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff; // same size, other content
        std::fs::write(&victim, &bytes).unwrap();
        let before = env.sim.request_count(Route::Download);
        let again = download_newest(&env, &c).await.unwrap();
        assert_eq!(env.sim.request_count(Route::Download), before + 1);
        assert_eq!(again.downloaded_parts, 1);
        assert_eq!(again.skipped_parts, 3);
        assert_checksums(&again);
        assert_eq!(again.manifest.parts, first.manifest.parts);
    }

    #[tokio::test]
    async fn two_stagers_of_one_batch_take_turns() {
        let env = env_with(4000, 4, |_, _| {}).await;
        let (a, b) = (client(&env), client(&env));
        let (ra, rb) = tokio::join!(download_newest(&env, &a), download_newest(&env, &b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        // One downloaded every part; the other waited and found them staged.
        assert_eq!(env.sim.request_count(Route::Download), 4);
        assert_eq!(ra.downloaded_parts + rb.downloaded_parts, 4);
        assert_checksums(&ra);
        assert_checksums(&rb);
    }

    #[tokio::test]
    async fn a_disk_without_room_for_the_batch_is_refused_before_downloading() {
        let env = env().await;
        let c = client_with(
            &env,
            DownloadOptions {
                keep_free: u64::MAX / 2,
                ..options()
            },
        );
        let err = download_newest(&env, &c).await.unwrap_err();
        assert!(matches!(err, IngestError::NoSpace { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("MB free") && text.contains("MB more"),
            "{text}"
        );
        assert_eq!(env.sim.request_count(Route::Download), 0);
    }

    #[tokio::test]
    async fn parts_named_like_our_files_or_near_the_name_limit_are_staged() {
        let long = format!("{}.parquet", "p".repeat(242));
        assert_eq!(long.len(), 250);
        let env = env_with(400, 2, |out, summary| {
            let batch = newest_scoring(summary);
            let served = out.join("prod").join(&summary.dataset_id).join(&batch.id);
            let file = std::fs::read_dir(&served)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.is_dir())
                .unwrap();
            let mut parts: Vec<_> = std::fs::read_dir(&file)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            parts.sort();
            std::fs::rename(&parts[0], file.join("manifest.json")).unwrap();
            std::fs::rename(&parts[1], file.join(&long)).unwrap();
        })
        .await;
        let report = download_newest(&env, &client(&env)).await.unwrap();
        let mut names: Vec<_> = report
            .manifest
            .parts
            .iter()
            .map(|p| p.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, vec!["manifest.json".to_string(), long]);
        assert_eq!(report.manifest.rows, 400);
        assert_checksums(&report);
        assert!(Manifest::read(&report.batch_dir).unwrap().is_some());
    }

    #[tokio::test]
    async fn staged_batches_past_the_retention_are_pruned() {
        let env = env().await;
        let report = download_newest(&env, &client(&env)).await.unwrap();
        let id = report.manifest.batch.id.clone();
        let ds = &env.summary.dataset_id;
        let none = Manifest::prune(&env.staging, ds, &[], Duration::from_secs(3600)).unwrap();
        assert!(none.is_empty(), "a batch verified just now is kept");
        let kept =
            Manifest::prune(&env.staging, ds, std::slice::from_ref(&id), Duration::ZERO).unwrap();
        assert!(kept.is_empty(), "a batch the run landed is kept");
        let gone = Manifest::prune(&env.staging, ds, &[], Duration::ZERO).unwrap();
        assert_eq!(gone, vec![id]);
        assert!(!report.batch_dir.exists());
    }
}

mod flows {
    use super::*;
    use scoreland_ingest::{
        Compression, Destination, DestinationAuth, ExportFlowSpec, ExportMode, ExportTarget,
        FileType, FlowRun, NotReadyRetry, Schedule, TimeUnit,
    };
    use scoreland_platform_sim::ExportFault;

    async fn flow_env(ready_after: Duration) -> (Env, tempfile::TempDir) {
        let exports = tempfile::tempdir().unwrap();
        let config = SimConfig {
            export_root: exports.path().to_path_buf(),
            export_ready_after: ready_after,
            ..SimConfig::default()
        };
        (env_full(300, 3, 3, config, |_, _| {}).await, exports)
    }

    fn spec(env: &Env, name: &str, file_type: FileType, mode: ExportMode) -> ExportFlowSpec {
        let (time_unit, interval) = match mode {
            ExportMode::DailyFullExport => (TimeUnit::Day, 0),
            ExportMode::FirstFullThenIncremental => (TimeUnit::Hour, 3),
        };
        ExportFlowSpec {
            name: name.into(),
            dataset_id: env.summary.dataset_id.clone(),
            auth: DestinationAuth::S3 {
                access_key: "AKIA-TEST".into(),
                secret_key: Secret::new("s3-secret-never-shown"),
            },
            target: ExportTarget {
                destination: Destination::S3,
                file_type,
                compression: Compression::Gzip,
                bucket: Some("exports".into()),
                path: "scores/cai".into(),
            },
            schedule: Schedule {
                export_mode: mode,
                time_unit,
                interval,
                start_time: chrono::Utc::now().timestamp(),
                end_time: None,
                foldername_template: None,
            },
        }
    }

    async fn finished(client: &AepClient, run: &str) -> FlowRun {
        for _ in 0..200 {
            let r = client.flow_run(run).await.unwrap();
            if r.status != "inprogress" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {run} did not finish");
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn an_export_flow_is_made_once_by_name_and_its_runs_write_aep_layout() {
        let (env, exports) = flow_env(Duration::from_millis(600)).await;
        let c = client(&env);
        let s = spec(
            &env,
            "cai-s3",
            FileType::Parquet,
            ExportMode::FirstFullThenIncremental,
        );
        let (flow, created) = c.create_export_flow(&s).await.unwrap();
        assert!(created && flow.is_enabled());
        assert_eq!(flow.destination, Some(Destination::S3));
        let (again, created) = c.create_export_flow(&s).await.unwrap();
        assert!(!created, "the same name again changes nothing");
        assert_eq!(again.id, flow.id);
        assert_eq!(c.export_flows(None).await.unwrap().len(), 1);
        assert_eq!(c.export_target(&flow).await.unwrap(), s.target);
        assert_eq!(
            c.export_datasets(&flow).await.unwrap(),
            vec![env.summary.dataset_id.clone()]
        );

        // A new flow is not ready at once: the run waits that out.
        let retry = NotReadyRetry {
            every: Duration::from_millis(250),
            attempts: 10,
        };
        let run = c
            .run_export_now(&flow, &env.summary.dataset_id, retry)
            .await
            .unwrap();
        let r = finished(&c, &run).await;
        assert!(r.succeeded(), "{r:?}");
        // The dataset as it stands: its successful batches, less those a later one replaced.
        let replaced: Vec<&str> = env
            .summary
            .batches
            .iter()
            .filter_map(|b| b.replaces.as_deref())
            .collect();
        let success_rows: u64 = env
            .summary
            .batches
            .iter()
            .filter(|b| b.status == "success" && !replaced.contains(&b.id.as_str()))
            .map(|b| b.rows)
            .sum();
        assert_eq!(r.output_records, Some(success_rows));
        // {root}/s3/{bucket}/{path}/{datasetId}/exportTime=YYYYMMDDHHMM/part-….gz.parquet
        let base = exports
            .path()
            .join("s3/exports/scores/cai")
            .join(&env.summary.dataset_id);
        let folders = files_in(&base);
        assert_eq!(folders.len(), 1);
        let folder = folders[0].file_name().unwrap().to_str().unwrap();
        assert!(
            folder.starts_with("exportTime=") && folder.len() == 23,
            "{folder}"
        );
        let files = files_in(&folders[0]);
        assert_eq!(files.len() as u64, r.output_files.unwrap());
        let bytes: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
        assert_eq!(Some(bytes), r.output_bytes);
        for f in &files {
            let name = f.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with("part-") && name.ends_with("-c000.gz.parquet"),
                "{name}"
            );
        }

        // Incremental: nothing new was added, so the next export is empty, in a later folder.
        let run2 = c
            .run_export_now(&flow, &env.summary.dataset_id, retry)
            .await
            .unwrap();
        let r2 = finished(&c, &run2).await;
        assert!(r2.succeeded());
        assert_eq!((r2.output_files, r2.output_records), (Some(0), Some(0)));
        let runs = c.flow_runs(&flow.id).await.unwrap();
        assert_eq!(
            runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            [run2.as_str(), run.as_str()],
            "newest first"
        );
        // Pages of one run each, followed by their continuation tokens.
        env.sim.set_page_size(Some(1));
        assert_eq!(c.flow_runs(&flow.id).await.unwrap(), runs);
    }

    #[tokio::test]
    async fn a_schedule_runs_on_the_accelerated_clock_every_interval() {
        let exports = tempfile::tempdir().unwrap();
        let config = SimConfig {
            export_root: exports.path().to_path_buf(),
            // Ten hours a second: a 3-hour schedule exports every 0.3 s.
            export_clock_speed: Some(36_000.0),
            ..SimConfig::default()
        };
        let env = env_full(300, 3, 3, config, |_, _| {}).await;
        let c = client(&env);
        let s = spec(
            &env,
            "scheduled",
            FileType::Parquet,
            ExportMode::FirstFullThenIncremental,
        );
        let (flow, _) = c.create_export_flow(&s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.set_flow_enabled(&flow, false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let runs = c.flow_runs(&flow.id).await.unwrap();
        assert!(runs.len() >= 3, "{runs:?}");
        let mut folders: Vec<String> = runs
            .iter()
            .map(|r| r.path_prefix.clone().unwrap())
            .collect();
        folders.sort();
        // The export times are three hours apart on the simulated clock.
        let minute = |p: &str| {
            let t = p.rsplit("exportTime=").next().unwrap();
            chrono::NaiveDateTime::parse_from_str(t, "%Y%m%d%H%M")
                .unwrap()
                .and_utc()
                .timestamp()
                / 60
        };
        assert_eq!(
            minute(&folders[1]) - minute(&folders[0]),
            180,
            "{folders:?}"
        );
        // The first is the full export, the next ones are empty increments.
        let mut by_time = runs.clone();
        by_time.sort_by_key(|r| r.created_at);
        for r in &by_time {
            let r = finished(&c, &r.id).await;
            assert!(r.succeeded(), "{r:?}");
        }
        let first = finished(&c, &by_time[0].id).await;
        assert!(first.output_records.unwrap() > 0);
        let second = finished(&c, &by_time[1].id).await;
        assert_eq!(second.output_records, Some(0));
        // Disabled: no more runs.
        let count = c.flow_runs(&flow.id).await.unwrap().len();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(c.flow_runs(&flow.id).await.unwrap().len(), count);
    }

    #[tokio::test]
    async fn a_stale_etag_a_disabled_flow_and_a_failed_run_are_told_apart() {
        let (env, _exports) = flow_env(Duration::ZERO).await;
        let c = client(&env);
        let s = spec(
            &env,
            "cai-json",
            FileType::Json,
            ExportMode::DailyFullExport,
        );
        let (flow, _) = c.create_export_flow(&s).await.unwrap();
        let mut daily = s.schedule.clone();
        daily.export_mode = ExportMode::FirstFullThenIncremental;
        daily.time_unit = TimeUnit::Day;
        daily.interval = 1;
        c.set_flow_schedule(&flow, &daily).await.unwrap();
        // The flow changed since `flow` was read: its etag is stale.
        let err = c.set_flow_schedule(&flow, &daily).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("does not match the current version"),
            "{err}"
        );
        let flow = c.export_flow("cai-json").await.unwrap();
        assert_eq!(flow.schedule.as_ref(), Some(&daily));

        c.set_flow_enabled(&flow, false).await.unwrap();
        let flow = c.export_flow(&flow.id).await.unwrap();
        assert!(!flow.is_enabled());
        let err = c
            .run_export_now(&flow, &env.summary.dataset_id, NotReadyRetry::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disabled"), "{err}");
        c.set_flow_enabled(&flow, true).await.unwrap();

        env.sim.script_export(ExportFault::Fail {
            message: "destination unreachable".into(),
        });
        let run = c
            .run_export_now(&flow, &env.summary.dataset_id, NotReadyRetry::default())
            .await
            .unwrap();
        let r = finished(&c, &run).await;
        assert!(r.failed());
        assert_eq!(r.errors, vec!["destination unreachable".to_string()]);

        c.delete_export_flow(&flow).await.unwrap();
        assert!(c.export_flows(None).await.unwrap().is_empty());
        assert!(matches!(
            c.export_flow("cai-json").await,
            Err(IngestError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn the_simulator_checks_specs_and_params_as_aep_does() {
        let (env, _exports) = flow_env(Duration::ZERO).await;
        let c = client(&env);
        let mut s = spec(&env, "bad", FileType::Parquet, ExportMode::DailyFullExport);
        s.schedule.interval = 1;
        let err = c.create_export_flow(&s).await.unwrap_err();
        assert!(err.to_string().contains("DAILY_FULL_EXPORT"), "{err}");
        // SFTP credentials for an S3 target never leave the client.
        let mut s = spec(&env, "bad", FileType::Parquet, ExportMode::DailyFullExport);
        s.auth = DestinationAuth::Dlz;
        assert!(c.create_export_flow(&s).await.is_err());
        // An unknown dataset is AEP's 400, with its problem body.
        let mut s = spec(&env, "bad", FileType::Parquet, ExportMode::DailyFullExport);
        s.dataset_id = "no-such-dataset".into();
        match c.create_export_flow(&s).await.unwrap_err() {
            IngestError::Status {
                status: 400,
                code,
                message,
                ..
            } => {
                assert_eq!(code.as_deref(), Some("FLOW-1010-400"));
                assert!(message.contains("no-such-dataset"), "{message}");
            }
            other => panic!("{other}"),
        }
        // The Data Landing Zone's SAS is never printed.
        let scoreland_ingest::Dlz::Azure(creds) = c.dlz_credentials(false).await.unwrap() else {
            panic!("the simulator's landing zone is Azure's by default")
        };
        assert!(!format!("{creds:?}").contains("sig="));
        let scoreland_ingest::Dlz::Azure(refreshed) = c.dlz_credentials(true).await.unwrap() else {
            panic!("Azure's")
        };
        assert_ne!(creds.sas_token.expose(), refreshed.sas_token.expose());
    }
}

/// Export folders on a local store: listing by pattern, and staging that refuses what cannot
/// be landed whole.
mod export_folders {
    use std::io::Write;
    use std::sync::Arc;

    use object_store::ObjectStore;
    use object_store::local::LocalFileSystem;
    use object_store::path::Path as ObjectPath;
    use scoreland_ingest::{
        DEFAULT_FOLDER_TEMPLATE, FolderPattern, IngestError, list_export_folders,
        stage_export_folder,
    };

    fn store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap())
    }

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn write(dir: &std::path::Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[tokio::test]
    async fn json_records_one_per_line_or_in_an_array_stage_as_one_schema() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("exports");
        let folder = "ds1/exportTime=202612010200";
        write(
            &root,
            &format!("{folder}/part-00000-c000.json.gz"),
            &gz("{\"_id\":\"a\",\"n\":{\"x\":1}}\n{\"_id\":\"b\",\"n\":{\"x\":2}}\n"),
        );
        write(
            &root,
            &format!("{folder}/part-00001-c000.json.gz"),
            &gz("[{\"_id\":\"c\",\"n\":{\"x\":3,\"y\":\"new\"}}]"),
        );
        // Another dataset beside it, and a marker beside the folders: neither is read.
        write(&root, "ds2/exportTime=202612010200/part-0.parquet", b"x");
        write(&root, "ds1/_manifest.json", b"{}");
        let pattern = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds1").unwrap();
        let folders = list_export_folders(&store(&root), &ObjectPath::from(""), &pattern)
            .await
            .unwrap();
        assert_eq!(folders.len(), 1);
        assert_eq!(folders[0].files.len(), 2);
        let staged =
            stage_export_folder(&store(&root), &folders[0], &tmp.path().join("st"), 2, None)
                .await
                .unwrap();
        assert_eq!(staged.rows, 3);
        assert_eq!(staged.files.len(), 2);
        // Both files have the merged schema (n.y appears in the second file only).
        for f in &staged.files {
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(f).unwrap(),
            )
            .unwrap();
            let n = r.schema().field_with_name("n").unwrap().to_string();
            assert!(n.contains("\"y\""), "{n}");
        }
        // A second staging reuses the first.
        let again =
            stage_export_folder(&store(&root), &folders[0], &tmp.path().join("st"), 2, None)
                .await
                .unwrap();
        assert_eq!(again.bytes_downloaded, 0);
    }

    #[tokio::test]
    async fn what_cannot_be_landed_whole_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("exports");
        let pattern = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds1").unwrap();
        // A folder name that does not parse.
        write(&root, "ds1/exportTime=2026-12-01/part-0.parquet", b"x");
        let err = list_export_folders(&store(&root), &ObjectPath::from(""), &pattern)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IngestError::BadExportFolder { folder, .. } if folder == "ds1/exportTime=2026-12-01"),
            "{err}"
        );
        std::fs::remove_dir_all(root.join("ds1")).unwrap();

        // An unknown extension, then a corrupt parquet file.
        write(&root, "ds1/exportTime=202612010200/part-0.csv", b"a,b\n");
        let folders = list_export_folders(&store(&root), &ObjectPath::from(""), &pattern)
            .await
            .unwrap();
        let err = stage_export_folder(&store(&root), &folders[0], &tmp.path().join("st"), 2, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("part-0.csv"), "{err}");
        std::fs::remove_file(root.join("ds1/exportTime=202612010200/part-0.csv")).unwrap();
        write(
            &root,
            "ds1/exportTime=202612010200/part-1.gz.parquet",
            b"PAR1 not really",
        );
        let folders = list_export_folders(&store(&root), &ObjectPath::from(""), &pattern)
            .await
            .unwrap();
        let err = stage_export_folder(&store(&root), &folders[0], &tmp.path().join("st2"), 2, None)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("part-1.gz.parquet")
                && err.to_string().contains("not a readable parquet file"),
            "{err}"
        );
        // A writer's temporary file marks the folder unfinished.
        write(
            &root,
            "ds1/exportTime=202612010300/.part-2.parquet.crc",
            b"x",
        );
        let folders = list_export_folders(&store(&root), &ObjectPath::from(""), &pattern)
            .await
            .unwrap();
        assert_eq!(folders[1].unfinished, [".part-2.parquet.crc"]);
    }
}

/// Segment jobs and schedules against the simulator.
mod segmentation {
    use std::collections::BTreeMap;

    use super::*;
    use scoreland_ingest::ScheduleType;

    async fn seg_env() -> Env {
        let config = SimConfig {
            job_duration: Duration::from_millis(400),
            ..SimConfig::default()
        };
        env_full(50, 1, 1, config, |_, _| {}).await
    }

    async fn until_done(c: &AepClient, id: &str) -> scoreland_ingest::SegmentJob {
        for _ in 0..100 {
            let j = c.segment_job(id).await.unwrap();
            if j.is_done() {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("segment job {id} did not end");
    }

    #[tokio::test]
    async fn segment_jobs_queue_behind_aeps_429_then_succeed_fail_or_cancel() {
        let env = seg_env().await;
        let c = client(&env);
        let a = c.create_segment_job(&["s1".into()]).await.unwrap();
        let b = c.create_segment_job(&["*".into()]).await.unwrap();
        assert_eq!(a.status, "NEW");
        assert_eq!(b.segments, ["*"]);
        // Two run already: the third waits out the 429s until one has ended.
        let started = std::time::Instant::now();
        env.sim
            .fail_next_segment_job("Segment definition s9 is invalid");
        let third = c.create_segment_job(&["s9".into()]).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250), "it waited");
        assert_eq!(until_done(&c, &a.id).await.status, "SUCCEEDED");
        let failed = until_done(&c, &third.id).await;
        assert_eq!(failed.status, "FAILED");
        assert_eq!(failed.errors[0].msg, "Segment definition s9 is invalid");

        let d = c.create_segment_job(&["s2".into()]).await.unwrap();
        c.cancel_segment_job(&d.id).await.unwrap();
        assert_eq!(c.segment_job(&d.id).await.unwrap().status, "CANCELLING");
        assert_eq!(until_done(&c, &d.id).await.status, "CANCELLED");

        let ids = vec![third.id.clone(), a.id.clone()];
        let both = c.segment_jobs_by_id(&ids).await.unwrap();
        assert_eq!(both.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), ids);
        // Newest first, paged one at a time through `_page.next`.
        env.sim.set_page_size(Some(1));
        let listed = c.segment_jobs(None, 10).await.unwrap();
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[0].id, d.id);
        assert!(listed.windows(2).all(|w| w[0].created >= w[1].created));
        assert_eq!(c.segment_jobs(Some("FAILED"), 10).await.unwrap().len(), 1);
        assert!(matches!(
            c.segment_job("nope").await,
            Err(IngestError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn export_jobs_write_batches_and_page_newest_first_by_their_opaque_cursor() {
        let env = seg_env().await;
        scoreland_platform_sim::profiles::generate_profiles(
            &scoreland_platform_sim::profiles::ProfileOptions {
                platform: env.summary.out.clone(),
                profiles: 500,
                segments: 3,
                seed: 9,
            },
        )
        .unwrap();
        let c = client(&env);
        let (dataset, made) = c
            .ensure_dataset("exports", scoreland_ingest::PROFILE_UNION_SCHEMA)
            .await
            .unwrap();
        assert!(made);
        let mut ids = Vec::new();
        for per_segment in [false, true, false] {
            let segs = scoreland_platform_sim::profiles::segment_ids(3, 9);
            let req = scoreland_ingest::ExportJobRequest {
                dataset_id: dataset.clone(),
                segment_per_batch: per_segment,
                segments: segs[..2]
                    .iter()
                    .map(|s| scoreland_ingest::SegmentFilter {
                        segment_id: s.clone(),
                        namespace: None,
                        statuses: Vec::new(),
                    })
                    .collect(),
                ..Default::default()
            };
            let j = c.create_export_job(&req).await.unwrap();
            assert_eq!(j.status, "NEW");
            assert_eq!(j.dataset_id.as_deref(), Some(dataset.as_str()));
            ids.push(j.id);
        }
        let mut done = Vec::new();
        for id in &ids {
            let mut j = c.export_job(*id).await.unwrap();
            for _ in 0..100 {
                if j.is_done() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                j = c.export_job(*id).await.unwrap();
            }
            assert_eq!(j.failure(), None, "{j:?}");
            done.push(j);
        }
        // One batch, or one per segment; each a Catalog batch with the job's profiles.
        assert_eq!(done[0].batches.len(), 1);
        assert_eq!(done[1].batches.len(), 2);
        assert!(done[1].batches.iter().all(|b| b.segment_id.is_some()));
        let batch = c.batch(&done[0].batches[0].batch_id).await.unwrap();
        assert_eq!(batch.records, done[0].profiles);
        // Newest first, one a page, through the `offset` of `link.next`.
        env.sim.set_page_size(Some(1));
        let listed: Vec<i64> = c
            .export_jobs(None, 10)
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(listed, vec![ids[2], ids[1], ids[0]]);
        c.cancel_export_job(ids[0]).await.unwrap();
        assert!(matches!(
            c.export_job(999).await,
            Err(IngestError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_segment_job_counts_the_profile_store() {
        let env = seg_env().await;
        let store = scoreland_platform_sim::profiles::generate_profiles(
            &scoreland_platform_sim::profiles::ProfileOptions {
                platform: env.summary.out.clone(),
                profiles: 3_000,
                segments: 4,
                seed: 9,
            },
        )
        .unwrap();
        let c = client(&env);
        let seg = store.segments[1].clone();
        let job = c
            .create_segment_job(std::slice::from_ref(&seg))
            .await
            .unwrap();
        let job = until_done(&c, &job.id).await;
        assert_eq!(job.status, "SUCCEEDED");
        // Counted here from the store's own records.
        let profiles = scoreland_platform_sim::profiles::read_profiles(&env.summary.out).unwrap();
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        for p in &profiles {
            if let Some(s) = p
                .pointer(&format!("/segmentMembership/ups/{seg}/status"))
                .and_then(|s| s.as_str())
            {
                *by_status.entry(s.to_string()).or_default() += 1;
            }
        }
        assert_eq!(job.profiles, Some(3_000));
        assert_eq!(job.by_status[&seg], by_status);
        assert_eq!(
            job.by_segment[&seg],
            by_status.get("realized").unwrap_or(&0) + by_status.get("existing").unwrap_or(&0)
        );
        assert_eq!(
            job.by_namespace[&seg].values().sum::<u64>(),
            job.by_segment[&seg]
        );
        assert!(job.by_namespace[&seg].contains_key("Email"));
    }

    #[tokio::test]
    async fn the_export_target_dataset_is_found_or_made_by_name() {
        let env = seg_env().await;
        let c = client(&env);
        let schema = scoreland_ingest::PROFILE_UNION_SCHEMA;
        let (id, made) = c
            .ensure_dataset("scoreland profiles", schema)
            .await
            .unwrap();
        assert!(made);
        let (again, made) = c
            .ensure_dataset("scoreland profiles", schema)
            .await
            .unwrap();
        assert_eq!((again.as_str(), made), (id.as_str(), false));
        let err = c
            .ensure_dataset(
                "scoreland profiles",
                "https://ns.adobe.com/acme/schemas/other",
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is on schema"), "{err}");
        // The scores dataset is still there, and the new one is a Catalog dataset like it.
        let (other, made) = c.ensure_dataset("another", schema).await.unwrap();
        assert!(made && other != id);
    }

    #[tokio::test]
    async fn schedules_are_made_switched_rescheduled_and_deleted() {
        let env = seg_env().await;
        let c = client(&env);
        // A cron running more than once a day never leaves the client.
        let err = c
            .create_segment_schedule(
                "hourly",
                ScheduleType::BatchSegmentation,
                &["*".into()],
                "0 0 * * * ?",
                true,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("once a day"), "{err}");
        let s = c
            .create_segment_schedule(
                "nightly",
                ScheduleType::BatchSegmentation,
                &["*".into()],
                "0 0 2 * * ?",
                false,
            )
            .await
            .unwrap();
        assert_eq!(
            (s.state.as_str(), s.kind.as_str()),
            ("inactive", "batch_segmentation")
        );
        c.set_schedule_active(&s.id, true).await.unwrap();
        c.set_schedule_cron(&s.id, "0 30 3 * * ?").await.unwrap();
        let now = c.segment_schedule(&s.id).await.unwrap();
        assert_eq!(now.state, "active");
        assert_eq!(now.schedule.as_deref(), Some("0 30 3 * * ?"));
        assert_eq!(c.segment_schedules().await.unwrap(), vec![now]);
        c.delete_segment_schedule(&s.id).await.unwrap();
        assert!(c.segment_schedules().await.unwrap().is_empty());
        assert!(matches!(
            c.segment_schedule(&s.id).await,
            Err(IngestError::NotFound { .. })
        ));
    }
}
