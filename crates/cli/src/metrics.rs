//! `scoreland run --metrics-file PATH`: the run in Prometheus' text format, for node_exporter's
//! textfile collector (the file is replaced whole, readable by the collector's user). The last success time survives failed runs: it is read back from the file.

use std::fmt::Write as _;
use std::path::Path;

use scoreland_pipeline::{RunRecord, RunStatus};

const STATUSES: [(&str, RunStatus); 4] = [
    ("landed", RunStatus::Landed),
    ("nothing_new", RunStatus::NothingNew),
    ("dry_run", RunStatus::DryRun),
    ("failed", RunStatus::Failed),
];

/// Writes the metrics of `pipeline`'s run (`record`, when the run got far enough to have one).
pub fn write(path: &Path, pipeline: &str, record: Option<&RunRecord>) -> anyhow::Result<()> {
    let status = record.map_or(RunStatus::Failed, |r| r.status);
    let succeeded = matches!(status, RunStatus::Landed | RunStatus::NothingNew);
    let p = format!("pipeline=\"{}\"", label(pipeline));
    let last_success = if succeeded {
        Some(chrono::Utc::now().timestamp_millis() as f64 / 1e3)
    } else {
        previous(path, "scoreland_last_success_timestamp_seconds", &p)
    };
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    metric(
        "scoreland_run_success",
        "1 when the pipeline's last run landed or found nothing new, 0 when it failed.",
        &[(p.clone(), f64::from(u8::from(succeeded)))],
    );
    metric(
        "scoreland_run_status",
        "The last run's status (1 for the one it ended with).",
        &STATUSES
            .iter()
            .map(|(n, s)| {
                (
                    format!("{p},status=\"{n}\""),
                    f64::from(u8::from(*s == status)),
                )
            })
            .collect::<Vec<_>>(),
    );
    if let Some(t) = last_success {
        metric(
            "scoreland_last_success_timestamp_seconds",
            "When a run of the pipeline last landed or found nothing new (Unix time).",
            &[(p.clone(), t)],
        );
    }
    if let Some(r) = record {
        let seconds = match (
            chrono::DateTime::parse_from_rfc3339(&r.started_at),
            chrono::DateTime::parse_from_rfc3339(&r.finished_at),
        ) {
            (Ok(a), Ok(b)) => (b - a).num_milliseconds() as f64 / 1e3,
            _ => 0.0,
        };
        metric(
            "scoreland_run_duration_seconds",
            "How long the last run took.",
            &[(p.clone(), seconds)],
        );
        metric(
            "scoreland_run_rows",
            "Rows of the last run: read (in) and landed in scores (out).",
            &[
                (format!("{p},stage=\"in\""), r.rows_in as f64),
                (format!("{p},stage=\"out\""), r.rows_out as f64),
            ],
        );
        metric(
            "scoreland_run_bytes_downloaded",
            "Bytes the last run downloaded.",
            &[(p.clone(), r.bytes_downloaded as f64)],
        );
        metric(
            "scoreland_run_retries",
            "Requests the last run retried.",
            &[(p.clone(), r.retries as f64)],
        );
        if !r.checks.is_empty() {
            metric(
                "scoreland_check_failed",
                "1 when the check failed in the last run (status fail, warn or overridden).",
                &r.checks
                    .iter()
                    .map(|c| {
                        let failed = matches!(c.status.as_str(), "fail" | "warn" | "overridden");
                        (
                            format!(
                                "{p},check=\"{}\",level=\"{}\"",
                                label(&c.check),
                                c.level.as_str()
                            ),
                            f64::from(u8::from(failed)),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
            metric(
                "scoreland_check_value",
                "The value each check measured in the last run.",
                &r.checks
                    .iter()
                    .filter_map(|c| Some((format!("{p},check=\"{}\"", label(&c.check)), c.value?)))
                    .collect::<Vec<_>>(),
            );
        }
    }
    crate::report::replace_whole(path, out.as_bytes())
}

/// A label value as the text format writes it (backslash, quote and newline escaped).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The value of `name{labels}` in the file a previous run wrote.
fn previous(path: &Path, name: &str, labels: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_and_a_garbled_file_stay_inside_their_labels() {
        // Check names carry model names from the platform's data.
        assert_eq!(label("a\"} 1\nevil{x=\"1"), "a\\\"} 1\\nevil{x=\\\"1");
        assert_eq!(label("back\\slash"), "back\\\\slash");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let last = "scoreland_last_success_timestamp_seconds";
        // A previous file that is not ours, or whose value is not a number: no last success.
        std::fs::write(
            &path,
            format!("garbage\n{last}{{pipeline=\"demo\"}} NaNx\n\u{0}"),
        )
        .unwrap();
        assert_eq!(previous(&path, last, "pipeline=\"demo\""), None);
        // Another pipeline's line is not this one's.
        std::fs::write(&path, format!("{last}{{pipeline=\"other\"}} 17\n")).unwrap();
        assert_eq!(previous(&path, last, "pipeline=\"demo\""), None);
        // A failed run without a record keeps the previous success and says it failed.
        std::fs::write(&path, format!("{last}{{pipeline=\"demo\"}} 1700000000.5\n")).unwrap();
        write(&path, "demo", None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("{last}{{pipeline=\"demo\"}} 1700000000.5\n")),
            "{text}"
        );
        assert!(
            text.contains("scoreland_run_success{pipeline=\"demo\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("scoreland_run_status{pipeline=\"demo\",status=\"failed\"} 1\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "node_exporter runs as another user");
        }
    }
}
