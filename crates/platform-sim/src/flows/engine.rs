//! Runs and the export engine: the ad-hoc run, each run writing a dataset's rows where its
//! flow points (S3, Azure Blob, SFTP, the Data Landing Zone, a directory) in AEP's layout,
//! and the flows' schedules on an accelerated clock.

use super::*;

/// `POST /data/core/activation/disflowprovider/adhocrun`.
pub(crate) async fn adhoc_run(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !accept.contains(ADHOC_ACCEPT) {
        return bad_request(&format!(
            "the Accept header must be '{ADHOC_ACCEPT}; version=1'"
        ));
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the request body is not JSON");
    };
    let Some(dest) = req.pointer("/activationInfo/destinations/0") else {
        return bad_request("activationInfo.destinations is required");
    };
    let flow_id = dest["flowId"].as_str().unwrap_or("").to_string();
    let dataset_id = dest
        .pointer("/datasets/0/id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let job = {
        let g = st.flows.lock();
        let Some(flow) = g
            .entities
            .get("flows")
            .and_then(|m| m.get(&flow_id))
            .filter(|v| v["sandboxName"] == sandbox.as_str())
        else {
            return not_found(&format!("flow {flow_id}"));
        };
        let created = flow["createdAt"].as_i64().unwrap_or(0);
        if now_ms() - created < st.config.export_ready_after.as_millis() as i64 {
            return bad_request(&format!(
                "Following order ID(s) are not ready for dataset export: [{flow_id}]"
            ));
        }
        if flow["state"] != "enabled" {
            return bad_request(&format!("flow {flow_id} is disabled; enable it first"));
        }
        match export_job(&g, flow, &dataset_id, &st.config) {
            Ok(job) => job,
            Err(why) => return bad_request(&why),
        }
    };
    let run_id = start_run(&st, &sandbox, job, None);
    let status_url = format!("{}/data/foundation/flowservice/runs/{run_id}", st.base_url);
    axum::Json(json!({"destinations": [{"flowId": flow_id, "datasets": [
        {"id": dataset_id, "statusURL": status_url}
    ]}]}))
    .into_response()
}

/// What one export run writes, resolved while the store is locked.
pub(super) struct ExportJob {
    flow_id: String,
    flow_spec: String,
    dataset_id: String,
    /// `{root}/{destination}/{bucket}/{path}`.
    folder_root: PathBuf,
    parquet: bool,
    gzip: bool,
    incremental_mode: bool,
    template: Option<String>,
    /// Written under this directory instead of the export root (SFTP destinations, when
    /// `export_sftp_root` names the directory an sshd serves).
    local_root: Option<PathBuf>,
    /// Where a destination that is a real server here (S3 at `export_s3_endpoint`, Azure Blob
    /// at its connection string's `BlobEndpoint`) is written, under `folder_root`'s path.
    remote: Option<Remote>,
    /// Files are OpenPGP-encrypted to this (armored) public key, named `….gpg`.
    encrypt_to: Option<String>,
}

#[derive(Clone)]
pub(super) struct Remote {
    store: Arc<dyn ObjectStore>,
    /// The target's path in the bucket or container.
    prefix: String,
}

