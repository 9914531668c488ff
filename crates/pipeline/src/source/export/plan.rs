//! `scoreland export plan`: what a pipeline's dataset export will do, checked against the
//! platform before the first night (and by `export create` before it creates anything). Each
//! check has a verdict and, when it is not `ok`, what to do. The rules are those of Adobe's
//! dataset export guides and guardrails (docs/exports.md):
//!
//! - `eligible`: the dataset is among those the data lake offers for export;
//! - `size`: a profile-class dataset exported as uncompressed parquet fails above 1 million
//!   records (10 billion compressed);
//! - `history`: an ExperienceEvent dataset exports only its last 365 days;
//! - `schedule`: the first full export, then the incremental ones, and when the flow ends
//!   (six months after its start unless it has an end);
//! - `datasets`: every dataset of one dataflow shares its schedule;
//! - `folders`: the folder template the flow writes is the one the pipeline reads.

use chrono::{DateTime, Duration, Utc};
use scoreland_ingest::{
    AepClient, CatalogBatch, Compression, DEFAULT_FOLDER_TEMPLATE, ExportMode, ExportTarget,
    FileType, Flow, FolderPattern, IngestError, Schedule, TimeUnit,
};
use serde::Serialize;
use serde_json::Value;

use super::ExportSource;

use scoreland_transform::EVENT_CLASS;
const PROFILE_CLASS: &str = "https://ns.adobe.com/xdm/context/profile";
/// Profile-class datasets exported as uncompressed parquet fail above this many records.
pub const PROFILE_PARQUET_LIMIT: u64 = 1_000_000;
/// …and compressed, above this many.
pub const PROFILE_COMPRESSED_LIMIT: u64 = 10_000_000_000;
/// ExperienceEvent datasets export this many days back.
pub const EVENT_HISTORY_DAYS: i64 = 365;
/// A flow ending within this many days is a warning.
const ENDING_SOON_DAYS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanVerdict {
    Ok,
    Warn,
    Fail,
}

/// One check of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanCheck {
    pub check: &'static str,
    pub verdict: PlanVerdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What the export will do, checked.
