//! The warehouse for people: `scoreland serve`, its Delta tables over the Postgres wire protocol
//! for BI tools and notebooks, read-only, each table at the newest night the pipelines
//! published; and `scoreland report` ([`report`]), a self-contained HTML page of charts.
//!
//! datafusion-postgres (on pgwire) speaks the protocol and provides `pg_catalog`; here are the
//! tables that follow new nights ([`live`]), the sessions with their limits and login
//! ([`session`]), and the listener with TLS, a connection limit and graceful shutdown.

mod compat;
mod guard;
mod live;
pub mod report;
mod session;
mod subqueries;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::pgwire::api::ConnectionManager;
use datafusion_postgres::pgwire::tokio::process_socket;
use datafusion_postgres::pgwire::tokio::tokio_rustls::TlsAcceptor;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls;
use scoreland_runtime::engine::{ClusterEngine, ClusterPlanner};
use scoreland_sink::Warehouse;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use live::{LiveTable, REFRESH};
pub use session::Limits;

/// What `serve` listens on and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The one login. Without one, only a loopback address is accepted.
    pub login: Option<Login>,
    /// PEM certificate chain and private key (PKCS#8) for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub limits: Limits,
    /// Connections served at once; one more is refused with a message.
    pub max_connections: usize,
    /// How long running queries get to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a connection has to log in before it is closed.
    pub login_timeout: Duration,
    /// Where queries spill (sorts, joins and aggregations over `query_memory`); the system's
    /// temporary directory without one.
    pub spill_dir: Option<PathBuf>,
    /// The tables served (those that exist; a table created later appears within seconds).
    pub tables: Vec<String>,
    /// Data usage labels whose columns are masked in every table, besides those each table
    /// denies itself.
    pub deny_labels: std::collections::BTreeSet<String>,
    /// The distributed engine queries that read the tables run on (`serve --cluster`); its
    /// executors open the warehouse themselves (its path, or its bucket).
    pub cluster: Option<Arc<dyn ClusterEngine>>,
}

/// A user name and its password; the password never shows in `Debug` output or logs.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "no password is set (SCORELAND_SERVE_PASSWORD), so serve listens on loopback only; \
         {listen} is not a loopback address: set a password, or listen on 127.0.0.1"
    )]
    PasswordRequired { listen: SocketAddr },
    #[error("cannot listen on {listen}")]
    Listen {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: cannot use {path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("setting up the tables: {0}")]
    Setup(String),
}

/// A running server: the address it listens on, and the serving itself.
pub struct Server {
    pub local_addr: SocketAddr,
    listener: TcpListener,
    base: Arc<SessionContext>,
    options: ServeOptions,
    tls: Option<TlsAcceptor>,
    warehouse: Warehouse,
}

impl Server {
    /// Opens the tables and binds the listener.
    pub async fn bind(warehouse: Warehouse, options: ServeOptions) -> Result<Server, ServeError> {
        if options.login.is_none() && !options.listen.ip().is_loopback() {
            return Err(ServeError::PasswordRequired {
                listen: options.listen,
            });
        }
        let tls = match &options.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public");
        // DataFusion compares an aggregate's input schema between the logical and the physical
        // plan, field metadata included, and a masked column's metadata (its labels) differs
        // between the two; the check says nothing of the values, which are NULL either way.
        config
            .options_mut()
            .execution
            .skip_physical_aggregate_schema_check = true;
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(dir) = &options.spill_dir {
            runtime = runtime.with_temp_file_path(dir);
        }
        let runtime = runtime
            .build_arc()
            .map_err(|e| ServeError::Setup(format!("the spill directory: {e}")))?;
        let mut state = SessionStateBuilder::new()
            .with_runtime_env(runtime)
            .with_default_features();
        if let Some(engine) = &options.cluster {
            config = engine.session_config(config);
            state = state.with_query_planner(Arc::new(ClusterPlanner::new(engine.clone())));
        }
        let base = Arc::new(SessionContext::new_with_state(
            state.with_config(config).build(),
        ));
        if options.cluster.is_some() {
            // The plain scans of the tables' files, when a plan runs here.
            warehouse.register_store(&base);
        }
        setup_pg_catalog(&base, "datafusion", EmptyContextProvider)
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        compat::register(&base).await?;
        let deny = Arc::new(options.deny_labels.clone());
        register_missing(
            &warehouse,
            &base,
            &options.tables,
            &deny,
            options.cluster.is_some(),
        )
        .await?;
        let listen_err = |source| ServeError::Listen {
            listen: options.listen,
            source,
        };
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(listen_err)?;
        let local_addr = listener.local_addr().map_err(listen_err)?;
        Ok(Server {
            local_addr,
            listener,
            base,
            options,
            tls,
            warehouse,
        })
    }

