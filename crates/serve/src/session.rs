//! One Postgres session: password authentication (SCRAM-SHA-256), a DataFusion session of its
//! own with the per-query memory limit, read-only statements, and the per-query timeout.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
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
use datafusion_postgres::pgwire::api::portal::Portal;

use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::pgwire::api::Type;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, StreamExt};

/// The limits of one session's queries.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory one query may use (operators spill beyond it, or the query fails).
    pub query_memory: usize,
    /// Wall time one query may take, from its start to its last row.
    pub query_timeout: Duration,
}

/// Hands each connection its handlers: one DataFusion session per connection over the shared
/// catalog (the warehouse's tables, `pg_catalog`, `information_schema`), with its own memory
/// pool, so a query over the limit fails alone.
pub struct Sessions {
    pub base: Arc<SessionContext>,
    pub limits: Limits,
    /// `None` accepts any user without a password (loopback only).
    pub login: Option<crate::Login>,
}

impl Sessions {
    /// A session for one connection's simple or extended query handler (pgwire asks for each
    /// separately; a connection runs one query at a time through either).
    fn service(&self) -> Arc<Limited> {
        let runtime = RuntimeEnvBuilder::from_runtime_env(self.base.runtime_env().as_ref())
            .with_memory_pool(Arc::new(FairSpillPool::new(self.limits.query_memory)))
            .build_arc()
            .expect("a runtime from a working one");
        let state = SessionStateBuilder::new_from_existing(self.base.state())
            .with_runtime_env(runtime)
            .build();
        let ctx = Arc::new(SessionContext::new_with_state(state));
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnly),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        Arc::new(Limited {
            inner: DfSessionService::new_with_hooks(ctx, hooks),
            timeout: self.limits.query_timeout,
        })
    }
}

fn parameters() -> Arc<DefaultServerParameterProvider> {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = "16.6 (scoreland)".into();
    p.default_transaction_read_only = true;
    p.is_superuser = false;
    Arc::new(p)
}

impl PgWireServerHandlers for Sessions {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(match &self.login {
            Some(login) => {
                let mut scram = ScramAuth::new(Arc::new(login.clone()));
                scram.set_iterations(SCRAM_ITERATIONS);
                Login::Scram(SASLAuthStartupHandler::new(parameters()).with_scram(scram))
            }
            None => Login::Trust(Trust),
        })
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

/// No authentication, for a server on loopback without a password.
struct Trust;

impl NoopStartupHandler for Trust {}

/// The startup handler of one connection.
enum Login {
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
    Trust(Trust),
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
        match self {
            Login::Scram(h) => h.on_startup(client, message).await,
            Login::Trust(h) => h.on_startup(client, message).await,
        }
    }
}

/// The statements a read-only warehouse answers itself, first in the hooks: savepoints (drivers
/// open them inside transactions) are accepted and do nothing; `transaction_read_only` is on;
/// every statement that would write is refused. Reads, `SET`/`SHOW`, transactions and cursors
/// go on to the other hooks and to DataFusion.
struct ReadOnly;

