//! One Postgres connection: its login (SCRAM-SHA-256) within a session slot, a DataFusion
//! session of its own with the per-query memory limit, statements that only read
//! ([`crate::guard`]), and each query bounded by the timeout and stopped by a cancel request.

use std::fmt::Debug;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Statement, Value, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser as SqlParser;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, ErrorHandler,
    PgWireConnectionState, PgWireServerHandlers, Type,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, Parser};
use futures::channel::oneshot;
use futures::{Sink, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::guard::{self, SetAnswer};

/// The limits of one session's queries.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory one query may use (operators spill beyond it, or the query fails).
    pub query_memory: usize,
    /// Wall time one query may take, from its start to its last row. A client's
    /// `statement_timeout` may only lower it.
    pub query_timeout: Duration,
    /// A connection that runs no statement for this long is closed.
    pub idle_timeout: Duration,
}

/// What every connection shares: the catalog (the warehouse's tables, `pg_catalog`,
/// `information_schema`), the limits, the login, the slots of logged-in sessions and the
/// registry that cancel requests find running queries in.
pub struct Sessions {
    pub base: Arc<SessionContext>,
    pub limits: Limits,
    /// `None` accepts any user without a password (loopback only).
    pub login: Option<crate::Login>,
    /// One per session that has logged in (or is sending its password): `--max-connections`.
    pub slots: Arc<Semaphore>,
    pub max_connections: usize,
    pub cancels: Arc<ConnectionManager>,
}

/// One connection: its handlers over [`Sessions`], when it last ran a statement, and whether
/// it has logged in.
pub struct Connection {
    sessions: Arc<Sessions>,
    pub activity: Arc<Activity>,
    pub login: Arc<LoginProgress>,
}

impl Connection {
    pub fn new(sessions: Arc<Sessions>, pending: OwnedSemaphorePermit) -> Connection {
        Connection {
            sessions,
            activity: Arc::new(Activity::new()),
            login: Arc::new(LoginProgress {
                pending: std::sync::Mutex::new(Some(pending)),
                done: tokio::sync::Notify::new(),
            }),
        }
    }

    /// A session for the connection's simple or extended query handler (pgwire asks for each
    /// separately; a connection runs one query at a time through either): a DataFusion
    /// session of its own over the shared catalog, with its own memory pool, so a query over
    /// the limit fails alone.
    fn service(&self) -> Arc<Limited> {
        let limits = &self.sessions.limits;
        let base = &self.sessions.base;
        let runtime = RuntimeEnvBuilder::from_runtime_env(base.runtime_env().as_ref())
            .with_memory_pool(scoreland_runtime::pool(
                limits.query_memory,
                scoreland_runtime::Sharing::Fair,
            ))
            .build_arc()
            .expect("a runtime from a working one");
        let state = SessionStateBuilder::new_from_existing(base.state())
            .with_runtime_env(runtime)
            .build();
        let ctx = Arc::new(SessionContext::new_with_state(state));
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnly {
                timeout: limits.query_timeout,
            }),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
            Arc::new(Reads),
        ];
        Arc::new(Limited {
            inner: DfSessionService::new_with_hooks(ctx, hooks),
            timeout: limits.query_timeout,
            activity: self.activity.clone(),
        })
    }
}

/// When a connection last ran a statement, and how many it runs now (a query runs until its
/// last row is sent).
pub struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
    running: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            running: AtomicUsize::new(0),
        }
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.running.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Completes once the connection has run nothing for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let wait = if self.running.load(Ordering::SeqCst) > 0 {
                limit
            } else {
                let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
                let idle = self.start.elapsed().saturating_sub(last);
                if idle >= limit {
                    return;
                }
                limit - idle
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A statement running; when it ends, the connection's idle time starts again.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        self.0.last_ms.fetch_max(now, Ordering::SeqCst);
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's way to login: the slot among those logging in, given back once it has
/// logged in (or with the connection), and the signal that it has.
pub struct LoginProgress {
    pending: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    pub done: tokio::sync::Notify,
}

impl LoginProgress {
    fn logged_in(&self) {
        self.pending.lock().expect("not poisoned").take();
        self.done.notify_one();
    }
}

/// The session slot a connection holds from its login on (in its session extensions, so it
/// goes with the connection).
struct SessionSlot(#[allow(dead_code)] OwnedSemaphorePermit);

fn parameters() -> Arc<DefaultServerParameterProvider> {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = "16.6 (scoreland)".into();
    p.default_transaction_read_only = true;
    p.is_superuser = false;
    Arc::new(p)
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let cancels = self.sessions.cancels.clone();
        let method = match &self.sessions.login {
            Some(login) => {
                let mut scram = ScramAuth::new(Arc::new(login.clone()));
                scram.set_iterations(SCRAM_ITERATIONS);
                Method::Scram(
                    SASLAuthStartupHandler::new(parameters())
                        .with_scram(scram)
                        .with_connection_manager(cancels),
                )
            }
            None => Method::Trust(Trust(cancels)),
        };
        Arc::new(Login {
            method,
            slots: self.sessions.slots.clone(),
            max_connections: self.sessions.max_connections,
            progress: self.login.clone(),
        })
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.sessions.cancels.clone()))
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(SqlStates)
    }
}

