//! Pipeline files: typed TOML with `${VAR}` interpolation.
//!
//! The file is first parsed as written, so unknown fields and type errors are reported with
//! file, line and column (and without any secret, as nothing is substituted yet); then every
//! string is interpolated and the file parsed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scoreland_ingest::{BatchSelection, RowCountCheck, Secret};
use scoreland_sink::SinkConfig;
use scoreland_transform::{OutputFormat, TransformConfig};
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Names the pipeline's state, lock and run records; defaults to the file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Local directory for staged batches (default `staging`, beside where scoreland runs).
    #[serde(default)]
    pub staging: Option<PathBuf>,
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
        #[serde(default = "default_platform_url")]
        platform_url: String,
        #[serde(default = "default_ims_url")]
        ims_url: String,
        org_id: String,
        sandbox: String,
        /// OAuth server-to-server credentials (use `${VAR}` to keep them out of the file).
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        client_secret: Option<Secret>,
        #[serde(default)]
        scopes: Option<String>,
        /// A static token instead of client credentials (testing).
        #[serde(default)]
        access_token: Option<Secret>,
        #[serde(default)]
        api_key: Option<String>,
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
}

fn default_platform_url() -> String {
    scoreland_ingest::PlatformConfig::DEFAULT_PLATFORM_URL.into()
}
fn default_ims_url() -> String {
    scoreland_ingest::PlatformConfig::DEFAULT_IMS_URL.into()
}

/// `[sink]`: where and how the tables land.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    pub url: String,
    /// `parquet` (default), `csv` or `ndjson`.
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
}

impl SinkSection {
    pub fn sink_config(&self) -> SinkConfig {
        SinkConfig {
            url: self.url.clone(),
            options: self.options.clone(),
        }
    }

    pub fn output_format(&self) -> Result<OutputFormat, String> {
        match self.format.as_deref().unwrap_or("parquet") {
            "parquet" => Ok(OutputFormat::Parquet {
                compression: self.compression.clone().unwrap_or_else(|| "zstd".into()),
                compression_level: self.compression_level,
                row_group_size: self.row_group_size,
            }),
            "csv" | "ndjson" if self.compression.is_some() || self.row_group_size.is_some() => {
                Err("compression and row_group_size apply to parquet only".into())
            }
            "csv" => Ok(OutputFormat::Csv),
            "ndjson" => Ok(OutputFormat::Ndjson),
            other => Err(format!(
                "format = {other:?} is not one of parquet, csv, ndjson"
            )),
        }
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
            format!("unset-{name}")
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
        toml::from_str::<PipelineFile>(raw).map_err(|e| invalid(e.to_string()))?;
        let mut table: toml::Table = toml::from_str(raw).map_err(|e| invalid(e.to_string()))?;
        interpolate_table(&mut table, &mut Vec::new(), lookup, missing).map_err(invalid)?;
        let mut file: PipelineFile = table
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        if file.name.is_none() {
            file.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        file.check().map_err(invalid)?;
        Ok(file)
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("pipeline")
    }

    /// Everything that can be checked without running.
    fn check(&self) -> Result<(), String> {
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
        self.sink.output_format()?;
        self.sink.sink_config().url().map_err(|e| e.to_string())?;
        if let SourceConfig::Aep {
            platform_url,
            ims_url,
            client_id,
            client_secret,
            access_token,
            api_key,
            ..
        } = &self.source
        {
            for (field, url) in [("platform_url", platform_url), ("ims_url", ims_url)] {
                url::Url::parse(url).map_err(|e| format!("source.{field} = {url:?}: {e}"))?;
            }
            let oauth = client_id.is_some() || client_secret.is_some();
            let token = access_token.is_some() || api_key.is_some();
            if oauth == token {
                return Err(
                    "source: give client_id and client_secret (OAuth), or access_token and api_key (static token)"
                        .into(),
                );
            }
        }
        let common = match &self.source {
            SourceConfig::Aep { common, .. } | SourceConfig::Simulator { common, .. } => common,
        };
        if let Some(t) = &common.max_retry_time {
            humantime::parse_duration(t)
                .map_err(|e| format!("source.max_retry_time = {t:?}: {e}"))?;
        }
        if let Some(c) = common.concurrency {
            scoreland_ingest::check_concurrency(c)
                .map_err(|why| format!("source.concurrency = {c}: {why}"))?;
        }
        Ok(())
    }
}

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
