//! A distributed engine that runs DataFusion plans made here ([`ClusterEngine`]; scoreland's
//! cluster crate implements it for a Ballista scheduler), and the query planner that sends a
//! query's plan to it ([`ClusterPlanner`]), shared by `sql --cluster` and `serve --cluster`.
//!
//! A query is planned here as it would run here; a plan that reads files, and that the engine
//! can carry, then runs on the engine as one [`ClusterExec`], whose rows come back once the
//! engine's job has finished. A plan that reads no file (`SELECT 1`, the catalog) runs here.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionConfig;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// A distributed engine that runs physical plans made here.
#[async_trait]
pub trait ClusterEngine: Send + Sync + fmt::Debug {
    /// The engine's address, for messages.
    fn name(&self) -> String;

    /// The session configuration plans for this engine are made with, from `base`.
    fn session_config(&self, base: SessionConfig) -> SessionConfig;

    /// Whether the engine can carry `plan` to its executors (every node of it serialises).
    fn carries(&self, plan: &Arc<dyn ExecutionPlan>, config: &SessionConfig) -> bool;

    /// Runs `plan` and streams its rows back once the job has finished.
    async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &SessionConfig,
    ) -> Result<BoxStream<'static, Result<RecordBatch, ClusterFailure>>, ClusterFailure>;
}

/// A plan node of scoreland's own that a cluster carries to its executors (the scores
/// transform's writer of kept rows): its parameters as bytes, which the same binary decodes on
/// the scheduler and on each executor. The engine tags each node with [`NodeCodec::name`].
pub trait NodeCodec: Send + Sync + fmt::Debug {
    /// The node's tag on the wire: unique among the nodes one binary carries.
    fn name(&self) -> &'static str;

    /// `plan`'s parameters (its children travel apart), when it is this codec's node.
    fn encode(&self, plan: &dyn ExecutionPlan) -> Option<Result<Vec<u8>>>;

    /// The node of `bytes` over its decoded `inputs`.
    fn decode(
        &self,
        bytes: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
    ) -> Result<Arc<dyn ExecutionPlan>>;
}

/// Why a job on the engine gave no rows.
#[derive(Debug, Clone)]
pub struct ClusterFailure {
    pub message: String,
    /// An executor went away (its tasks' output with it): the job can be run again.
    pub lost_executor: bool,
}

/// How many times a job that lost an executor is submitted in all.
const ATTEMPTS: usize = 3;

/// Plans as DataFusion does, then hands a plan that reads files to the engine.
#[derive(Debug)]
pub struct ClusterPlanner {
    engine: Arc<dyn ClusterEngine>,
}

impl ClusterPlanner {
    pub fn new(engine: Arc<dyn ClusterEngine>) -> Self {
        Self { engine }
    }
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session)
            .await?;
        if !reads_files(&plan) {
            return Ok(plan);
        }
        let config = session.config().clone();
        if !self.engine.carries(&plan, &config) {
            tracing::debug!(
                "a plan {} cannot carry runs here:\n{}",
                self.engine.name(),
                datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
            );
            return Ok(plan);
        }
        Ok(Arc::new(ClusterExec::new(
            plan,
            self.engine.clone(),
            config,
        )))
    }
}

/// Whether a plan scans any file.
pub fn reads_files(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<DataSourceExec>() || plan.children().into_iter().any(reads_files)
}

/// A plan run on the engine, its rows in one partition here. A job that lost an executor is
/// submitted again (the plan only reads); its rows are handed on only once a job has finished,
/// so nothing of a failed attempt is.
pub struct ClusterExec {
    plan: Arc<dyn ExecutionPlan>,
    engine: Arc<dyn ClusterEngine>,
    config: SessionConfig,
    properties: Arc<PlanProperties>,
}

impl ClusterExec {
    pub fn new(
        plan: Arc<dyn ExecutionPlan>,
        engine: Arc<dyn ClusterEngine>,
        config: SessionConfig,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(plan.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            plan,
            engine,
            config,
            properties,
        }
    }
}

impl fmt::Debug for ClusterExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterExec")
            .field("engine", &self.engine.name())
            .finish()
    }
}

impl DisplayAs for ClusterExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ClusterExec: engine={}, plan=[{}]",
            self.engine.name(),
            datafusion::physical_plan::displayable(self.plan.as_ref()).one_line()
        )
    }
}

impl ExecutionPlan for ClusterExec {
    fn name(&self) -> &str {
        "ClusterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        // The plan it holds runs on the engine, not here.
        vec![]
    }

    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, _: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ClusterExec has one partition, not {partition}"
            )));
        }
        let schema = self.plan.schema();
        let rows = run(self.engine.clone(), self.plan.clone(), self.config.clone());
        let shaped = {
            let schema = schema.clone();
            futures::stream::once(rows)
                .try_flatten()
                .map(move |b| b.and_then(|b| shaped(&schema, b)))
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, shaped)))
    }
}

