//! The old layout (`_commits/`, `_latest.json`) turned into Delta tables, and what the run
//! records say was landed.

use super::*;

impl Warehouse {
    /// The datasets that landed runs recorded (`_runs/<pipeline>/<run>.json`), sorted.
    pub async fn landed_datasets(&self) -> Result<Vec<String>, SinkError> {
        let mut found = BTreeSet::new();
        for meta in self.list(&self.path("_runs")).await? {
            let record: Option<serde_json::Value> = self.get_json_at(&meta.location).await?;
            if let Some(r) = record
                && r.get("status").and_then(|s| s.as_str()) == Some("landed")
                && let Some(d) = r.get("dataset").and_then(|d| d.as_str())
            {
                found.insert(d.to_string());
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Whether a table is still in scoreland's old layout (`<table>/_commits/`).
    pub async fn is_legacy(&self, table: &str) -> Result<bool, SinkError> {
        self.has_objects(&format!("{table}/_commits")).await
    }

    /// Turns a table of the old layout into a Delta table holding the same rows (its live
    /// files, as the newest commit record lists them), then removes the old commit records.
    /// The old data files stay until `vacuum` (Delta does not reference them). Returns the
    /// rows' score dates, or `None` when the table had nothing committed.
    pub async fn convert_legacy(
        &self,
        table: &str,
        dataset_id: &str,
        by_score_date: bool,
        scratch: &LocalPath,
    ) -> Result<Option<TableCommit>, SinkError> {
        use object_store::ObjectStoreExt;
        let Some(latest) = self.latest_commit(table).await? else {
            return Ok(None);
        };
        let commit = if latest.live.is_empty() {
            None
        } else {
            Some(
                self.convert_files(table, dataset_id, by_score_date, scratch, &latest)
                    .await?,
            )
        };
        // The rows are in Delta now: the old records go, so the table is no longer "legacy".
        for meta in self.list(&self.path(&format!("{table}/_commits"))).await? {
            self.store
                .delete(&meta.location)
                .await
                .map_err(|source| SinkError::Store {
                    op: "delete",
                    path: meta.location.to_string(),
                    source,
                })?;
        }
        let latest_json = self.path(&format!("{table}/_latest.json"));
        match self.store.delete(&latest_json).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(commit),
            Err(source) => Err(SinkError::Store {
                op: "delete",
                path: latest_json.to_string(),
                source,
            }),
        }
    }

    /// Copies an old commit's live files to `scratch` and commits them as a Delta table.
    pub(super) async fn convert_files(
        &self,
        table: &str,
        dataset_id: &str,
        by_score_date: bool,
        scratch: &LocalPath,
        latest: &crate::legacy::Commit,
    ) -> Result<TableCommit, SinkError> {
        use object_store::ObjectStoreExt;
        let local = scratch.join(table);
        for f in &latest.live {
            let path = self.path(&format!("{table}/{}", f.path));
            let bytes = self
                .store
                .get(&path)
                .await
                .map_err(|source| SinkError::Store {
                    op: "read",
                    path: path.to_string(),
                    source,
                })?
                .bytes()
                .await
                .map_err(|source| SinkError::Store {
                    op: "read",
                    path: path.to_string(),
                    source,
                })?;
            let to = local.join(&f.path);
            let io = |source| SinkError::Local {
                path: to.clone(),
                source,
            };
            std::fs::create_dir_all(to.parent().unwrap_or(&local)).map_err(io)?;
            std::fs::write(&to, &bytes).map_err(io)?;
        }
        // The old files have no run_id column: rewritten once with it, then landed as a run.
        let tagged = scratch.join(format!("{table}-tagged"));
        with_run_id(&local, &tagged, &latest.run_id, by_score_date)
            .await
            .map_err(|e| delta_err(table, "convert")(DeltaTableError::from(e)))?;
        let commit = self
            .write_table(&TableWrite {
                table,
                local_dir: &tagged,
                dataset_id,
                run_id: &latest.run_id,
                by_score_date,
                date_column: "score_date",
                replace_dataset: false,
                append: false,
                evolve_schema: false,
                app_id: "scoreland-convert",
                app_version: latest.seq as i64 + 1,
                metadata: serde_json::Map::from_iter([
                    ("run_id".to_string(), serde_json::json!(latest.run_id)),
                    ("batches".to_string(), serde_json::json!(latest.batches)),
                    ("rows".to_string(), serde_json::json!(latest.rows())),
                    (
                        "converted_from_commit".to_string(),
                        serde_json::json!(latest.seq),
                    ),
                ]),
                properties: Default::default(),
            })
            .await?;
        Ok(commit)
    }
}