/// Gives DataFusion's errors the SQLSTATE Postgres uses for them, where clients act on it:
/// `21000` for a scalar subquery of many rows, `53200` for a query over its memory.
struct SqlStates;

impl ErrorHandler for SqlStates {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        let PgWireError::ApiError(e) = error else {
            return;
        };
        let Some(e) = e.downcast_ref::<DataFusionError>() else {
            return;
        };
        *error = match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => guard::pg_error(
                "53200",
                format!(
                    "out of memory: {m}; the query is over scoreland serve --query-memory: \
                     narrow it, or raise the limit"
                ),
            ),
            // DataFusion has no error kind of its own for this one.
            DataFusionError::Execution(m)
                if m.contains("Scalar subquery returned more than one row") =>
            {
                guard::pg_error(
                    "21000",
                    "more than one row returned by a subquery used as an expression".into(),
                )
            }
            _ => return,
        };
    }
}

const SCRAM_ITERATIONS: usize = 4096;

/// The one login `serve` accepts, from the environment.
#[async_trait]
impl AuthSource for crate::Login {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let salt: [u8; 16] = rand::random();
        // An unknown user gets a password nobody knows: the client sees the same failure as
        // for a wrong password, and learns nothing about which users exist.
        let password = if login.user() == Some(self.user.as_str()) {
            self.password.clone()
        } else {
            hex::encode(rand::random::<[u8; 32]>())
        };
        Ok(Password::new(
            Some(salt.to_vec()),
            gen_salted_password(&password, &salt, SCRAM_ITERATIONS),
        ))
    }
}

/// No authentication, for a server on loopback without a password; its queries can still be
/// cancelled.
struct Trust(Arc<ConnectionManager>);

impl NoopStartupHandler for Trust {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.0.clone())
    }
}

enum Method {
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
    Trust(Trust),
}

/// The startup handler of one connection: its authentication, and a session slot taken before
/// the last step of it (the password, or the start-up message without one), so that a client
/// over `--max-connections` is refused before it is told it logged in.
struct Login {
    method: Method,
    slots: Arc<Semaphore>,
    max_connections: usize,
    progress: Arc<LoginProgress>,
}

/// What a client over a connection limit is told, with `53300` too_many_connections.
pub(crate) fn too_many_clients_message(max: usize) -> String {
    format!("sorry, too many clients already (scoreland serve --max-connections {max})")
}

/// `53300`, fatal: the connection closes after it.
fn too_many_clients(max: usize) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "53300".into(),
        too_many_clients_message(max),
    )))
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: datafusion_postgres::pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use datafusion_postgres::pgwire::messages::PgWireFrontendMessage as M;
        let last_step = matches!(
            (&self.method, &message),
            (Method::Trust(_), M::Startup(_)) | (Method::Scram(_), M::PasswordMessageFamily(_))
        );
        if last_step && client.session_extensions().get::<SessionSlot>().is_none() {
            let slot = self
                .slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| too_many_clients(self.max_connections))?;
            client.session_extensions().insert(SessionSlot(slot));
        }
        match &self.method {
            Method::Scram(h) => h.on_startup(client, message).await?,
            Method::Trust(h) => h.on_startup(client, message).await?,
        }
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            self.progress.logged_in();
        }
        Ok(())
    }
}

