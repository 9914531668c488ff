//! An ExperienceEvent dataset for the sample platform: web and commerce events, one streaming
//! batch a night, deterministic for a seed, so that a pipeline can land a dataset that is not
//! Customer AI's from its Schema Registry schema alone.
//!
//! Night `n` (0-based) holds events of its own day and about 8 % from the day before (late
//! arrivals); from night 1 on, about 3 % of its rows repeat an event of the night before, `_id`
//! and all (a re-sent batch of a streaming source). From night 2 on the rows carry a field the
//! older ones lack, `web.webPageDetails.isHomePage`: the schema gains a field. Nights are
//! added one at a time ([`add_event_nights`]), so a test can land a night, add the next and
//! land again.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::SimError;
use crate::generate::{
    DAY_MS, NEWEST_SCORE_DAY, NewDataset, TENANT, hex_lower, new_batch, write_dataset,
};

/// The client that writes the event batches (streaming ingestion).
pub const EVENTS_CLIENT: &str = "acp_streaming_ingest";
/// The dataset's id: fixed, and after the scores dataset's in every listing sorted by id.
pub const EVENTS_DATASET: &str = "f0e1d2c3b4a5968778695a4b";
/// The first night's day: the Customer AI sample's newest score date.
const FIRST_DAY: i32 = NEWEST_SCORE_DAY;
const EVENT_TYPES: [&str; 4] = [
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.purchases",
];
const PAGES: [&str; 5] = ["home", "shoes", "jackets", "cart", "checkout"];

/// What one night's batch holds, for tests to check a landing against.
#[derive(Debug, Clone, Serialize)]
pub struct EventNight {
    pub night: u32,
    pub batch_id: String,
    pub rows: u64,
    /// Rows that repeat an event of the night before.
    pub repeated: u64,
    /// Whether the rows carry `web.webPageDetails.isHomePage`.
    pub new_field: bool,
}

/// Adds nights `from..to` of the events dataset to the platform in `platform_dir` (sandbox
/// `sandbox`), creating the dataset on the first. Each batch has `rows` rows in two parts, or
/// one per 250,000 rows.
pub fn add_event_nights(
    platform_dir: &Path,
    sandbox: &str,
    from: u32,
    to: u32,
    rows: u64,
    seed: u64,
) -> Result<Vec<EventNight>, SimError> {
    if rows < 2 {
        return Err(SimError::Generate("--events needs at least 2 rows".into()));
    }
    let dir = platform_dir.join(sandbox).join(EVENTS_DATASET);
    let dataset = NewDataset {
        name: "Web Events - Acme Retail",
        description: "Web and commerce events of the Acme Retail site (XDM ExperienceEvent)",
        table: "web_events_acme_retail",
        days_before: 7,
        first_day: FIRST_DAY,
    };
    write_dataset(&dir, &dataset, seed ^ 0xe7e7)?;
    // The visitors' ECIDs are indirectly identifying (I2).
    crate::generate::write_json(
        &dir.join("labels.json"),
        &serde_json::json!({"fields": {format!("{TENANT}.identity.ecid"): ["I2"]}}),
    )?;
    (from..to)
        .map(|night| write_night(&dir, night, rows, seed))
        .collect()
}

/// The `_id` of event `i` of night `night`.
fn event_id(night: u32, i: u64, seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(night) << 40) ^ i);
    let h = hex_lower(&mut rng, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn write_night(dir: &Path, night: u32, rows: u64, seed: u64) -> Result<EventNight, SimError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(31) ^ u64::from(night) << 24);
    let day = FIRST_DAY + night as i32;
    let created = i64::from(day + 1) * DAY_MS + 2 * 3_600_000;
    let (id, file_dir) = new_batch(
        dir,
        &mut rng,
        EVENTS_CLIENT,
        "acp_streaming_ingest@AdobeID",
        created,
        5_200,
    )?;
    let new_field = night >= 2;
    let schema = events_schema(new_field);
    let repeated = if night == 0 { 0 } else { rows * 3 / 100 };
    // Two parts, or one per 250,000 rows; written 65,536 rows at a time.
    let parts = (rows / 250_000).max(2);
    for part in 0..parts {
        let range = part * rows / parts..(part + 1) * rows / parts;
        let path = file_dir.join(format!("part-{part:05}-{id}.snappy.parquet"));
        let file = File::create(&path).map_err(|e| SimError::io(&path, e))?;
        let parquet_err = |source| SimError::Parquet {
            path: path.clone(),
            source,
        };
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?;
        let mut start = range.start;
        while start < range.end {
            let end = (start + 65_536).min(range.end);
            let events: Vec<Event> = (start..end)
                .map(|i| {
                    // The first `repeated` rows of a night re-send events of the night before
                    // (among its own, not those it re-sent itself).
                    if i < repeated {
                        Event::new(
                            night - 1,
                            repeated + (i * 7) % (rows - repeated),
                            rows,
                            seed,
                        )
                    } else {
                        Event::new(night, i, rows, seed)
                    }
                })
                .collect();
            writer
                .write(&events_batch(&schema, &events, new_field))
                .map_err(parquet_err)?;
            start = end;
        }
        writer.close().map_err(parquet_err)?;
    }
    Ok(EventNight {
        night,
        batch_id: id,
        rows,
        repeated,
        new_field,
    })
}

