//! The generator's own ground truth, read from the parquet it wrote with the parquet crate
//! alone (no DataFusion): what landing a set of batches must keep, for tests to compare with
//! the code under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::{DataType, Date32Type, Float64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::SimError;

/// The newest score of one (identity, model).
#[derive(Debug, Clone, PartialEq)]
pub struct TrueScore {
    pub score: f64,
    /// Days since the epoch.
    pub score_date: i32,
    pub record_id: String,
}

/// The parquet parts of a generated batch, sorted.
pub fn batch_parts(platform: &Path, dataset: &str, batch: &str) -> Result<Vec<PathBuf>, SimError> {
    let dir = platform.join("prod").join(dataset).join(batch);
    let mut parts = Vec::new();
    for file_dir in std::fs::read_dir(&dir).map_err(|e| SimError::io(&dir, e))? {
        let file_dir = file_dir.map_err(|e| SimError::io(&dir, e))?.path();
        if !file_dir.is_dir() {
            continue;
        }
        for p in std::fs::read_dir(&file_dir).map_err(|e| SimError::io(&file_dir, e))? {
            let p = p.map_err(|e| SimError::io(&file_dir, e))?.path();
            if p.extension().is_some_and(|e| e == "parquet") {
                parts.push(p);
            }
        }
    }
    parts.sort();
    Ok(parts)
}

/// The newest score per (identity, model) over `batches`, each given by its parts and a rank
/// (larger is newer): the newest score date wins, then the higher rank, then the smaller
/// record id. Rows without identity are left out.
pub fn newest_scores(
    batches: &[(Vec<PathBuf>, i64)],
) -> Result<BTreeMap<(String, String), TrueScore>, SimError> {
    let mut best: BTreeMap<(String, String), (TrueScore, i64)> = BTreeMap::new();
    for (parts, rank) in batches {
        for part in parts {
            let file = std::fs::File::open(part).map_err(|e| SimError::io(part, e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(|source| SimError::Parquet {
                    path: part.clone(),
                    source,
                })?;
            for batch in reader {
                let batch = batch.map_err(|e| SimError::Generate(e.to_string()))?;
                let record_ids = batch.column(0).as_string::<i32>();
                let tenant = batch.column(2).as_struct();
                let identity = tenant.column(0).as_struct();
                let ids = identity.column(0).as_string::<i32>();
                let cai = tenant.column(1).as_struct();
                let DataType::Struct(models) = cai.data_type() else {
                    continue;
                };
                for (m, field) in models.iter().enumerate() {
                    let model: &StructArray = cai.column(m).as_struct();
                    let scores = model.column(0).as_primitive::<Float64Type>();
                    let dates = model.column(4).as_primitive::<Date32Type>();
                    for i in 0..batch.num_rows() {
                        if model.is_null(i) || identity.is_null(i) || ids.is_null(i) {
                            continue;
                        }
                        let candidate = TrueScore {
                            score: scores.value(i),
                            score_date: dates.value(i),
                            record_id: record_ids.value(i).to_string(),
                        };
                        let key = (ids.value(i).to_string(), field.name().clone());
                        let better = match best.get(&key) {
                            None => true,
                            Some((b, r)) => {
                                (candidate.score_date, *rank) > (b.score_date, *r)
                                    || ((candidate.score_date, *rank) == (b.score_date, *r)
                                        && candidate.record_id < b.record_id)
                            }
                        };
                        if better {
                            best.insert(key, (candidate, *rank));
                        }
                    }
                }
            }
        }
    }
    Ok(best.into_iter().map(|(k, (v, _))| (k, v)).collect())
}
