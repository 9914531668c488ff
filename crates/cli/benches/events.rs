//! The schema-driven landing benchmark's scoreland side (run by `benches/events.sh`):
//!
//!     cargo bench -p scoreland --bench events -- generate DIR ROWS
//!     cargo bench -p scoreland --bench events -- land DIR OUT
//!
//! `generate` writes one night of the simulator's ExperienceEvent dataset (web and commerce
//! events) with ROWS rows, one parquet part per 250,000 rows, and prints its parts' directory.
//! `land` flattens them from the schema the Schema Registry serves for them, exactly as
//! `scoreland run` does for a `[transform.dataset]` pipeline (keys pass, each `_id` once, one
//! file per part and event date on every core), and prints one JSON line of counts and time.

use std::path::PathBuf;
use std::time::Instant;

use scoreland_platform_sim::events::{EVENTS_DATASET, add_event_nights, events_schema};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["generate", dir, rows] => {
            let night = add_event_nights(&PathBuf::from(dir), "prod", 0, 1, rows.parse()?, 42)?;
            let id = &night[0].batch_id;
            let parts = PathBuf::from(dir)
                .join("prod")
                .join(EVENTS_DATASET)
                .join(id)
                .join(format!("{id}-1"));
            println!("{}", parts.display());
        }
        ["land", dir, out] => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            files.sort();
            let schema = serde_json::json!({
                "title": "Web Events schema",
                "meta:class": "https://ns.adobe.com/xdm/context/experienceevent",
                "properties": scoreland_platform_sim::xdm_properties(events_schema(false).fields()),
            });
            let landing = scoreland_transform::DatasetLanding {
                table: "web_events".into(),
                depth: 3,
                explode: Vec::new(),
                summary: None,
            };
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let started = Instant::now();
            let dataset = scoreland_transform::EventDataset::new(&schema, &landing)?;
            let staged = [scoreland_transform::StagedBatch {
                batch_id: "bench".into(),
                created_ms: 0,
                files,
            }];
            let scan = dataset.scan(&staged, workers)?;
            let stats = dataset.write(scan, &[], "bench", &PathBuf::from(out), workers)?;
            println!(
                "{}",
                serde_json::json!({
                    "seconds": started.elapsed().as_secs_f64(),
                    "stats": stats,
                })
            );
        }
        _ => {
            return Err("usage: events generate DIR ROWS | events land DIR OUT".into());
        }
    }
    Ok(())
}