/// One event, a function of (night, index, seed) alone, so a repeated event is the same row.
struct Event {
    id: String,
    timestamp_us: i64,
    event_type: &'static str,
    page: &'static str,
    referrer: Option<String>,
    ecid: Option<String>,
    purchase: Option<f64>,
    items: Vec<(String, i64, f64)>,
}

impl Event {
    fn new(night: u32, i: u64, rows: u64, seed: u64) -> Event {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xee ^ (u64::from(night) << 32) ^ i);
        let day = FIRST_DAY + night as i32 - i32::from(rng.random_range(0..100) < 8);
        let timestamp_us = (i64::from(day) * DAY_MS + rng.random_range(0..DAY_MS)) * 1000;
        let event_type = EVENT_TYPES[rng.random_range(0..EVENT_TYPES.len())];
        let page = PAGES[rng.random_range(0..PAGES.len())];
        let visitor = rng.random_range(0..(rows / 3).max(1));
        let ecid = (rng.random_range(0..100) >= 2).then(|| format!("{:038}", visitor * 7919 + 11));
        let items = match event_type {
            "web.webpagedetails.pageViews" => Vec::new(),
            _ => (0..rng.random_range(1..4))
                .map(|_| {
                    let sku = format!("SKU-{:05}", rng.random_range(0..500));
                    let qty = rng.random_range(1..4);
                    let price = f64::from(rng.random_range(500..20_000)) / 100.0;
                    (sku, qty, price * qty as f64)
                })
                .collect(),
        };
        let purchase = (event_type == "commerce.purchases")
            .then(|| (items.iter().map(|i| i.2).sum::<f64>() * 100.0).round() / 100.0);
        Event {
            id: event_id(night, i, seed),
            timestamp_us,
            event_type,
            page,
            referrer: (rng.random_range(0..3) == 0).then(|| "https://www.google.com/".to_string()),
            ecid,
            purchase,
            items,
        }
    }
}

fn item_fields() -> Fields {
    Fields::from(vec![
        Field::new("SKU", DataType::Utf8, true),
        Field::new("quantity", DataType::Int64, true),
        Field::new("priceTotal", DataType::Float64, true),
    ])
}

fn page_fields(new_field: bool) -> Fields {
    let mut f = vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("URL", DataType::Utf8, true),
    ];
    if new_field {
        f.push(Field::new("isHomePage", DataType::Boolean, true));
    }
    Fields::from(f)
}

