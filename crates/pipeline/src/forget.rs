//! Privacy deletes (`scoreland forget`): identities deleted from every table of a warehouse,
//! one Delta commit per table recording who and why, and the list of what was forgotten,
//! which every later run applies to its night before it publishes, so that no night lands a
//! forgotten identity again. The list keeps identities as SHA-256 digests only.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::PipelineError;
use crate::publish::Prepared;
use crate::record::RunRecord;

/// Where the warehouse keeps what was forgotten.
pub const FORGOTTEN: &str = "_state/forgotten.json";
/// The columns that hold identities in scoreland's own tables (scores; profiles and
/// audiences), searched besides those a request names.
pub const IDENTITY_COLUMNS: [&str; 2] = ["identity", "primary_identity"];
/// Their namespace columns.
const NAMESPACE_COLUMNS: [(&str, &str); 2] = [
    ("identity", "identity_namespace"),
    ("primary_identity", "primary_namespace"),
];

/// Every request so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForgottenList {
    pub requests: Vec<ForgetRequest>,
}

/// One `scoreland forget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgetRequest {
    /// When (RFC 3339), who and why.
    pub at: String,
    pub by: String,
    pub reason: String,
    pub namespace: Option<String>,
    /// Columns searched besides [`IDENTITY_COLUMNS`].
    pub columns: Vec<String>,
    /// The identities, as SHA-256 digests.
    pub identities: Vec<String>,
    /// What each table lost.
    #[serde(default)]
    pub tables: Vec<scoreland_sink::ForgetReport>,
}

/// What to forget.
#[derive(Debug, Clone)]
pub struct ForgetOptions {
    pub identities: Vec<String>,
    pub namespace: Option<String>,
    pub columns: Vec<String>,
    pub by: String,
    pub reason: String,
}

/// Deletes the identities from every table of `warehouse` under the publish lock: the list
/// first (so a run that publishes next keeps them out), then one commit per table.
pub async fn forget(
    warehouse: &scoreland_sink::Warehouse,
    options: &ForgetOptions,
) -> Result<ForgetRequest, PipelineError> {
    let lock = warehouse
        .lock(
            scoreland_sink::PUBLISH_LOCK,
            &format!("forget-{}", std::process::id()),
            std::time::Duration::from_secs(600),
            &|| {},
        )
        .await
        .map_err(PipelineError::Sink)?;
    let done = forget_locked(warehouse, options).await;
    lock.release().await.map_err(PipelineError::Sink)?;
    done
}

async fn forget_locked(
    warehouse: &scoreland_sink::Warehouse,
    options: &ForgetOptions,
) -> Result<ForgetRequest, PipelineError> {
    let mut list: ForgottenList = warehouse
        .get_json(FORGOTTEN)
        .await
        .map_err(PipelineError::Sink)?
        .unwrap_or_default();
    let digests: BTreeSet<String> = options
        .identities
        .iter()
        .map(|i| scoreland_transform::identity_digest(i))
        .collect();
    let mut request = ForgetRequest {
        at: chrono::Utc::now().to_rfc3339(),
        by: options.by.clone(),
        reason: options.reason.clone(),
        namespace: options.namespace.clone(),
        columns: options.columns.clone(),
        identities: digests.iter().cloned().collect(),
        tables: Vec::new(),
    };
    list.requests.push(request.clone());
    warehouse
        .put_json(FORGOTTEN, &list)
        .await
        .map_err(PipelineError::Sink)?;
    // Who and why go into every commit; the identities do not (a count only).
    let metadata = serde_json::Map::from_iter([
        ("scoreland".to_string(), serde_json::json!("forget")),
        ("by".to_string(), serde_json::json!(options.by)),
        ("reason".to_string(), serde_json::json!(options.reason)),
        ("identities".to_string(), serde_json::json!(digests.len())),
    ]);
    for table in crate::record::warehouse_tables(warehouse)
        .await
        .map_err(PipelineError::Sink)?
    {
        let Some(have) = warehouse
            .table_columns(&table)
            .await
            .map_err(PipelineError::Sink)?
        else {
            continue;
        };
        let columns: Vec<String> = have
            .iter()
            .filter(|c| IDENTITY_COLUMNS.contains(&c.as_str()) || options.columns.contains(c))
            .cloned()
            .collect();
        if columns.is_empty() {
            continue;
        }
        // The namespace narrows the delete only where the table says each row's namespace.
        let namespace = options.namespace.as_deref().and_then(|ns| {
            NAMESPACE_COLUMNS
                .iter()
                .find(|(id, col)| columns.iter().any(|c| c == id) && have.iter().any(|h| h == col))
                .map(|(_, col)| (*col, ns))
        });
        let report = warehouse
            .forget_rows(
                &table,
                &columns,
                &request.identities,
                namespace,
                metadata.clone(),
            )
            .await
            .map_err(PipelineError::Sink)?;
        request.tables.push(report);
    }
    if let Some(last) = list.requests.last_mut() {
        last.tables = request.tables.clone();
    }
    warehouse
        .put_json(FORGOTTEN, &list)
        .await
        .map_err(PipelineError::Sink)?;
    Ok(request)
}

/// Drops from the night's files (before they are published) the rows of every identity
/// forgotten so far, in [`IDENTITY_COLUMNS`] and the columns the requests searched; the run
/// says how many in a warning.
pub(crate) async fn keep_out(
    warehouse: &scoreland_sink::Warehouse,
    prepared: &Prepared,
    record: &mut RunRecord,
) -> Result<(), PipelineError> {
    let list: ForgottenList = warehouse
        .get_json(FORGOTTEN)
        .await
        .map_err(PipelineError::Sink)?
        .unwrap_or_default();
    if list.requests.is_empty() {
        return Ok(());
    }
    let digests: HashSet<String> = list
        .requests
        .iter()
        .flat_map(|r| r.identities.iter().cloned())
        .collect();
    let columns: BTreeSet<String> = IDENTITY_COLUMNS
        .iter()
        .map(|c| c.to_string())
        .chain(list.requests.iter().flat_map(|r| r.columns.iter().cloned()))
        .collect();
    let dirs: Vec<std::path::PathBuf> = prepared.tables.iter().map(|t| t.dir.clone()).collect();
    let dropped = tokio::task::spawn_blocking(move || {
        dirs.iter().try_fold(0u64, |n, dir| {
            Ok::<_, scoreland_transform::TransformError>(
                n + scoreland_transform::drop_identities(dir, &columns, &digests)?,
            )
        })
    })
    .await
    .map_err(|e| {
        PipelineError::Transform(scoreland_transform::TransformError::Panicked {
            message: format!("keeping forgotten identities out: {e}"),
        })
    })?
    .map_err(PipelineError::Transform)?;
    if dropped > 0 {
        record.warn(format!(
            "{dropped} rows of forgotten identities (scoreland forget) were not landed"
        ));
    }
    Ok(())
}
