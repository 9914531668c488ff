//! Keeping the tables: vacuum (files no kept version needs) and optimize (compaction and
//! ordering, with the published versions moved along).

use super::*;

/// Rows per row group in the files `optimize` writes.
pub(super) const OPTIMIZED_ROW_GROUP_ROWS: usize = 128 * 1024;

impl Warehouse {
    /// Deletes, in each of `tables`, the files no version within `retention` needs (Delta's
    /// vacuum, full mode): files replaced longer ago than that, and files no version names
    /// (uploads of runs that failed before their commit, files `convert` left) older than
    /// that. The version readers are given (`_published`, read once) keeps its files whatever
    /// the retention. Returns the files deleted per table. Call it under the publish lock
    /// ([`crate::PUBLISH_LOCK`]): a publish's uploads are files no version names until its
    /// commit.
    pub async fn vacuum_tables(
        &self,
        tables: &[&str],
        retention: std::time::Duration,
    ) -> Result<Vec<(String, Vec<String>)>, SinkError> {
        let published = self.published_versions().await?;
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let mut out = Vec::new();
        for &table in tables {
            let Some(t) = self.delta_table(table, None).await? else {
                out.push((table.to_string(), Vec::new()));
                continue;
            };
            let keep: Vec<u64> = published.get(table).copied().into_iter().collect();
            let (_, metrics) = t
                .vacuum()
                .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
                .with_keep_versions(&keep)
                .with_retention_period(retention)
                .with_enforce_retention_duration(false)
                .await
                .map_err(delta_err(table, "vacuum"))?;
            out.push((table.to_string(), metrics.files_deleted));
        }
        Ok(out)
    }
}

/// What `optimize` did to a table.
#[derive(Debug, Clone, Serialize)]
pub struct OptimizeReport {
    pub table: String,
    pub files_added: u64,
    pub files_removed: u64,
    /// The version optimize committed (the rows are the same as before it).
    pub version: u64,
}

impl Warehouse {
    /// Compacts a table's small files within each partition and, with `zorder`, orders each
    /// partition's rows by those columns, so that a lookup by them reads few row groups. The
    /// rows do not change: `_published/` versions that were the newest move to the new one.
    ///
    /// The ordering sorts within `memory_limit` and spills to the temporary directory beyond it
    /// (delta-rs on its own holds a whole partition in memory: 16 GB for 32.6 M rows).
    pub async fn optimize_table(
        &self,
        table: &str,
        zorder: &[&str],
        memory_limit: usize,
    ) -> Result<Option<OptimizeReport>, SinkError> {
        use deltalake::operations::optimize::OptimizeType;
        let Some(t) = self.delta_table(table, None).await? else {
            return Ok(None);
        };
        let before = t.version().unwrap_or(0);
        let kind = if zorder.is_empty() {
            OptimizeType::Compact
        } else {
            OptimizeType::ZOrder(zorder.iter().map(|c| c.to_string()).collect())
        };
        // zstd as the transform writes, and row groups small enough that a sorted file's
        // statistics narrow a lookup by the sort column to a few of them.
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
            ))
            .set_max_row_group_row_count(Some(OPTIMIZED_ROW_GROUP_ROWS))
            .build();
        let runtime = deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(scoreland_runtime::pool(
                memory_limit,
                scoreland_runtime::Sharing::Fair,
            ))
            .build_arc()
            .map_err(|e| delta_err(table, "optimize")(DeltaTableError::from(e)))?;
        let ctx = DeltaSessionContext::with_runtime_env(runtime).into_inner();
        // What each sorting partition keeps aside to merge its spilled runs.
        let partitions = ctx.state().config().target_partitions().max(1);
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .execution
            .sort_spill_reservation_bytes =
            scoreland_runtime::sort_spill_reservation(memory_limit, partitions);
        let session = ctx.state();
        let (optimized, metrics) = t
            .optimize()
            .with_type(kind)
            .with_writer_properties(props)
            .with_session_state(Arc::new(session))
            .await
            .map_err(delta_err(table, "optimize"))?;
        let after = optimized.version().unwrap_or(before);
        if after != before {
            for (path, mut p) in self.published().await? {
                if p.versions.get(table) == Some(&before) {
                    p.versions.insert(table.to_string(), after);
                    self.put_json_at(&path, &p).await?;
                }
            }
        }
        Ok(Some(OptimizeReport {
            table: table.to_string(),
            files_added: metrics.num_files_added,
            files_removed: metrics.num_files_removed,
            version: after,
        }))
    }
}

