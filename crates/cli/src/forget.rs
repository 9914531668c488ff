//! `scoreland forget`: privacy deletes across a warehouse.

use std::path::PathBuf;

use clap::Args;
use scoreland_pipeline::forget::{ForgetOptions, forget as forget_identities};

use crate::{Failure, usage};

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub warehouse: crate::args::WarehouseArg,
    /// An identity to delete (repeat the flag for more).
    #[arg(long = "identity")]
    pub identities: Vec<String>,
    /// A file of identities, one per line (e.g. from AEP's data hygiene or privacy jobs);
    /// blank lines and lines starting with '#' are skipped.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Only rows of this identity namespace, where a table says each row's namespace
    /// (identity_namespace, primary_namespace); elsewhere the identity is deleted whatever
    /// its namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// A column that holds identities in a dataset's tables (e.g. the primary identity's
    /// column), searched besides identity and primary_identity (repeat the flag for more).
    #[arg(long = "column")]
    pub columns: Vec<String>,
    /// Why: recorded with every commit (e.g. the privacy job's id).
    #[arg(long)]
    pub reason: String,
    /// Who: recorded with every commit (default: $USER).
    #[arg(long, env = "USER", default_value = "unknown")]
    pub by: String,
}

pub async fn forget(args: ForgetArgs) -> Result<u8, Failure> {
    let mut identities = args.identities.clone();
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| usage(anyhow::anyhow!("--file {}: {e}", file.display())))?;
        identities.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    identities.sort();
    identities.dedup();
    if identities.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "give the identities to forget: --identity ID (repeatable) or --file FILE"
        )));
    }
    if args.reason.trim().is_empty() {
        return Err(usage(anyhow::anyhow!(
            "--reason is empty: say why (e.g. the privacy job's id); it is recorded"
        )));
    }
    for c in &args.columns {
        if c.is_empty() || c.chars().any(|ch| ch.is_control() || ch == '"') {
            return Err(usage(anyhow::anyhow!(
                "--column {c:?} is not a column name"
            )));
        }
    }
    let wh = args.warehouse.open()?;
    let request = forget_identities(
        &wh,
        &ForgetOptions {
            identities,
            namespace: args.namespace.clone(),
            columns: args.columns.clone(),
            by: args.by.clone(),
            reason: args.reason.clone(),
        },
    )
    .await
    .map_err(|e| match e {
        scoreland_pipeline::PipelineError::Sink(scoreland_sink::SinkError::Locked {
            run_id,
            ..
        }) => Failure {
            code: 4,
            error: anyhow::anyhow!(
                "run {run_id} is publishing on {}; forget when it has finished",
                wh.url()
            ),
        },
        other => Failure::from(anyhow::Error::from(other)),
    })?;
    println!(
        "forgot {} identities ({} by {}, {})",
        request.identities.len(),
        request.reason,
        request.by,
        request.at
    );
    for t in &request.tables {
        match t.version {
            Some(v) => println!(
                "  {}: {} rows deleted (version {v}; columns {})",
                t.table,
                t.rows_deleted,
                t.columns.join(", ")
            ),
            None => println!(
                "  {}: none held (columns {})",
                t.table,
                t.columns.join(", ")
            ),
        }
    }
    println!("later runs keep them out; `scoreland vacuum` removes the files that still hold them");
    Ok(0)
}
