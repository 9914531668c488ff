//! `[lineage]`: OpenLineage run events for the scheduler and catalog around scoreland. A run
//! sends START when it begins and COMPLETE (with its input, the AEP dataset, and its outputs,
//! the Delta tables it landed with their version, rows, size and schema) or FAIL (with the
//! error) when it ends, to an HTTP endpoint or appended to a file, one JSON object per line.
//! A failure to send is a warning of the run, never a failed night.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::record::{RunRecord, RunStatus};

/// What identifies scoreland (and its version) as the producer of an event: a URI, as the
/// spec asks, naming no web page (the project publishes none).
const PRODUCER: &str = concat!("urn:scoreland:", env!("CARGO_PKG_VERSION"));
const RUN_EVENT: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
/// scoreland's own facets (docs/pipelines.md, "Lineage"): the run id it names runs by, and the
/// batches or export folders a run landed.
const RUN_FACET: &str = "urn:scoreland:facets:scoreland_run";
const BATCHES_FACET: &str = "urn:scoreland:facets:scoreland_batches";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageConfig {
    /// An OpenLineage HTTP endpoint (e.g. Marquez's `http://host:5000/api/v1/lineage`).
    #[serde(default)]
    pub url: Option<String>,
    /// A file the events are appended to, one per line.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The environment variable holding a bearer token for `url`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The jobs' namespace (default `scoreland`).
    #[serde(default)]
    pub namespace: Option<String>,
}

impl LineageConfig {
    /// `placeholders`: for `validate`, a URL made of a variable not set here is checked where
    /// the pipeline runs.
    pub fn validate(&self, placeholders: bool) -> Result<(), String> {
        if self.url.is_none() && self.file.is_none() {
            return Err("[lineage]: give url (an OpenLineage endpoint), file, or both".into());
        }
        if let Some(u) = &self.url
            && !(placeholders && u.contains(crate::interpolate::UNSET))
        {
            let parsed =
                url::Url::parse(u).map_err(|e| format!("lineage.url = {u:?}: not a URL ({e})"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("lineage.url = {u:?}: use http:// or https://"));
            }
        }
        if let Some(t) = &self.token_env
            && (t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!(
                "lineage.token_env = {t:?}: the name of an environment variable (letters, digits and '_')"
            ));
        }
        Ok(())
    }

    fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("scoreland")
    }
}

/// A landed table as lineage describes it.
#[derive(Debug, Clone)]
pub(crate) struct OutputTable {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    /// Column name and type.
    pub fields: Vec<(String, String)>,
}

/// One run's events: the same run id on each.
pub(crate) struct Lineage<'a> {
    config: &'a LineageConfig,
    pipeline: &'a str,
    run_uuid: uuid::Uuid,
    /// One client for the run's events (built on the first send to `url`).
    http: std::sync::OnceLock<reqwest::Client>,
}

impl<'a> Lineage<'a> {
    pub fn new(config: &'a LineageConfig, pipeline: &'a str) -> Self {
        Lineage {
            config,
            pipeline,
            run_uuid: uuid::Uuid::new_v4(),
            http: std::sync::OnceLock::new(),
        }
    }

    fn event(&self, kind: &str, record: &RunRecord, run_facets: Value) -> Value {
        let mut facets = json!({
            "processing_engine": {
                "_producer": PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet",
                "version": env!("CARGO_PKG_VERSION"),
                "name": "scoreland",
            },
            "scoreland_run": {
                "_producer": PRODUCER,
                "_schemaURL": RUN_FACET,
                "runId": record.run_id,
            },
        });
        if let (Some(f), Value::Object(more)) = (facets.as_object_mut(), run_facets) {
            f.extend(more);
        }
        json!({
            "eventType": kind,
            "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "producer": PRODUCER,
            "schemaURL": RUN_EVENT,
            "run": { "runId": self.run_uuid.to_string(), "facets": facets },
            "job": {
                "namespace": self.config.namespace(),
                "name": self.pipeline,
                "facets": {
                    "jobType": {
                        "_producer": PRODUCER,
                        "_schemaURL": "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
                        "processingType": "BATCH",
                        "integration": "SCORELAND",
                        "jobType": "JOB",
                    }
                }
            },
            "inputs": [],
            "outputs": [],
        })
    }

    /// START, as the run begins.
    pub async fn start(&self, record: &mut RunRecord) {
        let event = self.event("START", record, json!({}));
        self.send(record, event).await;
    }

