//! Pipeline files: typed TOML with `${VAR}` interpolation.
//!
//! The file is first parsed as written, so unknown fields and type errors are reported with
//! file, line and column (and without any secret, as nothing is substituted yet); then every
//! string is interpolated and the file parsed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scoreland_ingest::{
    BatchSelection, DownloadOptions, IngestError, PlatformSettings, RowCountCheck,
};
use scoreland_sink::SinkConfig;
use scoreland_transform::{OutputFormat, TransformConfig};
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;
use crate::exports::ExportSource;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Names the pipeline's state, lock and run records; defaults to the file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Local directory for staged batches (default `staging`, beside where scoreland runs).
    #[serde(default)]
    pub staging: Option<PathBuf>,
    /// How long staged batches are kept after they were verified (default "7d"); older ones
    /// are removed after each landing run. Batches of the run itself are always kept.
    #[serde(default)]
    pub staging_retention: Option<String>,
    /// Write the HTML report (`scoreland report`) to this path after every landed run.
    #[serde(default)]
    pub report: Option<PathBuf>,
    pub source: SourceConfig,
    #[serde(default)]
    pub transform: TransformConfig,
    pub sink: SinkSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A real AEP org (or anything that speaks its API).
    Aep {
        /// URLs, org, sandbox and credentials (use `${VAR}` to keep secrets out of the file).
        #[serde(flatten)]
        platform: PlatformSettings,
        dataset: String,
        #[serde(flatten)]
        common: SourceCommon,
    },
    /// The bundled simulator, started in process on a loopback port: no credentials needed.
    Simulator {
        data: PathBuf,
        /// Defaults to the platform's first dataset.
        #[serde(default)]
        dataset: Option<String>,
        #[serde(flatten)]
        common: SourceCommon,
    },
    /// The folders a Flow Service dataset export writes (docs/exports.md), from S3, Azure, GCS, a
    /// path or the Data Landing Zone.
    #[serde(rename = "dataset-export")]
    DatasetExport(Box<ExportSource>),
    /// Profiles and their audience memberships, exported by a profile export job into a
    /// dataset and landed as `profiles`, `audiences` and `audience_summary` (docs/profile-exports.md).
    #[serde(rename = "profile-export")]
    ProfileExport(Box<crate::profiles::ProfileExportSource>),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceCommon {
    /// The IMS client that writes the scores (`acp_foundation_push` for Customer AI).
    #[serde(default)]
    pub created_client: Option<String>,
    /// `{ mode = "newest" }` (default), `{ mode = "batch", id = "…" }` or
    /// `{ mode = "catch_up" }` (every batch since the last one landed).
    #[serde(default)]
    pub batches: Option<BatchSelection>,
    /// Parts downloaded at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub row_count_check: Option<RowCountCheck>,
    /// Retry budget per request, e.g. "5m".
    #[serde(default)]
    pub max_retry_time: Option<String>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Bytes per second below which a download is abandoned and resumed, e.g. "16KiB".
    #[serde(default)]
    pub min_speed: Option<String>,
    /// Over how long `min_speed` is measured, e.g. "30s".
    #[serde(default)]
    pub min_speed_time: Option<String>,
    /// Disk space a download must leave free in staging, e.g. "5GiB" (default: none).
    #[serde(default)]
    pub keep_free: Option<String>,
}

impl SourceCommon {
    /// The download options these settings give; errors name the field.
    pub fn download_options(&self) -> Result<DownloadOptions, String> {
        let mut o = DownloadOptions::default();
        if let Some(c) = self.concurrency {
            scoreland_ingest::check_concurrency(c)
                .map_err(|why| format!("source.concurrency = {c}: {why}"))?;
            o.concurrency = c;
        }
        if let Some(r) = self.row_count_check {
            o.row_count_check = r;
        }
        if let Some(n) = self.max_attempts {
            if n == 0 {
                return Err("source.max_attempts = 0: must be at least 1".into());
            }
            o.retry.max_attempts = n;
        }
        if let Some(t) = &self.max_retry_time {
            o.retry.max_elapsed = duration("max_retry_time", t)?;
        }
        if let Some(t) = &self.min_speed_time {
            o.min_speed_window = duration("min_speed_time", t)?;
        }
        if let Some(s) = &self.keep_free {
            o.keep_free = size("keep_free", s, "5GiB")?;
        }
        if let Some(s) = &self.min_speed {
            // Per second: "16KiB" and "16KiB/s" say the same.
            o.min_speed = size("min_speed", s.trim().trim_end_matches("/s"), "16KiB")?;
        }
        Ok(o)
    }
}

fn size(field: &str, s: &str, example: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("source.{field} = {s:?} is not a size like \"{example}\": {e}"))
}

fn duration(field: &str, t: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(t.trim())
        .map_err(|e| format!("source.{field} = {t:?} is not a duration like \"5m\": {e}"))
}

