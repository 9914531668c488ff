//! `scoreland sql` and `scoreland vacuum`: reading and tidying a warehouse.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use scoreland_pipeline::{TABLES, by_score_date, warehouse_tables};
use scoreland_sink::{AsOf, SinkError};

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
    /// The query; the Delta tables `scores`, `summary` and `drift` are registered as the
    /// newest complete runs published them.
    pub query: String,
    #[command(flatten)]
    pub warehouse: crate::args::WarehouseArg,
    /// Read an earlier night: a Delta version (`12`) or a time (`2026-11-20T06:00:00Z`, or a
    /// date for its midnight UTC).
    #[arg(long)]
    pub as_of: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write to this file instead of stdout (required for parquet).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Run the query on a cluster (`df://HOST:PORT`, its scheduler; see `scoreland cluster`).
    /// The warehouse must be a directory every executor mounts at the same path.
    #[arg(long, env = "SCORELAND_CLUSTER")]
    pub cluster: Option<String>,
    /// With --cluster: how many tasks each table scan is split into (default: this machine's
    /// cores).
    #[arg(long, requires = "cluster")]
    pub partitions: Option<usize>,
}

/// `--as-of`: a version number, an RFC 3339 time, or a date.
fn parse_as_of(s: &str) -> Result<AsOf, Failure> {
    let s = s.trim();
    if let Ok(v) = s.parse::<u64>() {
        return Ok(AsOf::Version(v));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(AsOf::Time(t.with_timezone(&chrono::Utc)));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let t = d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        if let Some(t) = t {
            return Ok(AsOf::Time(t));
        }
    }
    Err(usage(anyhow::anyhow!(
        "--as-of {s:?}: give a Delta version (12), a time (2026-11-20T06:00:00Z) or a date (2026-11-20)"
    )))
}

pub async fn sql(args: SqlArgs) -> Result<u8, Failure> {
    let wh = args.warehouse.open()?;
    let as_of = match &args.as_of {
        Some(s) => parse_as_of(s)?,
        None => AsOf::Published,
    };
    let engine = match &args.cluster {
        Some(url) => Some(crate::cluster::engine(url, args.partitions).await?),
        None => None,
    };
    let tables = warehouse_tables(&wh).await?;
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let out = match engine {
        Some(engine) => wh.query_on(engine, &tables, as_of, &args.query).await,
        None => wh.query(&tables, as_of, &args.query).await,
    }
    .map_err(|e| match e {
        SinkError::NoTables { .. } | SinkError::ReadOnly { .. } => usage(e),
        other => Failure::from(other),
    })?;
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
    #[command(flatten)]
    pub warehouse: crate::args::WarehouseArg,
    /// Files that versions younger than this still need are kept: time travel (`sql
    /// --as-of`) reaches back this far. The published version's files are always kept.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: std::time::Duration,
    /// Accept a retention under one hour: a query that started on the version before the
    /// newest night (`serve`, `sql`) can then lose files it is reading.
    #[arg(long)]
    pub allow_short_retention: bool,
}

