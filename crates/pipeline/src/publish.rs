//! The publish: one Delta commit per table, then `_published/<pipeline>.json` (what readers
//! follow), the extracts and the state, journalled in `_state/<pipeline>.publishing.json` so
//! that a run after a crash finishes or settles what was half published. One publish at a time
//! per warehouse (its publish lock).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scoreland_sink::Warehouse;
use serde::{Deserialize, Serialize};

use crate::context::absolute;
use crate::error::PipelineError;
use crate::record::{PipelineState, RunRecord, RunStatus, TableRecord, ms, state_rel};

/// What a run has ready to publish: the tables written, the extracts (local file and where it
/// goes in the warehouse), and the state to keep after (its `runs_landed` is the Delta
/// transaction version of every commit of the publish).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Prepared {
    pub tables: Vec<PreparedTable>,
    pub extracts: Vec<(PathBuf, String)>,
    pub state: PipelineState,
    pub replace_dataset: bool,
}

/// One table's files, as the transform wrote them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreparedTable {
    pub name: String,
    pub dir: PathBuf,
    /// The date partition column, whose dates in the files are replaced; `None`: appended.
    pub date_column: Option<String>,
    /// With a date column: the files join their dates instead of replacing them (events).
    #[serde(default)]
    pub append: bool,
    /// New columns in the files are added to the table (a dataset whose schema grew).
    #[serde(default)]
    pub evolve_schema: bool,
    /// Without a date column: the files replace all the dataset's rows (a record dataset).
    #[serde(default)]
    pub replace_dataset: bool,
    /// Table properties the run sets (the dataset's labels, the labels `serve` masks); an
    /// empty value removes one.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// A publish under way, kept at `_state/<pipeline>.publishing.json` from just before the first
/// commit until the state is written: which run commits what ([`Prepared`]). A run that finds
/// one another run left behind knows what a crash half-published.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Publishing {
    run_id: String,
    dataset: String,
    batches: Vec<String>,
    rows: u64,
    #[serde(flatten)]
    prepared: Prepared,
}

fn publishing_rel(pipeline: &str) -> String {
    format!("_state/{pipeline}.publishing.json")
}

impl Publishing {
    /// The journal of `record`'s publish, its local paths made absolute (a later run may start
    /// in another directory).
    fn new(record: &RunRecord, mut prepared: Prepared) -> Publishing {
        for t in &mut prepared.tables {
            t.dir = absolute(&t.dir);
        }
        for (local, _) in &mut prepared.extracts {
            *local = absolute(local);
        }
        Publishing {
            run_id: record.run_id.clone(),
            dataset: record.dataset.clone(),
            batches: record.batches.clone(),
            rows: record.rows_out,
            prepared,
        }
    }

    /// Delta's transaction version of every commit of this publish.
    fn version(&self) -> i64 {
        self.prepared.state.runs_landed
    }

    /// Whether every file this publish would land is still on this machine, in the run's own
    /// work directory (`…/.work/<run id>/`), and every extract goes under `_extracts/`. A
    /// journal comes from the warehouse: one that names other local paths (corrupt, or
    /// written by someone else) is never followed.
    fn files_usable(&self) -> bool {
        use std::path::Component;
        let run = std::ffi::OsStr::new(&self.run_id);
        let in_work = |p: &Path| {
            p.is_absolute()
                && !p.components().any(|c| matches!(c, Component::ParentDir))
                && p.ancestors().any(|a| {
                    a.file_name() == Some(run)
                        && a.parent().and_then(Path::file_name)
                            == Some(std::ffi::OsStr::new(".work"))
                })
        };
        let p = &self.prepared;
        p.tables.iter().all(|t| in_work(&t.dir) && t.dir.is_dir())
            && p.extracts.iter().all(|(local, rel)| {
                in_work(local)
                    && local.is_file()
                    && rel.starts_with("_extracts/")
                    && !rel.contains("..")
            })
    }
}

/// What one publish landed.
struct Landed {
    tables: Vec<TableRecord>,
    extracts: Vec<String>,
}

