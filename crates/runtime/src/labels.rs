//! Where AEP's data usage labels live in a warehouse, for the transform that writes them, the
//! sink that commits them and `serve` that enforces them: a column's labels in its metadata,
//! the dataset's labels and the pipeline's denied labels as table properties (Delta
//! `configuration`). Labels are written as a comma-separated list (`C2,I1`).

use std::collections::BTreeSet;

/// The column metadata key of a column's labels (its field's, its objects' and its fields').
pub const COLUMN_LABELS: &str = "aep_labels";
/// The table property of the dataset's own labels (every field of the dataset carries them).
pub const TABLE_LABELS: &str = "scoreland.aep.labels";
/// The table property of the labels whose columns `serve` masks (the pipeline's
/// `[serve] deny_labels`).
pub const DENY_LABELS: &str = "scoreland.serve.deny_labels";

/// `C2,I1` as its labels; blanks are ignored.
pub fn parse_labels(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Labels as the comma-separated list the warehouse keeps.
pub fn join_labels<'a>(labels: impl IntoIterator<Item = &'a String>) -> String {
    labels
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",")
}
