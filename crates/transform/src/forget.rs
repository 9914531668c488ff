//! Forgotten identities kept out of what a night lands: a privacy delete (`scoreland forget`)
//! keeps each identity as a digest only, and every later night's files lose the rows that
//! hold one, before anything is published.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::dataset::{parquet, read};
use crate::error::TransformError;

/// The digest an identity is kept as: SHA-256 of its text, in hex.
pub fn identity_digest(id: &str) -> String {
    use std::fmt::Write;
    digest(id)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// SHA-256 of an identity's text.
fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The 32 bytes of a digest written by [`identity_digest`], or `None` for any other text.
fn digest_bytes(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4 | nibble(pair[1])?) as u8;
    }
    Some(out)
}

/// Rewrites the parquet files under `dir` without the rows whose `columns` (those a file has)
/// hold an identity of `digests`; returns the rows dropped. A file that loses no row is left
/// as it is; one that does is replaced whole (written aside, then renamed over it).
pub fn drop_identities(
    dir: &Path,
    columns: &BTreeSet<String>,
    digests: &HashSet<String>,
) -> Result<u64, TransformError> {
    let digests = digests
        .iter()
        .map(|d| {
            digest_bytes(d).ok_or_else(|| {
                TransformError::Config(format!(
                    "the forgotten identity {d:?} is not a SHA-256 digest in hex (64 characters); \
                     the list of forgotten identities in the warehouse was changed by hand"
                ))
            })
        })
        .collect::<Result<HashSet<[u8; 32]>, _>>()?;
    if digests.is_empty() {
        return Ok(0);
    }
    let mut dropped = 0;
    for file in parquet_files(dir)? {
        let batches = read(&file, None)?;
        let mut kept = Vec::with_capacity(batches.len());
        let mut lost = 0u64;
        for b in batches {
            let mut keep = vec![true; b.num_rows()];
            for c in columns {
                let Some(col) = b.column_by_name(c) else {
                    continue;
                };
                let text = cast(col, &DataType::Utf8).map_err(|e| parquet(&file, e))?;
                for (i, v) in text.as_string::<i32>().iter().enumerate() {
                    if v.is_some_and(|v| digests.contains(&digest(v))) {
                        keep[i] = false;
                    }
                }
            }
            let mask = BooleanArray::from(keep);
            lost += mask.false_count() as u64;
            kept.push(filter_record_batch(&b, &mask).map_err(|e| parquet(&file, e))?);
        }
        if lost == 0 {
            continue;
        }
        dropped += lost;
        let schema = parquet_schema(&file)?;
        let aside = file.with_extension("forget.tmp");
        let out = std::fs::File::create(&aside).map_err(|source| TransformError::Io {
            path: aside.clone(),
            source,
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .build();
        let mut w =
            ArrowWriter::try_new(out, schema, Some(props)).map_err(|e| parquet(&aside, e))?;
        for b in &kept {
            w.write(b).map_err(|e| parquet(&aside, e))?;
        }
        w.close().map_err(|e| parquet(&aside, e))?;
        std::fs::rename(&aside, &file).map_err(|source| TransformError::Io {
            path: file.clone(),
            source,
        })?;
    }
    Ok(dropped)
}

fn parquet_schema(file: &Path) -> Result<datafusion::arrow::datatypes::SchemaRef, TransformError> {
    let f = std::fs::File::open(file).map_err(|source| TransformError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map(|b| b.schema().clone())
        .map_err(|source| TransformError::Footer {
            file: file.to_path_buf(),
            source,
        })
}

fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, TransformError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let p = e
            .map_err(|source| TransformError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if p.is_dir() {
            out.extend(parquet_files(&p)?);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn rows_of_forgotten_identities_are_dropped_and_other_files_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("identity", DataType::Utf8, true),
            Field::new("v", DataType::Utf8, true),
        ]));
        let write = |name: &str, ids: Vec<Option<&str>>| {
            let p = dir.path().join("score_date=2026-11-15").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let n = ids.len();
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(StringArray::from(vec!["x"; n])),
                ],
            )
            .unwrap();
            let mut w =
                ArrowWriter::try_new(std::fs::File::create(&p).unwrap(), schema.clone(), None)
                    .unwrap();
            w.write(&b).unwrap();
            w.close().unwrap();
            p
        };
        let a = write(
            "a.parquet",
            vec![Some("alice"), Some("bob"), None, Some("alice")],
        );
        let b = write("b.parquet", vec![Some("carol")]);
        let before_b = std::fs::read(&b).unwrap();
        let digests: HashSet<String> = [identity_digest("alice")].into();
        let columns: BTreeSet<String> = ["identity".to_string(), "absent".to_string()].into();
        assert_eq!(drop_identities(dir.path(), &columns, &digests).unwrap(), 2);
        let left: Vec<Option<String>> = read(&a, None)
            .unwrap()
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(left, [Some("bob".to_string()), None]);
        assert_eq!(std::fs::read(&b).unwrap(), before_b);
        assert_eq!(
            identity_digest("alice"),
            "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
        );
    }

    #[test]
    fn a_forgotten_list_changed_by_hand_is_refused_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let columns: BTreeSet<String> = ["identity".to_string()].into();
        let good = identity_digest("alice");
        for hostile in [
            "alice".to_string(),
            good[..62].to_string(),
            format!("{good}00"),
            format!("+a{}", &good[2..]),
            format!("zz{}", &good[2..]),
            format!("é{}", &good[2..]),
        ] {
            let digests: HashSet<String> = [good.clone(), hostile.clone()].into();
            let e = drop_identities(dir.path(), &columns, &digests)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{hostile:?}")), "{hostile}: {e}");
        }
        assert_eq!(digest_bytes(&good), Some(digest("alice")));
        assert_eq!(digest_bytes(&good.to_uppercase()), Some(digest("alice")));
    }
}
