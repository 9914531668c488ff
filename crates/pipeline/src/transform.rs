//! The run's transform: what the source staged becomes the night's tables ([`Prepared`]),
//! written under the run's work directory, with the state the publish keeps after them.

use std::path::Path;
use std::time::Instant;

use crate::config::PipelineFile;
use crate::context::RunContext;
use crate::error::PipelineError;
use crate::publish::{Prepared, PreparedTable};
use crate::record::{DriftRecord, PipelineState, RunRecord, by_score_date, ms};
use crate::source::{DatasetSchema, Ingested, Input};

/// Transforms what the source staged into the tables to publish.
pub(crate) async fn transform(
    file: &PipelineFile,
    cx: &RunContext<'_>,
    record: &mut RunRecord,
    ingested: Ingested,
) -> Result<Prepared, PipelineError> {
    let t = Instant::now();
    let (tables, extracts, histograms, replace_dataset) = match ingested.input {
        Input::Scores {
            staged,
            merge_with,
            replace_dataset,
        } => {
            let (tables, extracts, histograms) =
                scores(file, cx, record, &staged, merge_with).await?;
            (tables, extracts, histograms, replace_dataset)
        }
        Input::Profiles(input) => {
            let tables = profiles(record, *input).await?;
            (tables, Vec::new(), cx.state.histograms.clone(), false)
        }
        Input::Dataset { staged, schema } => {
            let landing = file.transform.dataset.as_ref().ok_or_else(|| {
                cx.invalid("the source staged a dataset but [transform.dataset] is not set".into())
            })?;
            let mut tables = match &schema.identity {
                None => events(file, landing, cx, record, staged, &schema).await?,
                Some(identity) => {
                    records(file, landing, cx, record, staged, &schema, identity).await?
                }
            };
            let labels = &schema.labels;
            // The dataset's labels, and those `serve` masks, go with the dataset's tables (not
            // with `checks`, which every pipeline shares).
            let deny = file
                .serve
                .as_ref()
                .map(|s| &s.deny_labels[..])
                .unwrap_or(&[]);
            let deny: std::collections::BTreeSet<String> = deny.iter().cloned().collect();
            for t in tables.iter_mut().filter(|t| t.name != "checks") {
                use scoreland_transform::labels::{DENY_LABELS, TABLE_LABELS, join_labels};
                t.properties = [
                    (TABLE_LABELS.to_string(), join_labels(&labels.dataset)),
                    (DENY_LABELS.to_string(), join_labels(&deny)),
                ]
                .into();
            }
            (tables, Vec::new(), cx.state.histograms.clone(), false)
        }
    };
    record.timings.transform_ms = ms(t.elapsed());
    Ok(Prepared {
        tables,
        extracts,
        state: PipelineState {
            last_run_id: Some(record.run_id.clone()),
            landed_batches: ingested.landed,
            last_batch_created: ingested.last_created,
            runs_landed: cx.state.runs_landed + 1,
            histograms,
            last_rows: Some(record.rows_out),
            pending_export_job: None,
            seen_folders: ingested.seen_folders,
        },
        replace_dataset,
    })
}

type Extracts = Vec<(std::path::PathBuf, String)>;

/// Customer AI scores: `scores`, `summary` and `drift`, and their extracts.
async fn scores(
    file: &PipelineFile,
    cx: &RunContext<'_>,
    record: &mut RunRecord,
    staged: &[scoreland_transform::StagedBatch],
    merge_with: Vec<std::path::PathBuf>,
) -> Result<
    (
        Vec<PreparedTable>,
        Extracts,
        Vec<scoreland_transform::ModelHistogram>,
    ),
    PipelineError,
