//! The sink benchmark's scoreland side (run by `benches/sink.sh`): lands an already
//! deduplicated scores table into a warehouse, exactly as `scoreland run` lands its scores —
//! zstd parquet Hive-partitioned by `score_date` into a local work directory, then one Delta
//! commit replacing its (dataset, score date) partitions — and prints one JSON line of timings.
//!
//!     cargo bench -p scoreland --bench sink -- SOURCE_DIR WAREHOUSE WORK_DIR

use std::path::PathBuf;
use std::time::Instant;

use scoreland_sink::SinkConfig;
use scoreland_transform::{OutputFormat, TransformConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [source, warehouse, work] = args.as_slice() else {
        return Err("usage: sink SOURCE_DIR WAREHOUSE WORK_DIR".into());
    };
    let (source, work) = (PathBuf::from(source), PathBuf::from(work));
    let local = work.join("scores");
    let started = Instant::now();
    TransformConfig::default()
        .build(&work.join("spill"))?
        .with_run_id("bench")
        .write_table(
            &source,
            &OutputFormat::default(),
            &local,
            Some("score_date"),
        )
        .await?;
    let written = started.elapsed().as_secs_f64();
    let wh = SinkConfig {
        url: warehouse.clone(),
        options: Default::default(),
        single_writer: false,
    }
    .build()
    .await?;
    let commit = wh
        .write_table(&scoreland_sink::TableWrite {
            table: "scores",
            local_dir: &local,
            dataset_id: "bench",
            run_id: "bench",
            by_score_date: true,
            date_column: "score_date",
            replace_dataset: false,
            append: false,
            evolve_schema: false,
            app_id: "bench",
            app_version: chrono::Utc::now().timestamp_millis(),
            metadata: Default::default(),
            properties: Default::default(),
        })
        .await?;
    let total = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "rows": rows_under(&local)?,
            "version": commit.version,
            "dates": commit.replaced_dates.len(),
            "write_s": written,
            "publish_s": total - written,
            "total_s": total,
        })
    );
    Ok(())
}

/// Rows of the parquet files under `dir`, from their footers.
fn rows_under(dir: &std::path::Path) -> Result<i64, Box<dyn std::error::Error>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut rows = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rows += rows_under(&path)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            rows += SerializedFileReader::new(std::fs::File::open(&path)?)?
                .metadata()
                .file_metadata()
                .num_rows();
        }
    }
    Ok(rows)
}