/// Submits `plan` until a job finishes or fails for another reason than a lost executor.
async fn run(
    engine: Arc<dyn ClusterEngine>,
    plan: Arc<dyn ExecutionPlan>,
    config: SessionConfig,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let on = |message: String| {
        DataFusionError::Execution(format!("on the cluster {}: {message}", engine.name()))
    };
    let rows = retry_lost_executor(&engine.name(), "the query", || {
        engine.execute(plan.clone(), &config)
    })
    .await
    .map_err(on)?;
    let name = engine.name();
    Ok(rows
        .map_err(move |e| {
            DataFusionError::Execution(format!("on the cluster {name}: {}", e.message))
        })
        .boxed())
}

/// Runs `attempt` until it succeeds or fails for another reason than a lost executor (whose
/// job can run again whole), [`ATTEMPTS`] times at most; `what` names the job in the warning
/// before each new attempt. The error is the last failure's message.
pub async fn retry_lost_executor<T, F, Fut>(
    engine: &str,
    what: &str,
    mut attempt: F,
) -> std::result::Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, ClusterFailure>>,
{
    let mut n = 1;
    loop {
        let why = match attempt().await {
            Ok(t) => return Ok(t),
            Err(why) => why,
        };
        if !why.lost_executor {
            return Err(why.message);
        }
        if n == ATTEMPTS {
            return Err(format!("{} (after {ATTEMPTS} attempts)", why.message));
        }
        n += 1;
        tracing::warn!(
            "{what} lost an executor ({}); running it again on {engine} (attempt {n} of {ATTEMPTS})",
            why.message,
        );
    }
}

/// A batch from the engine as the plan planned here declares its rows (the engine may drop
/// field metadata on the way); a batch of another shape is refused.
fn shaped(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    let refused = |why: String| {
        DataFusionError::Execution(format!(
            "the cluster returned rows that are not the query's: {why}"
        ))
    };
    if batch.num_columns() != schema.fields().len() {
        return Err(refused(format!(
            "{} columns, where the query has {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
        .map_err(|e| refused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[tokio::test]
    async fn only_a_lost_executor_is_retried_and_at_most_three_times_in_all() {
        let failure = |lost| ClusterFailure {
            message: "x".into(),
            lost_executor: lost,
        };
        // Each case: the failures before success (lost executor or not), the calls expected,
        // the outcome.
        for (failures, calls, outcome) in [
            (vec![true, true], 3, Ok(7)),
            (
                vec![true, true, true],
                3,
                Err("x (after 3 attempts)".to_string()),
            ),
            (vec![false], 1, Err("x".to_string())),
            (vec![true, false], 2, Err("x".to_string())),
        ] {
            let mut n = 0;
            let got = retry_lost_executor("df://h:1", "the test", || {
                n += 1;
                let next = failures.get(n - 1).map(|&lost| failure(lost));
                async move { next.map_or(Ok(7), Err) }
            })
            .await;
            assert_eq!((n, got), (calls, outcome), "{failures:?}");
        }
    }

    #[test]
    fn rows_of_another_shape_from_the_cluster_are_refused() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("rows", DataType::Int64, true),
        ]));
        let model = Arc::new(StringArray::from(vec!["churn"]));
        let rows = Arc::new(Int64Array::from(vec![Some(3)]));
        let plain = |fields: Vec<Field>, columns| {
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
        };
        // The same columns without the declared nullability/metadata: accepted, re-declared.
        let ok = plain(
            vec![
                Field::new("m", DataType::Utf8, true),
                Field::new("r", DataType::Int64, true),
            ],
            vec![model.clone(), rows.clone()],
        );
        assert_eq!(shaped(&schema, ok).unwrap().schema(), schema);
        for (fields, columns, needle) in [
            (
                vec![Field::new("model", DataType::Utf8, true)],
                vec![model.clone() as _],
                "1 columns, where the query has 2",
            ),
            (
                vec![
                    Field::new("rows", DataType::Int64, true),
                    Field::new("model", DataType::Utf8, true),
                ],
                vec![rows.clone() as _, model.clone() as _],
                "not the query's",
            ),
            (
                vec![
                    Field::new("model", DataType::Utf8, true),
                    Field::new("rows", DataType::Int64, true),
                ],
                vec![
                    Arc::new(StringArray::from(vec![None::<&str>])) as _,
                    rows.clone() as _,
                ],
                "not the query's",
            ),
        ] {
            let e = shaped(&schema, plain(fields, columns))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
