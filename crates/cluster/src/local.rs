//! A cluster on this machine: the scheduler in this process and each executor a process of its
//! own (`scoreland cluster executor`), so one can be killed and the job goes on without it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoreland_runtime::engine::NodeCodec;
use tokio::process::{Child, Command};

use crate::client::ClusterUrl;
use crate::error::ClusterError;
use crate::processes::{Scheduler, SchedulerOptions, start_scheduler};

/// A scheduler and its executor processes on 127.0.0.1; the executors are killed on drop.
pub struct LocalCluster {
    url: ClusterUrl,
    scheduler: Scheduler,
    executors: Vec<Child>,
    logs: Vec<PathBuf>,
}

/// How long the executors may take to register.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times an executor is started before it registers, at most.
const STARTS: u32 = 3;

/// A free port on 127.0.0.1 (the executor binds it a moment later).
fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError::Process {
            what: "finding a free port for an executor".into(),
            message: e.to_string(),
        })
}

/// Starts executor `i`, a process of `bin` registering with `url`, on two free ports, its
/// shuffle files in `work_dir/executor-<i>`; the process and its log's path.
fn spawn_executor(
    bin: &Path,
    url: &ClusterUrl,
    i: usize,
    vcores: usize,
    work_dir: &Path,
) -> Result<(Child, PathBuf), ClusterError> {
    let what = format!("starting executor {i} ({})", bin.display());
    let fail = |message: String| ClusterError::Process {
        what: what.clone(),
        message,
    };
    let dir = work_dir.join(format!("executor-{i}"));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let log_path = work_dir.join(format!("executor-{i}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
    let err_log = log.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut command = Command::new(bin);
    dies_with_this_process(&mut command);
    let child = command
        .args(["cluster", "executor", "--scheduler"])
        .arg(url.to_string())
        .arg("--port")
        .arg(free_port()?.to_string())
        .arg("--grpc-port")
        .arg(free_port()?.to_string())
        .arg("--vcores")
        .arg(vcores.to_string())
        .arg("--work-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    Ok((child, log_path))
}

impl LocalCluster {
    /// Starts a scheduler on `port` (0: any free one) and `executors` processes of `bin`
    /// (`bin cluster executor …`) with `vcores` task slots each, their shuffle files and logs
    /// under `work_dir`; returns once every executor has registered. `nodes`: scoreland's own
    /// plan nodes, as `bin`'s executors carry them.
    pub async fn start(
        bin: &Path,
        executors: usize,
        vcores: usize,
        port: u16,
        work_dir: &Path,
        nodes: Vec<Arc<dyn NodeCodec>>,
    ) -> Result<Self, ClusterError> {
        let options = SchedulerOptions {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            external_host: "127.0.0.1".into(),
            executor_timeout: Duration::from_secs(10),
            nodes,
        };
        let (addr, scheduler) = start_scheduler(&options).await?;
        let url = ClusterUrl::new("127.0.0.1", addr.port());
        let spawn = |i| spawn_executor(bin, &url, i, vcores, work_dir);
        let mut cluster = Self {
            url: url.clone(),
            scheduler,
            executors: Vec::new(),
            logs: Vec::new(),
        };
        for i in 0..executors {
            let (child, log) = spawn(i)?;
            cluster.executors.push(child);
            cluster.logs.push(log);
        }
        cluster.wait_for(executors, spawn).await?;
        Ok(cluster)
    }

    /// Waits until `n` executors are registered with the scheduler; one that exits before
    /// registering is started again by `spawn`, on ports of its own (another process may have
    /// taken those it was given), [`STARTS`] times in all at most.
    async fn wait_for(
        &mut self,
        n: usize,
        spawn: impl Fn(usize) -> Result<(Child, PathBuf), ClusterError>,
    ) -> Result<(), ClusterError> {
        let started = Instant::now();
        let mut starts = vec![1u32; self.executors.len()];
        loop {
            for (i, starts) in starts.iter_mut().enumerate() {
                let Ok(Some(status)) = self.executors[i].try_wait() else {
                    continue;
                };
                if *starts == STARTS {
                    return Err(ClusterError::Process {
                        what: format!("executor {i}"),
                        message: format!(
                            "exited with {status} before registering, {STARTS} times; its log: {}",
                            self.logs[i].display()
                        ),
                    });
                }
                tracing::warn!(
                    "executor {i} exited with {status} before registering; starting it again"
                );
                (self.executors[i], self.logs[i]) = spawn(i)?;
                *starts += 1;
            }
            if self.registered().await >= n {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(ClusterError::Process {
                    what: "the executors".into(),
                    message: format!(
                        "{} of {n} registered within {START_TIMEOUT:?}; their logs are in {}",
                        self.registered().await,
                        self.logs
                            .first()
                            .and_then(|l| l.parent())
                            .map_or_else(String::new, |d| d.display().to_string())
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Executors the scheduler knows.
    pub async fn registered(&self) -> usize {
        self.scheduler
            .state
            .executor_manager
            .get_executors_state()
            .await
            .map_or(0, |s| s.len())
    }

    pub fn url(&self) -> &ClusterUrl {
        &self.url
    }

    /// The executors' process ids, in start order.
    pub fn executor_pids(&self) -> Vec<u32> {
        self.executors.iter().filter_map(Child::id).collect()
    }

    /// Runs until the process is stopped (SIGINT/SIGTERM) or no executor is left; an executor
    /// that exits is reported and its tasks run on the others. Then stops the executors.
    pub async fn serve_until_stopped(mut self) -> Result<(), ClusterError> {
        let logs = self.logs.clone();
        let executors = &mut self.executors;
        let all_gone = async move {
            let mut gone = vec![false; executors.len()];
            loop {
                for (i, child) in executors.iter_mut().enumerate() {
                    if gone[i] {
                        continue;
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        gone[i] = true;
                        tracing::warn!(
                            "executor {i} exited with {status} (its log: {}); its tasks run on the others",
                            logs[i].display()
                        );
                    }
                }
                if gone.iter().all(|g| *g) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let result = tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = terminated() => Ok(()),
            () = all_gone => Err(ClusterError::Process {
                what: "the local cluster".into(),
                message: "every executor has exited".into(),
            }),
        };
        for child in &mut self.executors {
            let _ = child.kill().await;
        }
        result
    }
}

/// An executor of a local cluster ends with the process that started it, however that ends
/// (SIGKILL included): otherwise it would run on alone, heartbeating to a scheduler that is
/// gone. Linux delivers the signal when the thread that spawned the child exits; these are
/// spawned from the runtime's worker threads, which live as long as the process.
#[cfg(target_os = "linux")]
fn dies_with_this_process(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the local cluster exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn dies_with_this_process(_: &mut Command) {}

#[cfg(unix)]
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending().await
}
