//! Which export folders are complete ([`verdict`]) and which of them a run lands
//! ([`select`]), and what a run without platform access remembers of the folders it saw
//! ([`observe`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use scoreland_ingest::{
    ExportFolder, ExportManifest, ExportMode, FlowRun, FolderPattern, IngestError,
};
use serde::{Deserialize, Serialize};

use super::FolderSelection;
use crate::error::PipelineError;

/// An export folder as a run without platform access saw it: a digest of its content (names
/// and sizes, the unfinished ones included), and when a run first saw that content (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFolder {
    pub content: String,
    pub since_ms: i64,
}

/// Moves each folder's "last changed" time to the first sighting of its present content when
/// that is later: an object's time can be older than its arrival (S3 gives a multipart upload
/// the time it began; SFTP servers may give none), so a file that just appeared must not make
/// its folder look settled. Returns the sightings to keep: folders newer than `last` (the
/// newest landed, epoch ms).
pub(crate) fn observe(
    folders: &mut [ExportFolder],
    seen: &BTreeMap<String, SeenFolder>,
    last: Option<i64>,
    now: DateTime<Utc>,
) -> BTreeMap<String, SeenFolder> {
    use sha2::Digest;
    let mut kept = BTreeMap::new();
    for f in folders.iter_mut() {
        if last.is_some_and(|l| f.export_time.timestamp_millis() <= l) {
            continue;
        }
        let mut digest = sha2::Sha256::new();
        for file in &f.files {
            digest.update(format!("{}\0{}\n", file.name, file.size));
        }
        for name in f.unfinished.iter().chain(&f.unknown) {
            digest.update(format!("{name}\0?\n"));
        }
        let content = format!("{:x}", digest.finalize());
        let since_ms = match seen.get(&f.rel) {
            Some(s) if s.content == content => s.since_ms,
            _ => now.timestamp_millis(),
        };
        if let Some(since) = DateTime::from_timestamp_millis(since_ms) {
            f.last_modified = f.last_modified.max(since);
        }
        kept.insert(f.rel.clone(), SeenFolder { content, since_ms });
    }
    kept
}

/// Whether a folder may be landed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    Complete(String),
    /// Not yet: maybe later.
    Pending(String),
    /// Never: its run failed.
    Failed(String),
}

/// The run that wrote `folder`: by the path it reports, else by its start minute.
pub(super) fn run_of<'a>(folder: &ExportFolder, runs: &'a [FlowRun]) -> Option<&'a FlowRun> {
    runs.iter()
        .find(|r| {
            r.path_prefix
                .as_deref()
                .is_some_and(|p| p.trim_end_matches('/').ends_with(&folder.rel))
        })
        .or_else(|| {
            runs.iter().find(|r| {
                r.path_prefix.is_none()
                    && r.started_at
                        .is_some_and(|t| t / 60_000 == folder.export_time.timestamp() / 60)
            })
        })
}

pub(super) fn verdict(
    folder: &ExportFolder,
    runs: Option<&[FlowRun]>,
    settle: Duration,
    now: DateTime<Utc>,
    warnings: &mut Vec<String>,
) -> Result<Verdict, PipelineError> {
    if let Some(manifest) = &folder.manifest {
        return manifest_verdict(folder, manifest, runs, warnings);
    }
    let Some(runs) = runs else {
        if let Some(f) = folder.unfinished.first() {
            return Ok(Verdict::Pending(format!("{f} is still being written")));
        }
        let age = (now - folder.last_modified).to_std().unwrap_or_default();
        return Ok(if age >= settle {
            Verdict::Complete(format!(
                "unchanged for {} (settle {})",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(settle)
            ))
        } else {
            Verdict::Pending(format!(
                "changed {} ago, under the settle time of {}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(settle)
            ))
        });
    };
    let Some(run) = run_of(folder, runs) else {
        return Ok(Verdict::Pending(
            "no run of the flow reports it (yet)".into(),
        ));
    };
    if run.failed() {
        return Ok(Verdict::Failed(format!(
            "run {} failed: {}",
            run.id,
            run.errors.join("; ")
        )));
    }
    if !run.succeeded() {
        return Ok(Verdict::Pending(format!(
            "run {} is {}",
            run.id, run.status
        )));
    }
    let files = folder.files.len() as u64;
    let bytes = folder.bytes();
    if run.output_files.is_some_and(|n| n != files) || run.output_bytes.is_some_and(|b| b != bytes)
    {
        if !folder.unfinished.is_empty() {
            return Ok(Verdict::Pending(format!(
                "run {} succeeded but files are still arriving",
                run.id
            )));
        }
        return Err(PipelineError::Ingest(IngestError::BadExportFolder {
            folder: folder.rel.clone(),
            why: format!(
                "it holds {files} files ({bytes} bytes) but run {} wrote {} files ({} bytes); a file is missing or foreign, so nothing of it is landed: restore the folder, or remove it and export again (`scoreland export run`)",
                run.id,
                run.output_files.map_or("?".into(), |n| n.to_string()),
                run.output_bytes.map_or("?".into(), |n| n.to_string()),
            ),
        }));
    }
    Ok(Verdict::Complete(format!(
        "run {} succeeded with {files} files, {bytes} bytes",
        run.id
    )))
}