/// The statements a read-only warehouse answers itself, first in the hooks: savepoints (drivers
/// open them inside transactions) are accepted and do nothing; `transaction_read_only` is on;
/// `SET` takes only the settings of [`crate::guard`]; `DECLARE … CURSOR` only for a query that
/// reads; every statement kind that would write is refused. Reads, the allowed `SET`s, `SHOW`,
/// transactions and cursors go on to the other hooks, and what reaches DataFusion is planned by
/// [`Reads`], last.
struct ReadOnly {
    /// The server's query timeout, the ceiling of a client's `statement_timeout`.
    timeout: Duration,
}

/// A setting `SHOW` answers here rather than datafusion-postgres' hook (which answers the
/// one-word `SHOW timezone`, Metabase's, as unsupported).
#[derive(Clone, Copy)]
enum Shown {
    /// `transaction_read_only` or `default_transaction_read_only`: always `on`.
    ReadOnly(&'static str),
    /// The session's time zone (`SET TIME ZONE` keeps it), UTC by default.
    TimeZone,
}

impl Shown {
    fn parse(variable: &[datafusion::sql::sqlparser::ast::Ident]) -> Option<Shown> {
        let [name] = variable else { return None };
        match name.value.to_ascii_lowercase().as_str() {
            "transaction_read_only" => Some(Shown::ReadOnly("transaction_read_only")),
            "default_transaction_read_only" => {
                Some(Shown::ReadOnly("default_transaction_read_only"))
            }
            "timezone" => Some(Shown::TimeZone),
            _ => None,
        }
    }

