//! The forget benchmark's scoreland side (run by `benches/forget.sh`): a night's scores table
//! of ROWS rows (two models, 16 zstd parquet files in one score date's directory, identities
//! as ECID-like text), then what a run does before its publish once identities were forgotten
//! (`drop_identities` over the `identity` column): with FORGOTTEN digests of identities the
//! night does not hold (every value hashed and looked up, no file rewritten), and with FORGOTTEN
//! identities it holds, spread over every file (every file rewritten). Prints one JSON line.
//!
//!     cargo bench -p scoreland --bench forget -- WORK_DIR ROWS FORGOTTEN

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use scoreland_transform::{drop_identities, identity_digest};

const FILES: u64 = 16;
const BATCH: u64 = 65_536;

fn identity(i: u64) -> String {
    format!(
        "{i:019}-ECID-{:016x}",
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

/// ROWS rows in FILES files under `dir`: row i is identity i / 2, model i % 2.
fn generate(dir: &Path, rows: u64) -> Result<(), Box<dyn std::error::Error>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("identity", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
    ]));
    let day = dir.join("score_date=2026-11-16");
    std::fs::create_dir_all(&day)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .build();
    let per_file = rows.div_ceil(FILES);
    for f in 0..FILES {
        let file = std::fs::File::create(day.join(format!("part-{f:03}.parquet")))?;
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))?;
        let (start, end) = (f * per_file, ((f + 1) * per_file).min(rows));
        let mut at = start;
        while at < end {
            let n = BATCH.min(end - at);
            let rows = at..at + n;
            w.write(&RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.clone().map(|i| identity(i / 2)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rows.clone()
                            .map(|i| if i % 2 == 0 { "churn_risk" } else { "upsell" }),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        rows.map(|i| (i % 100) as f64),
                    )),
                ],
            )?)?;
            at += n;
        }
        w.close()?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [work, rows, forgotten] = args.as_slice() else {
        return Err("usage: forget WORK_DIR ROWS FORGOTTEN".into());
    };
    let (work, rows, forgotten): (&Path, u64, u64) =
        (Path::new(work), rows.parse()?, forgotten.parse()?);
    let night = work.join(format!("night-{rows}"));
    if !night.exists() {
        let tmp = work.join(format!("night-{rows}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        generate(&tmp, rows)?;
        std::fs::rename(&tmp, &night)?;
    }
    let columns: BTreeSet<String> = ["identity".to_string()].into();
    let identities = rows / 2;
    // Forgotten identities spread evenly over the night (so over every file), and as many the
    // night does not hold.
    let held: HashSet<String> = (0..forgotten)
        .map(|k| identity_digest(&identity(k * identities / forgotten.max(1))))
        .collect();
    let absent: HashSet<String> = (0..forgotten)
        .map(|k| identity_digest(&format!("absent-{k}")))
        .collect();
    let run = work.join("run");
    let mut out = Vec::new();
    for (case, digests) in [("none_held", &absent), ("held", &held)] {
        copy(&night, &run)?;
        let started = Instant::now();
        let dropped = drop_identities(&run, &columns, digests)?;
        let seconds = started.elapsed().as_secs_f64();
        out.push(format!(
            "\"{case}\": {{\"seconds\": {seconds:.3}, \"rows_dropped\": {dropped}, \
             \"rows_per_s\": {:.0}}}",
            rows as f64 / seconds
        ));
    }
    std::fs::remove_dir_all(&run)?;
    println!(
        "{{\"rows\": {rows}, \"forgotten\": {forgotten}, {}}}",
        out.join(", ")
    );
    Ok(())
}
