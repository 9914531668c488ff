//! The run's transform: what the source staged becomes the night's tables ([`Prepared`]),
//! written under the run's work directory, with the state the publish keeps after them.

use std::path::Path;
use std::time::Instant;

use crate::config::PipelineFile;
use crate::context::RunContext;
use crate::error::PipelineError;
use crate::publish::{Prepared, PreparedTable};
use crate::record::{DriftRecord, PipelineState, RunRecord, by_score_date, ms};
use crate::source::{Ingested, Input};

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
    let transformer = file
        .transform
        .build(&cx.work.join("spill"))
        .map_err(PipelineError::Transform)?
        .with_run_id(&record.run_id)
        .with_landed(merge_with);
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
        .map(|(name, dir)| PreparedTable {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            date_column: by_score_date(name).then(|| "score_date".to_string()),
        })
        .collect();
    Ok((tables, extracts, output.histograms))
}

/// A profile export: `profiles`, `audiences` and `audience_summary` for the night.
async fn profiles(
    record: &mut RunRecord,
    input: scoreland_transform::ProfileTables,
) -> Result<Vec<PreparedTable>, PipelineError> {
    let output =
        tokio::task::spawn_blocking(move || scoreland_transform::write_profile_tables(&input))
            .await
            .map_err(|e| {
                PipelineError::Transform(scoreland_transform::TransformError::Panicked {
                    message: format!("the profile tables' task: {e}"),
                })
            })?
            .map_err(PipelineError::Transform)?;
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
    })
    .collect())
}
