//! A table's version as plain Parquet files: the scan a distributed engine's executors run
//! (`sql --cluster`, `serve --cluster`).
//!
//! delta-rs's scan does not serialise to executors (delta-rs #4171), and a listing table would
//! list the table's directory on the cluster, seeing files of other versions. This provider
//! scans exactly the files the Delta log names at the published version, with the partition
//! values the log gives, in the column order delta-rs's provider uses (the files' columns, then
//! the partition columns), so a query answers here and on the cluster alike.

use std::sync::Arc;

use super::TableFiles;
use deltalake::datafusion::arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use deltalake::datafusion::catalog::Session;
use deltalake::datafusion::common::config::TableParquetOptions;
use deltalake::datafusion::common::{Result, ScalarValue};
use deltalake::datafusion::datasource::TableType;
use deltalake::datafusion::datasource::listing::PartitionedFile;
use deltalake::datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfigBuilder, ParquetSource,
};
use deltalake::datafusion::datasource::source::DataSourceExec;
use deltalake::datafusion::datasource::table_schema::TableSchema;
use deltalake::datafusion::execution::object_store::ObjectStoreUrl;
use deltalake::datafusion::logical_expr::utils::conjunction;
use deltalake::datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use deltalake::datafusion::physical_plan::ExecutionPlan;

/// One published version of a table, scanned file by file.
#[derive(Debug)]
pub struct PublishedTable {
    files: TableFiles,
    /// The columns the files hold (the table's, less its partition columns).
    file_schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
}

impl PublishedTable {
    pub fn new(files: TableFiles) -> Self {
        let (partition, file): (Vec<FieldRef>, Vec<FieldRef>) = files
            .schema
            .fields()
            .iter()
            .cloned()
            .partition(|f| files.partition_columns.contains(f.name()));
        // Partition columns in the order the table's schema lists them (as the scan appends them).
        Self {
            file_schema: Arc::new(Schema::new(file)),
            partition_fields: partition,
            files,
        }
    }

    /// Each file with its partition values typed as the table's columns.
    fn partitioned_files(&self) -> Result<Vec<PartitionedFile>> {
        self.files
            .files
            .iter()
            .map(|f| {
                let values = self
                    .partition_fields
                    .iter()
                    .map(|field| partition_value(field, f.partition_values.get(field.name())))
                    .collect::<Result<Vec<_>>>()?;
                Ok(PartitionedFile::new(f.location.to_string(), f.size)
                    .with_partition_values(values))
            })
            .collect()
    }
}

/// A partition value as Delta keeps it (a string, or absent for null) typed as `field`.
fn partition_value(field: &Field, value: Option<&Option<String>>) -> Result<ScalarValue> {
    match value.cloned().flatten() {
        Some(v) => ScalarValue::try_from_string(v, field.data_type()),
        None => ScalarValue::try_from(field.data_type()),
    }
}

/// Spreads files over `n` groups, largest first onto the lightest group, so the executors'
/// tasks get similar amounts of bytes.
fn balanced_groups(mut files: Vec<PartitionedFile>, n: usize) -> Vec<FileGroup> {
    let n = n.clamp(1, files.len().max(1));
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for f in files {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        lightest.0 += f.object_meta.size;
        lightest.1.push(f);
    }
    groups
        .into_iter()
        .filter(|(_, files)| !files.is_empty())
        .map(|(_, files)| FileGroup::new(files))
        .collect()
}

#[async_trait::async_trait]
impl deltalake::datafusion::catalog::TableProvider for PublishedTable {
    fn schema(&self) -> SchemaRef {
        self.files.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Row groups are pruned by the filters on the files' columns; every filter is still
        // applied to the rows above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(self.partition_fields.clone())
            .build();
        let mut source =
            ParquetSource::new(table_schema).with_table_parquet_options(TableParquetOptions {
                global: state.config_options().execution.parquet.clone(),
                ..Default::default()
            });
        // Only filters on the files' own columns prune row groups (partition values are not in
        // the files' statistics).
        let on_files: Vec<Expr> = filters
            .iter()
            .filter(|e| {
                e.column_refs()
                    .iter()
                    .all(|c| self.file_schema.field_with_name(&c.name).is_ok())
            })
            .cloned()
            .collect();
        if let Some(predicate) = conjunction(on_files) {
            let df_schema = deltalake::datafusion::common::DFSchema::try_from(
                self.file_schema.as_ref().clone(),
            )?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let url = ObjectStoreUrl::parse(self.files.store_url.as_str())?;
        let groups = balanced_groups(
            self.partitioned_files()?,
            state.config_options().execution.target_partitions,
        );
        let config = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