/// The store a target is written to, when it is a real server here: AEP writes with the base
/// connection's credentials, and so does the simulator.
pub(super) fn remote_target(
    spec: &Spec,
    params: &Value,
    auth: Option<&Value>,
    config: &crate::SimConfig,
) -> Result<Option<Remote>, String> {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let prefix = s(params, "path");
    let s3_endpoint = config.export_s3_endpoint.as_deref();
    match (spec.dir, auth) {
        ("dlz", _) => match (&config.export_dlz_aws, &config.export_dlz) {
            (Some(aws), _) => Ok(Some(Remote {
                store: aws.store()?,
                prefix: format!("{}/{prefix}", aws.folder.trim_matches('/')),
            })),
            (None, Some(dlz)) => Ok(Some(Remote {
                store: dlz.store()?,
                prefix,
            })),
            (None, None) => Ok(None),
        },
        ("s3", Some(auth)) => {
            let Some(endpoint) = s3_endpoint else {
                return Ok(None);
            };
            let store = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(s(params, "bucketName"))
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id(s(auth, "s3AccessKey"))
                .with_secret_access_key(s(auth, "s3SecretKey"))
                .build()
                .map_err(|e| format!("the S3 destination: {e}"))?;
            Ok(Some(Remote {
                store: Arc::new(store),
                prefix,
            }))
        }
        ("azure_blob", Some(auth)) => {
            let conn = s(auth, "connectionString");
            let part = |k: &str| {
                conn.split(';')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.to_string())
            };
            let Some(endpoint) = part("BlobEndpoint") else {
                return Ok(None);
            };
            let (Some(account), Some(key)) = (part("AccountName"), part("AccountKey")) else {
                return Err("the connection string has no AccountName or AccountKey".into());
            };
            let store = object_store::azure::MicrosoftAzureBuilder::new()
                .with_account(account)
                .with_access_key(key)
                .with_container_name(s(params, "container"))
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .build()
                .map_err(|e| format!("the Azure Blob destination: {e}"))?;
            Ok(Some(Remote {
                store: Arc::new(store),
                prefix,
            }))
        }
        _ => Ok(None),
    }
}

