//! The sample-platform generator: a realistic Customer AI scores dataset, deterministic for a
//! seed, written part by part so memory stays flat from a handful of rows to tens of millions.
//!
//! What it writes, oldest first (see [`GenerateOptions`] for the sizes):
//! - `batches` weekly scoring batches from `acp_foundation_push`, each replacing its predecessor
//!   (`replay.predecessors`, and `tags.acp_successor` on the replaced one);
//! - one failed scoring batch (status `failure`, with `errors[]`, no files);
//! - one batch from another client (`mlops_backfill`), newer than every scoring batch, so that a
//!   client that forgets the `createdClient` filter picks the wrong batch;
//! - schema drift: the two newest scoring batches carry an extra `modelVersion` field per model.
//!
//! Rows hold `_id`, `timestamp` (µs, UTC) and `_<tenant>`: an `identity {id, namespace.code}`
//! (ECID, or Email for one identity in seven; null for about 0.5 % of rows) and
//! `CustomerAI.<instance>` for two model instances, each
//! `{score, probability, percentile, propensityType, scoreDate, influentialFactors[]}`.
//! About 10 % of the rows of a batch repeat an identity already scored in it, in any part, and
//! 10 % are scored one day before the batch's scoring date.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, ListArray, RecordBatch, StringArray,
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
use serde_json::json;

use crate::SimError;
use crate::data::PlatformInfo;

/// The two Customer AI model instances of the sample platform, with their propensity type.
pub const INSTANCES: [(&str, &str); 2] = [
    ("churn_risk", "Churn"),
    ("purchase_propensity", "Conversion"),
];

pub const TENANT: &str = "_acmeretail";
pub const SCORING_CLIENT: &str = "acp_foundation_push";
pub const OTHER_CLIENT: &str = "mlops_backfill";