/// What forgetting identities did to one table.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ForgetReport {
    pub table: String,
    /// The columns searched for the identities.
    pub columns: Vec<String>,
    pub rows_deleted: u64,
    /// The version that no longer holds them (none when the table held none).
    pub version: Option<u64>,
}

/// The readers' pointer of the versions `forget` committed: like a pipeline's, so every reader
/// sees the version without the forgotten rows (a name no pipeline can have).
pub const FORGET_POINTER: &str = "_published/.forget.json";

impl Warehouse {
    /// Deletes from `table` the rows whose `columns` hold an identity whose SHA-256 digest (hex)
    /// is one of `digests` (and, with `namespace` = (column, value), only those of that
    /// namespace) in one Delta commit carrying `metadata` (who and why); then publishes that
    /// version to readers. The identities themselves are never written: the commit's
    /// predicate names their digests. Refused when the table
    /// has commits newer than the version readers see (a run that stopped mid-publish): the
    /// delete would publish them too. Hold [`crate::PUBLISH_LOCK`] around it.
    pub async fn forget_rows(
        &self,
        table: &str,
        columns: &[String],
        digests: &[String],
        namespace: Option<(&str, &str)>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<ForgetReport, SinkError> {
        let mut report = ForgetReport {
            table: table.to_string(),
            columns: columns.to_vec(),
            rows_deleted: 0,
            version: None,
        };
        let Some(t) = self.delta_table(table, None).await? else {
            return Ok(report);
        };
        if columns.is_empty() || digests.is_empty() {
            return Ok(report);
        }
        let newest = t.version().unwrap_or(0);
        if let Some(published) = self.published_versions().await?.get(table)
            && *published != newest
        {
            return Err(SinkError::Schema {
                table: table.to_string(),
                message: format!(
                    "it has commits (version {newest}) newer than the version readers see \
                     ({published}): a run stopped while publishing; run its pipeline again \
                     (it completes the publish), then forget"
                ),
            });
        }
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let list = digests
            .iter()
            .map(|d| quote(d))
            .collect::<Vec<_>>()
            .join(", ");
        let any = columns
            .iter()
            .map(|c| {
                format!(
                    "encode(sha256(CAST(\"{}\" AS VARCHAR)), 'hex') IN ({list})",
                    c.replace('"', "\"\"")
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        let predicate = match namespace {
            Some((column, ns)) => format!(
                "({any}) AND \"{}\" = {}",
                column.replace('"', "\"\""),
                quote(ns)
            ),
            None => any,
        };
        let (t, metrics) = t
            .delete()
            .with_predicate(predicate)
            .with_commit_properties(CommitProperties::default().with_metadata(metadata))
            .await
            .map_err(delta_err(table, "delete"))?;
        report.rows_deleted = metrics.num_deleted_rows.unwrap_or(0) as u64;
        let version = t.version().unwrap_or(0);
        if version == newest {
            return Ok(report);
        }
        report.version = Some(version);
        let mut pointer: Published = self.get_json(FORGET_POINTER).await?.unwrap_or(Published {
            run_id: String::new(),
            versions: Default::default(),
        });
        pointer.run_id = "forget".to_string();
        pointer.versions.insert(table.to_string(), version);
        self.put_json(FORGET_POINTER, &pointer).await?;
        Ok(report)
    }
}