/// AEP's manifest decides: every file it lists is in the folder with its size, and no other
/// data file is. The flow run's counts, which AEP mixes with other exports' (a known
/// limitation), only warn when they differ; a failed run still fails the folder.
fn manifest_verdict(
    folder: &ExportFolder,
    manifest: &ExportManifest,
    runs: Option<&[FlowRun]>,
    warnings: &mut Vec<String>,
) -> Result<Verdict, PipelineError> {
    let run = runs.and_then(|rs| run_of(folder, rs));
    if let Some(run) = run
        && run.failed()
    {
        return Ok(Verdict::Failed(format!(
            "run {} failed: {}",
            run.id,
            run.errors.join("; ")
        )));
    }
    let listed: BTreeMap<&str, u64> = folder
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.size))
        .collect();
    // Once the run has succeeded, a file the manifest lists and the folder lacks is lost, not
    // late.
    let done = run.filter(|r| r.succeeded());
    for (name, size) in &manifest.files {
        let short = match listed.get(name.as_str()) {
            None => format!("{name}, which the manifest lists, is not in the folder"),
            Some(have) if have != size => {
                format!("{name} is {have} bytes, the manifest says {size}")
            }
            Some(_) => continue,
        };
        return match done {
            None => Ok(Verdict::Pending(format!("{short} (yet)"))),
            Some(run) => Err(PipelineError::Ingest(IngestError::BadExportFolder {
                folder: folder.rel.clone(),
                why: format!(
                    "{short}, and run {} has succeeded; nothing of it is landed: restore the file, or remove the folder and export again (`scoreland export run`)",
                    run.id
                ),
            })),
        };
    }
    if let Some(foreign) = listed
        .keys()
        .find(|name| !manifest.files.contains_key(**name))
    {
        return Err(PipelineError::Ingest(IngestError::BadExportFolder {
            folder: folder.rel.clone(),
            why: format!(
                "it holds {foreign}, which its manifest ({}) does not list; nothing of it is landed: remove the foreign file",
                manifest.names.join(", ")
            ),
        }));
    }
    let (files, bytes) = (folder.files.len() as u64, folder.bytes());
    if let Some(run) = run
        && (run.output_files.is_some_and(|n| n != files)
            || run.output_bytes.is_some_and(|b| b != bytes))
    {
        let w = format!(
            "folder {}: its manifest lists {files} files ({bytes} bytes), all present, but run {} reports {} files ({} bytes); AEP's run counts can include other exports', so the manifest is followed",
            folder.rel,
            run.id,
            run.output_files.map_or("?".into(), |n| n.to_string()),
            run.output_bytes.map_or("?".into(), |n| n.to_string()),
        );
        tracing::warn!("{w}");
        warnings.push(w);
    }
    Ok(Verdict::Complete(format!(
        "its manifest {} lists {files} files, {bytes} bytes, all present",
        manifest.names.join(", ")
    )))
}

