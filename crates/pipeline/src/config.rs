//! Pipeline files: typed TOML with `${VAR}` interpolation.
//!
//! The file is first parsed as written, so unknown fields and type errors are reported with
//! file, line and column (and without any secret, as nothing is substituted yet); then every
//! string is interpolated and the file parsed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scoreland_sink::SinkConfig;
use scoreland_transform::{ChecksConfig, OutputFormat, TransformConfig};
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;
use crate::interpolate::{Lookup, Missing, UNSET, interpolate_table};
use crate::source::SourceConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// The file this was read from (for errors that name it).
    #[serde(skip)]
    pub path: PathBuf,
    /// Names the pipeline's state, lock and run records; defaults to the file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Local directory for staged batches (default `staging`, beside where scoreland runs).
    #[serde(default)]
    pub staging: Option<PathBuf>,
    /// How long staged batches are kept after they were verified (default "7d"); older ones
    /// are removed after each landing run. Batches of the run itself are always kept.
    #[serde(default)]
    pub staging_retention: Option<scoreland_ingest::HumanDuration>,
    /// Write the HTML report (`scoreland report`) to this path after every landed run.
    #[serde(default)]
    pub report: Option<PathBuf>,
    pub source: SourceConfig,
    #[serde(default)]
    pub transform: TransformConfig,
    /// The quality gate: checks of the night's tables before they are published
    /// (docs/pipelines.md).
    #[serde(default)]
    pub checks: Option<ChecksConfig>,
    /// OpenLineage run events (docs/pipelines.md).
    #[serde(default)]
    pub lineage: Option<crate::lineage::LineageConfig>,
    /// What `serve` may show of the tables this pipeline lands.
    #[serde(default)]
    pub serve: Option<ServeSection>,
    pub sink: SinkSection,
}

/// `[serve]`: kept with the tables (a table property), so every `serve` of the warehouse
/// enforces it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// Data usage labels (`C2`, `I1`, …) whose columns `serve` shows as NULL: a column whose
    /// field (or the dataset) carries one of them.
    #[serde(default)]
    pub deny_labels: Vec<String>,
}

/// `[sink]`: where and how the tables land.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    pub url: String,
    /// `parquet`, the only format of Delta tables (kept so that files that say so stay valid).
    #[serde(default)]
    pub format: Option<String>,
    /// Parquet codec (default `zstd`).
    #[serde(default)]
    pub compression: Option<String>,
    #[serde(default)]
    pub compression_level: Option<i32>,
    #[serde(default)]
    pub row_group_size: Option<usize>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Accept a store that ignores create-if-absent (unsafe with concurrent runs; see
    /// docs/sinks.md).
    #[serde(default)]
    pub single_writer: bool,
    /// Plain copies of each night's tables for consumers that cannot read Delta: any of
    /// "csv", "ndjson", "parquet", published as `_extracts/<table>/<dataset>.<ext>`.
    #[serde(default)]
    pub extracts: Vec<String>,
}

impl SinkSection {
    pub fn sink_config(&self) -> SinkConfig {
        SinkConfig {
            url: self.url.clone(),
            options: self.options.clone(),
            single_writer: self.single_writer,
        }
    }

    /// The extract formats, checked.
    pub fn extract_formats(&self) -> Result<Vec<OutputFormat>, String> {
        self.extracts
            .iter()
            .map(|e| match e.as_str() {
                "csv" => Ok(OutputFormat::Csv),
                "ndjson" => Ok(OutputFormat::Ndjson),
                "parquet" => Ok(OutputFormat::default()),
                other => Err(format!(
                    "extracts = [{other:?}]: each extract is one of \"csv\", \"ndjson\", \"parquet\""
                )),
            })
            .collect()
    }

