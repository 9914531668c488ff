//! A record dataset for the sample platform: loyalty members (profile attributes), one batch a
//! night, whose primary identity is given by a Schema Registry identity descriptor
//! (`descriptors.json` beside `dataset.json`), so that a pipeline can keep the newest row per
//! member from the schema alone.
//!
//! Night 0 holds `members` members; each later night updates every tenth member (points and
//! maybe tier) and adds 5 % new ones; the first 1 % of a night's updates are sent twice in it,
//! a stale row first: the later row is the newest. A member's values at night `n` are a
//! function of (member, n), so [`member_at`] is the truth a landing is checked against.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::SimError;
use crate::generate::{
    DAY_MS, NEWEST_SCORE_DAY, NewDataset, TENANT, new_batch, write_dataset, write_json,
};

/// The dataset's id: fixed, after the scores dataset's and the events'.
pub const RECORDS_DATASET: &str = "f1a2b3c4d5e6f70819a2b3c4";
/// The client that writes its batches (a CRM sync).
pub const RECORDS_CLIENT: &str = "crm_sync";
/// The primary identity's path, as the descriptor gives it (`/a/b`), and dotted.
pub const IDENTITY_PROPERTY: &str = "/_acmeretail/loyalty/memberId";
const TIERS: [&str; 3] = ["bronze", "silver", "gold"];

/// One night's batch, for tests.
#[derive(Debug, Clone, Serialize)]
pub struct RecordNight {
    pub night: u32,
    pub batch_id: String,
    pub rows: u64,
}

/// A member's values when night `night` sends it: (tier, points).
pub fn member_at(member: u64, night: u32) -> (&'static str, i64) {
    let tier = TIERS[((member * 7 + u64::from(night)) % 3) as usize];
    ((tier), (member * 37 % 1000) as i64 + 100 * i64::from(night))
}

/// The members night `night` sends, in order (a stale copy of the first 1 % of updates first).
pub fn night_members(members: u64, night: u32) -> Vec<(u64, bool)> {
    if night == 0 {
        return (0..members).map(|m| (m, false)).collect();
    }
    let before = members + u64::from(night - 1) * (members / 20);
    let updated: Vec<u64> = (0..before)
        .filter(|m| m % 10 == u64::from(night % 10))
        .collect();
    let twice = (members / 100) as usize;
    let mut out: Vec<(u64, bool)> = updated.iter().take(twice).map(|m| (*m, true)).collect();
    out.extend(updated.iter().map(|m| (*m, false)));
    out.extend((before..before + members / 20).map(|m| (m, false)));
    out
}

/// Adds nights `from..to` of the loyalty-members dataset (`members` at night 0) to the
/// platform in `platform_dir`, creating the dataset and its identity descriptor on the first.
pub fn add_record_nights(
    platform_dir: &Path,
    sandbox: &str,
    from: u32,
    to: u32,
    members: u64,
    seed: u64,
) -> Result<Vec<RecordNight>, SimError> {
    if members < 20 {
        return Err(SimError::Generate(
            "--records needs at least 20 members".into(),
        ));
    }
    let dir = platform_dir.join(sandbox).join(RECORDS_DATASET);
    let dataset = NewDataset {
        name: "Loyalty Members - Acme Retail",
        description: "Loyalty program members from the CRM (XDM Individual Profile attributes)",
        table: "loyalty_members_acme_retail",
        days_before: 6,
        first_day: NEWEST_SCORE_DAY,
    };
    if !dir.join("descriptors.json").exists() {
        write_dataset(&dir, &dataset, seed ^ 0x7ec0)?;
        // Data usage labels: C1 (no export to third parties) on the dataset, and the
        // members' e-mail addresses directly identifying (I1) and not for ad targeting (C2).
        write_json(
            &dir.join("labels.json"),
            &json!({"labels": ["C1"], "fields": {"personalEmail.address": ["I1", "C2"]}}),
        )?;
        write_json(
            &dir.join("descriptors.json"),
            &json!([{
                "@type": "xdm:descriptorIdentity",
                "xdm:sourceProperty": IDENTITY_PROPERTY,
                "xdm:namespace": "LoyaltyId",
                "xdm:property": "xdm:code",
                "xdm:isPrimary": true,
            }]),
        )?;
    }
    (from..to)
        .map(|night| write_night(&dir, night, members, seed))
        .collect()
}

fn write_night(dir: &Path, night: u32, members: u64, seed: u64) -> Result<RecordNight, SimError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(53) ^ u64::from(night) << 28);
    let created = i64::from(NEWEST_SCORE_DAY + night as i32 + 1) * DAY_MS + 3 * 3_600_000;
    let (id, file_dir) = new_batch(
        dir,
        &mut rng,
        RECORDS_CLIENT,
        "crm-sync@AdobeID",
        created,
        3_900,
    )?;
    let rows = night_members(members, night);
    let path = file_dir.join(format!("part-00000-{id}.snappy.parquet"));
    let file = File::create(&path).map_err(|e| SimError::io(&path, e))?;
    let parquet_err = |source| SimError::Parquet {
        path: path.clone(),
        source,
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let schema = records_schema();
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?;
    for chunk in rows.chunks(65_536) {
        writer
            .write(&records_batch(&schema, chunk, night))
            .map_err(parquet_err)?;
    }
    writer.close().map_err(parquet_err)?;
    Ok(RecordNight {
        night,
        batch_id: id,
        rows: rows.len() as u64,
    })
}

