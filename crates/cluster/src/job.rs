//! Submitting a physical plan to the scheduler and reading its result partitions.
//!
//! The job is followed until it has finished; only then are its result partitions fetched
//! from the executors holding them, so nothing of a job that fails is handed on. As a guard,
//! a job listing one result partition twice is refused (and run again). After an executor is
//! lost mid-job, Ballista 55's stage rollback can return rows twice under distinct locations;
//! that case is prevented by the scheduler cancelling such jobs (`processes.rs`), which the
//! caller then runs again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::client::BallistaClient;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobStatusParams, KeyValuePair, PartitionLocation,
    SuccessfulJob, execute_query_params::Query, execute_query_result, job_status,
};
use ballista_core::serde::scheduler::PartitionId;
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::{AsExecutionPlan, PhysicalExtensionCodec};
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// Why a job gave no rows.
#[derive(Debug)]
pub(crate) enum JobError {
    /// Submitting, running or fetching failed.
    Failed(String),
    /// The job listed a result partition more than once: its rows cannot be trusted.
    Duplicated(String),
}

/// The largest gRPC message either side sends (plans, batches).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Runs `plan` and streams its result partitions one after the other, once the job has
/// finished and listed each partition once.
pub(crate) async fn stream(
    scheduler_url: &str,
    plan: &Arc<dyn ExecutionPlan>,
    codec: &dyn PhysicalExtensionCodec,
    config: &SessionConfig,
    session_id: &str,
) -> Result<BoxStream<'static, Result<RecordBatch, JobError>>, JobError> {
    let locations = finished(scheduler_url, plan, codec, config, session_id).await?;
    Ok(futures::stream::iter(locations)
        .then(fetch)
        .try_flatten()
        .boxed())
}

/// Submits `plan`, waits for the job to finish, and returns its result partitions' locations.
async fn finished(
    scheduler_url: &str,
    plan: &Arc<dyn ExecutionPlan>,
    codec: &dyn PhysicalExtensionCodec,
    config: &SessionConfig,
    session_id: &str,
) -> Result<Vec<PartitionLocation>, JobError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| JobError::Failed(format!("{what}: {e}"));
    let node = PhysicalPlanNode::try_from_physical_plan(plan.clone(), codec)
        .map_err(|e| failed("serialising the plan", &e))?;
    let mut bytes = Vec::new();
    node.try_encode(&mut bytes)
        .map_err(|e| failed("encoding the plan", &e))?;
    let settings = config
        .options()
        .entries()
        .into_iter()
        .map(|e| KeyValuePair {
            key: e.key,
            value: e.value,
        })
        .collect();
    let mut scheduler = SchedulerGrpcClient::connect(scheduler_url.to_string())
        .await
        .map_err(|e| failed("connecting to the scheduler", &e))?
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut request = tonic::Request::new(ExecuteQueryParams {
        query: Some(Query::PhysicalPlan(bytes)),
        settings,
        session_id: session_id.to_string(),
        operation_id: uuid::Uuid::now_v7().to_string(),
    });
    ballista_core::version::insert_version_header(request.metadata_mut());
    let submitted = scheduler
        .execute_query(request)
        .await
        .map_err(|e| failed("submitting the job", &e))?
        .into_inner();
    let job_id = match submitted.result {
        Some(execute_query_result::Result::Success(s)) => s.job_id,
        other => {
            return Err(JobError::Failed(format!(
                "the scheduler refused the job: {other:?}"
            )));
        }
    };
    // A caller that stops waiting (a run stopped by SIGTERM) cancels the job.
    let mut pending = Pending {
        scheduler: Some(scheduler.clone()),
        job_id: job_id.clone(),
    };
    let locations = loop {
        let status = scheduler
            .get_job_status(GetJobStatusParams {
                job_id: job_id.clone(),
            })
            .await
            .map_err(|e| failed("following the job", &e))?
            .into_inner()
            .status
            .and_then(|s| s.status);
        match status {
            Some(job_status::Status::Successful(SuccessfulJob {
                partition_location, ..
            })) => break partition_location,
            Some(job_status::Status::Failed(f)) => {
                pending.scheduler = None;
                return Err(JobError::Failed(format!(
                    "job {job_id} failed: {}",
                    f.error
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    pending.scheduler = None;
    check_once_each(&job_id, &locations)?;
    Ok(locations)
}

/// A job submitted and not yet finished: cancelled on drop, best effort (a task on the runtime,
/// which a process that exits at once may not run; the scheduler then finishes the job and
/// drops its output).
struct Pending {
    scheduler: Option<SchedulerGrpcClient<tonic::transport::Channel>>,
    job_id: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let (Some(mut scheduler), Ok(runtime)) =
            (self.scheduler.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let job_id = std::mem::take(&mut self.job_id);
        runtime.spawn(async move {
            match scheduler
                .cancel_job(CancelJobParams {
                    job_id: job_id.clone(),
                })
                .await
            {
                Ok(_) => tracing::info!("job {job_id} cancelled on the cluster"),
                Err(e) => tracing::warn!("cannot cancel job {job_id} on the cluster: {e}"),
            }
        });
    }
}

/// Each result partition (output partition, map task, file) listed once.
fn check_once_each(job_id: &str, locations: &[PartitionLocation]) -> Result<(), JobError> {
    let mut seen = HashSet::new();
    for l in locations {
        let key = (
            l.partition_id
                .as_ref()
                .map(|p| (p.stage_id, p.partition_id)),
            l.map_partition_id,
            l.file_id,
        );
        if !seen.insert(key) {
            return Err(JobError::Duplicated(format!(
                "job {job_id} listed result partition {key:?} more than once (an executor was \
                 lost while it ran)"
            )));
        }
    }
    Ok(())
}

/// One result partition, streamed from the executor holding it.
async fn fetch(
    location: PartitionLocation,
) -> Result<BoxStream<'static, Result<RecordBatch, JobError>>, JobError> {
    let layout = location.layout();
    let (Some(executor), Some(partition)) = (location.executor_meta, location.partition_id) else {
        return Err(JobError::Failed(
            "the scheduler listed a result partition without its executor".into(),
        ));
    };
    let port = u16::try_from(executor.port).unwrap_or(0);
    let failed = |e: &dyn std::fmt::Display| {
        JobError::Failed(format!(
            "reading a result partition from executor {}:{}: {e}",
            executor.host, executor.port
        ))
    };
    let mut client =
        BallistaClient::try_new(&executor.host, port, MAX_MESSAGE, false, None, 3, 100, 0, 0)
            .await
            .map_err(|e| failed(&e))?;
    let partition: PartitionId = partition.into();
    let stream = client
        .fetch_partition(&executor.id, &partition, location.file_id, layout, true)
        .await
        .map_err(|e| failed(&e))?;
    let host = format!("{}:{}", executor.host, executor.port);
    Ok(stream
        .map_err(move |e| {
            JobError::Failed(format!(
                "reading a result partition from executor {host}: {e}"
            ))
        })
        .boxed())
}