/// A platform setting's error in the words of a pipeline file (`source.client_id: …`).
pub(crate) fn source_error(e: IngestError) -> String {
    match e {
        IngestError::Config { field, message } => format!("source.{field}: {message}"),
        other => format!("source: {other}"),
    }
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
        // As written: locations for unknown fields and wrong types.
        toml::from_str::<PipelineFile>(raw).map_err(|e| invalid(located(raw, &e)))?;
        let mut table: toml::Table = toml::from_str(raw).map_err(|e| invalid(located(raw, &e)))?;
        interpolate_table(&mut table, &mut Vec::new(), lookup, missing).map_err(invalid)?;
        // Interpolated values may be secrets: this error says what, never the value.
        let mut file: PipelineFile = table
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.message().to_string()))?;
        if file.name.is_none() {
            file.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        file.check(missing.is_some()).map_err(invalid)?;
        Ok(file)
    }

    /// `staging_retention`, 7 days by default.
    pub fn staging_retention(&self) -> Result<std::time::Duration, String> {
        match &self.staging_retention {
            None => Ok(std::time::Duration::from_secs(7 * 86_400)),
            Some(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                format!("staging_retention = {t:?} is not a duration like \"7d\": {e}")
            }),
        }
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
        self.staging_retention()?;
        self.sink.output_format()?;
        self.sink.extract_formats()?;
        self.sink.sink_config().url().map_err(|e| e.to_string())?;
        if let SourceConfig::Aep { platform, .. } = &self.source {
            let mut platform = platform.clone();
            if placeholders {
                for url in [&mut platform.platform_url, &mut platform.ims_url] {
                    if url.contains(UNSET) {
                        *url = "https://unset.invalid".into();
                    }
                }
            }
            platform.build().map_err(source_error)?;
        }
        match &self.source {
            SourceConfig::Aep { common, .. } | SourceConfig::Simulator { common, .. } => {
                common.download_options()?;
            }
            // With placeholders (`validate` without the variables), a platform whose URL is
            // still unset is checked at run time.
            SourceConfig::DatasetExport(src) => {
                if !placeholders || !unset_url(src.platform.as_ref()) {
                    src.check()?;
                }
            }
            SourceConfig::ProfileExport(src) => {
                if !placeholders || !unset_url(src.platform.as_ref()) {
                    src.check()?;
                }
                if !self.sink.extract_formats()?.is_empty() {
                    return Err(
                        "sink.extracts: a profile-export pipeline lands tables only; remove extracts"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Whether a platform's URL comes from a variable that is not set.
fn unset_url(platform: Option<&PlatformSettings>) -> bool {
    platform.is_some_and(|p| p.platform_url.contains(UNSET))
}

/// A TOML error as "line L, column C: what", without the quoted line that toml's own message
/// carries: that line may hold a secret written into the file.
fn located(raw: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &raw[..span.start.min(raw.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

/// What a variable not set becomes under `validate`.
const UNSET: &str = "unset-";

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;
/// What a required variable that is not set becomes (for `validate`); `None` makes it an error.
type Missing<'a> = &'a dyn Fn(&str) -> String;

fn interpolate_table(
    table: &mut toml::Table,
    path: &mut Vec<String>,
    lookup: Lookup,
    missing: Option<Missing>,
) -> Result<(), String> {
    for (k, v) in table.iter_mut() {
        path.push(k.clone());
        interpolate_value(v, path, lookup, missing)?;
        path.pop();
    }
    Ok(())
}

fn interpolate_value(
    v: &mut toml::Value,
    path: &mut Vec<String>,
    lookup: Lookup,
    missing: Option<Missing>,
) -> Result<(), String> {
    match v {
        toml::Value::String(s) => {
            *s = expand(s, lookup, missing).map_err(|e| format!("{}: {e}", path.join(".")))?;
        }
        toml::Value::Table(t) => interpolate_table(t, path, lookup, missing)?,
        toml::Value::Array(items) => {
            for item in items {
                interpolate_value(item, path, lookup, missing)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}`, `${VAR:-default}` and `${VAR:?message}`; `$$` is a literal `$`.
pub fn interpolate(s: &str, lookup: Lookup) -> Result<String, String> {
    expand(s, lookup, None)
}

fn expand(s: &str, lookup: Lookup, missing: Option<Missing>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unclosed '${{' in {s:?}"))?;
        let expr = &body[..end];
        rest = &body[end + 1..];
        let (name, op) = match expr.find([':']) {
            Some(j) => (&expr[..j], Some(&expr[j..])),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("'${{{expr}}}' is not a variable reference"));
        }
        let value = lookup(name).filter(|v| !v.is_empty());
        match (value, op) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(op)) if op.starts_with(":-") => out.push_str(&op[2..]),
            (None, _) if missing.is_some() => {
                out.push_str(&missing.map(|m| m(name)).unwrap_or_default())
            }
            (None, Some(op)) if op.starts_with(":?") => {
                let msg = &op[2..];
                return Err(if msg.is_empty() {
                    format!("environment variable {name} is not set")
                } else {
                    format!("environment variable {name} is not set: {msg}")
                });
            }
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                ));
            }
            (None, Some(op)) => return Err(format!("unknown operator '{op}' in '${{{expr}}}'")),
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_forms() {
        assert_eq!(interpolate("x-${A}-y", &env).unwrap(), "x-alpha-y");
        assert_eq!(interpolate("${B:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("$$5 and $x", &env).unwrap(), "$5 and $x");
        assert!(
            interpolate("${B}", &env)
                .unwrap_err()
                .contains("B is not set")
        );
        assert!(
            interpolate("${B:?set it}", &env)
                .unwrap_err()
                .contains("set it")
        );
        assert!(interpolate("${A", &env).is_err());
    }

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
