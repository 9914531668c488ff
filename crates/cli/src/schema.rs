//! `scoreland schema PIPELINE`: the XDM schema of a pipeline's dataset, read from the Schema
//! Registry, as the flat columns it lands as (name, Arrow type, XDM type, path, title).

use std::path::PathBuf;

use clap::Args;
use scoreland_ingest::DownloadOptions;
use scoreland_pipeline::PipelineFile;

use crate::platform::ingest_failure;
use crate::{Failure, usage};

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The pipeline file whose dataset to describe.
    pub pipeline: PathBuf,
    /// How many levels of nested objects become `a_b_c` columns; deeper ones stay structs.
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    /// One JSON object per column (JSON Lines) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn schema(args: SchemaArgs) -> Result<u8, Failure> {
    let file = PipelineFile::load(&args.pipeline).map_err(usage)?;
    let (platform, dataset) = file
        .source
        .catalog_platform()
        .map_err(|m| usage(anyhow::anyhow!("{}: {m}", args.pipeline.display())))?;
    let connected = platform
        .connect(DownloadOptions::default())
        .await
        .map_err(Failure::pipeline)?;
    let dataset = dataset
        .or_else(|| connected.first_dataset())
        .ok_or_else(|| usage(anyhow::anyhow!("[source] dataset is needed")))?;
    let schema = connected
        .client
        .dataset_schema(&dataset)
        .await
        .map_err(ingest_failure)?;
    let columns = scoreland_transform::xdm_columns(&schema, args.depth)
        .map_err(|e| anyhow::anyhow!("dataset {dataset}: {e}"))?;
    if args.json {
        for c in &columns {
            println!("{}", serde_json::to_string(c)?);
        }
        return Ok(0);
    }
    let title = schema["title"].as_str().unwrap_or("");
    println!("dataset {dataset}: {title} ({} columns)", columns.len());
    let width = columns
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!("{:<width$}  {:<28}  {:<9}  path", "column", "type", "xdm");
    for c in &columns {
        let mut ty = c.data_type.to_string();
        if ty.len() > 28 {
            ty.truncate(25);
            ty.push_str("...");
        }
        println!(
            "{:<width$}  {:<28}  {:<9}  {}{}",
            c.name,
            ty,
            c.xdm_type,
            c.path,
            c.title
                .as_deref()
                .map(|t| format!("  ({t})"))
                .unwrap_or_default()
        );
    }
    Ok(0)
}
