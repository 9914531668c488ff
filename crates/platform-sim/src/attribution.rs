//! An Attribution AI scores dataset for the sample platform: one row per conversion event, with
//! the touchpoints that led to it and each touchpoint's credit under every attribution model
//! (Adobe's raw granular scores: `_<tenant>.attributionAI.touchpointsDetail[].scores`), one
//! scoring batch a night, deterministic for a seed.
//!
//! Night `n` (0-based) scores the conversions of its day, about 10 % from the day before (late
//! conversions); from night 1 on, the first 5 % of its rows re-send conversions of the night
//! before, `_id` and all. Each conversion has 1 to 5 touchpoints in time order, and under every
//! model its touchpoints' scores add up to 1 (the conversion's credit, shared), so a landing is
//! checked against [`conversion`], the truth.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::json::ReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};

use crate::SimError;
use crate::generate::{
    DAY_MS, NEWEST_SCORE_DAY, NewDataset, SCORING_CLIENT, TENANT, new_batch, write_dataset,
};

/// The dataset's id: fixed, after the other sample datasets' in every listing sorted by id.
pub const ATTRIBUTION_DATASET: &str = "f2b3c4d5e6f708192a3b4c5d";
/// The object under the tenant that holds the scores (Adobe: `_{tenantId}.{schema_name}`).
pub const SCORES_OBJECT: &str = "attributionAI";
/// The attribution models, as the scores object names them.
pub const MODELS: [&str; 6] = [
    "algorithmicInfluenced",
    "firstTouch",
    "lastTouch",
    "linear",
    "uShape",
    "decayUnits",
];
/// (touchpoint name, media channel, media type, media action, campaign name, campaign group).
const TOUCHPOINTS: [(&str, &str, &str, &str, &str, &str); 5] = [
    (
        "PAID_SEARCH_CLICK",
        "Search",
        "PAID",
        "Click",
        "Winter Search",
        "Search",
    ),
    (
        "EMAIL_CLICK",
        "Email",
        "OWNED",
        "Click",
        "Winter Newsletter",
        "Email",
    ),
    (
        "DISPLAY_IMPRESSION",
        "Display",
        "PAID",
        "Impression",
        "Retargeting",
        "Display",
    ),
    (
        "SOCIAL_CLICK",
        "Social",
        "EARNED",
        "Click",
        "Winter Social",
        "Social",
    ),
    (
        "DIRECT_VISIT",
        "Direct",
        "OWNED",
        "Visit",
        "Direct",
        "Direct",
    ),
];
const CONVERSIONS: [&str; 2] = ["Online Purchase", "Store Purchase"];

/// What one night's batch holds, for tests.
#[derive(Debug, Clone, Serialize)]
pub struct AttributionNight {
    pub night: u32,
    pub batch_id: String,
    pub rows: u64,
    /// Rows that re-send a conversion of the night before.
    pub repeated: u64,
}

/// One scored conversion, a function of (night, index, seed) alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    pub id: String,
    pub timestamp_us: i64,
    pub name: &'static str,
    pub price_total: f64,
    pub quantity: i64,
    pub sku: String,
    pub ecid: String,
    pub touchpoints: Vec<Touchpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Touchpoint {
    pub name: &'static str,
    pub timestamp_us: i64,
    /// One per model, in [`MODELS`]' order.
    pub scores: [f64; 6],
}

/// Adds nights `from..to` of the Attribution AI scores dataset (`rows` conversions a night) to
/// the platform in `platform_dir`, creating the dataset on the first.
pub fn add_attribution_nights(
    platform_dir: &Path,
    sandbox: &str,
    from: u32,
    to: u32,
    rows: u64,
    seed: u64,
) -> Result<Vec<AttributionNight>, SimError> {
    if rows < 20 {
        return Err(SimError::Generate(
            "--attribution needs at least 20 conversions".into(),
        ));
    }
    let dir = platform_dir.join(sandbox).join(ATTRIBUTION_DATASET);
    let dataset = NewDataset {
        name: "Attribution AI Scores - Acme Retail",
        description: "Attribution AI raw granular scores: conversions and the credit of each touchpoint",
        table: "attribution_ai_scores_acme_retail",
        days_before: 14,
        first_day: NEWEST_SCORE_DAY,
    };
    write_dataset(&dir, &dataset, seed ^ 0xa77a)?;
    (from..to)
        .map(|night| write_night(&dir, night, rows, seed))
        .collect()
}

/// The conversions night `night` sends, as (night scored, index) pairs.
pub fn night_conversions(night: u32, rows: u64) -> Vec<(u32, u64)> {
    let repeated = if night == 0 { 0 } else { rows * 5 / 100 };
    (0..rows)
        .map(|i| {
            if i < repeated {
                (night - 1, repeated + (i * 7) % (rows - repeated))
            } else {
                (night, i)
            }
        })
        .collect()
}