enum Answer {
    /// An answer of its own: a command tag, or one `SHOW` value.
    Tag(&'static str),
    Show(String),
    Refused(PgWireError),
}

fn answer(statement: &Statement) -> Option<Answer> {
    match statement {
        Statement::Savepoint { .. } => return Some(Answer::Tag("SAVEPOINT")),
        Statement::ReleaseSavepoint { .. } => return Some(Answer::Tag("RELEASE")),
        Statement::Rollback {
            savepoint: Some(_), ..
        } => return Some(Answer::Tag("ROLLBACK")),
        Statement::ShowVariable { variable }
            if variable.len() == 1
                && matches!(
                    variable[0].value.to_ascii_lowercase().as_str(),
                    "transaction_read_only" | "default_transaction_read_only"
                ) =>
        {
            return Some(Answer::Show(variable[0].value.to_ascii_lowercase()));
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
            | Statement::Set(_)
            | Statement::Discard { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Deallocate { .. }
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
    Some(Answer::Refused(PgWireError::UserError(Box::new(
        ErrorInfo::new(
            "ERROR".into(),
            // read_only_sql_transaction
            "25006".into(),
            format!(
                "scoreland serve is read-only: {what} is refused (the tables are written by \
                 `scoreland run`)"
            ),
        ),
    ))))
}

/// `SELECT 'on' AS <name>`: the one-row answer to a `SHOW` of a read-only setting.
fn show_sql(name: &str) -> String {
    format!("SELECT 'on' AS {name}")
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Some(rewritten) = crate::subqueries::null_catalog_subqueries(statement) {
            return Some(run(ctx, &rewritten).await);
        }
        Some(respond(answer(statement)?, ctx).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let plan = |sql: String| async move {
            ctx.state()
                .create_logical_plan(&sql)
                .await
                .map_err(|e| PgWireError::ApiError(Box::new(e)))
        };
        if let Some(rewritten) = crate::subqueries::null_catalog_subqueries(statement) {
            return Some(plan(rewritten.to_string()).await);
        }
        Some(match answer(statement)? {
            Answer::Tag(_) => Ok(LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(DFSchema::empty()),
            })),
            Answer::Refused(e) => Err(e),
            Answer::Show(name) => plan(show_sql(&name)).await,
        })
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Some(respond(answer(statement)?, ctx).await)
    }
}

async fn run(ctx: &SessionContext, statement: &Statement) -> PgWireResult<Response> {
    let df = ctx
        .sql(&statement.to_string())
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    Ok(Response::Query(
        encode_dataframe(df, &Format::UnifiedText, None).await?,
    ))
}

async fn respond(answer: Answer, ctx: &SessionContext) -> PgWireResult<Response> {
    match answer {
        Answer::Tag(tag) => Ok(Response::Execution(Tag::new(tag))),
        Answer::Refused(e) => Err(e),
        Answer::Show(name) => {
            let df = ctx
                .sql(&show_sql(&name))
                .await
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
            Ok(Response::Query(
                encode_dataframe(df, &Format::UnifiedText, None).await?,
            ))
        }
    }
}

/// The session's query handlers, each query bounded in time: planning and every row until the
/// last must be done within the timeout, or the query ends with Postgres' `57014`
/// (query_canceled) and its execution is dropped.
struct Limited {
    inner: DfSessionService,
    timeout: Duration,
}

fn timed_out(timeout: Duration) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "57014".into(),
        format!(
            "canceling statement due to the server's query timeout ({}); narrow the query or \
             raise --query-timeout",
            humantime::format_duration(timeout)
        ),
    )))
}

impl Limited {
    fn bounded(&self, deadline: tokio::time::Instant, response: Response) -> Response {
        let Response::Query(q) = response else {
            return response;
        };
        let timeout = self.timeout;
        let QueryResponse {
            command_tag,
            row_schema,
            data_rows,
            ..
        } = q;
        let rows = futures::stream::unfold(Some(data_rows), move |rows| async move {
            let mut rows = rows?;
            match tokio::time::timeout_at(deadline, rows.next()).await {
                Ok(Some(row)) => Some((row, Some(rows))),
                Ok(None) => None,
                Err(_) => Some((Err(timed_out(timeout)), None)),
            }
        });
        let mut q = QueryResponse::new(row_schema, rows);
        q.command_tag = command_tag;
        Response::Query(q)
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
        if let Some(why) = crate::subqueries::unsupported(query) {
            return Err(not_supported(why));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let responses = tokio::time::timeout_at(
            deadline,
            SimpleQueryHandler::do_query(&self.inner, client, query),
        )
        .await
        .map_err(|_| timed_out(self.timeout))??;
        Ok(responses
            .into_iter()
            .map(|r| self.bounded(deadline, r))
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
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = tokio::time::timeout_at(
            deadline,
            ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows),
        )
        .await
        .map_err(|_| timed_out(self.timeout))??;
        Ok(self.bounded(deadline, response))
    }
}

fn not_supported(why: String) -> PgWireError {
    // feature_not_supported
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "0A000".into(),
        why,
    )))
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
        if let Some(why) = crate::subqueries::unsupported(sql) {
            return Err(not_supported(why));
        }
        self.0.parse_sql(client, sql, types).await
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
