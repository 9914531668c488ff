//! `scoreland sql` and `scoreland vacuum`: reading and tidying a warehouse.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use scoreland_pipeline::TABLES;
use scoreland_sink::SinkConfig;

use crate::{Failure, usage};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query; tables `scores`, `summary` and `drift` are registered from their latest
    /// commit (committed files only).
    pub query: String,
    /// Warehouse URL or path.
    #[arg(long, env = "SCORELAND_WAREHOUSE", default_value = "warehouse")]
    pub warehouse: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write to this file instead of stdout (required for parquet).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

pub async fn sql(args: SqlArgs) -> Result<u8, Failure> {
    let wh = SinkConfig {
        url: args.warehouse.clone(),
        options: Default::default(),
    }
    .open()
    .map_err(usage)?;
    let mut tables = Vec::new();
    for t in TABLES {
        let files = wh.live_files(t).await?;
        let ext = files
            .first()
            .and_then(|u| u.path().rsplit('.').next().map(str::to_string))
            .unwrap_or_else(|| "parquet".into());
        tables.push((t.to_string(), ext, files));
    }
    if tables.iter().all(|(_, _, f)| f.is_empty()) {
        return Err(usage(anyhow::anyhow!(
            "no landed tables in {}; run a pipeline first (scoreland run pipelines/demo.toml)",
            wh.url()
        )));
    }
    let mut store_url = wh.url().clone();
    store_url.set_path("/");
    let stores = if wh.url().scheme() == "file" {
        Vec::new()
    } else {
        vec![(store_url, wh.store())]
    };
    let out = scoreland_transform::query_files(&tables, &stores, &args.query).await?;
    let mut sink: Box<dyn std::io::Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    write_batches(
        &mut sink,
        args.format,
        out.schema,
        &out.batches,
        args.output.is_some(),
    )?;
    sink.flush()?;
    Ok(0)
}

fn write_batches(
    out: &mut dyn std::io::Write,
    format: Format,
    schema: arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    to_file: bool,
) -> Result<(), Failure> {
    match format {
        Format::Table => {
            writeln!(
                out,
                "{}",
                arrow::util::pretty::pretty_format_batches(batches)?
            )?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            if !to_file {
                return Err(usage(anyhow::anyhow!(
                    "--format parquet needs --output FILE"
                )));
            }
            let mut buf = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, Arc::clone(&schema), None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
            out.write_all(&buf)?;
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// Warehouse URL or path.
    #[arg(long, env = "SCORELAND_WAREHOUSE", default_value = "warehouse")]
    pub warehouse: String,
    /// Also delete files that older commits had live but the newest replaced.
    #[arg(long)]
    pub replaced: bool,
}

pub async fn vacuum(args: VacuumArgs) -> Result<u8, Failure> {
    let wh = SinkConfig {
        url: args.warehouse,
        options: Default::default(),
    }
    .build()
    .await
    .map_err(usage)?;
    // A running pipeline's uploads are not committed yet: vacuum would take them for orphans.
    let running = wh
        .active_locks(std::time::Duration::from_secs(6 * 3600))
        .await?;
    if !running.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "pipeline {} is running on {}; vacuum when it has finished",
            running.join(", "),
            wh.url()
        )));
    }
    for t in TABLES {
        let report = wh.vacuum(t, args.replaced).await?;
        println!("{t}: {} files deleted", report.deleted.len());
        for f in report.deleted {
            println!("  {f}");
        }
    }
    Ok(0)
}