/// A folder to land: whether it is a full export, and why it counts as complete.
pub(super) struct Chosen {
    pub folder: ExportFolder,
    pub full: bool,
    pub complete: String,
}

/// The folders to land this run, oldest first, each with whether it is a full export; and
/// gaps (folders a run reported that are gone). `last` is the export time (ms) of the newest
/// folder already landed.
#[allow(clippy::too_many_arguments)]
pub(super) fn select(
    pattern: &FolderPattern,
    conn_mode: ExportMode,
    selection: FolderSelection,
    folders: Vec<ExportFolder>,
    runs: Option<&[FlowRun]>,
    settle: Duration,
    last: Option<i64>,
    now: DateTime<Utc>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Chosen>, Vec<String>), PipelineError> {
    let after = |f: &ExportFolder| last.is_none_or(|l| f.export_time.timestamp_millis() > l);
    // Gaps: successful runs newer than the last landing whose folder is not there.
    let mut gaps = Vec::new();
    if let Some(runs) = runs {
        for r in runs.iter().filter(|r| r.succeeded()) {
            let Some(prefix) = &r.path_prefix else {
                continue;
            };
            let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
            let rel = segments[segments.len().saturating_sub(pattern.depth())..].join("/");
            let Some(time) = pattern.export_time(&rel) else {
                continue;
            };
            let newer = last.is_none_or(|l| time.timestamp_millis() > l);
            let listed = folders
                .iter()
                .any(|f| prefix.trim_end_matches('/').ends_with(&f.rel));
            if newer && !listed && r.output_files.unwrap_or(0) > 0 {
                let w = format!(
                    "run {} exported {prefix}, which the store no longer has (the Data Landing Zone deletes files after 7 days); its rows are missing from this landing",
                    r.id
                );
                tracing::warn!("{w}");
                warnings.push(w.clone());
                gaps.push(prefix.clone());
            }
        }
    }
    let mut chosen = Vec::new();
    match conn_mode {
        ExportMode::DailyFullExport => {
            // Each folder holds the whole dataset: the newest complete one is all there is.
            for f in folders.into_iter().rev() {
                match verdict(&f, runs, settle, now, warnings)? {
                    Verdict::Complete(why) => {
                        if after(&f) {
                            chosen.push(Chosen {
                                folder: f,
                                full: true,
                                complete: why,
                            });
                        }
                        break;
                    }
                    Verdict::Pending(why) => {
                        tracing::info!(folder = %f.rel, "{why}; looking at older folders")
                    }
                    Verdict::Failed(why) => {
                        let w = format!("folder {} is not landed: {why}", f.rel);
                        tracing::warn!("{w}");
                        warnings.push(w);
                    }
                }
            }
            let _ = selection;
        }
        ExportMode::FirstFullThenIncremental => {
            // Every increment since the last landing, in order; the first export is the full one.
            let first_run_created = runs.and_then(|rs| {
                rs.iter()
                    .filter(|r| r.succeeded())
                    .map(|r| r.created_at)
                    .min()
            });
            // Whether a full export is landed, or lands before the folder at hand.
            let mut have_base = last.is_some();
            for (i, f) in folders.into_iter().enumerate() {
                if !after(&f) {
                    continue;
                }
                let full = match (runs, have_base) {
                    (_, true) => false,
                    (Some(rs), false) => {
                        let r = run_of(&f, rs);
                        match (r, first_run_created) {
                            (Some(r), Some(first)) if r.created_at == first => true,
                            _ => {
                                return Err(PipelineError::Ingest(
                                    IngestError::BadExportFolder {
                                        folder: f.rel.clone(),
                                        why: "nothing was landed from this flow yet, and its first, full export is no longer in the store; make a new flow (a new first export is full) or land a full export first".into(),
                                    },
                                ));
                            }
                        }
                    }
                    (None, false) => {
                        if i == 0 {
                            let w = format!(
                                "taking {} as the flow's first, full export: without platform access this cannot be checked",
                                f.rel
                            );
                            warnings.push(w);
                        }
                        i == 0
                    }
                };
                match verdict(&f, runs, settle, now, warnings)? {
                    Verdict::Complete(why) => {
                        chosen.push(Chosen {
                            folder: f,
                            full,
                            complete: why,
                        });
                        have_base = true;
                    }
                    Verdict::Pending(why) => {
                        tracing::info!(folder = %f.rel, "{why}; it and later folders wait for the next run");
                        break;
                    }
                    Verdict::Failed(why) => {
                        let w = format!("folder {} is skipped: {why}", f.rel);
                        tracing::warn!("{w}");
                        warnings.push(w);
                    }
                }
            }
            if selection == FolderSelection::Newest && chosen.len() > 1 {
                tracing::info!(
                    folders = chosen.len(),
                    "an incremental flow lands every increment since the last landing, not only the newest"
                );
            }
        }
    }
    Ok((chosen, gaps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scoreland_ingest::DEFAULT_FOLDER_TEMPLATE;

    fn folder(rel: &str, minutes_ago: i64, files: &[(&str, u64)]) -> ExportFolder {
        let pattern = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds").unwrap();
        ExportFolder {
            rel: rel.into(),
            export_time: pattern.export_time(rel).unwrap(),
            files: files
                .iter()
                .map(|(n, s)| {
                    serde_json::from_value(
                        serde_json::json!({"name": n, "size": s, "format": "parquet"}),
                    )
                    .unwrap()
                })
                .collect(),
            unfinished: Vec::new(),
            unknown: Vec::new(),
            manifest: None,
            last_modified: Utc::now() - chrono::Duration::minutes(minutes_ago),
        }
    }

    #[test]
    fn a_folder_settles_from_the_first_sighting_of_its_content_not_from_old_object_times() {
        let settle = Duration::from_secs(600);
        let now = Utc::now();
        // Objects that look an hour old (a multipart upload's start time), seen for the first
        // time: not settled.
        let mut fs = vec![folder(
            "ds/exportTime=202612010200",
            60,
            &[("a.parquet", 10)],
        )];
        let seen = observe(&mut fs, &Default::default(), None, now);
        assert!(matches!(
            verdict(&fs[0], None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
        // Seen so 11 minutes ago: settled.
        let earlier: BTreeMap<String, SeenFolder> = seen
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    SeenFolder {
                        since_ms: v.since_ms - 11 * 60_000,
                        ..v
                    },
                )
            })
            .collect();
        let mut fs = vec![folder(
            "ds/exportTime=202612010200",
            60,
            &[("a.parquet", 10)],
        )];
        let kept = observe(&mut fs, &earlier, None, now);
        assert_eq!(kept, earlier);
        assert!(matches!(
            verdict(&fs[0], None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Complete(_)
        ));
        // A file arrived since (with an old time): the settle time starts again.
        let mut fs = vec![folder(
            "ds/exportTime=202612010200",
            60,
            &[("a.parquet", 10), ("b.parquet", 20)],
        )];
        let kept = observe(&mut fs, &earlier, None, now);
        assert_ne!(kept, earlier);
        assert!(matches!(
            verdict(&fs[0], None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
        // Folders already landed are not kept.
        let landed = fs[0].export_time.timestamp_millis();
        assert!(observe(&mut fs, &earlier, Some(landed), now).is_empty());
    }

    #[test]
    fn without_runs_a_folder_must_settle() {
        let now = Utc::now();
        let f = folder("ds/exportTime=202612010200", 3, &[("a.parquet", 10)]);
        let settle = Duration::from_secs(600);
        assert!(matches!(
            verdict(&f, None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
        let f = folder("ds/exportTime=202612010200", 11, &[("a.parquet", 10)]);
        assert!(
            matches!(verdict(&f, None, settle, now, &mut Vec::new()).unwrap(), Verdict::Complete(w) if w.contains("settle 10m"))
        );
        let mut f = f;
        f.unfinished.push(".a.parquet.inprogress".into());
        assert!(matches!(
            verdict(&f, None, settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
    }

    fn run(id: &str, created: i64, status: &str, prefix: &str, files: u64, bytes: u64) -> FlowRun {
        FlowRun {
            id: id.into(),
            flow_id: "f".into(),
            created_at: created,
            status: status.into(),
            started_at: Some(created),
            completed_at: None,
            output_files: Some(files),
            output_bytes: Some(bytes),
            output_records: None,
            path_prefix: Some(prefix.into()),
            errors: vec!["boom".into()],
        }
    }

    #[test]
    fn with_runs_the_files_must_match_the_run() {
        let now = Utc::now();
        let f = folder(
            "ds/exportTime=202612010200",
            0,
            &[("a.parquet", 10), ("b.parquet", 5)],
        );
        let settle = Duration::from_secs(600);
        let ok = [run(
            "r1",
            1,
            "success",
            "s3/b/p/ds/exportTime=202612010200",
            2,
            15,
        )];
        assert!(matches!(
            verdict(&f, Some(&ok), settle, now, &mut Vec::new()).unwrap(),
            Verdict::Complete(_)
        ));
        let missing = [run(
            "r1",
            1,
            "success",
            "s3/b/p/ds/exportTime=202612010200",
            3,
            20,
        )];
        let err = verdict(&f, Some(&missing), settle, now, &mut Vec::new()).unwrap_err();
        assert!(
            crate::record::error_chain(&err)
                .contains("holds 2 files (15 bytes) but run r1 wrote 3 files")
        );
        let failed = [run(
            "r1",
            1,
            "failed",
            "s3/b/p/ds/exportTime=202612010200",
            0,
            0,
        )];
        assert!(
            matches!(verdict(&f, Some(&failed), settle, now, &mut Vec::new()).unwrap(), Verdict::Failed(w) if w.contains("boom"))
        );
        let other = [run(
            "r1",
            1,
            "success",
            "s3/b/p/ds/exportTime=202612010300",
            2,
            15,
        )];
        assert!(matches!(
            verdict(&f, Some(&other), settle, now, &mut Vec::new()).unwrap(),
            Verdict::Pending(_)
        ));
    }

    #[test]
    fn increments_after_the_last_landing_in_order_and_gaps_reported() {
        let now = Utc::now();
        let f1 = folder("ds/exportTime=202612010200", 60, &[("a.parquet", 1)]);
        let f3 = folder("ds/exportTime=202612010800", 60, &[("c.parquet", 3)]);
        let runs = [
            run(
                "r1",
                f1.export_time.timestamp_millis(),
                "success",
                "x/ds/exportTime=202612010200",
                1,
                1,
            ),
            run(
                "r2",
                f1.export_time.timestamp_millis() + 1,
                "success",
                "x/ds/exportTime=202612010500",
                1,
                2,
            ),
            run(
                "r3",
                f3.export_time.timestamp_millis(),
                "success",
                "x/ds/exportTime=202612010800",
                1,
                3,
            ),
        ];
        let mut w = Vec::new();
        let pattern = FolderPattern::new(DEFAULT_FOLDER_TEMPLATE, "ds").unwrap();
        let (chosen, gaps) = select(
            &pattern,
            ExportMode::FirstFullThenIncremental,
            FolderSelection::CatchUp,
            vec![f1.clone(), f3.clone()],
            Some(&runs),
            Duration::from_secs(600),
            None,
            now,
            &mut w,
        )
        .unwrap();
        let picked: Vec<(&str, bool)> = chosen
            .iter()
            .map(|c| (c.folder.rel.as_str(), c.full))
            .collect();
        assert_eq!(
            picked,
            [
                ("ds/exportTime=202612010200", true),
                ("ds/exportTime=202612010800", false)
            ]
        );
        assert_eq!(gaps, ["x/ds/exportTime=202612010500"]);
        assert!(w[0].contains("no longer has"));
        // After landing the first: only what came later, as increments.
        let (chosen, _) = select(
            &pattern,
            ExportMode::FirstFullThenIncremental,
            FolderSelection::CatchUp,
            vec![f1.clone(), f3],
            Some(&runs),
            Duration::from_secs(600),
            Some(f1.export_time.timestamp_millis()),
            now,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(chosen.len(), 1);
        assert!(!chosen[0].full);
    }
}