> {
    let format = file.sink.output_format().map_err(|m| cx.invalid(m))?;
    let mut transformer = file
        .transform
        .build(&cx.work.join("spill"))
        .map_err(PipelineError::Transform)?
        .with_run_id(&record.run_id)
        .with_landed(merge_with);
    if let Some(cluster) = &cx.options.cluster {
        transformer = transformer.with_cluster(cluster.clone());
    }
    let output = transformer
        .run(staged, &format, &cx.state.histograms, cx.work)
        .await
        .map_err(PipelineError::Transform)?;
    record.rows_in = output.stats.rows_in;
    record.rows_out = output.stats.rows_out;
    record.duplicates_dropped = output.stats.duplicates_dropped;
    record.null_identity_dropped = output.stats.null_identity_dropped;
    record.drift = output
        .histograms
        .iter()
        .map(|h| DriftRecord {
            model: h.model.clone(),
            psi: cx
                .state
                .histograms
                .iter()
                .find(|p| p.model == h.model)
                .and_then(|p| scoreland_transform::psi(&h.buckets, &p.buckets)),
        })
        .collect();
    let checks_dir = match &file.checks {
        Some(checks) => {
            let night = scoreland_transform::Night {
                day: run_day(record),
                rows: output.stats.rows_out,
                previous_rows: cx.state.last_rows,
            };
            let results = transformer
                .evaluate_checks(checks, &night, &output)
                .await
                .map_err(PipelineError::Transform)?;
            Some(gate(results, cx, record, &transformer, &format).await?)
        }
        None => None,
    };
    let dirs: [(&str, &Path); 3] = [
        ("scores", &output.scores_dir),
        ("summary", &output.summary_dir),
        ("drift", &output.drift_dir),
    ];
    let mut extracts = Vec::new();
    for format in &file.sink.extract_formats().map_err(|m| cx.invalid(m))? {
        for (table, dir) in dirs {
            if !dir.exists() {
                continue;
            }
            let ext = format.extension();
            let local = cx.work.join("extracts").join(format!("{table}.{ext}"));
            transformer
                .write_extract(dir, format, &local)
                .await
                .map_err(PipelineError::Transform)?;
            extracts.push((local, format!("_extracts/{table}/{}.{ext}", record.dataset)));
        }
    }
    let tables = dirs
        .into_iter()
        .chain(checks_dir.as_deref().map(|dir| ("checks", dir)))
        .map(|(name, dir)| PreparedTable {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            date_column: by_score_date(name).then(|| "score_date".to_string()),
            append: false,
            evolve_schema: false,
            replace_dataset: false,
            properties: Default::default(),
        })
        .collect();
    Ok((tables, extracts, output.histograms))
}

/// The run's day (UTC), which the checks count from.
fn run_day(record: &RunRecord) -> chrono::NaiveDate {
    chrono::DateTime::parse_from_rfc3339(&record.started_at)
        .map(|t| t.with_timezone(&chrono::Utc).date_naive())
        .unwrap_or_else(|_| chrono::Utc::now().date_naive())
}