/// Below this, `vacuum` needs --allow-short-retention: a query running on the previous
/// version (`serve`'s queries end within their timeout) keeps its files.
const SHORT_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn vacuum(args: VacuumArgs) -> Result<u8, Failure> {
    if args.retention < SHORT_RETENTION && !args.allow_short_retention {
        return Err(usage(anyhow::anyhow!(
            "--retention {} is under one hour: files of the version before the newest night \
             would go while a query (serve, sql) may still read them; give \
             --allow-short-retention if no query runs now",
            humantime::format_duration(args.retention)
        )));
    }
    let wh = args.warehouse.open()?;
    // No publish runs while vacuum does: its uploads would look like orphans.
    let lock = match wh
        .lock(
            scoreland_sink::PUBLISH_LOCK,
            &format!("vacuum-{}", std::process::id()),
            std::time::Duration::from_secs(600),
            &|| {},
        )
        .await
    {
        Ok(lock) => lock,
        Err(scoreland_sink::SinkError::Locked { run_id, .. }) => {
            return Err(Failure {
                code: 4,
                error: anyhow::anyhow!(
                    "run {run_id} is publishing on {}; vacuum when it has finished",
                    wh.url()
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let vacuumed = match warehouse_tables(&wh).await {
        Ok(tables) => {
            let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
            wh.vacuum_tables(&tables, args.retention).await
        }
        Err(e) => Err(e),
    };
    lock.release().await?;
    for (t, deleted) in vacuumed? {
        println!("{t}: {} files deleted", deleted.len());
        for f in deleted {
            println!("  {f}");
        }
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct OptimizeArgs {
    #[command(flatten)]
    pub warehouse: crate::args::WarehouseArg,
    /// Memory the ordering may use; it spills to the temporary directory beyond it.
    #[arg(long, default_value = "2GiB", value_parser = crate::args::parse_size)]
    pub memory_limit: u64,
}

/// Compacts every table; `scores` is also ordered by identity within each partition.
pub async fn optimize(args: OptimizeArgs) -> Result<u8, Failure> {
    let wh = args.warehouse.open()?;
    // A run commits on top of whatever optimize commits, but a run's replace and an optimize
    // of the same partition would conflict: one of them would fail. Optimize between runs.
    let running = wh
        .active_locks(std::time::Duration::from_secs(6 * 3600))
        .await?;
    if !running.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "pipeline {} is running on {}; optimize when it has finished",
            running.join(", "),
            wh.url()
        )));
    }
    for (table, zorder) in [
        ("scores", &["identity"][..]),
        ("summary", &[][..]),
        ("drift", &[][..]),
    ] {
        match wh
            .optimize_table(
                table,
                zorder,
                usize::try_from(args.memory_limit).unwrap_or(usize::MAX),
            )
            .await?
        {
            Some(r) => println!(
                "{table}: {} files written in place of {} (version {}){}",
                r.files_added,
                r.files_removed,
                r.version,
                if zorder.is_empty() {
                    String::new()
                } else {
                    format!(", ordered by {}", zorder.join(", "))
                }
            ),
            None => println!("{table}: no table yet"),
        }
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// scores, summary or drift.
    pub table: String,
    #[command(flatten)]
    pub warehouse: crate::args::WarehouseArg,
    /// At most this many versions, newest first.
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
    /// One JSON object per version.
    #[arg(long)]
    pub json: bool,
}

pub async fn history(args: HistoryArgs) -> Result<u8, Failure> {
    let wh = args.warehouse.open()?;
    let tables = warehouse_tables(&wh).await?;
    if !tables.contains(&args.table) {
        return Err(usage(anyhow::anyhow!(
            "unknown table {:?}; the tables are {}",
            args.table,
            tables.join(", ")
        )));
    }
    let versions = wh.history(&args.table, Some(args.limit)).await?;
    if args.json {
        for v in &versions {
            println!("{}", serde_json::to_string(v)?);
        }
        return Ok(0);
    }
    println!(
        "{:>7}  {:<20}  {:<10}  {:<28}  {:>9}  BATCHES",
        "VERSION", "TIME (UTC)", "OPERATION", "RUN", "ROWS"
    );
    for v in &versions {
        let time = v
            .timestamp
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let field = |k: &str| {
            v.run
                .get(k)
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(a) => a
                        .iter()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        println!(
            "{:>7}  {:<20}  {:<10}  {:<28}  {:>9}  {}",
            v.version.map(|n| n.to_string()).unwrap_or_default(),
            time,
            v.operation.clone().unwrap_or_default(),
            if field("scoreland") == "forget" {
                format!("forget by {}: {}", field("by"), field("reason"))
            } else {
                field("run_id")
            },
            field("rows"),
            field("batches")
        );
    }
    // The data usage labels it carries now (AEP's, landed with the dataset).
    let labels = wh.table_labels(&args.table).await?;
    if !labels.dataset.is_empty() || !labels.columns.is_empty() || !labels.denied.is_empty() {
        println!();
        println!("data usage labels");
        if !labels.dataset.is_empty() {
            println!("  dataset (every field): {}", labels.dataset.join(", "));
        }
        for (column, l) in &labels.columns {
            println!("  {column}: {}", l.join(", "));
        }
        if !labels.denied.is_empty() {
            println!(
                "  serve shows as NULL the columns labelled {}",
                labels.denied.join(", ")
            );
        }
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub warehouse: crate::args::WarehouseArg,
    /// The dataset the old tables hold; by default the one the warehouse's run records name.
    #[arg(long)]
    pub dataset: Option<String>,
}

/// Turns a warehouse of the old layout into Delta tables, table by table.
pub async fn convert(args: ConvertArgs) -> Result<u8, Failure> {
    let wh = args.warehouse.build().await?;
    let dataset = match args.dataset {
        Some(d) => d,
        None => {
            let found = wh.landed_datasets().await?;
            match found.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(usage(anyhow::anyhow!(
                        "no run record in {} names a dataset; give --dataset ID",
                        wh.url()
                    )));
                }
                many => {
                    return Err(usage(anyhow::anyhow!(
                        "the run records in {} name several datasets ({}); the old layout kept one table for all, so give the dataset its rows belong to with --dataset ID",
                        wh.url(),
                        many.join(", ")
                    )));
                }
            }
        }
    };
    let scratch = tempfile::tempdir()?;
    for table in TABLES {
        if !wh.is_legacy(table).await? {
            println!("{table}: not in the old layout; left as it is");
            continue;
        }
        match wh
            .convert_legacy(table, &dataset, by_score_date(table), scratch.path())
            .await?
        {
            Some(c) => println!(
                "{table}: converted to a Delta table (version {}) for dataset {dataset}",
                c.version
            ),
            None => println!("{table}: nothing committed; old records removed"),
        }
    }
    Ok(0)
}
