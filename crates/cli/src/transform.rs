//! `scoreland transform`: the transform alone, over batches already staged by `download`.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;
use scoreland_ingest::Manifest;
use scoreland_transform::{MemoryLimit, OutputFormat, StagedBatch, TransformConfig};

use crate::{Failure, usage};

#[derive(Debug, Args)]
pub struct TransformArgs {
    /// The staging directory `download` wrote (holds <dataset>/<batch>/manifest.json).
    #[arg(long)]
    pub staging: PathBuf,
    #[arg(long)]
    pub dataset: String,
    /// Batches to read; every complete staged batch of the dataset by default.
    #[arg(long)]
    pub batch: Vec<String>,
    /// Where the scores, summary and drift tables are written (parquet, zstd).
    #[arg(long)]
    pub out: PathBuf,
    /// Memory limit, e.g. 1GiB: the dedupe's table takes at most half of it (built in ranges
    /// beyond it). Half of the machine's memory by default; `unlimited` opts out.
    #[arg(long)]
    pub memory_limit: Option<MemoryLimit>,
    /// Run the dedupe on this cluster (`df://HOST:PORT`; see `scoreland cluster`); the
    /// staging directory must be reachable by every executor at the same path.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
}

pub async fn transform(args: TransformArgs) -> Result<u8, Failure> {
    let dataset_dir = args.staging.join(&args.dataset);
    let mut batches = Vec::new();
    let entries = std::fs::read_dir(&dataset_dir)
        .with_context(|| format!("cannot read staged batches in {}", dataset_dir.display()))
        .map_err(usage)?;
    for entry in entries {
        let dir = entry?.path();
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !args.batch.is_empty() && !args.batch.contains(&id) {
            continue;
        }
        // Only complete, verified batches have a manifest.
        if let Some(m) = Manifest::read(&dir)? {
            batches.push(StagedBatch {
                batch_id: m.batch.id.clone(),
                created_ms: m.batch.created,
                files: m.part_paths(&dir),
            });
        }
    }
    if batches.is_empty() {
        return Err(usage(anyhow!(
            "no complete staged batch of dataset {} in {}; run `scoreland download` first",
            args.dataset,
            args.staging.display()
        )));
    }
    batches.sort_by_key(|b| b.created_ms);
    let config = TransformConfig {
        memory_limit: args.memory_limit.unwrap_or_default(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let mut transformer = config.build(&args.out.join("spill")).map_err(usage)?;
    if let Some(cluster) = crate::run::cluster_engine(args.cluster.as_deref(), &config).await? {
        transformer = transformer.with_cluster(cluster);
    }
    let out = transformer
        .run(&batches, &OutputFormat::default(), &[], &args.out)
        .await?;
    let _ = std::fs::remove_dir_all(args.out.join("spill"));
    let s = &out.stats;
    println!(
        "{} batches: {} rows in, {} rows out, {} duplicates and {} rows without identity dropped, in {:.2} s -> {}",
        batches.len(),
        s.rows_in,
        s.rows_out,
        s.duplicates_dropped,
        s.null_identity_dropped,
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(0)
}
