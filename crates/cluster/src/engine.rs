//! [`ClusterEngine`] for a scheduler: plans made here (the transform's dedupe over the staged
//! parts, a query over the warehouse's files, which every executor must reach: by the same path,
//! or a bucket each opens with its own credentials)
//! are submitted, followed to their end, and their rows streamed back. A job that lost an
//! executor is reported as such, so the caller runs it again from the start.

use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use scoreland_runtime::engine::{ClusterEngine, ClusterFailure};

use crate::client::{Cluster, lost_executor};
use crate::job::{self, JobError};

#[async_trait]
impl ClusterEngine for Cluster {
    fn name(&self) -> String {
        self.url().to_string()
    }

    fn session_config(&self, base: SessionConfig) -> SessionConfig {
        base.upgrade_for_ballista()
            .with_target_partitions(self.partitions())
            .with_ballista_physical_extension_codec(self.codec())
    }

    fn carries(&self, plan: &Arc<dyn ExecutionPlan>, config: &SessionConfig) -> bool {
        let codec = config.ballista_physical_extension_codec();
        PhysicalPlanNode::try_from_physical_plan(plan.clone(), codec.as_ref()).is_ok()
    }

    async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &SessionConfig,
    ) -> Result<BoxStream<'static, Result<RecordBatch, ClusterFailure>>, ClusterFailure> {
        let codec = config.ballista_physical_extension_codec();
        let session_id = uuid::Uuid::new_v4().to_string();
        let rows = job::stream(
            &self.url().grpc(),
            &plan,
            codec.as_ref(),
            config,
            &session_id,
        )
        .await
        .map_err(failure)?;
        Ok(rows.map_err(failure).boxed())
    }
}

fn failure(e: JobError) -> ClusterFailure {
    match e {
        JobError::Duplicated(message) => ClusterFailure {
            message,
            lost_executor: true,
        },
        JobError::Failed(message) => ClusterFailure {
            lost_executor: lost_executor(&message),
            message,
        },
    }
}
