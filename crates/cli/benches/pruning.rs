//! The pruning benchmark (run by `benches/pruning.sh`): a warehouse of 30 nights of scores,
//! landed as `scoreland run` lands them (zstd parquet per score date, one Delta commit per
//! night), then the bytes that queries read, from DataFusion's scan metrics (`EXPLAIN ANALYZE`
//! through the same query path as `scoreland sql`):
//! - one score date: only that night's files are opened;
//! - one identity on one night, before and after `optimize` (sorted by identity).
//!
//!     cargo bench -p scoreland --bench pruning -- WORK_DIR [ROWS_PER_NIGHT]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder, StructBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use scoreland_sink::{AsOf, SinkConfig, TableWrite, Warehouse};

const NIGHTS: i32 = 30;
/// 2025-10-01, days since 1970-01-01.
const FIRST_NIGHT: i32 = 20_362;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (work, rows) = match args.as_slice() {
        [work] => (work.clone(), 1_000_000),
        [work, rows] => (work.clone(), rows.parse()?),
        _ => return Err("usage: pruning WORK_DIR [ROWS_PER_NIGHT]".into()),
    };
    let work = Path::new(&work);
    let _ = std::fs::remove_dir_all(work);
    let wh = SinkConfig {
        url: work.join("warehouse").display().to_string(),
        options: Default::default(),
        single_writer: false,
    }
    .build()
    .await?;

    let started = Instant::now();
    for night in 0..NIGHTS {
        let dir = work.join(format!("night-{night}"));
        let run_id = format!("night-{night}");
        write_night(&dir, FIRST_NIGHT + night, rows, &run_id)?;
        wh.write_table(&TableWrite {
            table: "scores",
            local_dir: &dir,
            dataset_id: "bench",
            run_id: &run_id,
            by_score_date: true,
            date_column: "score_date",
            replace_dataset: false,
            append: false,
            evolve_schema: false,
            app_id: "pruning-bench",
            app_version: i64::from(night) + 1,
            metadata: Default::default(),
            properties: Default::default(),
        })
        .await?;
        std::fs::remove_dir_all(&dir)?;
    }
    let landed_s = started.elapsed().as_secs_f64();

    let night = FIRST_NIGHT + 15;
    let date = date_string(night);
    let identity = identity(12_345);
    let (table_bytes, night_bytes) = sizes(&wh, &date).await?;
    println!(
        "warehouse: {NIGHTS} nights × {rows} rows landed in {landed_s:.1} s; table {:.1} MB, \
         night {date} {:.1} MB",
        mb(table_bytes),
        mb(night_bytes)
    );
    let by_date = scan(
        &wh,
        &format!("SELECT count(*), sum(score) FROM scores WHERE score_date = DATE '{date}'"),
    )
    .await?;
    report("one score date", &by_date, night_bytes, table_bytes);
    let lookup = format!(
        "SELECT * FROM scores WHERE score_date = DATE '{date}' AND identity = '{identity}'"
    );
    report(
        "one identity, one night",
        &scan(&wh, &lookup).await?,
        night_bytes,
        table_bytes,
    );
    let started = Instant::now();
    let optimized = wh.optimize_table("scores", &["identity"], 2 << 30).await?;
    println!(
        "optimize (sorted by identity): {:.1} s, {:?}",
        started.elapsed().as_secs_f64(),
        optimized
    );
    let (table_bytes, night_bytes) = sizes(&wh, &date).await?;
    report(
        "one identity, one night, optimized",
        &scan(&wh, &lookup).await?,
        night_bytes,
        table_bytes,
    );
    report(
        "one identity, every night, optimized",
        &scan(
            &wh,
            &format!("SELECT * FROM scores WHERE identity = '{identity}'"),
        )
        .await?,
        night_bytes,
        table_bytes,
    );
    Ok(())
}

/// One night's transform output: `score_date=D/part-0.parquet`, two models per identity, in
/// the order a dedupe leaves them (by no key of interest), zstd as the transform writes; the
/// columns of the real scores table, with one to three influential factors a row.
fn write_night(
    dir: &Path,
    day: i32,
    rows: usize,
    run_id: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("identity", DataType::Utf8, false),
        Field::new("identity_namespace", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("probability", DataType::Float64, false),
        Field::new("percentile", DataType::Int32, false),
        Field::new("record_id", DataType::Utf8, false),
        Field::new("batch_id", DataType::Utf8, false),
        Field::new(
            "batch_created",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("score_date", DataType::Date32, false),
        Field::new(
            "influential_factors",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(factor_fields()),
                true,
            ))),
            true,
        ),
        Field::new("run_id", DataType::Utf8, false),
    ]));
    let path = dir
        .join(format!("score_date={}", date_string(day)))
        .join("part-0.parquet");
    std::fs::create_dir_all(path.parent().unwrap())?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path)?, schema.clone(), Some(props))?;
    let chunk = 65_536;
    for start in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - start);
        let ids: Vec<usize> = (start..start + n).collect();
        // A scatter of the identities: row i is identity `spread(i) / 2`, model `i % 2`.
        let who = |i: usize| spread(i as u64, rows as u64) as usize;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(ids.iter().map(|&i| {
                if i % 2 == 0 {
                    "purchase_propensity"
                } else {
                    "churn_risk"
                }
            }))),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|&i| identity(who(i) / 2)),
            )),
            Arc::new(StringArray::from_iter_values(ids.iter().map(|_| "Email"))),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|&i| (who(i) % 1000) as f64 / 10.0),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|&i| (who(i) % 9973) as f64 / 9973.0),
            )),
            Arc::new(Int32Array::from_iter_values(
                ids.iter().map(|&i| (who(i) % 100) as i32 + 1),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|&i| format!("{day:08}-{i:010}")),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|_| format!("batch-{day}")),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    ids.iter().map(|_| i64::from(day) * 86_400_000_000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Date32Array::from_iter_values(ids.iter().map(|_| day))),
            factors(ids.iter().map(|&i| who(i))),
            Arc::new(StringArray::from_iter_values(ids.iter().map(|_| run_id))),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    w.close()?;
    Ok(())
}