    pub fn output_format(&self) -> Result<OutputFormat, String> {
        match self.format.as_deref().unwrap_or("parquet") {
            "parquet" => {
                let compression = self.compression.clone().unwrap_or_else(|| "zstd".into());
                check_codec(&compression, self.compression_level)?;
                if self.row_group_size == Some(0) {
                    return Err("row_group_size = 0: must be at least 1".into());
                }
                Ok(OutputFormat::Parquet {
                    compression,
                    compression_level: self.compression_level,
                    row_group_size: self.row_group_size,
                })
            }
            f @ ("csv" | "ndjson") => Err(format!(
                "format = {f:?}: the tables are Delta Lake tables, whose files are parquet; for a plain {f} copy of each night set extracts = [{f:?}] under [sink]"
            )),
            other => Err(format!(
                "format = {other:?} is not one of parquet, csv, ndjson"
            )),
        }
    }
}

/// The parquet codecs DataFusion writes, and the levels each takes.
fn check_codec(codec: &str, level: Option<i32>) -> Result<(), String> {
    let levels = match codec {
        "uncompressed" | "snappy" | "lz4" | "lz4_raw" => None,
        "zstd" => Some(1..=22),
        "gzip" => Some(0..=9),
        "brotli" => Some(0..=11),
        other => {
            return Err(format!(
                "compression = {other:?} is not one of zstd, snappy, gzip, brotli, lz4, lz4_raw, uncompressed"
            ));
        }
    };
    match (levels, level) {
        (_, None) => Ok(()),
        (None, Some(l)) => Err(format!("compression_level = {l}: {codec} takes no level")),
        (Some(r), Some(l)) if !r.contains(&l) => Err(format!(
            "compression_level = {l}: {codec} takes {} to {}",
            r.start(),
            r.end()
        )),
        _ => Ok(()),
    }
}

impl PipelineFile {
    /// Whether the night's tables are Customer AI scores (not a profile export, not a dataset
    /// landed from its schema): the only transform a cluster runs.
    pub fn lands_scores(&self) -> bool {
        !matches!(self.source, SourceConfig::ProfileExport(_)) && self.transform.dataset.is_none()
    }

