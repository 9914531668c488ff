//! The platform a source talks to: a real AEP org (its settings) or the bundled simulator,
//! started in process on a loopback port. This is the one construction of the AEP client and
//! of the simulator, for runs and for the CLI's `export`, `segment-job`, `export-job` and
//! `schedule` commands alike, and the one rule for `concurrency`.

use std::path::{Path, PathBuf};

use scoreland_ingest::{
    AepClient, Credentials, DownloadOptions, IngestError, PlatformConfig, PlatformSettings, Secret,
};
use scoreland_platform_sim::{SimConfig, SimHandle};

use crate::error::PipelineError;

/// Where a source's platform is.
pub enum Platform {
    /// A real org, its settings checked.
    Aep(PlatformConfig),
    /// The simulator serving the platform in `data`, started by [`Platform::connect`].
    Simulator { data: PathBuf, config: SimConfig },
}

/// A platform connected: its client, and the simulator when it runs one (kept alive as long
/// as this is).
pub struct Connected {
    pub client: AepClient,
    pub sim: Option<SimHandle>,
}

impl Connected {
    /// The simulated platform's first dataset, the one created first (`None` on a real org).
    pub fn first_dataset(&self) -> Option<String> {
        self.sim.as_ref().and_then(|sim| {
            sim.platform().sandboxes.values().next().and_then(|sb| {
                sb.datasets
                    .values()
                    .min_by_key(|d| (d.object.get("created").and_then(|c| c.as_i64()), &d.id))
                    .map(|d| d.id.clone())
            })
        })
    }
}

impl Platform {
    /// A real org: its settings checked. A setting's error names its field, for the caller to
    /// say where it came from (`source.client_id`, `--client-id`).
    pub fn aep(settings: &PlatformSettings) -> Result<Platform, IngestError> {
        settings.build().map(Platform::Aep)
    }

    /// The simulator on `data`, with `config`.
    pub fn simulator(data: &Path, config: SimConfig) -> Platform {
        Platform::Simulator {
            data: data.to_path_buf(),
            config,
        }
    }

    /// The client (starting the simulator first, when it is one).
    pub async fn connect(self, options: DownloadOptions) -> Result<Connected, PipelineError> {
        let (config, sim) = match self {
            Platform::Aep(config) => (config, None),
            Platform::Simulator { data, config } => {
                let sim =
                    scoreland_platform_sim::serve_dir(&data, config, ([127, 0, 0, 1], 0).into())
                        .await
                        .map_err(PipelineError::Simulator)?;
                (simulator_config(&sim), Some(sim))
            }
        };
        Ok(Connected {
            client: AepClient::new(config, options).map_err(PipelineError::Ingest)?,
            sim,
        })
    }
}

/// How to reach a simulator started in process: its URLs, org, first sandbox and credentials.
fn simulator_config(sim: &SimHandle) -> PlatformConfig {
    let info = sim.platform().info.clone();
    // `http://127.0.0.1:<port>`, made by the simulator from the address it listens on.
    let url = |u: &str| u.parse().expect("the simulator's own URL parses");
    PlatformConfig {
        platform_url: url(sim.base_url()),
        ims_url: url(sim.ims_url()),
        org_id: info.org_id,
        sandbox: sim
            .platform()
            .sandboxes
            .keys()
            .next()
            .cloned()
            .unwrap_or_default(),
        credentials: Credentials::OAuth {
            client_id: info.client_id,
            client_secret: Secret::new(info.client_secret),
            scopes: PlatformConfig::DEFAULT_SCOPES.into(),
        },
    }
}

/// The one rule for a source's `concurrency` (parts or files fetched at once): 1 to
/// [`scoreland_ingest::MAX_CONCURRENCY`], `default` when not set.
pub(crate) fn concurrency(value: Option<usize>, default: usize) -> Result<usize, String> {
    match value {
        None => Ok(default),
        Some(c) => scoreland_ingest::check_concurrency(c)
            .map(|()| c)
            .map_err(|why| format!("source.concurrency = {c}: {why}")),
    }
}

/// A platform setting's error in the words of a pipeline file (`source.client_id: …`).
pub(crate) fn source_error(e: IngestError) -> String {
    match e {
        IngestError::Config { field, message } => format!("source.{field}: {message}"),
        other => format!("source: {other}"),
    }
}