/// Publishes the run: first what an interrupted run of the pipeline left half-published
/// ([`recover`]), then every table of this one, one commit each, then `_published` (what
/// readers follow), the extracts and the state. Not interrupted by signals: a publish is
/// finished once started.
pub(crate) async fn publish(
    name: &str,
    warehouse: &Warehouse,
    record: &mut RunRecord,
    prepared: Prepared,
) -> Result<(), PipelineError> {
    let t = Instant::now();
    crash_point("before_commit");
    scoreland_sink::pause_point("before_commit");
    // One publish at a time on a warehouse: readers see, per table, the newest version any
    // pipeline published, so another pipeline's commit in between would show half its run.
    let lock = publish_lock(warehouse, &record.run_id).await?;
    let published = async {
        settle_other_pipelines(name, warehouse, record).await?;
        let mut this = Publishing::new(record, prepared);
        let left: Option<Publishing> = warehouse
            .get_json(&publishing_rel(name))
            .await
            .map_err(PipelineError::Sink)?;
        if let Some(left) = left
            && left.run_id != this.run_id
        {
            recover(name, warehouse, record, &mut this, left).await?;
        }
        warehouse
            .put_json(&publishing_rel(name), &this)
            .await
            .map_err(PipelineError::Sink)?;
        land(name, warehouse, &this).await
    }
    .await;
    if let Err(e) = lock.release().await {
        tracing::error!(error = %e, "cannot release the warehouse's publish lock");
    }
    let landed = published?;
    record.tables = landed.tables;
    record.extracts = landed.extracts;
    record.timings.sink_ms = ms(t.elapsed());
    record.status = RunStatus::Landed;
    Ok(())
}

/// A dead publisher's lock is taken over after this (a live one renews it four times as often).
const PUBLISH_LOCK_STALE: Duration = Duration::from_secs(600);
/// How long a run waits for another pipeline's publish.
const PUBLISH_WAIT: Duration = Duration::from_secs(1800);