/// The quality gate over the night's check `results`: every result goes into the run record;
/// a failed `error` check that the operator did not skip (`--skip-checks`) stops the run before
/// anything is published. Otherwise the results are written as the night's `checks` table
/// (its directory is returned), and a failed `warn` check is a warning of the run.
async fn gate(
    mut results: Vec<scoreland_transform::CheckResult>,
    cx: &RunContext<'_>,
    record: &mut RunRecord,
    transformer: &scoreland_transform::Transformer,
    format: &scoreland_transform::OutputFormat,
) -> Result<std::path::PathBuf, PipelineError> {
    use scoreland_transform::CheckStatus;
    for r in &mut results {
        // A check (`drift`), a part of one (`score_range.churn_risk`) or one result.
        let skipped = cx
            .options
            .skip_checks
            .iter()
            .any(|s| r.check == *s || r.check.starts_with(&format!("{s}.")));
        if r.status == CheckStatus::Fail && skipped {
            r.status = CheckStatus::Overridden;
            record.skipped_checks.push(r.check.clone());
            record.warn(format!(
                "check {} failed and was landed anyway (--skip-checks)",
                r.describe()
            ));
        } else if r.status == CheckStatus::Warn {
            record.warn(format!("check {} failed (level warn)", r.describe()));
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.status == CheckStatus::Fail)
        .map(|r| r.describe())
        .collect();
    record.checks = results;
    if !failed.is_empty() {
        return Err(PipelineError::ChecksFailed { failed });
    }
    let dir = cx.work.join("checks");
    transformer
        .write_checks(
            &record.checks,
            &record.pipeline,
            run_day(record),
            &dir,
            format,
        )
        .await
        .map_err(PipelineError::Transform)?;
    Ok(dir)
}

/// A dataset's night through the gate, when the pipeline has `[checks]`: its rows under `dir`
/// (`schema`'s columns), dated by `date_column` (events), unique on `key`; the `checks` table
/// to publish with it.
async fn dataset_gate(
    file: &PipelineFile,
    cx: &RunContext<'_>,
    record: &mut RunRecord,
    dir: &Path,
    schema: scoreland_transform::arrow::datatypes::SchemaRef,
    date_column: Option<&str>,
    key: &str,
) -> Result<Option<PreparedTable>, PipelineError> {
    let Some(checks) = &file.checks else {
        return Ok(None);
    };
    let format = file.sink.output_format().map_err(|m| cx.invalid(m))?;
    checks
        .validate_for_dataset(date_column.is_some())
        .map_err(|e| cx.invalid(format!("dataset {}: {e}", record.dataset)))?;
    let transformer = file
        .transform
        .build(&cx.work.join("spill"))
        .map_err(PipelineError::Transform)?
        .with_run_id(&record.run_id);
    let night = scoreland_transform::Night {
        day: run_day(record),
        rows: record.rows_out,
        previous_rows: cx.state.last_rows,
    };
    let results = transformer
        .evaluate_dataset_checks(checks, &night, dir, schema, date_column, &[key])
        .await
        .map_err(PipelineError::Transform)?;
    let dir = gate(results, cx, record, &transformer, &format).await?;
    Ok(Some(PreparedTable {
        name: "checks".to_string(),
        dir,
        date_column: None,
        append: false,
        evolve_schema: false,
        replace_dataset: false,
        properties: Default::default(),
    }))
}

/// An ExperienceEvent dataset, landed from its schema as `landing.table`: the night's new
/// events (none whose `_id` the table already holds on their date), added to their
/// `event_date` partitions; a field the schema gained becomes a new column. Each exploded list
/// column's items go to a child table the same way.
async fn events(
    file: &PipelineFile,
    landing: &scoreland_transform::DatasetLanding,
    cx: &RunContext<'_>,
    record: &mut RunRecord,
    staged: Vec<scoreland_transform::StagedBatch>,
    schema: &DatasetSchema,
) -> Result<Vec<PreparedTable>, PipelineError> {
    use scoreland_transform::{EVENT_DATE, EventDataset};
    let dataset = EventDataset::new(&schema.schema, landing)
        .map_err(|e| not_landable(cx, record, e))?
        .with_labels(&schema.labels.fields);
    let workers = workers(file);
    let table_schema = dataset.schema().clone();
    let scan = {
        let dataset = dataset.clone();
        blocking("reading the events' keys", move || {
            dataset.scan(&staged, workers)
        })
        .await?
    };
    // The `_id`s already landed on the night's dates: an event sent again is not landed twice.
    // One read of the table's log for all of them.
    let dates: Vec<&str> = scan.dates.iter().map(String::as_str).collect();
    let landed = cx
        .warehouse
        .fetch_dataset_files(
            &landing.table,
            &record.dataset,
            Some((EVENT_DATE, &dates)),
            &cx.work.join("landed"),
        )
        .await
        .map_err(PipelineError::Sink)?;
    let dir = cx.work.join(&landing.table);
    let children: Vec<String> = dataset
        .child_tables()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let summary = dataset.summary_table().map(str::to_string);
    let stats = {
        let (dir, run_id) = (dir.clone(), record.run_id.clone());
        blocking("writing the events", move || {
            dataset.write(scan, &landed, &run_id, &dir, workers)
        })
        .await?
    };
    record.rows_in = stats.rows_in;
    record.rows_out = stats.rows_out;
    record.duplicates_dropped = stats.duplicates_dropped;
    if stats.without_timestamp > 0 {
        record.warn(format!(
            "{} rows have no timestamp (XDM requires one) and were not landed",
            stats.without_timestamp
        ));
    }
    tracing::info!(
        table = %landing.table,
        rows = stats.rows_out,
        duplicates = stats.duplicates_dropped,
        dates = ?stats.dates,
        columns = stats.columns,
        summary_rows = stats.summary_rows,
        "events written"
    );
    let checks = dataset_gate(
        file,
        cx,
        record,
        &dir,
        table_schema,
        Some(EVENT_DATE),
        "_id",
    )
    .await?;
    let appended = std::iter::once(landing.table.clone())
        .chain(children)
        .map(|name| (name, true));
    // The summary's dates are recomputed whole, so they replace the table's rows of them.
    Ok(appended
        .chain(summary.map(|name| (name, false)))
        .map(|(name, append)| PreparedTable {
            dir: cx.work.join(&name),
            name,
            date_column: Some(EVENT_DATE.to_string()),
            append,
            evolve_schema: true,
            replace_dataset: false,
            properties: Default::default(),
        })
        .chain(checks)
        .collect())
}

/// A record dataset, landed from its schema as `landing.table`: one row per primary identity,
/// the newest of the landed rows and the night's; the dataset's rows are replaced whole.
async fn records(
    file: &PipelineFile,
    landing: &scoreland_transform::DatasetLanding,
    cx: &RunContext<'_>,
    record: &mut RunRecord,
    staged: Vec<scoreland_transform::StagedBatch>,
    schema: &DatasetSchema,
    identity: &str,
) -> Result<Vec<PreparedTable>, PipelineError> {
    let dataset = scoreland_transform::RecordDataset::new(&schema.schema, landing, identity)
        .map_err(|e| not_landable(cx, record, e))?
        .with_labels(&schema.labels.fields);
    let landed = cx
        .warehouse
        .fetch_dataset_files(
            &landing.table,
            &record.dataset,
            None,
            &cx.work.join("landed"),
        )
        .await
        .map_err(PipelineError::Sink)?;
    let dir = cx.work.join(&landing.table);
    let workers = workers(file);
    let (table_schema, key) = (dataset.schema().clone(), dataset.key().to_string());
    let children: Vec<String> = dataset
        .child_tables()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let stats = {
        let (dir, run_id) = (dir.clone(), record.run_id.clone());
        blocking("writing the records", move || {
            dataset.land(&staged, &landed, &run_id, &dir, workers)
        })
        .await?
    };
    record.rows_in = stats.rows_in;
    record.rows_out = stats.rows_out;
    record.duplicates_dropped = stats.superseded;
    record.null_identity_dropped = stats.without_identity;
    tracing::info!(
        table = %landing.table,
        rows = stats.rows_out,
        added = stats.added,
        replaced = stats.replaced,
        superseded = stats.superseded,
        "records written"
    );
    let checks = dataset_gate(file, cx, record, &dir, table_schema, None, &key).await?;
    // The child tables are replaced whole with the table: they hold the items of its rows.
    Ok(std::iter::once(landing.table.clone())
        .chain(children)
        .map(|name| PreparedTable {
            dir: cx.work.join(&name),
            name,
            date_column: None,
            append: false,
            evolve_schema: true,
            replace_dataset: true,
            properties: Default::default(),
        })
        .chain(checks)
        .collect())
}

/// A dataset whose schema `[transform.dataset]` cannot land (exit 2).
fn not_landable(
    cx: &RunContext<'_>,
    record: &RunRecord,
    e: scoreland_transform::TransformError,
) -> PipelineError {
    cx.invalid(format!(
        "[transform.dataset]: dataset {}: {e}",
        record.dataset
    ))
}

/// Worker threads of a transform: `target_partitions`, or every core.
fn workers(file: &PipelineFile) -> usize {
    file.transform
        .target_partitions
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A profile export: `profiles`, `audiences` and `audience_summary` for the night.
async fn profiles(
    record: &mut RunRecord,
    input: scoreland_transform::ProfileTables,
) -> Result<Vec<PreparedTable>, PipelineError> {
    let output = blocking("the profile tables' task", move || {
        scoreland_transform::write_profile_tables(&input)
    })
    .await?;
    let stats = &output.stats;
    record.rows_in = stats.rows_in;
    record.rows_out = stats.profiles;
    record.duplicates_dropped = stats.duplicate_profiles;
    record.null_identity_dropped = stats.without_identity;
    if stats.unparseable_times > 0 {
        record.warn(format!(
            "{} lastQualificationTime values are not times; they are null in audiences.last_qualification_time",
            stats.unparseable_times
        ));
    }
    if let Some(export) = &mut record.profile_export {
        tracing::info!(
            profiles = stats.profiles,
            memberships = stats.memberships,
            night = %export.night,
            previous_night = ?export.previous_night,
            "profile tables written"
        );
        export.stats = stats.clone();
    }
    Ok([
        ("profiles", output.profiles_dir),
        ("audiences", output.audiences_dir),
        ("audience_summary", output.summary_dir),
    ]
    .into_iter()
    .map(|(name, dir)| PreparedTable {
        name: name.to_string(),
        dir,
        date_column: Some("night".to_string()),
        append: false,
        evolve_schema: false,
        replace_dataset: false,
        properties: Default::default(),
    })
    .collect())
}

/// Runs `work` on tokio's blocking pool; a panic in it is an internal error of the transform
/// (exit 1, with `what` and the panic's message).
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, scoreland_transform::TransformError> + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| {
            PipelineError::Transform(scoreland_transform::TransformError::Panicked {
                message: format!("{what}: {e}"),
            })
        })?
        .map_err(PipelineError::Transform)
}
