//! A profile export (docs/profile-exports.md) as three tables, partitioned by `night`:
//!
//! - `profiles`: one row per profile: its primary identity and namespace (from `identityMap`),
//!   the fields the pipeline selects, and the Customer AI scores carried on the profile
//!   (`_<tenant>.CustomerAI.<instance>`) as `<instance>_score` and `<instance>_percentile`;
//! - `audiences`: one row per profile and segment membership
//!   (`segmentMembership.<namespace>.<segmentId>`), with `last_qualification_time` read
//!   leniently into UTC microseconds (an unparseable one is counted and left null);
//! - `audience_summary`: per segment, the counts by status, and how many profiles entered and
//!   left the segment since the previous night landed.
//!
//! Built on arrow directly, not DataFusion: memberships are the inner entries of a map of maps,
//! already contiguous, so the flattening is index arithmetic and `take`. Files are read and
//! written on every core, one input part per task.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Int64Array, MapArray, RecordBatch, StringArray,
    StringBuilder, StructArray, TimestampMicrosecondBuilder, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::TransformError;
use crate::workers::on_workers;

/// Rows read at a time from an exported part.
const READ_BATCH: usize = 64 * 1024;
pub const STATUSES: [&str; 3] = ["realized", "existing", "exited"];

/// What to make the three tables from.
#[derive(Debug, Clone)]
pub struct ProfileTables {
    /// The export's parquet parts (every batch of the job).
    pub files: Vec<PathBuf>,
    /// Keep the first of profiles that several batches hold (one batch per segment).
    pub dedupe: bool,
    /// Dotted XDM paths (`person.name.firstName`) that become `profiles` columns
    /// (`person_name_firstName`).
    pub fields: Vec<String>,
    /// `YYYY-MM-DD`.
    pub night: String,
    pub export_job_id: i64,
    pub run_id: String,
    /// The `audiences` rows of the previous night landed (the night's files), for entered and
    /// left; empty on the first night.
    pub previous: Vec<PathBuf>,
    pub previous_night: Option<String>,
    /// An incremental export: the last night landed, whose rows are kept for every profile the
    /// export does not hold, so that each night is whole.
    pub carry: Option<Carry>,
    /// Where the tables go: `<out>/<table>/night=<night>/`.
    pub out: PathBuf,
}

/// The `profiles` and `audiences` files of the night an increment is applied to.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    pub profiles: Vec<PathBuf>,
    pub audiences: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProfileStats {
    /// Profile rows read from the export.
    pub rows_in: u64,
    pub profiles: u64,
    /// Profiles that another batch of the job held already.
    pub duplicate_profiles: u64,
    /// Profiles without any identity: dropped.
    pub without_identity: u64,
    /// Profiles whose `identityMap` marks no identity primary (the first one is used).
    pub without_primary: u64,
    pub memberships: u64,
    /// `lastQualificationTime` values that are not a time: kept as null.
    pub unparseable_times: u64,
    /// Profiles kept from the last night because an incremental export did not hold them.
    #[serde(default)]
    pub carried_profiles: u64,
}

#[derive(Debug, Clone)]
pub struct ProfileOutput {
    pub profiles_dir: PathBuf,
    pub audiences_dir: PathBuf,
    pub summary_dir: PathBuf,
    pub stats: ProfileStats,
}