const FACTOR_CODES: [&str; 6] = [
    "productViewsCount",
    "daysSinceLastPurchase",
    "emailOpens",
    "cartAbandonments",
    "webVisits",
    "orderCount",
];
const IMPORTANCE: [&str; 3] = ["low", "medium", "high"];
const CHUNK_ROWS: usize = 65_536;
/// 2026-11-16, a Monday: the newest scoring date, fixed so output depends only on the seed.
pub(crate) const NEWEST_SCORE_DAY: i32 = 20_773;
pub(crate) const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub out: PathBuf,
    /// Rows per scoring batch.
    pub rows: u64,
    /// Parquet parts per scoring batch.
    pub parts: u32,
    /// Successful weekly scoring batches.
    pub batches: u32,
    pub seed: u64,
    pub sandbox: String,
    pub app_name: String,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            out: PathBuf::from("platform"),
            rows: 2_000,
            parts: 4,
            batches: 4,
            seed: 42,
            sandbox: "prod".into(),
            app_name: "Acme Retail".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GeneratedBatch {
    pub id: String,
    pub status: String,
    pub created_client: String,
    pub created: i64,
    pub rows: u64,
    pub parts: u32,
    pub replaces: Option<String>,
    pub drift_column: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateSummary {
    pub out: PathBuf,
    pub sandbox: String,
    pub dataset_id: String,
    pub dataset_name: String,
    pub batches: Vec<GeneratedBatch>,
}

/// What one batch's rows look like.
#[derive(Debug, Clone, Copy)]
struct BatchShape {
    /// Index among scoring batches (drives score date and distribution shift).
    week: u32,
    rows: u64,
    parts: u32,
    drift: bool,
    score_day: i32,
    created_ms: i64,
}

pub fn generate(opts: &GenerateOptions) -> Result<GenerateSummary, SimError> {
    if opts.parts == 0 || opts.batches == 0 {
        return Err(SimError::Generate(
            "--parts and --batches must be at least 1".into(),
        ));
    }
    if opts.out.join("platform.json").exists() {
        return Err(SimError::Generate(format!(
            "{} already holds a platform (platform.json); choose an empty directory",
            opts.out.display()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let info = PlatformInfo {
        org_id: format!("{}@AdobeOrg", hex_upper(&mut rng, 24)),
        client_id: format!("scoreland-sim-{}", hex_lower(&mut rng, 8)),
        client_secret: format!("p8e-sim-{}", hex_lower(&mut rng, 24)),
        tenant: TENANT.into(),
    };
    let dataset_id = hex_lower(&mut rng, 24);
    let dataset_name = format!("Customer AI Scores - {}", opts.app_name);
    let dataset_dir = opts.out.join(&opts.sandbox).join(&dataset_id);
    std::fs::create_dir_all(&dataset_dir).map_err(|e| SimError::io(&dataset_dir, e))?;
    write_json(
        &opts.out.join("platform.json"),
        &serde_json::to_value(&info).map_err(|e| SimError::Generate(e.to_string()))?,
    )?;
    let first_day = NEWEST_SCORE_DAY - 7 * (opts.batches as i32 - 1);
    let tag = opts.app_name.to_lowercase().replace(' ', "_");
    write_json(
        &dataset_dir.join("dataset.json"),
        &json!({
            "name": dataset_name,
            "description": format!("Scores written by Customer AI for {}", opts.app_name),
            "state": "DRAFT",
            "schemaRef": {
                "id": format!("https://ns.adobe.com/{}/schemas/{}", &TENANT[1..], hex_lower(&mut rng, 32)),
                "contentType": "application/vnd.adobe.xed+json;version=1",
            },
            "tags": {"adobe/pqs/table": [format!("customer_ai_scores_{tag}")]},
            "fileDescription": {"persisted": true, "containerFormat": "parquet", "format": "parquet"},
            "created": day_ms(first_day) - 14 * DAY_MS,
            "updated": day_ms(NEWEST_SCORE_DAY),
            "version": "1.0.0",
        }),
    )?;

    let scoring_ids: Vec<String> = (0..opts.batches).map(|_| batch_id(&mut rng)).collect();
    let mut summary = GenerateSummary {
        out: opts.out.clone(),
        sandbox: opts.sandbox.clone(),
        dataset_id: dataset_id.clone(),
        dataset_name,
        batches: Vec::new(),
    };
    for (week, id) in scoring_ids.iter().enumerate() {
        let week = week as u32;
        let score_day = first_day + 7 * week as i32;
        let shape = BatchShape {
            week,
            rows: opts.rows,
            parts: opts.parts,
            drift: week + 2 >= opts.batches,
            score_day,
            created_ms: day_ms(score_day) + 4 * 3_600_000 + (week as i64) * 61_000,
        };
        let predecessor = week.checked_sub(1).map(|w| scoring_ids[w as usize].clone());
        let successor = scoring_ids.get(week as usize + 1).cloned();
        let mut object = json!({
            "status": "success",
            "createdClient": SCORING_CLIENT,
            "createdUser": "sensei_exp_customerai@AdobeID",
            "updatedUser": "acp_foundation_dataTracker@AdobeID",
            "inputFormat": {"format": "parquet"},
            "created": shape.created_ms,
            "started": shape.created_ms + 600,
            "completed": shape.created_ms + 11_500,
            "updated": shape.created_ms + 12_400,
            "tags": {},
        });
        if let Some(p) = &predecessor {
            object["replay"] = json!({
                "predecessors": [p],
                "reason": format!("Replacing for {}", day_string(score_day)),
                "predecessorListingType": "IMMEDIATE",
            });
        }
        if let Some(s) = &successor {
            object["tags"]["acp_successor"] = json!([s]);
        }
        write_batch(
            &dataset_dir,
            id,
            &object,
            Some(shape),
            opts.seed,
            &info.tenant,
        )?;
        summary.batches.push(GeneratedBatch {
            id: id.clone(),
            status: "success".into(),
            created_client: SCORING_CLIENT.into(),
            created: shape.created_ms,
            rows: shape.rows,
            parts: shape.parts,
            replaces: predecessor,
            drift_column: shape.drift,
        });
    }

    // A scoring attempt that failed between the last two weeks.
    let failed_id = batch_id(&mut rng);
    let failed_created = day_ms(NEWEST_SCORE_DAY) - 3 * DAY_MS;
    write_batch(
        &dataset_dir,
        &failed_id,
        &json!({
            "status": "failure",
            "createdClient": SCORING_CLIENT,
            "createdUser": "sensei_exp_customerai@AdobeID",
            "inputFormat": {"format": "parquet"},
            "created": failed_created,
            "started": failed_created + 700,
            "completed": failed_created + 9_000,
            "updated": failed_created + 9_100,
            "errors": [{"code": "106", "description": "Dataset file is empty. Please upload file with data.", "rows": []}],
        }),
        None,
        opts.seed,
        &info.tenant,
    )?;
    summary.batches.push(GeneratedBatch {
        id: failed_id,
        status: "failure".into(),
        created_client: SCORING_CLIENT.into(),
        created: failed_created,
        rows: 0,
        parts: 0,
        replaces: None,
        drift_column: false,
    });

    // Another client's batch, newer than every scoring batch.
    let other_id = batch_id(&mut rng);
    let other = BatchShape {
        week: opts.batches,
        rows: (opts.rows / 20).max(1),
        parts: 1,
        drift: false,
        score_day: NEWEST_SCORE_DAY + 1,
        created_ms: day_ms(NEWEST_SCORE_DAY + 1) + 3_600_000,
    };
    write_batch(
        &dataset_dir,
        &other_id,
        &json!({
            "status": "success",
            "createdClient": OTHER_CLIENT,
            "createdUser": "backfill-job@AdobeID",
            "inputFormat": {"format": "parquet"},
            "created": other.created_ms,
            "started": other.created_ms + 500,
            "completed": other.created_ms + 4_000,
            "updated": other.created_ms + 4_100,
        }),
        Some(other),
        opts.seed,
        &info.tenant,
    )?;
    summary.batches.push(GeneratedBatch {
        id: other_id,
        status: "success".into(),
        created_client: OTHER_CLIENT.into(),
        created: other.created_ms,
        rows: other.rows,
        parts: 1,
        replaces: None,
        drift_column: false,
    });
    Ok(summary)
}

fn write_batch(
    dataset_dir: &Path,
    id: &str,
    object: &serde_json::Value,
    shape: Option<BatchShape>,
    seed: u64,
    tenant: &str,
) -> Result<(), SimError> {
    let dir = dataset_dir.join(id);
    std::fs::create_dir_all(&dir).map_err(|e| SimError::io(&dir, e))?;
    write_json(&dir.join("batch.json"), object)?;
    let Some(shape) = shape else {
        return Ok(());
    };
    let file_dir = dir.join(format!("{id}-1"));
    std::fs::create_dir_all(&file_dir).map_err(|e| SimError::io(&file_dir, e))?;
    let schema = scores_schema(tenant, shape.drift);
    let perm = Permutation::new(shape.rows, seed ^ u64::from(shape.week));
    let mut name_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed ^ u64::from(shape.week) << 20);
    let tid: u64 = name_rng.random_range(1_000_000_000_000_000_000..u64::MAX / 2);
    let run = hex_lower(&mut name_rng, 32);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &run[..8],
        &run[8..12],
        &run[12..16],
        &run[16..20],
        &run[20..32]
    );
    let base = shape.rows / u64::from(shape.parts);
    let extra = shape.rows % u64::from(shape.parts);
    let mut first_row = 0u64;
    for part in 0..shape.parts {
        let rows = base + u64::from(u64::from(part) < extra);
        let name = format!(
            "part-{part:05}-tid-{tid}-{uuid}-{}-1-c000.snappy.parquet",
            528 + part
        );
        let path = file_dir.join(name);
        let file = File::create(&path).map_err(|e| SimError::io(&path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(CHUNK_ROWS))
            .build();
        let parquet_err = |source| SimError::Parquet {
            path: path.clone(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?;
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (u64::from(shape.week) << 32 | u64::from(part)),
        );
        let mut done = 0u64;
        while done < rows {
            let n = (rows - done).min(CHUNK_ROWS as u64) as usize;
            let batch = rows_chunk(&schema, &shape, &perm, first_row + done, n, seed, &mut rng);
            writer.write(&batch).map_err(parquet_err)?;
            done += n as u64;
        }
        writer.close().map_err(parquet_err)?;
        first_row += rows;
    }
    Ok(())
}

/// The Arrow schema of a Customer AI scores part.
pub fn scores_schema(tenant: &str, drift: bool) -> SchemaRef {
    let factor = Fields::from(vec![
        Field::new("code", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
        Field::new("importance", DataType::Utf8, true),
    ]);
    let mut model_fields = vec![
        Field::new("score", DataType::Float64, true),
        Field::new("probability", DataType::Float64, true),
        Field::new("percentile", DataType::Int32, true),
        Field::new("propensityType", DataType::Utf8, true),
        Field::new("scoreDate", DataType::Date32, true),
        Field::new(
            "influentialFactors",
            DataType::List(Arc::new(Field::new(
                "element",
                DataType::Struct(factor),
                true,
            ))),
            true,
        ),
    ];
    if drift {
        model_fields.push(Field::new("modelVersion", DataType::Utf8, true));
    }
    let model = DataType::Struct(Fields::from(model_fields));
    let customer_ai = DataType::Struct(
        INSTANCES
            .iter()
            .map(|(name, _)| Field::new(*name, model.clone(), true))
            .collect(),
    );
    let identity = DataType::Struct(Fields::from(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new(
            "namespace",
            DataType::Struct(Fields::from(vec![Field::new("code", DataType::Utf8, true)])),
            true,
        ),
    ]));
    Arc::new(Schema::new(vec![
        Field::new("_id", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new(
            tenant,
            DataType::Struct(Fields::from(vec![
                Field::new("identity", identity, true),
                Field::new("CustomerAI", customer_ai, true),
            ])),
            true,
        ),
    ]))
}

/// A bijection of `0..n` (an affine map), so identities can be spread over parts without
/// keeping a shuffled list in memory.
struct Permutation {
    n: u64,
    a: u64,
    c: u64,
}

impl Permutation {
    fn new(n: u64, seed: u64) -> Self {
        let n = n.max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xa11ce);
        let mut a = rng.random_range(1..=u64::MAX / 4) | 1;
        while gcd(a % n, n) != 1 {
            a += 2;
        }
        Permutation {
            n,
            a: a % n,
            c: rng.random_range(0..n),
        }
    }
    fn apply(&self, i: u64) -> u64 {
        ((u128::from(self.a) * u128::from(i) + u128::from(self.c)) % u128::from(self.n)) as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The identity a row scores: about 10 % of a batch's rows repeat an identity.
pub fn identity_of(index: u64, seed: u64) -> (String, &'static str) {
    if index % 7 == 3 {
        (format!("customer{index}@example.com"), "Email")
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let hi: u64 = rng.random_range(10_000_000_000_000_000_000..u64::MAX);
        let lo: u64 = rng.random_range(0..1_000_000_000_000_000_000);
        (format!("{hi}{lo:018}")[..38].to_string(), "ECID")
    }
}

struct ModelColumns {
    present: Vec<bool>,
    score: Vec<Option<f64>>,
    probability: Vec<Option<f64>>,
    percentile: Vec<Option<i32>>,
    propensity: Vec<Option<&'static str>>,
    date: Vec<Option<i32>>,
    factor_offsets: Vec<i32>,
    factor_code: Vec<&'static str>,
    factor_value: Vec<String>,
    factor_importance: Vec<&'static str>,
    version: Vec<Option<String>>,
}

impl ModelColumns {
    fn with_capacity(n: usize) -> Self {
        ModelColumns {
            present: Vec::with_capacity(n),
            score: Vec::with_capacity(n),
            probability: Vec::with_capacity(n),
            percentile: Vec::with_capacity(n),
            propensity: Vec::with_capacity(n),
            date: Vec::with_capacity(n),
            factor_offsets: vec![0],
            factor_code: Vec::new(),
            factor_value: Vec::new(),
            factor_importance: Vec::new(),
            version: Vec::with_capacity(n),
        }
    }
}

fn rows_chunk(
    schema: &SchemaRef,
    shape: &BatchShape,
    perm: &Permutation,
    first: u64,
    n: usize,
    seed: u64,
    rng: &mut ChaCha8Rng,
) -> RecordBatch {
    let population = (shape.rows * 9 / 10).max(1);
    let mut ids = Vec::with_capacity(n);
    let mut identity = Vec::with_capacity(n);
    let mut namespace = Vec::with_capacity(n);
    let mut models: Vec<ModelColumns> = INSTANCES
        .iter()
        .map(|_| ModelColumns::with_capacity(n))
        .collect();
    let ts = shape.created_ms * 1000;
    for i in 0..n {
        let row = first + i as u64;
        ids.push(format!("{:08x}-{:010x}", shape.week, row));
        if rng.random_bool(0.005) {
            identity.push(None);
            namespace.push(None);
        } else {
            let (id, ns) = identity_of(perm.apply(row) % population, seed);
            identity.push(Some(id));
            namespace.push(Some(ns));
        }
        let day = if rng.random_bool(0.1) {
            shape.score_day - 1
        } else {
            shape.score_day
        };
        let both = rng.random_bool(0.8);
        let only = rng.random_range(0..INSTANCES.len());
        for (m, cols) in models.iter_mut().enumerate() {
            let present = both || m == only;
            cols.present.push(present);
            if !present {
                cols.score.push(None);
                cols.probability.push(None);
                cols.percentile.push(None);
                cols.propensity.push(None);
                cols.date.push(None);
                cols.version.push(None);
                cols.factor_offsets.push(cols.factor_code.len() as i32);
                continue;
            }
            // Skewed scores whose shape shifts a little each week, so drift is measurable.
            let u: f64 = rng.random();
            let exponent = if m == 0 { 1.6 } else { 0.7 } + 0.05 * f64::from(shape.week);
            let score = (u.powf(exponent) * 1000.0).round() / 10.0;
            let noise: f64 = rng.random_range(-0.04..0.04);
            let probability = ((score / 100.0) * 0.9 + 0.05 + noise).clamp(0.0, 1.0);
            cols.score.push(Some(score));
            cols.probability
                .push(Some((probability * 10_000.0).round() / 10_000.0));
            cols.percentile
                .push(Some((score.ceil() as i32).clamp(1, 100)));
            cols.propensity.push(Some(INSTANCES[m].1));
            cols.date.push(Some(day));
            cols.version
                .push(Some(format!("2026.{}.{}", 44 + shape.week, m)));
            let factors = rng.random_range(1..=3);
            for _ in 0..factors {
                let code = FACTOR_CODES[rng.random_range(0..FACTOR_CODES.len())];
                cols.factor_code.push(code);
                cols.factor_value
                    .push(rng.random_range(0..40u32).to_string());
                cols.factor_importance
                    .push(IMPORTANCE[rng.random_range(0..IMPORTANCE.len())]);
            }
            cols.factor_offsets.push(cols.factor_code.len() as i32);
        }
    }

    let tenant_field = schema.field(2);
    let DataType::Struct(tenant_fields) = tenant_field.data_type() else {
        unreachable!("scores_schema puts a struct at the tenant column")
    };
    let DataType::Struct(identity_fields) = tenant_fields[0].data_type() else {
        unreachable!("identity is a struct")
    };
    let DataType::Struct(ns_fields) = identity_fields[1].data_type() else {
        unreachable!("namespace is a struct")
    };
    let DataType::Struct(cai_fields) = tenant_fields[1].data_type() else {
        unreachable!("CustomerAI is a struct")
    };
    let identity_valid: Vec<bool> = identity.iter().map(Option::is_some).collect();
    let ns_array = StructArray::new(
        ns_fields.clone(),
        vec![Arc::new(StringArray::from(namespace)) as ArrayRef],
        Some(NullBuffer::from(identity_valid.clone())),
    );
    let identity_array = StructArray::new(
        identity_fields.clone(),
        vec![
            Arc::new(StringArray::from(identity)) as ArrayRef,
            Arc::new(ns_array),
        ],
        Some(NullBuffer::from(identity_valid)),
    );
    let model_arrays: Vec<ArrayRef> = models
        .into_iter()
        .zip(cai_fields.iter())
        .map(|(cols, field)| model_array(cols, field.data_type(), shape.drift))
        .collect();
    let cai = StructArray::new(cai_fields.clone(), model_arrays, None);
    let tenant_array = StructArray::new(
        tenant_fields.clone(),
        vec![Arc::new(identity_array) as ArrayRef, Arc::new(cai)],
        None,
    );
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(TimestampMicrosecondArray::from(vec![ts; n]).with_timezone("UTC")),
            Arc::new(tenant_array),
        ],
    )
    .expect("columns are built from scores_schema, so they match it")
}

fn model_array(cols: ModelColumns, data_type: &DataType, drift: bool) -> ArrayRef {
    let DataType::Struct(fields) = data_type else {
        unreachable!("model instances are structs")
    };
    let DataType::List(element) = fields[5].data_type() else {
        unreachable!("influentialFactors is a list")
    };
    let DataType::Struct(factor_fields) = element.data_type() else {
        unreachable!("factors are structs")
    };
    let factors = StructArray::new(
        factor_fields.clone(),
        vec![
            Arc::new(StringArray::from(cols.factor_code)) as ArrayRef,
            Arc::new(StringArray::from(cols.factor_value)),
            Arc::new(StringArray::from(cols.factor_importance)),
        ],
        None,
    );
    let valid = NullBuffer::from(cols.present.clone());
    let list = ListArray::new(
        element.clone(),
        OffsetBuffer::new(cols.factor_offsets.into()),
        Arc::new(factors),
        Some(valid.clone()),
    );
    let mut children: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(cols.score)),
        Arc::new(Float64Array::from(cols.probability)),
        Arc::new(Int32Array::from(cols.percentile)),
        Arc::new(StringArray::from(cols.propensity)),
        Arc::new(Date32Array::from(cols.date)),
        Arc::new(list),
    ];
    if drift {
        children.push(Arc::new(StringArray::from(cols.version)));
    }
    Arc::new(StructArray::new(fields.clone(), children, Some(valid)))
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), SimError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| SimError::Generate(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| SimError::io(path, e))
}

/// What a generated dataset's `dataset.json` says of it.
pub(crate) struct NewDataset<'a> {
    pub name: &'a str,
    pub description: &'a str,
    /// Query Service's table name (`tags.adobe/pqs/table`).
    pub table: &'a str,
    /// Created this many days before the first night it holds.
    pub days_before: i64,
    pub first_day: i32,
}

/// Writes the Catalog object of a generated dataset into `dir` unless it is there already
/// (nights are added to a dataset one at a time); its schema id comes from `seed`.
pub(crate) fn write_dataset(dir: &Path, d: &NewDataset, seed: u64) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
    let path = dir.join("dataset.json");
    if path.exists() {
        return Ok(());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    write_json(
        &path,
        &serde_json::json!({
            "name": d.name,
            "description": d.description,
            "state": "DRAFT",
            "schemaRef": {
                "id": format!("https://ns.adobe.com/{}/schemas/{}", &TENANT[1..], hex_lower(&mut rng, 32)),
                "contentType": "application/vnd.adobe.xed+json;version=1",
            },
            "tags": {"adobe/pqs/table": [d.table]},
            "fileDescription": {"persisted": true, "containerFormat": "parquet", "format": "parquet"},
            "created": day_ms(d.first_day) - d.days_before * DAY_MS,
            "updated": day_ms(d.first_day),
            "version": "1.0.0",
        }),
    )
}

/// Writes a successful batch's Catalog object under `dataset_dir`, created at `created` (ms) by
/// `client` as `user`, taking `took_ms`; returns its id and the directory of its one
/// `dataSetFileId`, for the parts.
pub(crate) fn new_batch(
    dataset_dir: &Path,
    rng: &mut ChaCha8Rng,
    client: &str,
    user: &str,
    created: i64,
    took_ms: i64,
) -> Result<(String, PathBuf), SimError> {
    let id = batch_id(rng);
    let batch_dir = dataset_dir.join(&id);
    let file_dir = batch_dir.join(format!("{id}-1"));
    std::fs::create_dir_all(&file_dir).map_err(|e| SimError::io(&file_dir, e))?;
    write_json(
        &batch_dir.join("batch.json"),
        &serde_json::json!({
            "status": "success",
            "createdClient": client,
            "createdUser": user,
            "inputFormat": {"format": "parquet"},
            "created": created,
            "started": created + 300,
            "completed": created + took_ms,
            "updated": created + took_ms + 100,
        }),
    )?;
    Ok((id, file_dir))
}

fn day_ms(day: i32) -> i64 {
    i64::from(day) * DAY_MS
}

fn day_string(day: i32) -> String {
    chrono::DateTime::from_timestamp_millis(day_ms(day))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

pub(crate) fn hex_lower(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

fn hex_upper(rng: &mut ChaCha8Rng, n: usize) -> String {
    hex_lower(rng, n).to_uppercase()
}

/// A ULID-like batch id, as Catalog issues them (`01E5QSWCAASFQ054FNBKYV6TIQ`).
pub(crate) fn batch_id(rng: &mut ChaCha8Rng) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut id = String::from("01K");
    for _ in 0..23 {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 7, 10, 64, 1000] {
            let p = Permutation::new(n, 9);
            let mut seen: Vec<u64> = (0..n).map(|i| p.apply(i)).collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
        }
    }

    #[test]
    fn ecids_have_38_digits() {
        let (id, ns) = identity_of(1, 5);
        assert_eq!(ns, "ECID");
        assert_eq!(id.len(), 38);
        assert!(id.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(identity_of(3, 5).1, "Email");
    }
}