async fn publish_lock(
    warehouse: &Warehouse,
    run_id: &str,
) -> Result<scoreland_sink::Lock, PipelineError> {
    let waiting = Instant::now();
    let mut said = false;
    loop {
        match warehouse
            .lock(
                scoreland_sink::PUBLISH_LOCK,
                run_id,
                PUBLISH_LOCK_STALE,
                &|| {},
            )
            .await
        {
            Ok(lock) => return Ok(lock),
            Err(scoreland_sink::SinkError::Locked {
                run_id: holder,
                path,
                ..
            }) => {
                if waiting.elapsed() >= PUBLISH_WAIT {
                    return Err(PipelineError::PublishBusy {
                        waited: humantime::format_duration(PUBLISH_WAIT).to_string(),
                        holder,
                        path,
                    });
                }
                if !said {
                    tracing::info!(run = %holder, "waiting for another run's publish on this warehouse");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(PipelineError::Sink(e)),
        }
    }
}

/// Other pipelines' publishes that crashed half-way: finished here from their files (so that
/// this run's commits do not show half of them), or, without their files, this run stops.
async fn settle_other_pipelines(
    name: &str,
    warehouse: &Warehouse,
    record: &mut RunRecord,
) -> Result<(), PipelineError> {
    let names = warehouse
        .file_names("_state")
        .await
        .map_err(PipelineError::Sink)?;
    for other in names
        .iter()
        .filter_map(|n| n.strip_suffix(".publishing.json"))
        .filter(|other| *other != name)
    {
        let Some(left) = warehouse
            .get_json::<Publishing>(&publishing_rel(other))
            .await
            .map_err(PipelineError::Sink)?
        else {
            continue;
        };
        if !left.files_usable() {
            return Err(PipelineError::OtherPublishInterrupted {
                pipeline: other.to_string(),
                run_id: left.run_id,
            });
        }
        tracing::warn!(pipeline = other, run = %left.run_id, "finishing another pipeline's interrupted publish first");
        land(other, warehouse, &left).await?;
        record.warnings.push(format!(
            "pipeline {other}'s publish of run {} was interrupted; it was finished before this \
             run's",
            left.run_id
        ));
    }
    Ok(())
}

/// Settles the publish an interrupted run left behind, before this run commits anything.
/// - The same night (dataset and batches): this run commits under that run's transaction
///   version, so a table that holds it already (its commit holds these very batches) is not
///   committed twice.
/// - Another night: its publish is finished first, from the files it prepared, so that
///   readers see it whole; if those are gone, the tables it committed keep its rows and the
///   record says so. Either way this run commits under a transaction version of its own:
///   no table is skipped because it holds another night's commit.
async fn recover(
    name: &str,
    warehouse: &Warehouse,
    record: &mut RunRecord,
    this: &mut Publishing,
    left: Publishing,
) -> Result<(), PipelineError> {
    let version = left.version();
    if left.dataset == this.dataset && left.batches == this.batches {
        tracing::info!(
            interrupted = %left.run_id,
            batches = ?left.batches,
            "the publish of these batches was interrupted; tables that hold its commit are not committed twice"
        );
        this.prepared.state.runs_landed = version;
        return Ok(());
    }
    if left.files_usable() {
        tracing::warn!(
            interrupted = %left.run_id,
            batches = ?left.batches,
            "finishing the publish an interrupted run left half done, before this run's"
        );
        let done = land(name, warehouse, &left).await?;
        let committed: Vec<&str> = done
            .tables
            .iter()
            .filter(|t| t.committed)
            .map(|t| t.table.as_str())
            .collect();
        record.warnings.push(format!(
            "run {} was interrupted while publishing batches {}; its publish was finished \
             first (committed now: {})",
            left.run_id,
            left.batches.join(", "),
            if committed.is_empty() {
                "none".to_string()
            } else {
                committed.join(", ")
            }
        ));
    } else {
        let said = format!(
            "run {} was interrupted while publishing batches {} and the files it prepared are \
             gone; the tables it committed keep its rows (see `scoreland history`), and this \
             run lands under a transaction of its own",
            left.run_id,
            left.batches.join(", ")
        );
        tracing::warn!("{said}");
        record.warnings.push(said);
    }
    this.prepared.state.runs_landed = this.prepared.state.runs_landed.max(version + 1);
    Ok(())
}

/// Commits `p`'s tables (those that hold its transaction already are not committed twice),
/// then writes `_published`, the extracts and the state, and ends the publish.
async fn land(name: &str, warehouse: &Warehouse, p: &Publishing) -> Result<Landed, PipelineError> {
    // One Delta commit per table, each replacing exactly the run's (dataset, score date)
    // partitions (drift appends its rows), and carrying the run's transaction identifier.
    // Readers follow `_published/`, written once all are committed: a crash in between is
    // invisible to them.
    let metadata: serde_json::Map<String, serde_json::Value> = serde_json::Map::from_iter([
        ("pipeline".to_string(), serde_json::json!(name)),
        ("run_id".to_string(), serde_json::json!(p.run_id)),
        ("batches".to_string(), serde_json::json!(p.batches)),
        ("rows".to_string(), serde_json::json!(p.rows)),
    ]);
    let mut published = scoreland_sink::Published {
        run_id: p.run_id.clone(),
        versions: Default::default(),
    };
    let mut tables: Vec<TableRecord> = Vec::new();
    for (i, t) in p.prepared.tables.iter().enumerate() {
        let commit = warehouse
            .write_table(&scoreland_sink::TableWrite {
                table: &t.name,
                local_dir: &t.dir,
                dataset_id: &p.dataset,
                run_id: &p.run_id,
                by_score_date: t.date_column.is_some(),
                date_column: t.date_column.as_deref().unwrap_or("score_date"),
                replace_dataset: match t.date_column {
                    Some(_) => p.prepared.replace_dataset,
                    None => t.replace_dataset,
                },
                append: t.append,
                evolve_schema: t.evolve_schema,
                app_id: name,
                app_version: p.version(),
                metadata: metadata.clone(),
                properties: t.properties.clone(),
            })
            .await
            .map_err(|source| PipelineError::Publish {
                table: t.name.clone(),
                published: tables.iter().map(|t| t.table.clone()).collect(),
                source: Box::new(source),
            })?;
        published.versions.insert(t.name.clone(), commit.version);
        tables.push(TableRecord {
            table: t.name.clone(),
            version: commit.version,
            committed: commit.committed,
            replaced_dates: commit.replaced_dates,
        });
        if i == 0 {
            crash_point("between_tables");
        }
    }
    crash_point("before_published");
    warehouse
        .put_json(&format!("_published/{name}.json"), &published)
        .await
        .map_err(PipelineError::Sink)?;
    // Extracts last: each is one object, replaced whole, after the night it copies is committed.
    let mut extracts = Vec::new();
    for (local, rel) in &p.prepared.extracts {
        warehouse
            .upload_file(local, rel)
            .await
            .map_err(PipelineError::Sink)?;
        extracts.push(rel.clone());
    }
    crash_point("before_state");
    warehouse
        .put_json(&state_rel(name), &p.prepared.state)
        .await
        .map_err(PipelineError::Sink)?;
    warehouse
        .delete(&publishing_rel(name))
        .await
        .map_err(PipelineError::Sink)?;
    Ok(Landed { tables, extracts })
}

/// Fault injection for crash tests: `SCORELAND_CRASH_AT=<point>` aborts the process there, as
/// a power cut or `kill -9` would. Points, checked by the end-to-end tests: `before_commit`
/// (the transform is done, no table committed yet), `between_tables` (the first table,
/// `scores` or `profiles`, committed, the others not), `before_published` (every table committed, `_published` not
/// written) and `before_state` (published, the pipeline's state not written).
fn crash_point(point: &str) {
    if std::env::var("SCORELAND_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("SCORELAND_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal as the warehouse holds it: of run `run`, its table in `dir`, an extract.
    fn journal(run: &str, dir: &Path, extract: (&Path, &str)) -> Publishing {
        serde_json::from_value(serde_json::json!({
            "run_id": run, "dataset": "ds", "batches": ["b1"], "rows": 1,
            "tables": [{"name": "scores", "dir": dir, "date_column": "score_date"}],
            "extracts": [[extract.0, extract.1]],
            "state": {"last_run_id": null, "landed_batches": [], "histograms": []},
            "replace_dataset": false
        }))
        .unwrap()
    }

    #[test]
    fn a_journal_is_followed_only_into_its_runs_work_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("staging/.work/run-1");
        let scores = work.join("out/scores");
        let extract = work.join("extracts/scores.csv");
        std::fs::create_dir_all(&scores).unwrap();
        std::fs::create_dir_all(extract.parent().unwrap()).unwrap();
        std::fs::write(&extract, "x").unwrap();
        assert!(journal("run-1", &scores, (&extract, "_extracts/scores/ds.csv")).files_usable());
        // Elsewhere on this machine, another run's work, a way out with `..`, a relative
        // path, an extract landing outside `_extracts/`: not followed.
        let elsewhere = tmp.path().join("home/.ssh");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let escape = work.join("../../../home/.ssh");
        for (run, dir, rel) in [
            ("run-1", elsewhere.as_path(), "_extracts/scores/ds.csv"),
            ("run-2", scores.as_path(), "_extracts/scores/ds.csv"),
            ("run-1", escape.as_path(), "_extracts/scores/ds.csv"),
            (
                "run-1",
                Path::new("staging/.work/run-1/out/scores"),
                "_extracts/scores/ds.csv",
            ),
            ("run-1", scores.as_path(), "_published/demo.json"),
            (
                "run-1",
                scores.as_path(),
                "_extracts/../_published/demo.json",
            ),
        ] {
            assert!(
                !journal(run, dir, (&extract, rel)).files_usable(),
                "{run} {} {rel}",
                dir.display()
            );
        }
        // Gone: not usable either.
        std::fs::remove_dir_all(&scores).unwrap();
        assert!(!journal("run-1", &scores, (&extract, "_extracts/scores/ds.csv")).files_usable());
    }
}