    /// `SELECT '<value>' AS <column>`: the column is Postgres' name for the setting, never the
    /// client's text; the value is a literal in the tree, never parsed.
    fn statement<C: ClientInfo + ?Sized>(self, client: &C) -> PgWireResult<Statement> {
        let (column, value) = match self {
            Shown::ReadOnly(name) => (name.to_string(), "on".to_string()),
            Shown::TimeZone => (
                "\"TimeZone\"".to_string(),
                // Where datafusion-postgres' `SET TIME ZONE` keeps it.
                client
                    .metadata()
                    .get("timezone")
                    .map_or("UTC", String::as_str)
                    .to_string(),
            ),
        };
        let mut statement =
            SqlParser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT '' AS {column}"))
                .map(|mut s| s.remove(0))
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let _ = visit_expressions_mut(&mut statement, |e| {
            if let Expr::Value(v) = e {
                v.value = Value::SingleQuotedString(value.clone());
            }
            ControlFlow::<()>::Continue(())
        });
        Ok(statement)
    }
}

enum Answer {
    /// An answer of its own: a command tag, or one `SHOW` value.
    Tag(&'static str),
    Show(Shown),
    /// The client's `statement_timeout` (`None`: the server's own).
    StatementTimeout(Option<Duration>),
    Refused(PgWireError),
}

impl ReadOnly {
    async fn answer(&self, statement: &Statement, ctx: &SessionContext) -> Option<Answer> {
        match statement {
            Statement::Savepoint { .. } => return Some(Answer::Tag("SAVEPOINT")),
            Statement::ReleaseSavepoint { .. } => return Some(Answer::Tag("RELEASE")),
            Statement::Rollback {
                savepoint: Some(_), ..
            } => return Some(Answer::Tag("ROLLBACK")),
            // DataFusion's PREPARE is refused, so there is nothing to deallocate.
            Statement::Deallocate { .. } => return Some(Answer::Tag("DEALLOCATE")),
            Statement::ShowVariable { variable } if Shown::parse(variable).is_some() => {
                return Shown::parse(variable).map(Answer::Show);
            }
            Statement::Set(set) => {
                return match guard::set(set, self.timeout) {
                    Ok(SetAnswer::PassOn) => None,
                    Ok(SetAnswer::Done) => Some(Answer::Tag("SET")),
                    Ok(SetAnswer::StatementTimeout(t)) => Some(Answer::StatementTimeout(t)),
                    Err(e) => Some(Answer::Refused(e)),
                };
            }
            Statement::Declare { stmts } => {
                for declare in stmts {
                    if let Some(query) = &declare.for_query
                        && let Err(e) =
                            guard::plan_read(ctx, &Statement::Query(query.clone())).await
                    {
                        return Some(Answer::Refused(e));
                    }
                }
                return None;
            }
            _ => {}
        }
        let passes = matches!(
            statement,
            Statement::Query(_)
                | Statement::Explain { .. }
                | Statement::ExplainTable { .. }
                | Statement::ShowTables { .. }
                | Statement::ShowColumns { .. }
                | Statement::ShowVariable { .. }
                | Statement::ShowVariables { .. }
                | Statement::ShowFunctions { .. }
                | Statement::ShowSchemas { .. }
                | Statement::ShowCreate { .. }
                | Statement::Discard { .. }
                | Statement::StartTransaction { .. }
                | Statement::Commit { .. }
                | Statement::Rollback { .. }
                | Statement::Fetch { .. }
                | Statement::Close { .. }
        );
        if passes {
            return None;
        }
        let what = statement.to_string();
        let what = what
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        Some(Answer::Refused(guard::read_only(&what)))
    }
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Some(rewritten) = crate::compat::rewrite(statement) {
            return Some(execute(ctx, &rewritten, client).await);
        }
        let answer = self.answer(statement, ctx).await?;
        Some(respond(answer, ctx, client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if let Some(rewritten) = crate::compat::rewrite(statement) {
            return Some(guard::plan_read(ctx, &rewritten).await);
        }
        Some(match self.answer(statement, ctx).await? {
            Answer::Tag(_) | Answer::StatementTimeout(_) => {
                Ok(LogicalPlan::EmptyRelation(EmptyRelation {
                    produce_one_row: false,
                    schema: Arc::new(DFSchema::empty()),
                }))
            }
            Answer::Refused(e) => Err(e),
            Answer::Show(shown) => match shown.statement(client) {
                Ok(show) => guard::plan_read(ctx, &show).await,
                Err(e) => Err(e),
            },
        })
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let answer = self.answer(statement, ctx).await?;
        Some(respond(answer, ctx, client).await)
    }
}

async fn respond(
    answer: Answer,
    ctx: &SessionContext,
    client: &mut dyn HookClient,
) -> PgWireResult<Response> {
    match answer {
        Answer::Tag(tag) => Ok(Response::Execution(Tag::new(tag))),
        Answer::StatementTimeout(timeout) => {
            match timeout {
                Some(t) => client.metadata_mut().insert(
                    guard::STATEMENT_TIMEOUT_KEY.into(),
                    t.as_millis().to_string(),
                ),
                None => client.metadata_mut().remove(guard::STATEMENT_TIMEOUT_KEY),
            };
            Ok(Response::Execution(Tag::new("SET")))
        }
        Answer::Refused(e) => Err(e),
        Answer::Show(shown) => execute(ctx, &shown.statement(client)?, client).await,
    }
}

/// Plans `statement` for reading ([`guard::plan_read`]) and runs it.
async fn execute(
    ctx: &SessionContext,
    statement: &Statement,
    client: &dyn HookClient,
) -> PgWireResult<Response> {
    let plan = guard::plan_read(ctx, statement).await?;
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let format = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    Ok(Response::Query(
        encode_dataframe(df, &Format::UnifiedText, Some(format)).await?,
    ))
}

/// The last hook: every statement no other hook answered is planned here, for reading only,
/// on both protocols, so nothing reaches DataFusion's own `SessionContext::sql` (which would
/// run DDL, DML, `COPY … TO` and `SET` of any setting).
struct Reads;

#[async_trait]
impl QueryHook for Reads {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Some(execute(ctx, statement, client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        Some(guard::plan_read(ctx, statement).await)
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        // The plan was checked when it was parsed; checked again before it runs (with its
        // parameters bound by datafusion-postgres).
        guard::check_reads_only(plan).err().map(Err)
    }
}

/// The session's query handlers, each query bounded in time and cancellable: planning and every
/// row until the last must be done within the timeout (the server's, or the client's lower
/// `statement_timeout`), or the query ends with Postgres' `57014` (query_canceled) and its
/// execution is dropped; a cancel request (psql's Ctrl-C) ends it the same way.
struct Limited {
    inner: DfSessionService,
    timeout: Duration,
    activity: Arc<Activity>,
}

fn timed_out(timeout: Duration) -> PgWireError {
    guard::pg_error(
        "57014",
        format!(
            "canceling statement due to the query timeout ({}); narrow the query, or raise \
             statement_timeout or scoreland serve --query-timeout",
            humantime::format_duration(timeout)
        ),
    )
}

fn cancelled() -> PgWireError {
    guard::pg_error("57014", "canceling statement due to user request".into())
}

/// One query's bounds: its deadline, the connection's cancel handle, and the connection kept
/// busy until the last row.
#[derive(Clone)]
struct Bounds {
    timeout: Duration,
    deadline: tokio::time::Instant,
    cancel: Option<Arc<ConnectionHandle>>,
    _busy: Arc<Busy>,
}

impl Limited {
    fn bounds<C: ClientInfo + ?Sized>(&self, client: &C) -> Bounds {
        let timeout = client
            .metadata()
            .get(guard::STATEMENT_TIMEOUT_KEY)
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
            .map_or(self.timeout, |t| t.min(self.timeout));
        Bounds {
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
            cancel: client
                .session_extensions()
                .get::<Arc<ConnectionHandle>>()
                .map(|h| (*h).clone()),
            _busy: Arc::new(self.activity.busy()),
        }
    }