fn factor_fields() -> Fields {
    Fields::from(vec![
        Field::new("code", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
        Field::new("importance", DataType::Utf8, true),
    ])
}

/// One to three factors per row, drawn from a customer's number.
fn factors(who: impl Iterator<Item = usize>) -> ArrayRef {
    const CODES: [&str; 5] = [
        "daysSinceLastPurchase",
        "orderCount",
        "webVisits",
        "emailOpens",
        "cartAbandons",
    ];
    const LEVELS: [&str; 3] = ["high", "medium", "low"];
    let fields = factor_fields();
    let element = StructBuilder::from_fields(fields.clone(), 0);
    let mut list = ListBuilder::new(element).with_field(Arc::new(Field::new(
        "item",
        DataType::Struct(fields),
        true,
    )));
    for w in who {
        for k in 0..=(w % 3) {
            let s = list.values();
            let x = w / 7 + k * 13;
            s.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(CODES[x % CODES.len()]);
            s.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value((x % 60).to_string());
            s.field_builder::<StringBuilder>(2)
                .unwrap()
                .append_value(LEVELS[(x / 5) % 3]);
            s.append(true);
        }
        list.append(true);
    }
    Arc::new(list.finish())
}

/// A permutation of `0..n` (multiplication by an odd constant modulo a power of two, walked
/// until it lands inside `n`).
fn spread(i: u64, n: u64) -> u64 {
    let size = n.next_power_of_two().max(2);
    let mut x = i;
    loop {
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15 | 1) & (size - 1);
        if x < n {
            return x;
        }
    }
}

/// The same customers night after night.
fn identity(who: usize) -> String {
    format!("customer{who:09}@example.com")
}

fn date_string(day: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// Bytes of the table's live files, and of those of one night.
async fn sizes(wh: &Warehouse, date: &str) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let table = wh.delta_table("scores", None).await?.ok_or("no table")?;
    let (mut all, mut night) = (0, 0);
    for f in table.snapshot()?.log_data().iter() {
        all += f.size() as u64;
        if f.partition_values_map().get("score_date") == Some(&Some(date.to_string())) {
            night += f.size() as u64;
        }
    }
    Ok((all, night))
}

/// What one query read: file ranges opened (a large file is read as two ranges, one per core)
/// and bytes scanned, summed over its scans.
struct Scan {
    files_opened: u64,
    bytes_scanned: f64,
    rows: usize,
}

async fn scan(wh: &Warehouse, sql: &str) -> Result<Scan, Box<dyn std::error::Error>> {
    let rows = wh
        .query(&["scores"], AsOf::Published, sql)
        .await?
        .batches
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let out = wh
        .query(
            &["scores"],
            AsOf::Published,
            &format!("EXPLAIN ANALYZE {sql}"),
        )
        .await?;
    let text = arrow::util::pretty::pretty_format_batches(&out.batches)?.to_string();
    Ok(Scan {
        files_opened: metric_sum(&text, "files_opened") as u64,
        bytes_scanned: metric_sum(&text, "bytes_scanned"),
        rows,
    })
}

/// The sum of metric `name` over every operator of an `EXPLAIN ANALYZE` text.
fn metric_sum(text: &str, name: &str) -> f64 {
    let key = format!(" {name}=");
    text.match_indices(&key)
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            human(&rest[..rest.find([',', ']']).unwrap_or(rest.len())])
        })
        .sum()
}

/// DataFusion's human-readable count (`4.15 K`, `12.3 M`, or a plain number); NaN when it is
/// neither, so a changed format shows in the figures rather than reading as zero.
fn human(v: &str) -> f64 {
    let v = v.trim();
    let (number, unit) = match v.rsplit_once(' ') {
        Some((n, "K")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        Some((n, "G")) => (n, 1e9),
        Some((n, "T")) => (n, 1e12),
        _ => (v, 1.0),
    };
    number.parse::<f64>().map_or(f64::NAN, |n| n * unit)
}

fn report(what: &str, s: &Scan, night_bytes: u64, table_bytes: u64) {
    println!(
        "{what:<40} rows {:>4}  file ranges opened {:>3}  bytes scanned {:>10.1} KB  \
         = {:>6.2} % of the night, {:>6.3} % of the table",
        s.rows,
        s.files_opened,
        s.bytes_scanned / 1e3,
        100.0 * s.bytes_scanned / night_bytes as f64,
        100.0 * s.bytes_scanned / table_bytes as f64,
    );
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}