fn write_night(dir: &Path, night: u32, rows: u64, seed: u64) -> Result<AttributionNight, SimError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(71) ^ u64::from(night) << 20);
    let created = i64::from(NEWEST_SCORE_DAY + night as i32 + 1) * DAY_MS + 4 * 3_600_000;
    let (id, file_dir) = new_batch(
        dir,
        &mut rng,
        SCORING_CLIENT,
        "sensei_exp_attributionai@AdobeID",
        created,
        9_800,
    )?;
    let path = file_dir.join(format!("part-00000-{id}.snappy.parquet"));
    let file = File::create(&path).map_err(|e| SimError::io(&path, e))?;
    let parquet_err = |source| SimError::Parquet {
        path: path.clone(),
        source,
    };
    let schema = attribution_schema();
    // arrow's JSON reader takes offsets, not zone names: it reads the times as `+00:00`, cast
    // to `UTC` for the parts.
    let json_schema = schema_in("+00:00");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?;
    let sent = night_conversions(night, rows);
    for chunk in sent.chunks(16_384) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|(n, i)| row(&conversion(*n, *i, seed)))
            .collect();
        let mut decoder = ReaderBuilder::new(json_schema.clone())
            .build_decoder()
            .map_err(|e| SimError::Generate(e.to_string()))?;
        decoder
            .serialize(&rows)
            .map_err(|e| SimError::Generate(e.to_string()))?;
        if let Some(batch) = decoder
            .flush()
            .map_err(|e| SimError::Generate(e.to_string()))?
        {
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SimError::Generate(e.to_string()))?;
            let batch = arrow::array::RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| SimError::Generate(e.to_string()))?;
            writer.write(&batch).map_err(parquet_err)?;
        }
    }
    writer.close().map_err(parquet_err)?;
    Ok(AttributionNight {
        night,
        batch_id: id,
        rows,
        repeated: if night == 0 { 0 } else { rows * 5 / 100 },
    })
}

/// Conversion `i` of night `night`: its touchpoints in time order, each model's scores adding
/// up to 1 over them.
pub fn conversion(night: u32, i: u64, seed: u64) -> Conversion {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xaa17 ^ (u64::from(night) << 36) ^ i);
    let day = NEWEST_SCORE_DAY + night as i32 - i32::from(rng.random_range(0..100) < 10);
    let timestamp_us = (i64::from(day) * DAY_MS + rng.random_range(0..DAY_MS)) * 1000;
    let n = rng.random_range(1..=5usize);
    // Days before the conversion, oldest first.
    let mut ages: Vec<i64> = (0..n).map(|_| rng.random_range(0..30)).collect();
    ages.sort_unstable_by(|a, b| b.cmp(a));
    let weights: Vec<f64> = (0..n).map(|_| rng.random_range(1..100) as f64).collect();
    let decay: Vec<f64> = ages.iter().map(|a| 0.5f64.powf(*a as f64 / 7.0)).collect();
    let (weight_sum, decay_sum) = (weights.iter().sum::<f64>(), decay.iter().sum::<f64>());
    let touchpoints = (0..n)
        .map(|k| {
            let u_shape = match n {
                1 => 1.0,
                2 => 0.5,
                _ if k == 0 || k == n - 1 => 0.4,
                _ => 0.2 / (n - 2) as f64,
            };
            let (name, ..) = TOUCHPOINTS[rng.random_range(0..TOUCHPOINTS.len())];
            Touchpoint {
                name,
                timestamp_us: timestamp_us
                    - (ages[k] * DAY_MS + rng.random_range(1..3_600_000)) * 1000,
                scores: [
                    weights[k] / weight_sum,
                    f64::from(u8::from(k == 0)),
                    f64::from(u8::from(k == n - 1)),
                    1.0 / n as f64,
                    u_shape,
                    decay[k] / decay_sum,
                ],
            }
        })
        .collect();
    let quantity = rng.random_range(1..4);
    Conversion {
        id: format!("aai-{night:03}-{i:09}-{:08x}", seed as u32),
        timestamp_us,
        name: CONVERSIONS[rng.random_range(0..CONVERSIONS.len())],
        price_total: (f64::from(rng.random_range(1_000..30_000)) * quantity as f64).round() / 100.0,
        quantity,
        sku: format!("SKU-{:05}", rng.random_range(0..500)),
        ecid: format!("{:038}", rng.random_range(0..1_000_000u64) * 7919 + 11),
        touchpoints,
    }
}