#[derive(Debug, Clone, Serialize)]
pub struct ExportPlan {
    pub dataset: String,
    pub dataset_name: Option<String>,
    /// The dataflow, when it exists already (`None`: `export create` makes it).
    pub flow: Option<String>,
    pub checks: Vec<PlanCheck>,
    /// The first exports, RFC 3339, with what each holds (`full` or `incremental`).
    pub first_exports: Vec<(String, &'static str)>,
}

impl ExportPlan {
    pub fn failed(&self) -> Vec<&PlanCheck> {
        self.checks
            .iter()
            .filter(|c| c.verdict == PlanVerdict::Fail)
            .collect()
    }
}

fn check(
    check: &'static str,
    verdict: PlanVerdict,
    detail: String,
    fix: Option<String>,
) -> PlanCheck {
    PlanCheck {
        check,
        verdict,
        detail,
        fix,
    }
}

/// Checks `source`'s export of `dataset`: against `flow` when it exists, else against what
/// `[source.flow]` would create. Platform errors (other than a schema that cannot be read) are
/// returned as they are.
pub async fn plan(
    client: &AepClient,
    source: &ExportSource,
    dataset: &str,
    flow: Option<&Flow>,
    now: DateTime<Utc>,
) -> Result<ExportPlan, IngestError> {
    let section = source.flow.as_ref();
    let (target, schedule) = match flow {
        Some(f) => (Some(client.export_target(f).await?), f.schedule.clone()),
        None => (
            section.and_then(|s| s.target().ok()),
            section.and_then(|s| s.schedule(now).ok()),
        ),
    };
    let mut checks = Vec::new();

    let exportable = client.exportable_datasets().await?;
    let found = exportable.iter().find(|d| d.id == dataset);
    checks.push(match found {
        Some(d) => check(
            "eligible",
            PlanVerdict::Ok,
            format!(
                "dataset {dataset} ({}) is among the {} datasets the data lake offers for export",
                d.name,
                exportable.len()
            ),
            None,
        ),
        None => check(
            "eligible",
            PlanVerdict::Fail,
            format!(
                "dataset {dataset} is not among the {} datasets the data lake offers for export",
                exportable.len()
            ),
            Some(
                "check the id (`scoreland batches --dataset ID`); AEP does not export datasets \
                 created through the API, nor system datasets"
                    .into(),
            ),
        ),
    });

    let batches = client
        .list_batches(dataset, &[("status", "success")], usize::MAX)
        .await?;
    let records = live_records(&batches);
    let class = match client.dataset_schema(dataset).await {
        Ok(schema) => Some(class_of(&schema)),
        Err(e) => {
            checks.push(check(
                "size",
                PlanVerdict::Warn,
                format!("the dataset's schema cannot be read, so its class is not known: {e}"),
                None,
            ));
            None
        }
    };
    if let (Some(class), Some(target)) = (&class, &target) {
        checks.push(size_check(class, target, records));
        if class == EVENT_CLASS {
            checks.push(history_check(&batches, now));
        }
    }

    match &schedule {
        Some(s) => checks.push(schedule_check(s, flow.is_some(), now)),
        None => checks.push(check(
            "schedule",
            PlanVerdict::Fail,
            "no schedule: the flow has none and [source.flow] gives none that AEP accepts".into(),
            Some("set [source.flow] export_mode, time_unit and interval (docs/exports.md)".into()),
        )),
    }

    if let Some(f) = flow {
        let datasets = client.export_datasets(f).await?;
        let others: Vec<&String> = datasets.iter().filter(|d| *d != dataset).collect();
        checks.push(if !datasets.iter().any(|d| d == dataset) {
            check(
                "datasets",
                PlanVerdict::Fail,
                format!(
                    "dataflow {} exports {}, not dataset {dataset}",
                    f.name,
                    list(&datasets)
                ),
                Some(
                    "name another flow in [source.flow], or this flow's dataset in [source]".into(),
                ),
            )
        } else if others.is_empty() {
            check(
                "datasets",
                PlanVerdict::Ok,
                format!("dataflow {} exports this dataset alone", f.name),
                None,
            )
        } else {
            check(
                "datasets",
                PlanVerdict::Warn,
                format!(
                    "dataflow {} also exports {}: every dataset of a dataflow shares its schedule",
                    f.name,
                    list(&others)
                ),
                Some("give this dataset a dataflow of its own to schedule it alone".into()),
            )
        });
    }

    checks.push(folder_check(
        source,
        dataset,
        flow.and_then(|f| f.schedule.as_ref()?.foldername_template.as_deref()),
        flow.is_some(),
    ));

    let first_exports = schedule
        .as_ref()
        .map(|s| first_exports(s, 3))
        .unwrap_or_default();
    Ok(ExportPlan {
        dataset: dataset.to_string(),
        dataset_name: found.map(|d| d.name.clone()),
        flow: flow.map(|f| format!("{} ({})", f.name, f.id)),
        checks,
        first_exports,
    })
}

/// Records in the dataset's batches, less those a later batch replaced.
fn live_records(batches: &[CatalogBatch]) -> u64 {
    batches
        .iter()
        .filter(|b| !batches.iter().any(|o| o.replaces.contains(&b.id)))
        .filter_map(|b| b.records)
        .sum()
}

/// The schema's class: `meta:class`, the ExperienceEvent or profile class when it extends one.
fn class_of(schema: &Value) -> String {
    let extends = |c: &str| {
        schema
            .get("meta:extends")
            .and_then(Value::as_array)
            .is_some_and(|e| e.iter().any(|x| x.as_str() == Some(c)))
    };
    match schema.get("meta:class").and_then(Value::as_str) {
        Some(c) if c == EVENT_CLASS || c == PROFILE_CLASS => c.to_string(),
        _ if extends(EVENT_CLASS) => EVENT_CLASS.into(),
        _ if extends(PROFILE_CLASS) => PROFILE_CLASS.into(),
        Some(c) => c.to_string(),
        None => "not given".into(),
    }
}

fn size_check(class: &str, target: &ExportTarget, records: u64) -> PlanCheck {
    if class != PROFILE_CLASS {
        return check(
            "size",
            PlanVerdict::Ok,
            format!("{records} records, class {class}: no record limit applies"),
            None,
        );
    }
    let uncompressed_parquet =
        target.file_type == FileType::Parquet && target.compression == Compression::None;
    let limit = if uncompressed_parquet {
        PROFILE_PARQUET_LIMIT
    } else {
        PROFILE_COMPRESSED_LIMIT
    };
    let what = if uncompressed_parquet {
        "uncompressed parquet"
    } else {
        "a compressed export"
    };
    if records > limit {
        check(
            "size",
            PlanVerdict::Fail,
            format!(
                "a profile dataset of {records} records: AEP fails {what} of more than {limit} records"
            ),
            Some(if uncompressed_parquet {
                "set [source.flow] compression = \"GZIP\"".into()
            } else {
                "export a smaller dataset (AEP's limit for profile datasets)".into()
            }),
        )
    } else if uncompressed_parquet {
        check(
            "size",
            PlanVerdict::Warn,
            format!(
                "a profile dataset of {records} records, exported as uncompressed parquet: AEP \
                 fails such exports above {limit} records"
            ),
            Some("set [source.flow] compression = \"GZIP\" before the dataset grows".into()),
        )
    } else {
        check(
            "size",
            PlanVerdict::Ok,
            format!("a profile dataset of {records} records (limit {limit}, compressed)"),
            None,
        )
    }
}

fn history_check(batches: &[CatalogBatch], now: DateTime<Utc>) -> PlanCheck {
    let since = now - Duration::days(EVENT_HISTORY_DAYS);
    let older: u64 = batches
        .iter()
        .filter(|b| b.created < since.timestamp_millis())
        .filter_map(|b| b.records)
        .sum();
    let detail = format!(
        "an ExperienceEvent dataset: AEP exports its last {EVENT_HISTORY_DAYS} days only, so the \
         first full export holds the events ingested since {}",
        since.format("%Y-%m-%d")
    );
    if older > 0 {
        check(
            "history",
            PlanVerdict::Warn,
            format!("{detail}; {older} records of older batches are not exported"),
            Some("land the older events through Catalog (a source of type \"aep\") once".into()),
        )
    } else {
        check("history", PlanVerdict::Ok, detail, None)
    }
}

fn schedule_check(s: &Schedule, exists: bool, now: DateTime<Utc>) -> PlanCheck {
    let what = match (s.export_mode, s.time_unit, s.interval) {
        (ExportMode::DailyFullExport, ..) => "one full export".to_string(),
        (ExportMode::FirstFullThenIncremental, TimeUnit::Day, _) => {
            "a full export first, then what was added since, once a day".to_string()
        }
        (ExportMode::FirstFullThenIncremental, TimeUnit::Hour, n) => {
            format!("a full export first, then what was added since, every {n} hours")
        }
    };
    let start = at(s.start_time);
    let ends = s.ends_at();
    let days_left = (ends - now.timestamp()) / 86_400;
    let end_text = match s.end_time {
        Some(_) => format!("it ends on {}", at(ends)),
        None => format!(
            "it has no end date, so AEP stops it six months after its start, on {}",
            at(ends)
        ),
    };
    let detail = format!(
        "{what}, starting {start}{}; {end_text}",
        if exists { "" } else { " (once created)" }
    );
    if ends <= now.timestamp() {
        check(
            "schedule",
            PlanVerdict::Fail,
            format!("{detail}: it has ended"),
            Some("create a new dataflow (`scoreland export create` with a new flow name)".into()),
        )
    } else if s.export_mode == ExportMode::FirstFullThenIncremental && days_left < ENDING_SOON_DAYS
    {
        check(
            "schedule",
            PlanVerdict::Warn,
            format!("{detail}: {days_left} days from now"),
            Some("recreate the dataflow, or give it a later end, before then".into()),
        )
    } else {
        check("schedule", PlanVerdict::Ok, detail, None)
    }
}

fn folder_check(
    source: &ExportSource,
    dataset: &str,
    flow_template: Option<&str>,
    exists: bool,
) -> PlanCheck {
    let ours = source
        .flow
        .as_ref()
        .and_then(|f| f.foldername_template.as_deref())
        .unwrap_or(DEFAULT_FOLDER_TEMPLATE);
    let theirs = if exists {
        flow_template.unwrap_or(DEFAULT_FOLDER_TEMPLATE)
    } else {
        ours
    };
    if let Err(e) = FolderPattern::new(theirs, dataset) {
        return check(
            "folders",
            PlanVerdict::Fail,
            format!("the folder template {theirs:?} cannot be read back: {e}"),
            Some("use a template with %EXPORT_TIME% or %DATETIME(…)% (docs/exports.md)".into()),
        );
    }
    if theirs != ours {
        return check(
            "folders",
            PlanVerdict::Fail,
            format!("the dataflow writes folders as {theirs:?}, the pipeline reads {ours:?}"),
            Some(format!(
                "set [source.flow] foldername_template = {theirs:?}"
            )),
        );
    }
    check(
        "folders",
        PlanVerdict::Ok,
        format!("folders {}", theirs.replace("%DATASET_ID%", dataset)),
        None,
    )
}

/// The first `n` exports of `s`, with what each holds.
fn first_exports(s: &Schedule, n: usize) -> Vec<(String, &'static str)> {
    let step = match (s.export_mode, s.time_unit) {
        (ExportMode::DailyFullExport, _) => None,
        (_, TimeUnit::Day) => Some(86_400 * i64::from(s.interval.max(1))),
        (_, TimeUnit::Hour) => Some(3_600 * i64::from(s.interval.max(1))),
    };
    let mut out = vec![(at(s.start_time), "full")];
    if let Some(step) = step {
        let mut t = s.start_time;
        while out.len() < n {
            t += step;
            if t > s.ends_at() {
                break;
            }
            out.push((at(t), "incremental"));
        }
    }
    out
}

fn at(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn list(ids: &[impl AsRef<str>]) -> String {
    ids.iter()
        .map(|d| d.as_ref().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(mode: ExportMode, unit: TimeUnit, interval: u32, end: Option<i64>) -> Schedule {
        Schedule {
            export_mode: mode,
            time_unit: unit,
            interval,
            start_time: 1_796_000_000,
            end_time: end,
            foldername_template: None,
        }
    }

    fn target(file_type: FileType, compression: Compression) -> ExportTarget {
        ExportTarget {
            destination: scoreland_ingest::Destination::Dlz,
            file_type,
            compression,
            bucket: None,
            path: "p".into(),
        }
    }

    #[test]
    fn profile_datasets_over_the_limits_fail_and_near_them_warn() {
        let raw = target(FileType::Parquet, Compression::None);
        let gz = target(FileType::Parquet, Compression::Gzip);
        assert_eq!(
            size_check(PROFILE_CLASS, &raw, 1_000_001).verdict,
            PlanVerdict::Fail
        );
        assert!(
            size_check(PROFILE_CLASS, &raw, 1_000_001)
                .fix
                .unwrap()
                .contains("GZIP")
        );
        assert_eq!(
            size_check(PROFILE_CLASS, &raw, 10).verdict,
            PlanVerdict::Warn
        );
        assert_eq!(
            size_check(PROFILE_CLASS, &gz, 1_000_001).verdict,
            PlanVerdict::Ok
        );
        assert_eq!(
            size_check(PROFILE_CLASS, &gz, 10_000_000_001).verdict,
            PlanVerdict::Fail
        );
        assert_eq!(
            size_check(EVENT_CLASS, &raw, 5_000_000).verdict,
            PlanVerdict::Ok
        );
    }

    #[test]
    fn schedules_spell_out_their_exports_and_their_end() {
        let s = schedule(
            ExportMode::FirstFullThenIncremental,
            TimeUnit::Hour,
            6,
            None,
        );
        let runs = first_exports(&s, 3);
        assert_eq!(
            runs,
            [
                ("2026-11-30T00:53:20Z".to_string(), "full"),
                ("2026-11-30T06:53:20Z".to_string(), "incremental"),
                ("2026-11-30T12:53:20Z".to_string(), "incremental"),
            ]
        );
        let start = DateTime::<Utc>::from_timestamp(s.start_time, 0).unwrap();
        let c = schedule_check(&s, true, start);
        assert_eq!(c.verdict, PlanVerdict::Ok, "{}", c.detail);
        assert!(
            c.detail.contains("every 6 hours") && c.detail.contains("six months"),
            "{}",
            c.detail
        );
        let late = start + Duration::days(170);
        assert_eq!(schedule_check(&s, true, late).verdict, PlanVerdict::Warn);
        let over = start + Duration::days(200);
        assert_eq!(schedule_check(&s, true, over).verdict, PlanVerdict::Fail);
        let once = schedule(ExportMode::DailyFullExport, TimeUnit::Day, 0, None);
        assert_eq!(first_exports(&once, 3).len(), 1);
    }

    #[test]
    fn classes_come_from_the_class_or_what_it_extends() {
        assert_eq!(
            class_of(&serde_json::json!({"meta:class": EVENT_CLASS})),
            EVENT_CLASS
        );
        assert_eq!(
            class_of(
                &serde_json::json!({"meta:class": "https://ns.adobe.com/acme/classes/x", "meta:extends": [PROFILE_CLASS]})
            ),
            PROFILE_CLASS
        );
        assert_eq!(class_of(&serde_json::json!({})), "not given");
    }
}