/// The Arrow schema of an event part (`new_field`: with `web.webPageDetails.isHomePage`).
pub fn events_schema(new_field: bool) -> SchemaRef {
    let referrer = Fields::from(vec![Field::new("URL", DataType::Utf8, true)]);
    let web = Fields::from(vec![
        Field::new(
            "webPageDetails",
            DataType::Struct(page_fields(new_field)),
            true,
        ),
        Field::new("webReferrer", DataType::Struct(referrer), true),
    ]);
    let commerce = Fields::from(vec![Field::new(
        "order",
        DataType::Struct(Fields::from(vec![
            Field::new("priceTotal", DataType::Float64, true),
            Field::new("currencyCode", DataType::Utf8, true),
        ])),
        true,
    )]);
    let tenant = Fields::from(vec![Field::new(
        "identity",
        DataType::Struct(Fields::from(vec![Field::new("ecid", DataType::Utf8, true)])),
        true,
    )]);
    Arc::new(Schema::new(vec![
        Field::new("_id", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("eventType", DataType::Utf8, true),
        Field::new("web", DataType::Struct(web), true),
        Field::new("commerce", DataType::Struct(commerce), true),
        Field::new(
            "productListItems",
            DataType::new_list(DataType::Struct(item_fields()), true),
            true,
        ),
        Field::new(TENANT, DataType::Struct(tenant), true),
    ]))
}

fn events_batch(schema: &SchemaRef, events: &[Event], new_field: bool) -> RecordBatch {
    let strings = |f: &dyn Fn(&Event) -> Option<String>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<StringArray>())
    };
    let mut page: Vec<ArrayRef> = vec![
        strings(&|e| Some(e.page.to_string())),
        strings(&|e| Some(format!("https://www.acme-retail.example/{}", e.page))),
    ];
    if new_field {
        page.push(Arc::new(
            events
                .iter()
                .map(|e| Some(e.page == "home"))
                .collect::<BooleanArray>(),
        ));
    }
    let page = StructArray::new(page_fields(new_field), page, None);
    let referrer = StructArray::new(
        Fields::from(vec![Field::new("URL", DataType::Utf8, true)]),
        vec![strings(&|e| e.referrer.clone())],
        None,
    );
    let web = StructArray::from(vec![
        (
            Arc::new(Field::new("webPageDetails", page.data_type().clone(), true)),
            Arc::new(page) as ArrayRef,
        ),
        (
            Arc::new(Field::new(
                "webReferrer",
                referrer.data_type().clone(),
                true,
            )),
            Arc::new(referrer) as ArrayRef,
        ),
    ]);
    let purchased = NullBuffer::from(
        events
            .iter()
            .map(|e| e.purchase.is_some())
            .collect::<Vec<_>>(),
    );
    let order = StructArray::new(
        Fields::from(vec![
            Field::new("priceTotal", DataType::Float64, true),
            Field::new("currencyCode", DataType::Utf8, true),
        ]),
        vec![
            Arc::new(events.iter().map(|e| e.purchase).collect::<Float64Array>()),
            strings(&|e| e.purchase.map(|_| "USD".to_string())),
        ],
        Some(purchased.clone()),
    );
    let commerce = StructArray::new(
        Fields::from(vec![Field::new("order", order.data_type().clone(), true)]),
        vec![Arc::new(order)],
        Some(purchased),
    );
    let all_items: Vec<&(String, i64, f64)> = events.iter().flat_map(|e| &e.items).collect();
    let items = StructArray::new(
        item_fields(),
        vec![
            Arc::new(
                all_items
                    .iter()
                    .map(|i| Some(i.0.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(all_items.iter().map(|i| Some(i.1)).collect::<Int64Array>()),
            Arc::new(
                all_items
                    .iter()
                    .map(|i| Some(i.2))
                    .collect::<Float64Array>(),
            ),
        ],
        None,
    );
    let offsets = OffsetBuffer::from_lengths(events.iter().map(|e| e.items.len()));
    let has_items = NullBuffer::from(
        events
            .iter()
            .map(|e| !e.items.is_empty())
            .collect::<Vec<_>>(),
    );
    let list = ListArray::new(
        Arc::new(Field::new("item", DataType::Struct(item_fields()), true)),
        offsets,
        Arc::new(items),
        Some(has_items),
    );
    let identity = StructArray::new(
        Fields::from(vec![Field::new("ecid", DataType::Utf8, true)]),
        vec![strings(&|e| e.ecid.clone())],
        None,
    );
    let tenant = StructArray::from(vec![(
        Arc::new(Field::new("identity", identity.data_type().clone(), true)),
        Arc::new(identity) as ArrayRef,
    )]);
    RecordBatch::try_new(
        schema.clone(),
        vec![
            strings(&|e| Some(e.id.clone())),
            Arc::new(
                events
                    .iter()
                    .map(|e| Some(e.timestamp_us))
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone("UTC"),
            ),
            strings(&|e| Some(e.event_type.to_string())),
            Arc::new(web),
            Arc::new(commerce),
            Arc::new(list),
            Arc::new(tenant),
        ],
    )
    .expect("the columns are built from events_schema, so they match it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_event_is_the_same_row_and_nights_are_deterministic() {
        let a = Event::new(1, 17, 1000, 42);
        let b = Event::new(1, 17, 1000, 42);
        assert_eq!((a.id.clone(), a.timestamp_us), (b.id, b.timestamp_us));
        assert_ne!(a.id, Event::new(1, 18, 1000, 42).id);
        assert_ne!(a.id, Event::new(2, 17, 1000, 42).id);
    }

    #[test]
    fn nights_are_written_with_their_repeats_and_the_new_field() {
        let dir = tempfile::tempdir().unwrap();
        let nights = add_event_nights(dir.path(), "prod", 0, 3, 200, 7).unwrap();
        assert_eq!(
            nights.iter().map(|n| n.repeated).collect::<Vec<_>>(),
            [0, 6, 6]
        );
        assert_eq!(
            nights.iter().map(|n| n.new_field).collect::<Vec<_>>(),
            [false, false, true]
        );
        let more = add_event_nights(dir.path(), "prod", 3, 4, 200, 7).unwrap();
        assert_eq!(more[0].night, 3);
        let batches = std::fs::read_dir(dir.path().join("prod").join(EVENTS_DATASET))
            .unwrap()
            .count();
        assert_eq!(batches, 6, "dataset.json, labels.json and four batches");
    }
}