/// A conversion as the row AEP writes, in JSON.
fn row(c: &Conversion) -> Value {
    let touchpoints: Vec<Value> = c
        .touchpoints
        .iter()
        .map(|t| {
            let (_, channel, media_type, action, campaign, group) = TOUCHPOINTS
                .iter()
                .find(|d| d.0 == t.name)
                .copied()
                .unwrap_or_default();
            let scores: serde_json::Map<String, Value> = MODELS
                .iter()
                .zip(t.scores)
                .map(|(m, s)| (m.to_string(), json!(s)))
                .collect();
            json!({
                "touchpointName": t.name,
                "scores": scores,
                "touchPoint": {
                    "mediaChannel": channel,
                    "mediaType": media_type,
                    "mediaAction": action,
                    "campaignName": campaign,
                    "campaignGroup": group,
                    "timestamp": t.timestamp_us,
                },
            })
        })
        .collect();
    json!({
        "_id": c.id,
        "timestamp": c.timestamp_us,
        "eventType": "commerce.purchases",
        TENANT: {
            SCORES_OBJECT: {
                "conversionName": c.name,
                "conversion": {
                    "eventType": "commerce.purchases",
                    "priceTotal": c.price_total,
                    "quantity": c.quantity,
                    "skuId": c.sku,
                    "timestamp": c.timestamp_us,
                },
                "customerProfile": {"identity": {"id": c.ecid, "namespace": "ECID"}},
                "touchpointsDetail": touchpoints,
            }
        }
    })
}

/// The Arrow schema of a scores part.
pub fn attribution_schema() -> SchemaRef {
    schema_in("UTC")
}

/// The scores part's schema with its times in `zone`.
fn schema_in(zone: &str) -> SchemaRef {
    let time = || DataType::Timestamp(TimeUnit::Microsecond, Some(zone.into()));
    let utf8 = |name: &str| Field::new(name, DataType::Utf8, true);
    let object = |name: &str, fields: Vec<Field>| {
        Field::new(name, DataType::Struct(Fields::from(fields)), true)
    };
    let touchpoint = object(
        "item",
        vec![
            utf8("touchpointName"),
            object(
                "scores",
                MODELS
                    .iter()
                    .map(|m| Field::new(*m, DataType::Float64, true))
                    .collect(),
            ),
            object(
                "touchPoint",
                vec![
                    utf8("mediaChannel"),
                    utf8("mediaType"),
                    utf8("mediaAction"),
                    utf8("campaignName"),
                    utf8("campaignGroup"),
                    Field::new("timestamp", time(), true),
                ],
            ),
        ],
    );
    let scores = object(
        SCORES_OBJECT,
        vec![
            utf8("conversionName"),
            object(
                "conversion",
                vec![
                    utf8("eventType"),
                    Field::new("priceTotal", DataType::Float64, true),
                    Field::new("quantity", DataType::Int64, true),
                    utf8("skuId"),
                    Field::new("timestamp", time(), true),
                ],
            ),
            object(
                "customerProfile",
                vec![object("identity", vec![utf8("id"), utf8("namespace")])],
            ),
            Field::new(
                "touchpointsDetail",
                DataType::List(Arc::new(touchpoint)),
                true,
            ),
        ],
    );
    Arc::new(Schema::new(vec![
        Field::new("_id", DataType::Utf8, false),
        Field::new("timestamp", time(), false),
        utf8("eventType"),
        object(TENANT, vec![scores]),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_shares_one_conversion_over_its_touchpoints() {
        for i in 0..200 {
            let c = conversion(1, i, 9);
            assert!((1..=5).contains(&c.touchpoints.len()));
            for (m, model) in MODELS.iter().enumerate() {
                let total: f64 = c.touchpoints.iter().map(|t| t.scores[m]).sum();
                assert!((total - 1.0).abs() < 1e-9, "{model} of {}: {total}", c.id);
            }
            assert!(
                c.touchpoints
                    .windows(2)
                    .all(|w| w[0].timestamp_us <= w[1].timestamp_us + 3_600_000_000)
            );
            assert!(
                c.touchpoints
                    .iter()
                    .all(|t| t.timestamp_us < c.timestamp_us)
            );
        }
        assert_eq!(conversion(2, 5, 9), conversion(2, 5, 9));
    }

    #[test]
    fn later_nights_resend_a_twentieth_of_the_night_before() {
        assert!(night_conversions(0, 100).iter().all(|(n, _)| *n == 0));
        let n1 = night_conversions(1, 100);
        assert_eq!(n1.iter().filter(|(n, _)| *n == 0).count(), 5);
        assert!(n1.iter().filter(|(n, _)| *n == 0).all(|(_, i)| *i >= 5));
    }

    #[test]
    fn a_night_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let nights = add_attribution_nights(dir.path(), "prod", 0, 2, 40, 3).unwrap();
        assert_eq!(nights[1].repeated, 2);
        let part = std::fs::read_dir(
            dir.path()
                .join("prod")
                .join(ATTRIBUTION_DATASET)
                .join(&nights[0].batch_id)
                .join(format!("{}-1", nights[0].batch_id)),
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(part).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 40);
    }
}