    /// Reads, interpolates and checks a pipeline file.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let raw = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&raw, path)
    }

    /// For `validate`: like [`Self::load`], but a variable that is not set is only noted (it
    /// may be set where the pipeline runs); the names of those variables are returned.
    pub fn check_file(path: &Path) -> Result<(Self, Vec<String>), PipelineError> {
        let raw = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let unset = std::cell::RefCell::new(Vec::new());
        let lookup = |name: &str| std::env::var(name).ok();
        let missing = |name: &str| {
            unset.borrow_mut().push(name.to_string());
            format!("{UNSET}{name}")
        };
        let file = Self::parse_with(&raw, path, &lookup, Some(&missing))?;
        let mut unset = unset.into_inner();
        unset.sort();
        unset.dedup();
        Ok((file, unset))
    }

    pub fn parse(raw: &str, path: &Path) -> Result<Self, PipelineError> {
        Self::parse_with(raw, path, &|name| std::env::var(name).ok(), None)
    }

    fn parse_with(
        raw: &str,
        path: &Path,
        lookup: Lookup,
        missing: Option<Missing>,
    ) -> Result<Self, PipelineError> {
        let invalid = |message: String| PipelineError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        // As written: locations for unknown fields and wrong types. A typed value written as a
        // variable (`memory_limit = "${MEM}"`) is checked once interpolated, below.
        if let Err(e) = toml::from_str::<PipelineFile>(raw)
            && !e
                .span()
                .and_then(|span| raw.get(span))
                .is_some_and(|written| written.contains("${"))
        {
            return Err(invalid(located(raw, &e)));
        }
        let mut table: toml::Table = toml::from_str(raw).map_err(|e| invalid(located(raw, &e)))?;
        interpolate_table(&mut table, &mut Vec::new(), lookup, missing).map_err(invalid)?;
        // Interpolated values may be secrets: this error says what, never the value.
        let mut file: PipelineFile = table
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.message().to_string()))?;
        file.path = path.to_path_buf();
        if file.name.is_none() {
            file.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        file.check(missing.is_some()).map_err(invalid)?;
        Ok(file)
    }

    /// `staging_retention`, 7 days by default.
    pub fn staging_retention(&self) -> std::time::Duration {
        self.staging_retention
            .map_or(std::time::Duration::from_secs(7 * 86_400), |d| d.0)
    }

    /// The tables a run of this pipeline lands.
    pub fn tables(&self) -> Vec<String> {
        if let Some(d) = &self.transform.dataset {
            return d.tables();
        }
        let mut tables = match &self.source {
            SourceConfig::ProfileExport(_) => crate::record::AUDIENCE_TABLES.to_vec(),
            _ => crate::record::TABLES.to_vec(),
        };
        if self.checks.is_some() {
            tables.push("checks");
        }
        tables.into_iter().map(str::to_string).collect()
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("pipeline")
    }

    /// Everything that can be checked without running.
    /// `placeholders`: for `validate`, variables not set here stand as `unset-NAME`; a URL made
    /// of one is checked where the pipeline runs, not here.
    fn check(&self, placeholders: bool) -> Result<(), String> {
        let name = self.name();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "name = {name:?}: use letters, digits, '-' and '_' only"
            ));
        }
        self.transform.validate().map_err(|e| e.to_string())?;
        if let Some(lineage) = &self.lineage {
            lineage.validate(placeholders)?;
        }
        if let Some(serve) = &self.serve {
            if self.transform.dataset.is_none() {
                return Err(
                    "[serve] deny_labels: the labels are of a dataset's fields; they \
                            apply to a [transform.dataset] pipeline's tables"
                        .into(),
                );
            }
            for l in &serve.deny_labels {
                if l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "serve.deny_labels: {l:?} is not a label (letters, digits and '_', e.g. \"C2\")"
                    ));
                }
            }
        }
        if let Some(checks) = &self.checks {
            checks.validate()?;
            if let SourceConfig::ProfileExport(_) = &self.source {
                return Err(
                    "[checks]: the checks are of score tables; a profile-export pipeline has none"
                        .into(),
                );
            }
        }
        self.sink.output_format()?;
        self.sink.extract_formats()?;
        self.sink.sink_config().url().map_err(|e| e.to_string())?;
        self.source.check(placeholders)?;
        if let Some(landing) = &self.transform.dataset {
            for table in landing.tables() {
                if crate::record::ALL_TABLES.contains(&table.as_str()) {
                    return Err(format!(
                        "transform.dataset: table {table:?} is one of scoreland's own tables \
                         ({}); choose another name",
                        crate::record::ALL_TABLES.join(", ")
                    ));
                }
            }
            match &self.source {
                SourceConfig::Aep { .. } | SourceConfig::Simulator { .. } => {}
                SourceConfig::DatasetExport(e) if e.platform.is_some() || e.simulator.is_some() => {
                }
                SourceConfig::DatasetExport(_) => {
                    return Err(
                        "[transform.dataset] reads the dataset's schema from the Schema \
                         Registry: give [source.platform] (or [source.simulator])"
                            .into(),
                    );
                }
                SourceConfig::ProfileExport(_) => {
                    return Err(
                        "[transform.dataset]: a profile-export pipeline lands profiles \
                         and memberships as its own tables"
                            .into(),
                    );
                }
            }
            if let Some(checks) = &self.checks {
                // Whether the dataset has dates (events) is known when its schema is read.
                checks
                    .validate_for_dataset(true)
                    .map_err(|e| e.to_string())?;
            }
            if !self.sink.extracts.is_empty() {
                return Err(
                    "sink.extracts: a [transform.dataset] pipeline lands its table only; \
                     remove extracts"
                        .into(),
                );
            }
        }
        if let SourceConfig::ProfileExport(_) = &self.source
            && !self.sink.extracts.is_empty()
        {
            return Err(
                "sink.extracts: a profile-export pipeline lands tables only; remove extracts"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A TOML error as "line L, column C: key: what", naming the key of the value it is about
/// (`source.min_speed`), without the quoted line that toml's own message carries: that line may
/// hold a secret written into the file.
fn located(raw: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    // A value inside a flattened table is reported at the table: find it there by the value
    // the message quotes.
    let at = value_in(raw, span.clone(), e.message()).unwrap_or(span.start);
    let before = &raw[..at.min(raw.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.len() - line_start + 1;
    format!(
        "line {line}, column {column}: {}{}",
        key_at(raw, line_start, at)
            .map(|k| format!("{k}: "))
            .unwrap_or_default(),
        e.message()
    )
}

/// An error inside a flattened table (`[source]`) comes with the table header's span: where,
/// in that table or its subtables, a `key = "value"` line holds a value `message` quotes.
fn value_in(raw: &str, span: std::ops::Range<usize>, message: &str) -> Option<usize> {
    let header = raw.get(span.clone())?.trim();
    let table = header.strip_prefix('[')?.trim_end_matches(']').trim();
    let mut offset = span.end;
    for line in raw.get(span.end..)?.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[')
            && !trimmed
                .trim_start_matches('[')
                .starts_with(&format!("{table}."))
        {
            return None;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim();
            if value.len() > 2 && value.starts_with('"') && message.contains(value) {
                return Some(offset + key.len() + 1);
            }
        }
        offset += line.len();
    }
    None
}

/// The dotted key whose value starts at `at`, on the line from `line_start`: the nearest
/// `[table]` header above it and the line's `key =`. `None` when `at` is not in a value.
fn key_at(raw: &str, line_start: usize, at: usize) -> Option<String> {
    let text = &raw[line_start..];
    let text = &text[..text.find('\n').unwrap_or(text.len())];
    let (key, _) = text.split_once('=')?;
    let key = key.trim();
    let plain = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if !plain(key) || at <= line_start + text.find('=')? {
        return None;
    }
    let table = raw[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        let name = l.strip_prefix('[')?.trim_start_matches('[');
        let name = name.split(']').next()?.trim();
        plain(name).then(|| name.to_string())
    });
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_bounded() {
        let parse = |c: usize| {
            let raw = format!(
                "[source]\ntype = \"simulator\"\ndata = \"x\"\nconcurrency = {c}\n[sink]\nurl = \"w\"\n"
            );
            PipelineFile::parse(&raw, Path::new("p.toml"))
        };
        for ok in [1, 16, scoreland_ingest::MAX_CONCURRENCY] {
            assert!(parse(ok).is_ok(), "{ok}: {:?}", parse(ok).err());
        }
        for bad in [0, scoreland_ingest::MAX_CONCURRENCY + 1] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("source.concurrency"), "{err}");
            assert!(err.contains("from 1 to 256"), "{err}");
        }
    }

    #[test]
    fn a_cluster_engine_is_for_scores_only_and_names_nothing_else() {
        let parse = |transform: &str| {
            let raw = format!(
                "[source]\ntype = \"simulator\"\ndata = \"x\"\n[transform]\n{transform}\n[sink]\nurl = \"w\"\n"
            );
            PipelineFile::parse(&raw, Path::new("p.toml")).map(|f| f.transform.engine)
        };
        let engine = parse("engine = { cluster = \"df://sched:50050\", partitions = 8 }")
            .unwrap()
            .unwrap();
        assert_eq!(
            (engine.cluster.as_str(), engine.partitions),
            ("df://sched:50050", Some(8))
        );
        for (bad, says) in [
            (
                "engine = { cluster = \"df://s:1\", partitions = 0 }",
                "engine.partitions",
            ),
            (
                "engine = { cluster = \"df://s:1\", token = \"x\" }",
                "token",
            ),
            ("engine = { }", "cluster"),
            (
                "engine = { cluster = \"df://s:1\" }\n[transform.dataset]\ntable = \"events\"",
                "[transform.dataset]",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_syntax_error_does_not_echo_a_secret() {
        let raw =
            "[source]\ntype = \"aep\"\nclient_secret = \"hunter2-very-secret\nsandbox = \"prod\"\n";
        let err = PipelineFile::parse(raw, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains("hunter2"), "the secret leaked: {err}");
    }

    #[test]
    fn incomplete_credentials_and_plain_http_are_refused_before_running() {
        let parse = |source: &str| {
            let raw = format!(
                "[source]\ntype = \"aep\"\norg_id = \"o@AdobeOrg\"\nsandbox = \"prod\"\ndataset = \"d\"\n{source}\n[sink]\nurl = \"w\"\n"
            );
            PipelineFile::parse(&raw, Path::new("p.toml")).map(|_| ())
        };
        let err = parse("access_token = \"t\"").unwrap_err().to_string();
        assert!(err.contains("source.api_key"), "{err}");
        assert!(!err.contains("SCORELAND_"), "{err}");
        let err = parse("client_id = \"i\"\nclient_secret = \"s\"\nplatform_url = \"http://platform.example.com\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("plain http"), "{err}");
        let err = parse("client_id = \"i\"\nclient_secret = \"s\"\nmin_speed = \"fast\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.min_speed"), "{err}");
        assert!(parse("client_id = \"i\"\nclient_secret = \"s\"").is_ok());
    }

    #[test]
    fn validate_leaves_a_url_from_an_unset_variable_to_run_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(
            &p,
            "[source]\ntype = \"aep\"\nplatform_url = \"${SCORELAND_TEST_NEVER_SET_URL}\"\norg_id = \"o@AdobeOrg\"\nsandbox = \"prod\"\ndataset = \"d\"\nclient_id = \"i\"\nclient_secret = \"${SCORELAND_TEST_NEVER_SET_SECRET}\"\n[sink]\nurl = \"w\"\n",
        )
        .unwrap();
        let (_, unset) = PipelineFile::check_file(&p).unwrap();
        assert_eq!(
            unset,
            [
                "SCORELAND_TEST_NEVER_SET_SECRET",
                "SCORELAND_TEST_NEVER_SET_URL"
            ]
        );
    }

    #[test]
    fn a_typed_value_may_come_from_a_variable() {
        let file = |limit: &str| {
            let raw = format!(
                "[source]\ntype = \"simulator\"\ndata = \"x\"\n[transform]\nmemory_limit = \"{limit}\"\n[sink]\nurl = \"w\"\n"
            );
            PipelineFile::parse(&raw, Path::new("p.toml"))
        };
        let parsed = file("${SCORELAND_TEST_NEVER_SET_MEM:-512MiB}").unwrap();
        assert_eq!(
            parsed.transform.memory_limit,
            scoreland_transform::MemoryLimit::Bytes(512 << 20)
        );
        let err = file("${SCORELAND_TEST_NEVER_SET_MEM:-lots}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory_limit"), "{err}");
        let err = file("lots").unwrap_err().to_string();
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn codecs_and_levels_are_checked() {
        let sink = |extra: &str| {
            let raw = format!(
                "[source]\ntype = \"simulator\"\ndata = \"x\"\n[sink]\nurl = \"w\"\n{extra}\n"
            );
            PipelineFile::parse(&raw, Path::new("p.toml")).map(|_| ())
        };
        assert!(sink("compression = \"zstd\"\ncompression_level = 3").is_ok());
        assert!(sink("compression = \"zstandard\"").is_err());
        assert!(sink("compression = \"zstd\"\ncompression_level = 40").is_err());
        assert!(sink("compression = \"snappy\"\ncompression_level = 1").is_err());
    }

    #[test]
    fn unknown_fields_are_located() {
        let raw =
            "[source]\ntype = \"simulator\"\ndata = \"x\"\n[sink]\nurl = \"w\"\nfromat = \"csv\"\n";
        let err = PipelineFile::parse(raw, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("line 6"), "{err}");
        assert!(err.contains("fromat"), "{err}");
    }
}