    /// Runs `work` (planning) within the deadline; pgwire itself ends it on a cancel request.
    async fn bounded<T>(
        bounds: &Bounds,
        work: impl std::future::Future<Output = PgWireResult<T>>,
    ) -> PgWireResult<T> {
        tokio::time::timeout_at(bounds.deadline, work)
            .await
            .map_err(|_| timed_out(bounds.timeout))?
    }

    /// A response whose rows (made as they are sent, after pgwire's own watch for cancel
    /// requests has ended) stay within the deadline and stop on a cancel request.
    fn bounded_rows(bounds: Bounds, response: Response) -> Response {
        let Response::Query(q) = response else {
            return response;
        };
        let QueryResponse {
            command_tag,
            row_schema,
            data_rows,
            ..
        } = q;
        let watch = CancelWatch {
            handle: bounds.cancel.clone(),
            signal: None,
        };
        let rows = futures::stream::unfold(Some((data_rows, bounds, watch)), |state| async move {
            let (mut rows, bounds, mut watch) = state?;
            let next = tokio::select! {
                _ = watch.cancelled() => return Some((Err(cancelled()), None)),
                next = tokio::time::timeout_at(bounds.deadline, rows.next()) => next,
            };
            match next {
                Ok(Some(row)) => Some((row, Some((rows, bounds, watch)))),
                Ok(None) => None,
                Err(_) => Some((Err(timed_out(bounds.timeout)), None)),
            }
        });
        let mut q = QueryResponse::new(row_schema, rows);
        q.command_tag = command_tag;
        Response::Query(q)
    }
}

/// A query's cancel signal while its rows are made and sent (pgwire watches for cancel
/// requests only while the query is planned): taken from the connection's handle at the
/// first row.
struct CancelWatch {
    handle: Option<Arc<ConnectionHandle>>,
    signal: Option<oneshot::Receiver<()>>,
}

impl CancelWatch {
    /// Completes when the query is cancelled; never otherwise.
    async fn cancelled(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.signal = Some(handle.start_query().await);
        }
        if let Some(signal) = self.signal.as_mut()
            && signal.await.is_ok()
        {
            return;
        }
        // Replaced by the next query's, or none: nothing can cancel this query any more.
        self.signal = None;
        std::future::pending().await
    }
}

#[async_trait]
impl SimpleQueryHandler for Limited {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stamped = crate::subqueries::prepare(query).map_err(not_supported)?;
        let query = stamped.as_deref().unwrap_or(query);
        let bounds = self.bounds(&*client);
        let responses = Self::bounded(
            &bounds,
            SimpleQueryHandler::do_query(&self.inner, client, query),
        )
        .await?;
        // Several statements share one deadline.
        Ok(responses
            .into_iter()
            .map(|r| Self::bounded_rows(bounds.clone(), r))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Limited {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Checked;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::new(Checked(self.inner.query_parser()))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let bounds = self.bounds(&*client);
        let response = Self::bounded(
            &bounds,
            ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows),
        )
        .await?;
        Ok(Self::bounded_rows(bounds, response))
    }
}

/// `0A000` feature_not_supported.
fn not_supported(why: String) -> PgWireError {
    guard::pg_error("0A000", why)
}

/// The statement parser, refusing first what the compatibility parser would silently change
/// (see [`crate::subqueries`]).
struct Checked(Arc<Parser>);

#[async_trait]
impl QueryParser for Checked {
    type Statement = <Parser as QueryParser>::Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let stamped = crate::subqueries::prepare(sql).map_err(not_supported)?;
        self.0
            .parse_sql(client, stamped.as_deref().unwrap_or(sql), types)
            .await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.0.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.0.get_result_schema(stmt, column_format)
    }
}
