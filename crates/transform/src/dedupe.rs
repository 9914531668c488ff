//! Dedupe: one row per (identity, model), counted as it goes.
//!
//! The flat rows are hash-partitioned on (identity, model) and sorted within each partition
//! (DataFusion's sort, which spills beyond the memory limit) so that the rows of one key are
//! adjacent with the one to keep first: the newest score date, then the newest batch, then the
//! largest batch id and the smallest record id (a deterministic tie-break). A streaming pass then
//! keeps the first row of each run. This moves each row through one sort and one filter; a
//! `row_number()` window does the same sort but then handles every key as its own window
//! partition, which with one key per identity costs more than the sort itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{SortOptions, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::Result as DfResult;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, Partitioning, SendableRecordBatchStream};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::error::{Context, TransformError};

/// What the dedupe saw, filled in while its output is consumed.
#[derive(Debug, Default)]
pub(crate) struct DedupeCounts {
    rows_in: AtomicU64,
    null_identities: AtomicU64,
    rows_out: AtomicU64,
}

impl DedupeCounts {
    /// (rows in, rows without identity, rows out).
    pub(crate) fn get(&self) -> (u64, u64, u64) {
        (
            self.rows_in.load(Ordering::Relaxed),
            self.null_identities.load(Ordering::Relaxed),
            self.rows_out.load(Ordering::Relaxed),
        )
    }
}

/// `flat` deduplicated, as a frame to write; `counts` is complete once it has been consumed.
/// Rows without identity are kept (all of them) or dropped, as configured.
pub(crate) async fn deduplicated(
    ctx: &SessionContext,
    flat: DataFrame,
    keep_null_identities: bool,
    counts: Arc<DedupeCounts>,
) -> Result<DataFrame, TransformError> {
    let input = flat
        .create_physical_plan()
        .await
        .context("planning the flat rows")?;
    let schema = input.schema();
    let key = |name: &str| col(name, &schema).context(format!("the {name} column"));
    let partitions = ctx.copied_config().target_partitions().max(1);
    let spread = RepartitionExec::try_new(
        input,
        Partitioning::Hash(vec![key("identity")?, key("model")?], partitions),
    )
    .context("partitioning by identity and model")?;
    let asc = SortOptions::new(false, false);
    let desc = SortOptions::new(true, false);
    let ordering = [
        ("identity", asc),
        ("model", asc),
        ("score_date", desc),
        ("batch_created", desc),
        ("batch_id", desc),
        ("record_id", asc),
    ]
    .into_iter()
    .map(|(name, options)| Ok(PhysicalSortExpr::new(key(name)?, options)))
    .collect::<Result<Vec<_>, TransformError>>()?;
    let ordering = LexOrdering::new(ordering).expect("the sort keys are not empty");
    let sorted: Arc<dyn ExecutionPlan> =
        Arc::new(SortExec::new(ordering, Arc::new(spread)).with_preserve_partitioning(true));
    let streams = (0..partitions)
        .map(|partition| {
            Arc::new(KeepFirst {
                sorted: sorted.clone(),
                partition,
                schema: schema.clone(),
                keep_null_identities,
                counts: counts.clone(),
            }) as Arc<dyn PartitionStream>
        })
        .collect();
    let table = StreamingTable::try_new(schema.clone(), streams).context("the dedupe stream")?;
    ctx.read_table(Arc::new(table))
        .context("reading the dedupe stream")
}

/// One sorted partition, keeping the first row of each (identity, model).
#[derive(Debug)]
struct KeepFirst {
    sorted: Arc<dyn ExecutionPlan>,
    partition: usize,
    schema: SchemaRef,
    keep_null_identities: bool,
    counts: Arc<DedupeCounts>,
}

impl PartitionStream for KeepFirst {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        let input = match self.sorted.execute(self.partition, ctx) {
            Ok(s) => s,
            Err(e) => {
                return Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::once(async { Err(e) }),
                ));
            }
        };
        let mut filter = RunFilter {
            last: None,
            keep_null_identities: self.keep_null_identities,
            counts: self.counts.clone(),
        };
        let kept = input.map(move |batch| filter.apply(&batch?));
        Box::pin(RecordBatchStreamAdapter::new(schema, kept))
    }
}

/// The streaming state of one partition: the key of the last row seen, across batches.
struct RunFilter {
    /// (identity, model) of the last row with an identity.
    last: Option<(String, String)>,
    keep_null_identities: bool,
    counts: Arc<DedupeCounts>,
}

impl RunFilter {
    fn apply(&mut self, batch: &RecordBatch) -> DfResult<RecordBatch> {
        let identity = string_column(batch, "identity")?;
        let model = string_column(batch, "model")?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut previous: Option<usize> = None;
        let (mut nulls, mut kept) = (0u64, 0u64);
        for i in 0..batch.num_rows() {
            if identity.is_null(i) {
                nulls += 1;
                keep.push(self.keep_null_identities);
                continue;
            }
            let (id, m) = (identity.value(i), model.value(i));
            let first = match previous {
                Some(p) => identity.value(p) != id || model.value(p) != m,
                None => self
                    .last
                    .as_ref()
                    .is_none_or(|(li, lm)| li != id || lm != m),
            };
            kept += u64::from(first);
            keep.push(first);
            previous = Some(i);
        }
        if let Some(p) = previous {
            self.last = Some((identity.value(p).to_string(), model.value(p).to_string()));
        }
        if self.keep_null_identities {
            kept += nulls;
        }
        self.counts
            .rows_in
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.counts
            .null_identities
            .fetch_add(nulls, Ordering::Relaxed);
        self.counts.rows_out.fetch_add(kept, Ordering::Relaxed);
        Ok(filter_record_batch(batch, &BooleanArray::from(keep))?)
    }
}

fn string_column(batch: &RecordBatch, name: &str) -> DfResult<StringArray> {
    let column = batch.column_by_name(name).ok_or_else(|| {
        DataFusionError::Internal(format!("the dedupe input has no {name} column"))
    })?;
    let column = match column.data_type() {
        DataType::Utf8 => column.clone(),
        _ => datafusion::arrow::compute::cast(column, &DataType::Utf8)?,
    };
    Ok(column.as_string::<i32>().clone())
}
