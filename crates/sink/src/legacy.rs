//! Reading scoreland's old table layout (before Delta Lake), for `scoreland convert`: each
//! table had `<table>/_commits/<seq>.json` records listing its live files, and
//! `<table>/_latest.json` for other readers.

use serde::{Deserialize, Serialize};

use crate::error::SinkError;
use crate::store::Warehouse;

/// One data file of an old-layout table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFile {
    /// Relative to the table directory.
    pub path: String,
    /// `score_date=2026-11-16`, or none for an unpartitioned table.
    pub partition: Option<String>,
    pub rows: u64,
    pub bytes: u64,
}

/// An old-layout commit record: what one run added and the table's live files after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub table: String,
    pub seq: u64,
    pub run_id: String,
    pub batches: Vec<String>,
    pub committed_at: String,
    pub added: Vec<CommitFile>,
    pub removed: Vec<String>,
    pub live: Vec<CommitFile>,
}

impl Commit {
    pub fn rows(&self) -> u64 {
        self.live.iter().map(|f| f.rows).sum()
    }
}

impl Warehouse {
    /// The newest old-layout commit record of `table`, if any.
    pub async fn latest_commit(&self, table: &str) -> Result<Option<Commit>, SinkError> {
        let listed = self.list(&self.path(&format!("{table}/_commits"))).await?;
        let newest = listed
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                name.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max();
        match newest {
            None => Ok(None),
            Some(seq) => {
                self.get_json(&format!("{table}/_commits/{seq:020}.json"))
                    .await
            }
        }
    }
}
