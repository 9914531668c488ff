//! The scheduler and the executor, as `scoreland cluster scheduler` and `scoreland cluster
//! executor` run them (the same binary everywhere, so every process speaks one DataFusion).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::RuntimeProducer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use ballista_scheduler::scheduler_server::{SchedulerServer, SessionBuilder};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use scoreland_runtime::engine::NodeCodec;

use crate::client::ClusterUrl;
use crate::codec::Codec;
use crate::error::ClusterError;
use crate::stores::ClusterStores;

/// A scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Where it listens (port 0: any free one).
    pub bind: SocketAddr,
    /// The host name executors and clients reach it by.
    pub external_host: String,
    /// An executor silent for this long is dead: its tasks run again elsewhere.
    pub executor_timeout: Duration,
    /// scoreland's own plan nodes it decodes (the same as the executors').
    pub nodes: Vec<Arc<dyn NodeCodec>>,
}

/// An executor's settings.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler: ClusterUrl,
    /// The address it listens on, and the host name others fetch its shuffle output by.
    pub bind_host: String,
    pub external_host: Option<String>,
    /// The Arrow Flight port (shuffle output and results) and the gRPC port.
    pub port: u16,
    pub grpc_port: u16,
    /// Where shuffle files go (a temporary directory when not given).
    pub work_dir: Option<PathBuf>,
    /// Tasks at once.
    pub vcores: usize,
    /// How often it tells the scheduler it lives (shorter than the scheduler's timeout).
    pub heartbeat: Duration,
    /// scoreland's own plan nodes it runs (the same as the scheduler's).
    pub nodes: Vec<Arc<dyn NodeCodec>>,
}

pub(crate) type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

fn failed(what: &str) -> impl Fn(String) -> ClusterError + '_ {
    move |message| ClusterError::Process {
        what: what.to_string(),
        message,
    }
}

/// Binds the scheduler's port and starts it on this runtime; returns its address and handle.
pub(crate) async fn start_scheduler(
    options: &SchedulerOptions,
) -> Result<(SocketAddr, Scheduler), ClusterError> {
    let what = format!("the scheduler on {}", options.bind);
    let fail = failed(&what);
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let timeout = options.executor_timeout.as_secs().max(2);
    let config = SchedulerConfig {
        external_host: options.external_host.clone(),
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        // Executors ask for work: a dead one holds no task beyond its timeout.
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: (timeout / 4).max(1),
        no_executors_grace_period_seconds: timeout,
        override_session_builder: Some(session_builder()),
        override_physical_codec: Some(Arc::new(Codec::new(options.nodes.clone()))),
        ..SchedulerConfig::default()
    };
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let scheduler: Scheduler = create_scheduler(cluster, config)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let serving = scheduler.clone();
    tokio::spawn(async move {
        if let Err(e) = start_grpc_service_with_listener(listener, serving).await {
            tracing::error!("the scheduler stopped: {e}");
        }
    });
    tokio::spawn(cancel_jobs_on_executor_loss(scheduler.clone()));
    Ok((addr, scheduler))
}

/// The scheduler's sessions: Ballista's, with the cluster's stores ([`ClusterStores`]), which
/// decoding a plan over a bucket's files needs.
fn session_builder() -> SessionBuilder {
    let stores = Arc::new(ClusterStores::new());
    Arc::new(move |config| {
        let state = ballista_core::utils::default_session_builder(config)?;
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(stores.clone())
            .build_arc()?;
        Ok(SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(runtime)
            .build())
    })
}

/// When an executor is lost, every job running then is cancelled, and its client runs the
/// query again. Ballista 55 would instead roll back the stages whose output the executor held
/// and rerun them, and a job so recovered was seen to return rows twice (a self-join, an
/// executor killed mid-job: every group twice). A query is read-only, so running it again
/// whole costs time, never rows.
async fn cancel_jobs_on_executor_loss(scheduler: Scheduler) {
    // The live executors: those with a heartbeat (a lost one keeps its metadata).
    let executors = |state: Vec<(ballista_core::serde::scheduler::ExecutorMetadata, _, _)>| {
        state
            .into_iter()
            .filter(|(_, heartbeat, _)| Option::is_some(heartbeat))
            .map(|(m, _, _)| m.id)
            .collect::<std::collections::HashSet<String>>()
    };
    let mut known = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(state) = scheduler.state.executor_manager.get_executors_state().await else {
            continue;
        };
        let now = executors(state);
        let lost: Vec<&String> = known.difference(&now).collect();
        if !lost.is_empty() {
            // The jobs in the scheduler's active cache: running or queued.
            let jobs: Vec<_> = scheduler
                .state
                .task_manager
                .get_running_job_cache()
                .keys()
                .cloned()
                .collect();
            for job_id in jobs {
                tracing::warn!(
                    "executor {lost:?} lost: cancelling job {job_id} (its client runs it again)"
                );
                let _ = scheduler.cancel_job(job_id).await;
            }
        }
        known = now;
    }
}

/// Runs a scheduler until the process is stopped.
pub async fn run_scheduler(options: SchedulerOptions) -> Result<(), ClusterError> {
    let (addr, _scheduler) = start_scheduler(&options).await?;
    tracing::info!(
        "scheduler listening on {addr}; executors join with `scoreland cluster executor --scheduler df://{}:{}`",
        options.external_host,
        addr.port()
    );
    std::future::pending::<()>().await;
    Ok(())
}

/// Each task's runtime: spill files under `work_dir` (when given), and the executor's stores,
/// built once and shared by every task ([`ClusterStores`]).
fn runtime_producer(work_dir: Option<PathBuf>) -> RuntimeProducer {
    let stores = Arc::new(ClusterStores::new());
    Arc::new(move |_| {
        let mut runtime = RuntimeEnvBuilder::new().with_object_store_registry(stores.clone());
        if let Some(dir) = &work_dir {
            runtime = runtime.with_temp_file_path(dir);
        }
        Ok(Arc::new(runtime.build()?))
    })
}

/// Runs an executor until the process is stopped or its scheduler tells it to stop.
pub async fn run_executor(options: ExecutorOptions) -> Result<(), ClusterError> {
    let what = format!("the executor of {}", options.scheduler);
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.host().to_string(),
        scheduler_port: options.scheduler.port(),
        scheduler_connect_timeout_seconds: 30,
        vcores: options.vcores.max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: options
            .work_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
        executor_heartbeat_interval_seconds: options.heartbeat.as_secs().max(1),
        override_runtime_producer: Some(runtime_producer(options.work_dir.clone())),
        override_physical_codec: Some(Arc::new(Codec::new(options.nodes.clone()))),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| failed(&what)(e.to_string()))
}