pub(super) fn export_job(
    g: &FlowState,
    flow: &Value,
    dataset_id: &str,
    config: &crate::SimConfig,
) -> Result<ExportJob, String> {
    let flow_id = flow["id"].as_str().unwrap_or("").to_string();
    let sources_have = flow["sourceConnectionIds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| g.entities.get("sourceConnections")?.get(id.as_str()?))
        .flat_map(|s| {
            s.pointer("/params/datasets")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .any(|d| d["dataSetId"].as_str() == Some(dataset_id));
    if !sources_have {
        return Err(format!(
            "dataset {dataset_id} is not part of flow {flow_id}"
        ));
    }
    let target = flow["targetConnectionIds"][0]
        .as_str()
        .and_then(|id| g.entities.get("targetConnections")?.get(id))
        .ok_or("the flow's target connection is gone")?;
    let spec = target
        .pointer("/connectionSpec/id")
        .and_then(Value::as_str)
        .and_then(spec_by_connection)
        .ok_or("the target's connection spec is unknown")?;
    let p = &target["params"];
    let auth = target["baseConnectionId"]
        .as_str()
        .and_then(|id| g.secrets.get(id));
    let remote = remote_target(spec, p, auth, config)?;
    let local_root = (spec.dir == "sftp")
        .then(|| config.export_sftp_root.clone())
        .flatten();
    let mut folder = match local_root {
        Some(_) => PathBuf::new(),
        None => PathBuf::from(spec.dir),
    };
    for k in spec.target {
        folder.push(safe_relative(p[*k].as_str().unwrap_or(""))?);
    }
    Ok(ExportJob {
        flow_id,
        flow_spec: flow
            .pointer("/flowSpec/id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
        dataset_id: dataset_id.to_string(),
        encrypt_to: config.export_pgp_public_key.clone(),
        folder_root: folder,
        parquet: p["datasetFileType"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("parquet")),
        gzip: p["compression"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("gzip")),
        incremental_mode: flow
            .pointer("/scheduleParams/exportMode")
            .and_then(Value::as_str)
            == Some("FIRST_FULL_THEN_INCREMENTAL"),
        template: flow
            .pointer("/scheduleParams/foldernameTemplate")
            .and_then(Value::as_str)
            .map(str::to_string),
        remote,
        local_root,
    })
}

/// A bucket or path as a relative directory, refusing `..`.
pub(super) fn safe_relative(p: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for part in p.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if part == ".." {
            return Err(format!("'{p}' leaves the destination"));
        }
        out.push(part);
    }
    Ok(out)
}

/// Starts an export run; `at_ms` is its export time (a scheduled run on the simulated clock),
/// else now.
pub(super) fn start_run(
    st: &Arc<AppState>,
    sandbox: &str,
    job: ExportJob,
    at_ms: Option<i64>,
) -> String {
    let now = now_ms();
    let (run_id, fault, minute, batches) = {
        let mut g = st.flows.lock();
        g.counter += 1;
        let run_id = format!("{:08x}-run0-4000-8000-{:012x}", g.counter, now);
        // Export folders are per minute; runs in the same minute take the next one.
        let mut minute = at_ms.unwrap_or(now) / 60_000;
        if let Some(last) = g.last_export_minute.get(&job.flow_id)
            && minute <= *last
        {
            minute = last + 1;
        }
        g.last_export_minute.insert(job.flow_id.clone(), minute);
        let done = g.exported.get(&job.flow_id).cloned().unwrap_or_default();
        // The dataset as it stands: successful batches (less the newest `hold_back`, which
        // "arrive" later), without those a later batch replaced (replay).
        let hold_back = g.hold_back;
        let batches: Vec<(String, Vec<PathBuf>)> = st
            .platform
            .sandboxes
            .get(sandbox)
            .map(|sb| {
                let mut visible: Vec<&crate::data::Batch> = sb
                    .batches
                    .values()
                    .filter(|b| b.dataset_id == job.dataset_id && b.status() == "success")
                    .collect();
                visible.sort_by_key(|b| (b.created(), b.id.clone()));
                visible.truncate(visible.len().saturating_sub(hold_back));
                let replaced: HashSet<&str> = visible.iter().flat_map(|b| b.replaces()).collect();
                visible
                    .into_iter()
                    .filter(|b| !replaced.contains(b.id.as_str()))
                    .filter(|b| !(job.incremental_mode && done.contains(&b.id)))
                    .map(|b| (b.id.clone(), b.part_paths()))
                    .collect()
            })
            .unwrap_or_default();
        let run = json!({
            "id": run_id,
            "flowId": job.flow_id,
            "flowSpec": {"id": job.flow_spec, "version": "1.0"},
            "createdAt": now,
            "updatedAt": now,
            "sandboxName": sandbox,
            "providerRefId": format!("{minute}"),
            "metrics": {
                "durationSummary": {"startedAtUTC": now},
                "statusSummary": {"status": "inProgress"},
            },
        });
        g.runs.insert(run_id.clone(), run);
        let fault = g.faults.pop_front();
        (run_id, fault, minute, batches)
    };
    let st2 = st.clone();
    let id = run_id.clone();
    let root = st.config.export_root.clone();
    let manifest = st.config.export_manifests;
    tokio::spawn(async move {
        let outcome = tokio::task::spawn_blocking({
            let fault = fault.clone();
            let batches = batches.clone();
            let run_id = id.clone();
            move || {
                let manifest = manifest.then_some(run_id.as_str());
                write_export(&root, &job, minute, &batches, fault.as_ref(), manifest)
                    .map(|m| (m, job))
            }
        })
        .await;
        let mut g = st2.flows.lock();
        let finished = now_ms();
        let Some(run) = g.runs.get_mut(&id) else {
            return;
        };
        run["updatedAt"] = json!(finished);
        run["metrics"]["durationSummary"]["completedAtUTC"] = json!(finished);
        match outcome {
            Ok(Ok((m, job))) => {
                let failed = match &fault {
                    Some(ExportFault::Fail { message }) => Some(message.clone()),
                    _ => None,
                };
                let mut m = m;
                if fault == Some(ExportFault::MixedCounts) {
                    m.files += 1;
                    m.bytes += 4096;
                    m.records += 50;
                }
                run["metrics"]["sizeSummary"] =
                    json!({"inputBytes": m.bytes, "outputBytes": m.bytes});
                run["metrics"]["recordSummary"] = json!({
                    "inputRecordCount": m.records, "outputRecordCount": m.records,
                    "failedRecordCount": 0, "skippedRecordCount": 0,
                });
                run["metrics"]["fileSummary"] = json!({
                    "inputFileCount": m.files, "outputFileCount": m.files,
                    "activityRefs": [],
                    "extensions": {"manifest": {"pathPrefix": m.folder}},
                });
                match failed {
                    Some(message) => {
                        run["metrics"]["statusSummary"] = json!({"status": "Failed", "errors": [
                            {"code": "EXPORT-500", "message": message}
                        ]});
                    }
                    None => {
                        run["metrics"]["statusSummary"] = json!({"status": "success"});
                        let done = g.exported.entry(job.flow_id.clone()).or_default();
                        done.extend(batches.into_iter().map(|(b, _)| b));
                    }
                }
            }
            Ok(Err(e)) => {
                run["metrics"]["statusSummary"] =
                    json!({"status": "Failed", "errors": [{"code": "EXPORT-500", "message": e}]});
            }
            Err(e) => {
                run["metrics"]["statusSummary"] = json!({"status": "Failed", "errors": [
                    {"code": "EXPORT-500", "message": e.to_string()}
                ]});
            }
        }
    });
    run_id
}

pub(super) struct Written {
    files: u64,
    bytes: u64,
    records: u64,
    folder: String,
}

/// Writes one export folder: one file per dataset part, named like Spark's part files.
pub(super) fn write_export(
    root: &Path,
    job: &ExportJob,
    minute: i64,
    batches: &[(String, Vec<PathBuf>)],
    fault: Option<&ExportFault>,
    manifest_of_run: Option<&str>,
) -> Result<Written, String> {
    // A folder of an earlier simulator (same export root) is never written into: the next
    // free minute is taken.
    let mut minute = minute;
    let (folder_name, rel, dir) = loop {
        let time = chrono::DateTime::from_timestamp(minute * 60, 0).unwrap_or_default();
        let folder_name = match &job.template {
            Some(t) => t
                .replace("%DATASET_ID%", &job.dataset_id)
                .replace("%EXPORT_TIME%", &time.format("%Y%m%d%H%M").to_string())
                .replace(
                    "%DATETIME(YYYYMMdd_HHmmss)%",
                    &time.format("%Y%m%d_%H%M%S").to_string(),
                ),
            None => format!(
                "{}/exportTime={}",
                job.dataset_id,
                time.format("%Y%m%d%H%M")
            ),
        };
        let rel = job.folder_root.join(safe_relative(&folder_name)?);
        // A remote destination's files pass through a local directory on their way.
        let dir = match (&job.remote, &job.local_root) {
            (Some(_), _) => root.join(".outgoing").join(&rel),
            (None, Some(local)) => local.join(&rel),
            (None, None) => root.join(&rel),
        };
        if !dir.exists() {
            break (folder_name, rel, dir);
        }
        minute += 1;
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ext = match (job.parquet, job.gzip) {
        (true, false) => ".parquet",
        (true, true) => ".gz.parquet",
        (false, _) => ".json.gz",
    };
    let parts: Vec<&PathBuf> = batches.iter().flat_map(|(_, p)| p).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64 ^ minute as u64,
    );
    let tid: u64 = rng.random_range(1_000_000_000..9_999_999_999);
    let uuid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u64>() & 0xffff_ffff_ffff
    );
    let remote_dir = job.remote.as_ref().map(|r| {
        format!(
            "{}/{}",
            r.prefix.trim_matches('/'),
            folder_name.trim_matches('/')
        )
    });
    let mut out = Written {
        files: 0,
        bytes: 0,
        records: 0,
        folder: remote_dir
            .clone()
            .unwrap_or_else(|| rel.to_string_lossy().into_owned()),
    };
    // A small object beside the data files: a marker or the manifest.
    let put_beside = |name: &str, body: Vec<u8>| -> Result<(), String> {
        match (&job.remote, &remote_dir) {
            (Some(remote), Some(remote_dir)) => {
                let location = object_store::path::Path::from(format!("{remote_dir}/{name}"));
                tokio::runtime::Handle::current()
                    .block_on(remote.store.put(&location, body.into()))
                    .map(|_| ())
                    .map_err(|e| format!("writing {location}: {e}"))
            }
            _ => std::fs::write(dir.join(name), body).map_err(|e| format!("writing {name}: {e}")),
        }
    };
    if fault == Some(&ExportFault::UncommittedSparkJob) {
        put_beside(&format!("_started_{tid}"), Vec::new())?;
    }
    let mut listed = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if let Some(ExportFault::Slow { millis }) = fault {
            std::thread::sleep(Duration::from_millis(*millis));
        }
        let mut name = format!("part-{i:05}-tid-{tid}-{uuid}-{}-1-c000{ext}", 2000 + i);
        let mut path = dir.join(&name);
        let (mut bytes, records) = write_file(part, &path, job.parquet, job.gzip)?;
        if let Some(key) = &job.encrypt_to {
            name.push_str(".gpg");
            let encrypted = dir.join(&name);
            bytes = encrypt_file(&path, &encrypted, key)?;
            std::fs::remove_file(&path).map_err(|e| e.to_string())?;
            path = encrypted;
        }
        listed.push(json!({"sinkPath": format!("/{}", out.folder.trim_matches('/')), "name": name, "size": bytes}));
        out.files += 1;
        out.bytes += bytes;
        out.records += records;
        let missing = fault == Some(&ExportFault::MissingFile) && i == 0;
        if let (Some(remote), Some(remote_dir)) = (&job.remote, &remote_dir) {
            if !missing {
                let body = std::fs::read(&path).map_err(|e| e.to_string())?;
                let location = object_store::path::Path::from(format!("{remote_dir}/{name}"));
                tokio::runtime::Handle::current()
                    .block_on(remote.store.put(&location, body.into()))
                    .map_err(|e| format!("writing {location}: {e}"))?;
            }
            std::fs::remove_file(&path).map_err(|e| e.to_string())?;
        } else if missing {
            std::fs::remove_file(&path).map_err(|e| e.to_string())?;
        }
    }
    // AEP's manifest, after the files: every file the run wrote (a file lost on the way is
    // listed all the same).
    if let Some(run_id) = manifest_of_run {
        let body = serde_json::to_vec_pretty(&json!({
            "flowRunId": run_id,
            "scheduledTime": chrono::DateTime::from_timestamp(minute * 60, 0).unwrap_or_default().to_rfc3339(),
            "exportResults": listed,
        }))
        .map_err(|e| e.to_string())?;
        put_beside(&format!("manifest-{}-{run_id}.json", job.flow_id), body)?;
    }
    if job.remote.is_some() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(out)
}

/// `src` encrypted to the armored public key `key` (its first encryption subkey, or the key
/// itself) as `dst`, streaming; returns the encrypted size.
pub(super) fn encrypt_file(src: &Path, dst: &Path, key: &str) -> Result<u64, String> {
    use pgp::composed::{Deserializable, MessageBuilder, SignedPublicKey};
    use pgp::crypto::sym::SymmetricKeyAlgorithm;
    let (public, _) = SignedPublicKey::from_armor_single(key.as_bytes())
        .map_err(|e| format!("the export's PGP public key: {e}"))?;
    let input = File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut rng = rand08::thread_rng();
    let mut builder = MessageBuilder::from_reader("", std::io::BufReader::new(input))
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    match public.public_subkeys.first() {
        Some(sub) => builder.encrypt_to_key(&mut rng, sub),
        None => builder.encrypt_to_key(&mut rng, &public),
    }
    .map_err(|e| format!("encrypting {}: {e}", src.display()))?;
    let out = BufWriter::new(File::create(dst).map_err(|e| format!("{}: {e}", dst.display()))?);
    builder
        .to_writer(&mut rng, out)
        .map_err(|e| format!("encrypting {}: {e}", src.display()))?;
    Ok(std::fs::metadata(dst).map_err(|e| e.to_string())?.len())
}

/// Rewrites one dataset part as an export file; returns its size and rows. Written under a
/// dot name first, as Spark's committers do, so a listed file is a whole file.
pub(super) fn write_file(
    src: &Path,
    dst: &Path,
    parquet: bool,
    gzip: bool,
) -> Result<(u64, u64), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", src.display());
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(src).map_err(|e| err(&e))?)
        .map_err(|e| err(&e))?
        .build()
        .map_err(|e| err(&e))?;
    let tmp = dst.with_file_name(format!(
        ".{}.inprogress",
        dst.file_name().and_then(|n| n.to_str()).unwrap_or("part")
    ));
    let file = BufWriter::new(File::create(&tmp).map_err(|e| err(&e))?);
    let mut rows = 0u64;
    if parquet {
        let props = WriterProperties::builder()
            .set_compression(if gzip {
                Compression::GZIP(GzipLevel::default())
            } else {
                Compression::SNAPPY
            })
            .build();
        let mut writer: Option<ArrowWriter<BufWriter<File>>> = None;
        let mut file = Some(file);
        for batch in reader {
            let batch = batch.map_err(|e| err(&e))?;
            if writer.is_none() {
                writer = Some(
                    ArrowWriter::try_new(
                        file.take().expect("once"),
                        batch.schema(),
                        Some(props.clone()),
                    )
                    .map_err(|e| err(&e))?,
                );
            }
            rows += batch.num_rows() as u64;
            writer
                .as_mut()
                .expect("set")
                .write(&batch)
                .map_err(|e| err(&e))?;
        }
        if let Some(w) = writer {
            w.close().map_err(|e| err(&e))?;
        }
    } else {
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut writer = arrow::json::LineDelimitedWriter::new(gz);
        for batch in reader {
            let batch = utc_offsets(&batch.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            rows += batch.num_rows() as u64;
            writer.write(&batch).map_err(|e| err(&e))?;
        }
        writer.finish().map_err(|e| err(&e))?;
        let mut gz = writer.into_inner();
        gz.flush().map_err(|e| err(&e))?;
        gz.finish()
            .map_err(|e| err(&e))?
            .flush()
            .map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, dst).map_err(|e| err(&e))?;
    let size = std::fs::metadata(dst).map_err(|e| err(&e))?.len();
    Ok((size, rows))
}