    /// COMPLETE (landed or nothing new) or FAIL, as the run ends. `input` is the AEP dataset's
    /// namespace; `outputs` the tables the run landed (their versions are in `record`).
    pub async fn end(
        &self,
        record: &mut RunRecord,
        input: &str,
        staged: Option<&scoreland_transform::TableFacts>,
        outputs: &[OutputTable],
        warehouse: &str,
    ) {
        let (kind, facets) = match record.status {
            RunStatus::Failed => (
                "FAIL",
                json!({
                    "errorMessage": {
                        "_producer": PRODUCER,
                        "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
                        "message": record.error.clone().unwrap_or_default(),
                        "programmingLanguage": "rust",
                    }
                }),
            ),
            _ => ("COMPLETE", json!({})),
        };
        let mut event = self.event(kind, record, facets);
        if !record.dataset.is_empty() {
            let mut dataset = json!({
                "namespace": input,
                "name": record.dataset,
                "facets": {},
                "inputFacets": {
                    "scoreland_batches": {
                        "_producer": PRODUCER,
                        "_schemaURL": BATCHES_FACET,
                        "batches": record.batches,
                    }
                },
            });
            // The columns of the parts as staged (top-level XDM fields, nested types written
            // out), and how many rows and bytes were read.
            if let Some(s) = staged {
                dataset["facets"]["schema"] = schema_facet(&s.fields);
                dataset["inputFacets"]["inputStatistics"] = json!({
                    "_producer": PRODUCER,
                    "_schemaURL": "https://openlineage.io/spec/facets/1-0-0/InputStatisticsInputDatasetFacet.json#/$defs/InputStatisticsInputDatasetFacet",
                    "rowCount": s.rows,
                    "size": s.bytes,
                });
            }
            event["inputs"] = json!([dataset]);
        }
        let landed: Vec<Value> = outputs
            .iter()
            .filter_map(|t| {
                let version = record.tables.iter().find(|r| r.table == t.name)?.version;
                Some(json!({
                    "namespace": warehouse,
                    "name": t.name,
                    "facets": {
                        "schema": schema_facet(&t.fields),
                        "version": {
                            "_producer": PRODUCER,
                            "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet",
                            "datasetVersion": version.to_string(),
                        },
                    },
                    "outputFacets": {
                        "outputStatistics": {
                            "_producer": PRODUCER,
                            "_schemaURL": "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet",
                            "rowCount": t.rows,
                            "size": t.bytes,
                        }
                    },
                }))
            })
            .collect();
        event["outputs"] = Value::Array(landed);
        self.send(record, event).await;
    }

    /// Sends or appends one event; a failure is a warning of the run.
    async fn send(&self, record: &mut RunRecord, event: Value) {
        let kind = event["eventType"].as_str().unwrap_or("").to_string();
        if let Some(file) = &self.config.file
            && let Err(e) = append(file, &event)
        {
            record.warn(format!(
                "lineage: cannot append the {kind} event to {}: {e}",
                file.display()
            ));
        }
        if let Some(url) = &self.config.url
            && let Err(e) = self.post(url, &event).await
        {
            record.warn(format!(
                "lineage: the {kind} event was not sent to {}: {e}",
                without_credentials(url)
            ));
        }
    }

    async fn post(&self, url: &str, event: &Value) -> Result<(), String> {
        let client = match self.http.get() {
            Some(c) => c,
            None => {
                // A lineage endpoint answers in milliseconds; one that hangs costs the run at
                // most this per event.
                let c = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| e.to_string())?;
                self.http.get_or_init(|| c)
            }
        };
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let mut request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(var) = &self.config.token_env {
            // The token is read here, used once, and never logged or kept.
            let token = std::env::var(var)
                .map_err(|_| format!("lineage.token_env names {var}, which is not set"))?;
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            // reqwest's error names the URL, which holds no secret (the token is a header).
            e.without_url().to_string()
        })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {}", response.status()))
        }
    }
}

/// `url` as it may be shown: any user and password in it removed.
fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "the lineage url".to_string(),
    }
}

/// A `schema` dataset facet of (name, type) columns.
fn schema_facet(fields: &[(String, String)]) -> Value {
    json!({
        "_producer": PRODUCER,
        "_schemaURL": "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
        "fields": fields.iter().map(|(n, ty)| json!({"name": n, "type": ty})).collect::<Vec<_>>(),
    })
}

fn append(file: &Path, event: &Value) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    // One write of the whole line: concurrent runs appending to one file do not interleave.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?
        .write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lineage_section_says_where_and_how() {
        let config =
            |url: Option<&str>, file: Option<&str>, token_env: Option<&str>| LineageConfig {
                url: url.map(String::from),
                file: file.map(PathBuf::from),
                token_env: token_env.map(String::from),
                namespace: None,
            };
        for (c, said) in [
            (config(None, None, None), "give url"),
            (
                config(Some("marquez:5000"), None, None),
                "use http:// or https://",
            ),
            (config(Some("not a url"), None, None), "not a URL"),
            (
                config(Some("ftp://h/x"), None, None),
                "use http:// or https://",
            ),
            (
                config(None, Some("e.ndjson"), Some("TOKEN; rm")),
                "the name of an environment variable",
            ),
        ] {
            let e = c.validate(false).expect_err(said);
            assert!(e.contains(said), "{e}");
        }
        assert!(
            config(
                Some("https://lineage.example/api/v1/lineage"),
                None,
                Some("OL_TOKEN")
            )
            .validate(false)
            .is_ok()
        );
        // A URL from a variable that `validate` does not have is checked where the run is.
        assert!(
            config(Some("unset-OPENLINEAGE_URL"), None, None)
                .validate(true)
                .is_ok()
        );
        assert!(
            config(Some("unset-OPENLINEAGE_URL"), None, None)
                .validate(false)
                .is_err()
        );
        // A warning never shows credentials written into the URL.
        assert_eq!(
            without_credentials("https://ol:s3cret@lineage.example/api/v1/lineage"),
            "https://lineage.example/api/v1/lineage"
        );
    }
}