fn err(file: &Path, message: impl std::fmt::Display) -> TransformError {
    TransformError::Profiles {
        file: file.to_path_buf(),
        message: message.to_string(),
    }
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` night.
fn night_days(night: &str) -> Result<i32, TransformError> {
    let d = chrono::NaiveDate::parse_from_str(night, "%Y-%m-%d")
        .map_err(|e| TransformError::Config(format!("night {night:?}: {e}")))?;
    Ok((d - chrono::NaiveDate::default()).num_days() as i32)
}

/// Writes the three tables; see the module documentation.
pub fn write_profile_tables(input: &ProfileTables) -> Result<ProfileOutput, TransformError> {
    let night = night_days(&input.night)?;
    let dir = |table: &str| input.out.join(table);
    let part_dir = |table: &str| dir(table).join(format!("night={}", input.night));
    for t in ["profiles", "audiences", "audience_summary"] {
        let d = part_dir(t);
        std::fs::create_dir_all(&d).map_err(|source| TransformError::Io { path: d, source })?;
    }
    let ctx = FileContext {
        input,
        night,
        // An increment's profiles replace the carried night's: their keys are kept.
        seen: (input.dedupe || input.carry.is_some()).then(|| Mutex::new(HashSet::new())),
        hasher: std::hash::RandomState::new(),
        track: !input.previous.is_empty(),
    };
    // One part per task, on every core.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let results = on_workers(
        workers,
        input.files.len(),
        |_| Vec::new(),
        |out, k| {
            let (profiles, audiences) = (part_dir("profiles"), part_dir("audiences"));
            out.push(ctx.file(k, &input.files[k], &profiles, &audiences)?);
            Ok(())
        },
    )?;
    let mut stats = ProfileStats::default();
    let mut counts: Counts = HashMap::new();
    let mut tonight: Qualified = HashMap::new();
    let mut wrote_any = false;
    for r in results {
        for f in r {
            wrote_any |= f.wrote;
            stats.rows_in += f.stats.rows_in;
            stats.profiles += f.stats.profiles;
            stats.duplicate_profiles += f.stats.duplicate_profiles;
            stats.without_identity += f.stats.without_identity;
            stats.without_primary += f.stats.without_primary;
            stats.memberships += f.stats.memberships;
            stats.unparseable_times += f.stats.unparseable_times;
            for (k, c) in f.counts {
                let e = counts.entry(k).or_default();
                for i in 0..3 {
                    e[i] += c[i];
                }
            }
            for (k, set) in f.qualified {
                tonight.entry(k).or_default().extend(set);
            }
        }
    }
    if let Some(carry) = &input.carry {
        let exported = ctx
            .seen
            .as_ref()
            .map(|m| std::mem::take(&mut *m.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default();
        let mut res = FileResult {
            stats: ProfileStats::default(),
            counts: HashMap::new(),
            qualified: HashMap::new(),
            wrote: false,
        };
        for (k, path) in carry.profiles.iter().enumerate() {
            let n = ctx.carry_file(path, &part_dir("profiles"), k, &exported, None)?;
            stats.carried_profiles += n;
            stats.profiles += n;
            wrote_any |= n > 0;
        }
        for (k, path) in carry.audiences.iter().enumerate() {
            let n = ctx.carry_file(path, &part_dir("audiences"), k, &exported, Some(&mut res))?;
            stats.memberships += n;
        }
        for (key, c) in res.counts {
            let e = counts.entry(key).or_default();
            for i in 0..3 {
                e[i] += c[i];
            }
        }
        for (key, set) in res.qualified {
            tonight.entry(key).or_default().extend(set);
        }
    }
    if !wrote_any {
        // An export of no profiles is a night of no rows: the night's partitions are still
        // replaced, so a rerun that finds nothing leaves nothing behind.
        write_empty(&part_dir("profiles"), profiles_schema_without_fields())?;
        write_empty(&part_dir("audiences"), audiences_schema())?;
    }
    let previous = previous_qualified(&input.previous, &ctx)?;
    write_summary(
        &part_dir("audience_summary"),
        &counts,
        &tonight,
        &previous,
        input,
        night,
    )?;
    Ok(ProfileOutput {
        profiles_dir: dir("profiles"),
        audiences_dir: dir("audiences"),
        summary_dir: dir("audience_summary"),
        stats,
    })
}

/// Counts by status (realized, existing, exited) per (namespace, segment).
type Counts = HashMap<(String, String), [u64; 3]>;
/// Per (namespace, segment), the hashes of the qualified (realized or existing) profiles.
type Qualified = HashMap<(String, String), HashSet<u128>>;

struct FileContext<'a> {
    input: &'a ProfileTables,
    night: i32,
    seen: Option<Mutex<HashSet<u128>>>,
    hasher: std::hash::RandomState,
    /// Keep the qualified profiles per segment (there is a previous night to compare with).
    track: bool,
}

struct FileResult {
    stats: ProfileStats,
    counts: Counts,
    qualified: Qualified,
    wrote: bool,
}

impl FileContext<'_> {
    /// A 128-bit key of a profile's identity (two independent 64-bit hashes).
    fn key(&self, ns: &str, id: &str) -> u128 {
        let h = |salt: u8| {
            let mut s = self.hasher.build_hasher();
            salt.hash(&mut s);
            ns.hash(&mut s);
            id.hash(&mut s);
            s.finish() as u128
        };
        (h(1) << 64) | h(2)
    }

    /// Copies the rows of a landed night's file whose profile the increment does not hold,
    /// as tonight's (night and run id); counts memberships into `res` for `audiences`.
    fn carry_file(
        &self,
        path: &Path,
        dir: &Path,
        k: usize,
        exported: &HashSet<u128>,
        mut res: Option<&mut FileResult>,
    ) -> Result<u64, TransformError> {
        let reader = read_parquet(path)?;
        let out = dir.join(format!("part-carried-{k:05}.zstd.parquet"));
        let mut w: Writer = None;
        let mut kept_rows = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| err(path, e))?;
            let col = |n: &str| landed_strings(path, &batch, n);
            let (ids, nss) = (col("primary_identity")?, col("primary_namespace")?);
            let keep: Vec<u32> = (0..batch.num_rows())
                .filter(|&r| !exported.contains(&self.key(nss.value(r), ids.value(r))))
                .map(|r| r as u32)
                .collect();
            let keep = UInt32Array::from(keep);
            let (_, night, run) = self.constants(keep.len());
            let schema = batch.schema();
            let columns = schema
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| match f.name().as_str() {
                    "night" => Ok(night.clone()),
                    "run_id" => Ok(run.clone()),
                    _ => take(c.as_ref(), &keep, None).map_err(|e| err(path, e)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let kept = RecordBatch::try_new(schema.clone(), columns).map_err(|e| err(path, e))?;
            if let Some(res) = res.as_deref_mut() {
                let s = |n: &str| landed_strings(path, &kept, n);
                self.count(
                    res,
                    [
                        &s("namespace")?,
                        &s("segment_id")?,
                        &s("status")?,
                        &s("primary_namespace")?,
                        &s("primary_identity")?,
                    ],
                );
            }
            kept_rows += kept.num_rows() as u64;
            write_to(&mut w, &out, &kept)?;
        }
        if let Some((w, _)) = w {
            w.close().map_err(|e| err(&out, e))?;
        }
        Ok(kept_rows)
    }

    fn file(
        &self,
        k: usize,
        path: &Path,
        profiles_dir: &Path,
        audiences_dir: &Path,
    ) -> Result<FileResult, TransformError> {
        let reader = read_parquet(path)?;
        let mut res = FileResult {
            stats: ProfileStats::default(),
            counts: HashMap::new(),
            qualified: HashMap::new(),
            wrote: false,
        };
        let mut profiles_w: Writer = None;
        let mut audiences_w: Writer = None;
        for batch in reader {
            let batch = batch.map_err(|e| err(path, e))?;
            let (profiles, audiences) = self.batch(path, &batch, &mut res)?;
            write_to(
                &mut profiles_w,
                &profiles_dir.join(format!("part-{k:05}.zstd.parquet")),
                &profiles,
            )?;
            write_to(
                &mut audiences_w,
                &audiences_dir.join(format!("part-{k:05}.zstd.parquet")),
                &audiences,
            )?;
        }
        for (w, dir) in [(profiles_w, profiles_dir), (audiences_w, audiences_dir)] {
            if let Some((w, _)) = w {
                w.close().map_err(|e| err(dir, e))?;
                res.wrote = true;
            }
        }
        Ok(res)
    }

    /// One record batch of the export: its `profiles` and `audiences` rows.
    fn batch(
        &self,
        path: &Path,
        batch: &RecordBatch,
        res: &mut FileResult,
    ) -> Result<(RecordBatch, RecordBatch), TransformError> {
        let n = batch.num_rows();
        res.stats.rows_in += n as u64;
        let identity_map = batch
            .column_by_name("identityMap")
            .ok_or_else(|| err(path, "the export has no identityMap column"))?;
        let identity_map = identity_map
            .as_any()
            .downcast_ref::<MapArray>()
            .ok_or_else(|| err(path, "identityMap is not a map"))?;
        let (ids, nss, no_primary) = primary_identities(path, identity_map)?;
        res.stats.without_primary += no_primary;
        // The rows kept: with an identity, and not held by another batch already.
        let mut keep: Vec<u32> = (0..n as u32)
            .filter(|&i| ids.is_valid(i as usize))
            .collect();
        res.stats.without_identity += (n - keep.len()) as u64;
        if let Some(seen) = &self.seen {
            // Keyed outside the lock, which is taken once per record batch.
            let keys: Vec<u128> = keep
                .iter()
                .map(|&i| self.key(nss.value(i as usize), ids.value(i as usize)))
                .collect();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let before = keep.len();
            let mut k = keys.into_iter();
            keep.retain(|_| k.next().is_some_and(|key| seen.insert(key)));
            res.stats.duplicate_profiles += (before - keep.len()) as u64;
        }
        res.stats.profiles += keep.len() as u64;
        let all = keep.len() == n;
        let keep = UInt32Array::from(keep);
        let pick = |a: &ArrayRef| -> Result<ArrayRef, TransformError> {
            if all {
                Ok(a.clone())
            } else {
                take(a.as_ref(), &keep, None).map_err(|e| err(path, e))
            }
        };
        let ids: ArrayRef = Arc::new(ids);
        let nss: ArrayRef = Arc::new(nss);
        let (ids, nss) = (pick(&ids)?, pick(&nss)?);
        let rows = ids.len();

        // profiles
        let mut fields = vec![
            Field::new("primary_identity", DataType::Utf8, false),
            Field::new("primary_namespace", DataType::Utf8, false),
        ];
        let mut columns = vec![ids.clone(), nss.clone()];
        for f in &self.input.fields {
            let col = field_path(batch, f).ok_or_else(|| {
                err(
                    path,
                    format!(
                        "the export has no field {f}; fields are dotted XDM paths such as person.name.firstName"
                    ),
                )
            })?;
            let col = pick(&col)?;
            fields.push(Field::new(
                f.replace('.', "_"),
                col.data_type().clone(),
                true,
            ));
            columns.push(col);
        }
        for (instance, score, percentile) in customer_ai(batch) {
            let score = cast(&pick(&score)?, &DataType::Float64).map_err(|e| err(path, e))?;
            let percentile =
                cast(&pick(&percentile)?, &DataType::Int64).map_err(|e| err(path, e))?;
            fields.push(Field::new(
                format!("{instance}_score"),
                DataType::Float64,
                true,
            ));
            fields.push(Field::new(
                format!("{instance}_percentile"),
                DataType::Int64,
                true,
            ));
            columns.push(score);
            columns.push(percentile);
        }
        let (job, night, run) = self.constants(rows);
        fields.extend(tail_fields());
        columns.extend([job, night, run]);
        let profiles = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| err(path, e))?;

        // audiences
        let audiences = match batch.column_by_name("segmentMembership") {
            None => RecordBatch::new_empty(audiences_schema()),
            Some(m) => {
                let m = m
                    .as_any()
                    .downcast_ref::<MapArray>()
                    .ok_or_else(|| err(path, "segmentMembership is not a map"))?;
                let m = if all {
                    m.clone()
                } else {
                    take(m, &keep, None)
                        .map_err(|e| err(path, e))?
                        .as_any()
                        .downcast_ref::<MapArray>()
                        .cloned()
                        .ok_or_else(|| err(path, "segmentMembership is not a map"))?
                };
                self.memberships(path, &m, &ids, &nss, res)?
            }
        };
        Ok((profiles, audiences))
    }

    /// Counts memberships by status per segment, and keeps the qualified profiles when there
    /// is a night to compare with. Columns: namespace, segment, status, identity namespace,
    /// identity.
    fn count(&self, res: &mut FileResult, [ns, seg, status, idns, id]: [&StringArray; 5]) {
        for r in 0..ns.len() {
            let Some(k) = status_index(status, r) else {
                continue;
            };
            let key = (ns.value(r).to_string(), seg.value(r).to_string());
            match res.counts.get_mut(&key) {
                Some(c) => c[k] += 1,
                None => {
                    let mut c = [0; 3];
                    c[k] = 1;
                    res.counts.insert(key.clone(), c);
                }
            }
            if self.track && k < 2 {
                res.qualified
                    .entry(key)
                    .or_default()
                    .insert(self.key(idns.value(r), id.value(r)));
            }
        }
    }

    fn constants(&self, rows: usize) -> (ArrayRef, ArrayRef, ArrayRef) {
        (
            Arc::new(Int64Array::from(vec![self.input.export_job_id; rows])),
            Arc::new(Date32Array::from(vec![self.night; rows])),
            Arc::new(StringArray::from(vec![self.input.run_id.as_str(); rows])),
        )
    }

    /// The inner entries of `segmentMembership` (a map of namespace to a map of segment id to
    /// membership) as rows, with the profile's identity.
    fn memberships(
        &self,
        path: &Path,
        m: &MapArray,
        ids: &ArrayRef,
        nss: &ArrayRef,
        res: &mut FileResult,
    ) -> Result<RecordBatch, TransformError> {
        let bad = |what: &str| err(path, format!("segmentMembership: {what}"));
        let outer_keys = m
            .keys()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("namespaces are not strings"))?;
        let inner = m
            .values()
            .as_any()
            .downcast_ref::<MapArray>()
            .ok_or_else(|| bad("a namespace's value is not a map of segments"))?;
        let segment_ids = inner
            .keys()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("segment ids are not strings"))?;
        let entries = inner
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| bad("a membership is not a struct"))?;
        let member = |name: &str| entries.column_by_name(name).cloned();
        let status = member("status").ok_or_else(|| bad("no status"))?;
        let status_s = status
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("status is not a string"))?;
        // Which rows: inner entry, namespace entry and profile of each membership.
        let (outer_off, inner_off) = (m.value_offsets(), inner.value_offsets());
        let mut inner_idx = Vec::new();
        let mut outer_idx = Vec::new();
        let mut profile_idx = Vec::new();
        for row in 0..m.len() {
            if m.is_null(row) {
                continue;
            }
            for j in outer_off[row]..outer_off[row + 1] {
                let j = j as usize;
                if inner.is_null(j) {
                    continue;
                }
                for p in inner_off[j]..inner_off[j + 1] {
                    inner_idx.push(p as u32);
                    outer_idx.push(j as u32);
                    profile_idx.push(row as u32);
                }
            }
        }
        let rows = inner_idx.len();
        res.stats.memberships += rows as u64;
        let (inner_idx, outer_idx, profile_idx) = (
            UInt32Array::from(inner_idx),
            UInt32Array::from(outer_idx),
            UInt32Array::from(profile_idx),
        );
        let t = |a: &dyn Array, idx: &UInt32Array| take(a, idx, None).map_err(|e| err(path, e));
        let namespace = t(outer_keys, &outer_idx)?;
        let segment = t(segment_ids, &inner_idx)?;
        let status = t(status_s, &inner_idx)?;
        let identity = t(ids.as_ref(), &profile_idx)?;
        let identity_ns = t(nss.as_ref(), &profile_idx)?;
        let times = match member("lastQualificationTime") {
            None => Arc::new(TimestampMicrosecondBuilder::new().finish()) as ArrayRef,
            Some(c) => qualification_times(path, &t(c.as_ref(), &inner_idx)?, &mut res.stats)?,
        };
        let times = if times.is_empty() && rows > 0 {
            datafusion::arrow::array::new_null_array(&times_type(), rows)
        } else {
            cast(&times, &times_type()).map_err(|e| err(path, e))?
        };
        let version = match member("version") {
            Some(v) => {
                cast(&t(v.as_ref(), &inner_idx)?, &DataType::Utf8).map_err(|e| err(path, e))?
            }
            None => datafusion::arrow::array::new_null_array(&DataType::Utf8, rows),
        };
        let (payload_type, payload_value) = match member("payload") {
            Some(p) => payload(path, &t(p.as_ref(), &inner_idx)?)?,
            None => (
                datafusion::arrow::array::new_null_array(&DataType::Utf8, rows),
                datafusion::arrow::array::new_null_array(&DataType::Utf8, rows),
            ),
        };

        // Counts by status, and the qualified profiles when there is a night to compare with.
        let (namespace_s, segment_s, status_s, identity_s, identity_ns_s) = (
            as_str(&namespace),
            as_str(&segment),
            as_str(&status),
            as_str(&identity),
            as_str(&identity_ns),
        );
        self.count(
            res,
            [namespace_s, segment_s, status_s, identity_ns_s, identity_s],
        );
        let (job, night, run) = self.constants(rows);
        RecordBatch::try_new(
            audiences_schema(),
            vec![
                identity,
                identity_ns,
                namespace,
                segment,
                status,
                times,
                version,
                payload_type,
                payload_value,
                job,
                night,
                run,
            ],
        )
        .map_err(|e| err(path, e))
    }
}

/// Reads a parquet file in batches of [`READ_BATCH`] rows.
fn read_parquet(
    path: &Path,
) -> Result<datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader, TransformError> {
    crate::scores::reader_builder(path)?
        .with_batch_size(READ_BATCH)
        .build()
        .map_err(|e| err(path, e))
}

/// A string column of a table this module wrote (a landed night).
fn landed_strings(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
) -> Result<StringArray, TransformError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .cloned()
        .ok_or_else(|| {
            err(
                path,
                format!("the landed night has no string column {name}"),
            )
        })
}

fn as_str(a: &ArrayRef) -> &StringArray {
    a.as_any()
        .downcast_ref::<StringArray>()
        .expect("built as Utf8")
}

fn status_index(s: &StringArray, r: usize) -> Option<usize> {
    if s.is_null(r) {
        return None;
    }
    STATUSES.iter().position(|x| *x == s.value(r))
}

fn times_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn tail_fields() -> [Field; 3] {
    [
        Field::new("export_job_id", DataType::Int64, false),
        Field::new("night", DataType::Date32, false),
        Field::new("run_id", DataType::Utf8, false),
    ]
}

fn profiles_schema_without_fields() -> SchemaRef {
    let mut f = vec![
        Field::new("primary_identity", DataType::Utf8, false),
        Field::new("primary_namespace", DataType::Utf8, false),
    ];
    f.extend(tail_fields());
    Arc::new(Schema::new(f))
}

pub fn audiences_schema() -> SchemaRef {
    let mut f = vec![
        Field::new("primary_identity", DataType::Utf8, false),
        Field::new("primary_namespace", DataType::Utf8, false),
        Field::new("namespace", DataType::Utf8, false),
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, true),
        Field::new("last_qualification_time", times_type(), true),
        Field::new("version", DataType::Utf8, true),
        Field::new("payload_type", DataType::Utf8, true),
        Field::new("payload_value", DataType::Utf8, true),
    ];
    f.extend(tail_fields());
    Arc::new(Schema::new(f))
}

fn summary_schema() -> SchemaRef {
    let c = |n: &str| Field::new(n, DataType::Int64, false);
    let mut f = vec![
        Field::new("namespace", DataType::Utf8, false),
        Field::new("segment_id", DataType::Utf8, false),
        c("realized"),
        c("existing"),
        c("exited"),
        c("qualified"),
        c("entered_since_previous"),
        c("left_since_previous"),
        Field::new("previous_night", DataType::Date32, true),
    ];
    f.extend(tail_fields());
    Arc::new(Schema::new(f))
}

/// Each profile's primary identity (id and namespace), from `identityMap` (namespace to a list
/// of `{id, primary}`). Without a primary one, the first identity; without any, null. Also
/// returns how many profiles had none marked primary.
fn primary_identities(
    path: &Path,
    m: &MapArray,
) -> Result<(StringArray, StringArray, u64), TransformError> {
    let bad = |what: &str| err(path, format!("identityMap: {what}"));
    let keys = m
        .keys()
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| bad("namespaces are not strings"))?;
    let lists = m
        .values()
        .as_any()
        .downcast_ref::<datafusion::arrow::array::ListArray>()
        .ok_or_else(|| bad("a namespace's value is not a list"))?;
    let items = lists
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| bad("an identity is not a struct"))?;
    let id = items
        .column_by_name("id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| bad("an identity has no string id"))?;
    let primary = items
        .column_by_name("primary")
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>());
    let (map_off, list_off) = (m.value_offsets(), lists.value_offsets());
    let mut ids = StringBuilder::with_capacity(m.len(), m.len() * 24);
    let mut nss = StringBuilder::with_capacity(m.len(), m.len() * 6);
    let mut no_primary = 0;
    for row in 0..m.len() {
        let mut first: Option<(usize, usize)> = None;
        let mut chosen: Option<(usize, usize)> = None;
        if m.is_valid(row) {
            'entries: for e in map_off[row] as usize..map_off[row + 1] as usize {
                if lists.is_null(e) || keys.is_null(e) {
                    continue;
                }
                for k in list_off[e] as usize..list_off[e + 1] as usize {
                    if id.is_null(k) || id.value(k).is_empty() {
                        continue;
                    }
                    first.get_or_insert((e, k));
                    if primary.is_some_and(|p| p.is_valid(k) && p.value(k)) {
                        chosen = Some((e, k));
                        break 'entries;
                    }
                }
            }
        }
        if chosen.is_none() && first.is_some() {
            no_primary += 1;
        }
        match chosen.or(first) {
            Some((e, k)) => {
                ids.append_value(id.value(k));
                nss.append_value(keys.value(e));
            }
            None => {
                ids.append_null();
                nss.append_null();
            }
        }
    }
    Ok((ids.finish(), nss.finish(), no_primary))
}

/// The column at a dotted path through structs.
fn field_path(batch: &RecordBatch, dotted: &str) -> Option<ArrayRef> {
    let mut parts = dotted.split('.');
    let mut col = batch.column_by_name(parts.next()?)?.clone();
    for p in parts {
        col = col
            .as_any()
            .downcast_ref::<StructArray>()?
            .column_by_name(p)?
            .clone();
    }
    Some(col)
}

/// `_<tenant>.CustomerAI.<instance>.{score, percentile}` of every instance found.
fn customer_ai(batch: &RecordBatch) -> Vec<(String, ArrayRef, ArrayRef)> {
    let mut out = Vec::new();
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if !f.name().starts_with('_') {
            continue;
        }
        let Some(cai) = col
            .as_any()
            .downcast_ref::<StructArray>()
            .and_then(|s| s.column_by_name("CustomerAI"))
            .and_then(|c| c.as_any().downcast_ref::<StructArray>())
        else {
            continue;
        };
        for (name, inst) in cai.fields().iter().zip(cai.columns()) {
            let Some(inst) = inst.as_any().downcast_ref::<StructArray>() else {
                continue;
            };
            let get = |n: &str| {
                inst.column_by_name(n).cloned().unwrap_or_else(|| {
                    datafusion::arrow::array::new_null_array(&DataType::Float64, inst.len())
                })
            };
            out.push((name.name().clone(), get("score"), get("percentile")));
        }
    }
    out
}

/// `lastQualificationTime` as UTC microseconds: strings read leniently (an unparseable one is
/// null and counted), timestamps cast.
fn qualification_times(
    path: &Path,
    col: &ArrayRef,
    stats: &mut ProfileStats,
) -> Result<ArrayRef, TransformError> {
    let Some(s) = col.as_any().downcast_ref::<StringArray>() else {
        return cast(col, &times_type()).map_err(|e| err(path, e));
    };
    let mut b = TimestampMicrosecondBuilder::with_capacity(s.len());
    for v in s.iter() {
        match v.map(parse_time) {
            Some(Some(t)) => b.append_value(t),
            Some(None) => {
                stats.unparseable_times += 1;
                b.append_null();
            }
            None => b.append_null(),
        }
    }
    Ok(Arc::new(b.finish().with_timezone("UTC")))
}

/// A time as written in the wild, in UTC microseconds: `2021-03-10T10:03:08Z`, with `+0000` or
/// `+00:00`, with fractions, or `2021-03-10 10:03:08` (taken as UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 19 || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u32)
        })
    };
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in frac[..digits].iter().take(6).enumerate() {
            micros += ((c - b'0') as i64) * 10i64.pow(5 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset_s: i64 = match rest {
        b"" | b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, m1, m2] | [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let d = |c: &u8| c.is_ascii_digit().then(|| (c - b'0') as i64);
            let off = (d(h1)? * 10 + d(h2)?) * 3600 + (d(m1)? * 10 + d(m2)?) * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = (date - chrono::NaiveDate::default()).num_days();
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - offset_s;
    Some(secs * 1_000_000 + micros)
}

/// `payload` as its type and one string value (number, boolean, string or propensity).
fn payload(path: &Path, col: &ArrayRef) -> Result<(ArrayRef, ArrayRef), TransformError> {
    let rows = col.len();
    let nulls = || datafusion::arrow::array::new_null_array(&DataType::Utf8, rows);
    let Some(p) = col.as_any().downcast_ref::<StructArray>() else {
        return Ok((nulls(), nulls()));
    };
    let as_utf8 = |name: &str| -> Result<Option<ArrayRef>, TransformError> {
        p.column_by_name(name)
            .map(|c| cast(c, &DataType::Utf8).map_err(|e| err(path, e)))
            .transpose()
    };
    let kind = as_utf8("payloadType")?.unwrap_or_else(nulls);
    let mut value = nulls();
    for name in [
        "payloadStringValue",
        "payloadNumberValue",
        "payloadBooleanValue",
        "payloadPropensityValue",
    ] {
        if let Some(v) = as_utf8(name)? {
            let take_v = datafusion::arrow::compute::is_not_null(&v).map_err(|e| err(path, e))?;
            value = datafusion::arrow::compute::kernels::zip::zip(&take_v, &v, &value)
                .map_err(|e| err(path, e))?;
        }
    }
    // A struct-level null payload has no value.
    if let Some(n) = p.nulls() {
        let valid = BooleanArray::new(n.inner().clone(), None);
        value = datafusion::arrow::compute::nullif(
            &value,
            &datafusion::arrow::compute::not(&valid).map_err(|e| err(path, e))?,
        )
        .map_err(|e| err(path, e))?;
    }
    Ok((kind, value))
}

fn writer_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(256 * 1024))
        .build()
}

/// A table's writer, with the schema of its first batch.
type Writer = Option<(ArrowWriter<std::fs::File>, SchemaRef)>;

fn write_to(w: &mut Writer, path: &Path, batch: &RecordBatch) -> Result<(), TransformError> {
    if w.is_none() {
        let file = std::fs::File::create(path).map_err(|source| TransformError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        *w = Some((
            ArrowWriter::try_new(file, batch.schema(), Some(writer_props()))
                .map_err(|e| err(path, e))?,
            batch.schema(),
        ));
    }
    let (writer, schema) = w.as_mut().expect("made above");
    if batch.schema() != *schema {
        return Err(err(
            path,
            "the export's parts differ in their fields; the profiles table needs one shape per night",
        ));
    }
    writer.write(batch).map_err(|e| err(path, e))
}

fn write_empty(dir: &Path, schema: SchemaRef) -> Result<(), TransformError> {
    let mut w = None;
    let path = dir.join("part-00000.zstd.parquet");
    write_to(&mut w, &path, &RecordBatch::new_empty(schema))?;
    if let Some((w, _)) = w {
        w.close().map_err(|e| err(&path, e))?;
    }
    Ok(())
}

/// The previous night's qualified profiles per segment, from its `audiences` files.
fn previous_qualified(files: &[PathBuf], ctx: &FileContext) -> Result<Qualified, TransformError> {
    let mut out: Qualified = HashMap::new();
    for path in files {
        let reader = read_parquet(path)?;
        for batch in reader {
            let batch = batch.map_err(|e| err(path, e))?;
            let col = |n: &str| landed_strings(path, &batch, n);
            let (id, idns, ns, seg, status) = (
                col("primary_identity")?,
                col("primary_namespace")?,
                col("namespace")?,
                col("segment_id")?,
                col("status")?,
            );
            for r in 0..batch.num_rows() {
                if status_index(&status, r).is_some_and(|k| k < 2) {
                    out.entry((ns.value(r).to_string(), seg.value(r).to_string()))
                        .or_default()
                        .insert(ctx.key(idns.value(r), id.value(r)));
                }
            }
        }
    }
    Ok(out)
}

fn write_summary(
    dir: &Path,
    counts: &Counts,
    tonight: &Qualified,
    previous: &Qualified,
    input: &ProfileTables,
    night: i32,
) -> Result<(), TransformError> {
    let mut keys: Vec<&(String, String)> = counts.keys().chain(previous.keys()).collect();
    keys.sort();
    keys.dedup();
    let empty = HashSet::new();
    let prev_night = input
        .previous_night
        .as_deref()
        .map(night_days)
        .transpose()?;
    let (mut ns, mut seg) = (StringBuilder::new(), StringBuilder::new());
    let mut cols: [Vec<i64>; 6] = Default::default();
    for k in &keys {
        let c = counts.get(*k).copied().unwrap_or_default();
        let now = tonight.get(*k).unwrap_or(&empty);
        let before = previous.get(*k).unwrap_or(&empty);
        let (entered, left) = if prev_night.is_some() {
            (
                now.iter().filter(|x| !before.contains(x)).count() as i64,
                before.iter().filter(|x| !now.contains(x)).count() as i64,
            )
        } else {
            // The first night: every qualified profile entered.
            ((c[0] + c[1]) as i64, 0)
        };
        ns.append_value(&k.0);
        seg.append_value(&k.1);
        for (i, v) in [
            c[0] as i64,
            c[1] as i64,
            c[2] as i64,
            (c[0] + c[1]) as i64,
            entered,
            left,
        ]
        .into_iter()
        .enumerate()
        {
            cols[i].push(v);
        }
    }
    let rows = keys.len();
    let mut columns: Vec<ArrayRef> = vec![Arc::new(ns.finish()), Arc::new(seg.finish())];
    columns.extend(
        cols.into_iter()
            .map(|v| Arc::new(Int64Array::from(v)) as ArrayRef),
    );
    columns.push(Arc::new(Date32Array::from(vec![prev_night; rows])));
    columns.push(Arc::new(Int64Array::from(vec![input.export_job_id; rows])));
    columns.push(Arc::new(Date32Array::from(vec![night; rows])));
    columns.push(Arc::new(StringArray::from(vec![
        input.run_id.as_str();
        rows
    ])));
    let batch = RecordBatch::try_new(summary_schema(), columns).map_err(|e| err(dir, e))?;
    let path = dir.join("part-00000.zstd.parquet");
    let mut w = None;
    write_to(&mut w, &path, &batch)?;
    if let Some((w, _)) = w {
        w.close().map_err(|e| err(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export part of `profiles` (JSON as AEP writes them), as the simulator's export job
    /// writes it (map-typed `identityMap` and `segmentMembership`).
    fn export(dir: &Path, name: &str, profiles: &[serde_json::Value]) -> PathBuf {
        let path = dir.join(name);
        scoreland_platform_sim::write_export_part(&path, "_acmeretail", profiles).unwrap();
        path
    }

    fn profile(id: &str, segs: &[(&str, &str)]) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> = segs
            .iter()
            .map(|(s, st)| (s.to_string(), serde_json::json!({"status": st, "lastQualificationTime": "2026-11-01 10:00:00"})))
            .collect();
        serde_json::json!({
            "identityMap": {"ECID": [{"id": id, "primary": true}]},
            "segmentMembership": {"ups": m},
        })
    }

    fn summary(dir: &Path) -> Vec<(String, i64, i64, i64)> {
        let file = std::fs::read_dir(dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut out = Vec::new();
        for b in read_parquet(&file).unwrap() {
            let b = b.unwrap();
            let i = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let seg = b
                .column_by_name("segment_id")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let (q, e, l) = (
                i("qualified"),
                i("entered_since_previous"),
                i("left_since_previous"),
            );
            for r in 0..b.num_rows() {
                out.push((seg.value(r).to_string(), q.value(r), e.value(r), l.value(r)));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn entered_and_left_count_against_the_previous_night() {
        let tmp = tempfile::tempdir().unwrap();
        let first = export(
            tmp.path(),
            "n1.parquet",
            &[
                profile("a", &[("s1", "realized"), ("s2", "existing")]),
                profile("b", &[("s1", "existing")]),
                profile("c", &[("s1", "exited"), ("s2", "realized")]),
            ],
        );
        let input = |files: Vec<PathBuf>,
                     night: &str,
                     previous: Vec<PathBuf>,
                     prev: Option<&str>| ProfileTables {
            files,
            dedupe: false,
            fields: Vec::new(),
            night: night.into(),
            export_job_id: 7,
            run_id: format!("run-{night}"),
            previous,
            previous_night: prev.map(str::to_string),
            carry: None,
            out: tmp.path().join(night),
        };
        let one =
            write_profile_tables(&input(vec![first], "2026-11-29", Vec::new(), None)).unwrap();
        assert_eq!(one.stats.profiles, 3);
        assert_eq!(one.stats.memberships, 5);
        // The first night: all qualified entered.
        assert_eq!(
            summary(&one.summary_dir.join("night=2026-11-29")),
            vec![("s1".into(), 2, 2, 0), ("s2".into(), 2, 2, 0)]
        );
        // The next night: a left s1 (exited), b stays, c entered s1; c left s2, d entered s2;
        // s3 is new.
        let second = export(
            tmp.path(),
            "n2.parquet",
            &[
                profile("a", &[("s1", "exited"), ("s2", "existing")]),
                profile("b", &[("s1", "existing")]),
                profile("c", &[("s1", "realized")]),
                profile("d", &[("s2", "realized"), ("s3", "realized")]),
            ],
        );
        let previous: Vec<PathBuf> = std::fs::read_dir(one.audiences_dir.join("night=2026-11-29"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let two = write_profile_tables(&input(
            vec![second],
            "2026-11-30",
            previous,
            Some("2026-11-29"),
        ))
        .unwrap();
        assert_eq!(
            summary(&two.summary_dir.join("night=2026-11-30")),
            vec![
                ("s1".into(), 2, 1, 1),
                ("s2".into(), 2, 1, 1),
                ("s3".into(), 1, 1, 0),
            ]
        );
    }

    #[test]
    fn times_in_the_wild() {
        let z = parse_time("2021-03-10T10:03:08Z").unwrap();
        assert_eq!(z, 1_615_370_588_000_000);
        assert_eq!(parse_time("2021-03-10T10:03:08+0000"), Some(z));
        assert_eq!(parse_time("2021-03-10T11:03:08+01:00"), Some(z));
        assert_eq!(parse_time("2021-03-10T05:03:08-0500"), Some(z));
        assert_eq!(parse_time("2021-03-10 10:03:08"), Some(z));
        assert_eq!(parse_time("2021-03-10T10:03:08.25Z"), Some(z + 250_000));
        for bad in [
            "not a time",
            "2021-13-10T10:03:08Z",
            "2021-03-10T10:03:08 UTC",
            "",
            "2021-03-10",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