/// Timestamps with a named zone ("UTC") as the same instants at offset "+00:00", which arrow's
/// JSON writer can print without a time zone database: `…T10:03:08+00:00`, as Spark writes them.
pub(super) fn utc_offsets(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    fn fix(t: &DataType) -> DataType {
        match t {
            DataType::Timestamp(unit, Some(_)) => DataType::Timestamp(*unit, Some("+00:00".into())),
            DataType::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|f| Arc::new(f.as_ref().clone().with_data_type(fix(f.data_type()))))
                    .collect(),
            ),
            DataType::List(f) => DataType::List(Arc::new(
                f.as_ref().clone().with_data_type(fix(f.data_type())),
            )),
            other => other.clone(),
        }
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let t = fix(f.data_type());
        columns.push(if &t == f.data_type() {
            c.clone()
        } else {
            arrow::compute::cast(c, &t)?
        });
        fields.push(f.as_ref().clone().with_data_type(t));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// Runs enabled flows on their schedules, on a clock `speed` times faster than the wall clock
/// that starts now: with 3600, an hour of schedule passes every second.
pub(crate) async fn schedule(st: Arc<AppState>, speed: f64) {
    let started = std::time::Instant::now();
    let origin = now_ms();
    let mut due: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sim_now = origin + (started.elapsed().as_secs_f64() * 1000.0 * speed) as i64;
        let mut jobs = Vec::new();
        {
            let g = st.flows.lock();
            for flow in g.entities.get("flows").into_iter().flat_map(|m| m.values()) {
                let id = flow["id"].as_str().unwrap_or("").to_string();
                let p = &flow["scheduleParams"];
                if flow["state"] != "enabled" || p.is_null() {
                    continue;
                }
                let start = (p["startTime"].as_i64().unwrap_or(0) * 1000)
                    .max(flow["createdAt"].as_i64().unwrap_or(0));
                let every = p["interval"].as_i64().unwrap_or(0)
                    * match p["timeUnit"].as_str() {
                        Some("hour") => 3_600_000,
                        _ => 86_400_000,
                    };
                let next = *due.entry(id.clone()).or_insert(start);
                let ended = p["endTime"].as_i64().is_some_and(|e| next > e * 1000);
                if next > sim_now || next == i64::MAX || ended {
                    continue;
                }
                due.insert(id, if every > 0 { next + every } else { i64::MAX });
                let sandbox = flow["sandboxName"].as_str().unwrap_or("").to_string();
                let datasets: Vec<String> = flow["sourceConnectionIds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|sid| g.entities.get("sourceConnections")?.get(sid.as_str()?))
                    .flat_map(|sc| {
                        sc.pointer("/params/datasets")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|d| d["dataSetId"].as_str().map(str::to_string))
                    .collect();
                for ds in datasets {
                    match export_job(&g, flow, &ds, &st.config) {
                        Ok(job) => jobs.push((sandbox.clone(), job, next)),
                        Err(e) => {
                            tracing::warn!(flow = %flow["id"], error = %e, "scheduled export not started")
                        }
                    }
                }
            }
        }
        for (sandbox, job, at) in jobs {
            start_run(&st, &sandbox, job, Some(at));
        }
    }
}
