//! The profile-export benchmark's scoreland side (run by `benches/audiences.sh`):
//!
//!     cargo bench -p scoreland --bench audiences -- generate DIR PROFILES SEGMENTS
//!     cargo bench -p scoreland --bench audiences -- flatten DIR OUT
//!
//! `generate` writes what an export job of that many generated profiles puts into its batch
//! (the simulator's export schema: map-typed `identityMap` and `segmentMembership`), in 20
//! parquet parts. `flatten` makes the night's `profiles`, `audiences` and `audience_summary`
//! from them, exactly as `scoreland run` does for a `profile-export` source, and prints one
//! JSON line of counts and time.

use std::path::PathBuf;
use std::time::Instant;

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
        ["generate", dir, profiles, segments] => {
            let n = scoreland_platform_sim::write_profile_export(
                &PathBuf::from(dir),
                profiles.parse()?,
                segments.parse()?,
                42,
                "_acmeretail",
                20,
            )?;
            println!("{{\"profiles\": {n}}}");
        }
        ["flatten", dir, out] => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            files.sort();
            let started = Instant::now();
            let output =
                scoreland_transform::write_profile_tables(&scoreland_transform::ProfileTables {
                    files,
                    dedupe: false,
                    fields: vec!["person.name.firstName".into()],
                    night: "2026-11-30".into(),
                    export_job_id: 1,
                    run_id: "bench".into(),
                    previous: Vec::new(),
                    previous_night: None,
                    carry: None,
                    out: PathBuf::from(out),
                })?;
            println!(
                "{}",
                serde_json::json!({
                    "seconds": started.elapsed().as_secs_f64(),
                    "stats": output.stats,
                })
            );
        }
        _ => {
            return Err("usage: audiences generate DIR PROFILES SEGMENTS | flatten DIR OUT".into());
        }
    }
    Ok(())
}