    /// Serves until `shutdown` completes; then stops accepting, gives running sessions
    /// `shutdown_grace` to finish, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server {
            local_addr,
            listener,
            base,
            options,
            tls,
            warehouse,
        } = self;
        let max_connections = options.max_connections.max(1);
        let sessions = Arc::new(session::Sessions {
            base: base.clone(),
            limits: options.limits.clone(),
            login: options.login.clone(),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            cancels: Arc::new(ConnectionManager::new()),
        });
        // Tables that did not exist when the server started appear once a run creates them.
        let watcher = {
            let (warehouse, base, tables, plain) = (
                warehouse.clone(),
                base.clone(),
                options.tables.clone(),
                options.cluster.is_some(),
            );
            let deny = Arc::new(options.deny_labels.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REFRESH * 5).await;
                    if let Err(e) = register_missing(&warehouse, &base, &tables, &deny, plain).await
                    {
                        tracing::warn!(error = %e, "looking for new tables");
                    }
                }
            })
        };
        // Connections that have not logged in yet have slots of their own, and login_timeout:
        // sockets that never log in cannot keep sessions out for long.
        let logging_in = Arc::new(Semaphore::new(max_connections));
        let refusals = Arc::new(Semaphore::new(REFUSALS));
        let mut connections = tokio::task::JoinSet::new();
        tracing::info!(
            listen = %local_addr,
            tls = tls.is_some(),
            password = options.login.is_some(),
            "serving the warehouse over the Postgres protocol"
        );
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors, say: wait a little rather than spin.
                            tracing::warn!(error = %e, "accepting a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(pending) = logging_in.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, max = max_connections, "connection refused: too many connections are logging in");
                        // At most REFUSALS refusals are told why; beyond, the socket is closed.
                        if let Ok(permit) = refusals.clone().try_acquire_owned() {
                            tokio::spawn(async move {
                                refuse(socket, max_connections).await;
                                drop(permit);
                            });
                        }
                        continue;
                    };
                    let connection = Arc::new(session::Connection::new(sessions.clone(), pending));
                    let timeouts = (options.login_timeout, options.limits.idle_timeout);
                    connections.spawn(serve_connection(socket, peer, tls.clone(), connection, timeouts));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        watcher.abort();
        drop(listener);
        tracing::info!(
            sessions = connections.len(),
            grace = %humantime::format_duration(options.shutdown_grace),
            "shutting down: no new connections; waiting for running sessions"
        );
        let drained = tokio::time::timeout(options.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                sessions = connections.len(),
                "sessions still open after the grace period are closed"
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// Connections over a limit that are told why at once (each for at most a few seconds); more
/// are closed without a word.
const REFUSALS: usize = 16;

/// One connection, from its first byte to its end: closed if it has not logged in within
/// `login_timeout`, or once it has run nothing for `idle_timeout`.
async fn serve_connection(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    connection: Arc<session::Connection>,
    (login_timeout, idle_timeout): (Duration, Duration),
) {
    let (activity, login) = (connection.activity.clone(), connection.login.clone());
    // Ends (and with it the connection) when the login takes too long, or later when the
    // session has run nothing for too long.
    let watch = async {
        if tokio::time::timeout(login_timeout, login.done.notified())
            .await
            .is_err()
        {
            return "it did not log in in time";
        }
        activity.idle_for(idle_timeout).await;
        "idle for --idle-timeout"
    };
    tokio::select! {
        ended = process_socket(socket, tls, connection) => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        }
        why = watch => tracing::info!(%peer, "connection closed: {why}"),
    }
}

/// Registers the tables of `tables` that exist in the warehouse and are not registered yet;
/// `plain`: scanned as plain Parquet files, as a distributed engine runs them.
async fn register_missing(
    warehouse: &Warehouse,
    ctx: &SessionContext,
    tables: &[String],
    deny: &Arc<std::collections::BTreeSet<String>>,
    plain: bool,
) -> Result<(), ServeError> {
    for name in tables {
        if ctx.table_exist(name.as_str()).unwrap_or(false) {
            continue;
        }
        let live = LiveTable::open(warehouse.clone(), name, deny.clone(), plain)
            .await
            .map_err(|e| ServeError::Setup(format!("table {name}: {e}")))?;
        if let Some(live) = live {
            ctx.register_table(name.as_str(), Arc::new(live))
                .map_err(|e| ServeError::Setup(format!("table {name}: {e}")))?;
            tracing::info!(table = name, "serving table");
        }
    }
    Ok(())
}

/// One connection over the limit: told why in the protocol's own error, then closed.
async fn refuse(mut socket: tokio::net::TcpStream, max: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The startup packet (or an SSL request) comes first; answer "no SSL" to the latter so
    // the client reads the error in the clear.
    let mut buf = [0u8; 1024];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await
    else {
        return;
    };
    if n == 8 && buf[4..8] == [0x04, 0xd2, 0x16, 0x2f] {
        let _ = socket.write_all(b"N").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
    }
    let message = session::too_many_clients_message(max);
    let mut body = Vec::new();
    for (code, value) in [(b'S', "FATAL"), (b'C', "53300"), (b'M', message.as_str())] {
        body.push(code);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = vec![b'E'];
    packet.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    packet.extend_from_slice(&body);
    let _ = socket.write_all(&packet).await;
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| ServeError::Tls {
            path: cert.clone(),
            message: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ServeError::Tls {
        path: key.clone(),
        message: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| ServeError::Tls {
        path: cert.clone(),
        message: e.to_string(),
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