fn reward_fields() -> Fields {
    Fields::from(vec![
        Field::new("code", DataType::Utf8, true),
        Field::new("points", DataType::Int64, true),
    ])
}

fn loyalty_fields() -> Fields {
    Fields::from(vec![
        Field::new("memberId", DataType::Utf8, true),
        Field::new("tier", DataType::Utf8, true),
        Field::new("points", DataType::Int64, true),
        Field::new("joined", DataType::Date32, true),
        Field::new(
            "rewards",
            DataType::new_list(DataType::Struct(reward_fields()), true),
            true,
        ),
    ])
}

/// The rewards a member holds when night `night` sends it: 0 to 2, (code, points).
pub fn rewards_at(member: u64, night: u32) -> Vec<(String, i64)> {
    (0..(member + u64::from(night)) % 3)
        .map(|k| {
            (
                format!("RW-{:03}", (member * 13 + k) % 97),
                50 * (k as i64 + 1),
            )
        })
        .collect()
}

/// The Arrow schema of a loyalty-members part.
pub fn records_schema() -> SchemaRef {
    let tenant = Fields::from(vec![Field::new(
        "loyalty",
        DataType::Struct(loyalty_fields()),
        true,
    )]);
    let email = Fields::from(vec![Field::new("address", DataType::Utf8, true)]);
    Arc::new(Schema::new(vec![
        Field::new("_id", DataType::Utf8, false),
        Field::new(TENANT, DataType::Struct(tenant), true),
        Field::new("personalEmail", DataType::Struct(email), true),
    ]))
}

/// The member id of member `m`.
pub fn member_id(m: u64) -> String {
    format!("LM{m:08}")
}

fn records_batch(schema: &SchemaRef, rows: &[(u64, bool)], night: u32) -> RecordBatch {
    let values: Vec<(&str, i64)> = rows
        .iter()
        .map(|(m, stale)| {
            let (tier, points) = member_at(*m, night);
            (tier, if *stale { points - 1 } else { points })
        })
        .collect();
    let loyalty = StructArray::new(
        loyalty_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(m, _)| member_id(*m)),
            )),
            Arc::new(StringArray::from_iter_values(values.iter().map(|v| v.0))),
            Arc::new(Int64Array::from_iter_values(values.iter().map(|v| v.1))),
            Arc::new(Date32Array::from_iter_values(
                rows.iter()
                    .map(|(m, _)| NEWEST_SCORE_DAY - (m % 700) as i32),
            )),
            Arc::new(rewards_list(rows, night)),
        ],
        None,
    );
    let tenant = StructArray::from(vec![(
        Arc::new(Field::new(
            "loyalty",
            DataType::Struct(loyalty_fields()),
            true,
        )),
        Arc::new(loyalty) as ArrayRef,
    )]);
    let email = StructArray::from(vec![(
        Arc::new(Field::new("address", DataType::Utf8, true)),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|(m, _)| format!("member{m}@example.com")),
        )) as ArrayRef,
    )]);
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter()
                    .enumerate()
                    .map(|(i, (m, _))| format!("{night}-{i}-{m}")),
            )),
            Arc::new(tenant),
            Arc::new(email),
        ],
    )
    .expect("the columns are built from records_schema, so they match it")
}

fn rewards_list(rows: &[(u64, bool)], night: u32) -> ListArray {
    let per_row: Vec<Vec<(String, i64)>> =
        rows.iter().map(|(m, _)| rewards_at(*m, night)).collect();
    let all: Vec<&(String, i64)> = per_row.iter().flatten().collect();
    let items = StructArray::new(
        reward_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(
                all.iter().map(|r| r.0.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(all.iter().map(|r| r.1))),
        ],
        None,
    );
    ListArray::new(
        Arc::new(Field::new("item", DataType::Struct(reward_fields()), true)),
        OffsetBuffer::from_lengths(per_row.iter().map(Vec::len)),
        Arc::new(items),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nights_update_a_tenth_add_a_twentieth_and_resend_some() {
        assert_eq!(night_members(200, 0).len(), 200);
        let n1 = night_members(200, 1);
        // 20 updated (two of them twice, stale first) and 10 new.
        assert_eq!(n1.len(), 2 + 20 + 10);
        assert_eq!((n1[0], n1[2]), ((1, true), (1, false)));
        assert_eq!(n1.last(), Some(&(209, false)));
        let n2 = night_members(200, 2);
        assert_eq!(n2.last(), Some(&(219, false)));
        assert_eq!(member_at(5, 3).1 - member_at(5, 1).1, 200);
    }
}
