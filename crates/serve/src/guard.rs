//! What a client of `serve` may run, decided on the plan and on the settings it names, never
//! on statement text alone.
//!
//! - Every statement that reaches DataFusion, on either protocol, after the compatibility
//!   parser's rewrite, inside `EXPLAIN`/`EXPLAIN ANALYZE` and in the query of a `DECLARE …
//!   CURSOR`, is planned here, and every node of the logical plan (subqueries included) must
//!   be one that only reads ([`first_write`], the allow-list `scoreland sql` checks too).
//! - `SET` names a setting from [`SETTINGS`], what the drivers and BI tools send; DataFusion's
//!   own settings (`datafusion.runtime.*`: the memory pool and spill directory, and the rest)
//!   stay the server's.

use std::time::Duration;

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use scoreland_runtime::reads::first_write;

/// A Postgres error with its SQLSTATE.
pub(crate) fn pg_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

/// `25006` read_only_sql_transaction.
pub(crate) fn read_only(what: &str) -> PgWireError {
    pg_error(
        "25006",
        format!(
            "scoreland serve is read-only: {what} is refused (the tables are written by \
             `scoreland run`)"
        ),
    )
}

/// The plan of `statement`, if it only reads.
pub(crate) async fn plan_read(
    ctx: &SessionContext,
    statement: &Statement,
) -> PgWireResult<LogicalPlan> {
    let plan = ctx
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    check_reads_only(&plan)?;
    Ok(plan)
}

/// Refuses a plan that holds anything but reads, wherever in the plan it is.
pub(crate) fn check_reads_only(plan: &LogicalPlan) -> PgWireResult<()> {
    match first_write(plan).map_err(|e| PgWireError::ApiError(Box::new(e)))? {
        Some(what) => Err(read_only(&what)),
        None => Ok(()),
    }
}

/// The metadata key of the client's `statement_timeout`, in milliseconds: the one
/// datafusion-postgres' `SHOW statement_timeout` reads.
pub(crate) const STATEMENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

/// The settings a client may `SET`, and how each is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    /// Kept by datafusion-postgres per connection (and reported back as a parameter status).
    Session,
    /// `statement_timeout`, within the server's `--query-timeout`.
    StatementTimeout,
    /// `timezone`: the session's time zone.
    TimeZone,
    /// Accepted and without effect: what the setting asks for is what the server does
    /// already (UTF-8, read-only transactions, no JIT…).
    Accepted,
    /// Read-only settings: `on` is accepted, anything else refused.
    ReadOnly,
}

/// Lower-case names, as psql, psycopg, SQLAlchemy, the JDBC driver (Metabase, Tableau, DBeaver),
/// Npgsql (Power BI) and Grafana send them on connect.
const SETTINGS: &[(&str, Setting)] = &[
    ("application_name", Setting::Session),
    ("bytea_output", Setting::Session),
    ("datestyle", Setting::Session),
    ("extra_float_digits", Setting::Session),
    ("intervalstyle", Setting::Session),
    ("search_path", Setting::Session),
    ("statement_timeout", Setting::StatementTimeout),
    ("timezone", Setting::TimeZone),
    ("client_encoding", Setting::Accepted),
    ("client_min_messages", Setting::Accepted),
    ("standard_conforming_strings", Setting::Accepted),
    ("lc_messages", Setting::Accepted),
    ("lc_monetary", Setting::Accepted),
    ("lc_numeric", Setting::Accepted),
    ("lc_time", Setting::Accepted),
    ("jit", Setting::Accepted),
    ("lock_timeout", Setting::Accepted),
    ("idle_in_transaction_session_timeout", Setting::Accepted),
    ("default_transaction_isolation", Setting::Accepted),
    ("transaction_isolation", Setting::Accepted),
    ("default_transaction_read_only", Setting::ReadOnly),
    ("transaction_read_only", Setting::ReadOnly),
];

/// How to answer a `SET`.
#[derive(Debug, PartialEq)]
pub(crate) enum SetAnswer {
    /// datafusion-postgres' own `SET` handling keeps it.
    PassOn,
    /// `SET`, and nothing else to do.
    Done,
    /// Keep this client `statement_timeout` (`None`: the server's own).
    StatementTimeout(Option<Duration>),
}

/// Whether the client may run this `SET`, and how it is answered.
pub(crate) fn set(set: &Set, server_timeout: Duration) -> PgWireResult<SetAnswer> {
    match set {
        Set::SingleAssignment {
            scope,
            hivevar: false,
            variable,
            values,
        } => {
            let name = variable.to_string().to_ascii_lowercase();
            let Some(&(_, setting)) = SETTINGS.iter().find(|(n, _)| *n == name) else {
                return Err(not_settable(&name));
            };
            let plain = scope.is_none() && matches!(values.first(), Some(Expr::Value(_)));
            match setting {
                Setting::Session | Setting::TimeZone if plain => Ok(SetAnswer::PassOn),
                Setting::Session | Setting::TimeZone | Setting::Accepted => Ok(SetAnswer::Done),
                Setting::StatementTimeout => {
                    let value = values.first().map(text).unwrap_or_default();
                    statement_timeout(&value, server_timeout).map(SetAnswer::StatementTimeout)
                }
                Setting::ReadOnly => {
                    let value = values.first().map(text).unwrap_or_default();
                    if matches!(value.to_ascii_lowercase().as_str(), "on" | "true" | "1") {
                        Ok(SetAnswer::Done)
                    } else {
                        Err(read_only(&format!("SET {name} = {value}")))
                    }
                }
            }
        }
        Set::SetTimeZone { local: false, .. } => Ok(SetAnswer::PassOn),
        Set::SetTimeZone { local: true, .. } | Set::SetNames { .. } | Set::SetNamesDefault {} => {
            Ok(SetAnswer::Done)
        }
        // `SET [SESSION CHARACTERISTICS AS] TRANSACTION …` (JDBC's setReadOnly, isolation
        // levels): every transaction here reads one published version already.
        Set::SetTransaction { modes, .. } => {
            let writes = modes.iter().any(|m| {
                matches!(
                    m,
                    datafusion::sql::sqlparser::ast::TransactionMode::AccessMode(
                        datafusion::sql::sqlparser::ast::TransactionAccessMode::ReadWrite
                    )
                )
            });
            if writes {
                Err(read_only("a READ WRITE transaction"))
            } else {
                Ok(SetAnswer::Done)
            }
        }
        other => Err(not_settable(&other.to_string())),
    }
}

/// `42501` insufficient_privilege for DataFusion's own settings, `42704` for the rest.
fn not_settable(name: &str) -> PgWireError {
    if name.starts_with("datafusion.") {
        pg_error(
            "42501",
            format!(
                "permission denied to set parameter \"{name}\": DataFusion's settings are the \
                 server's (scoreland serve --query-memory, --query-timeout)"
            ),
        )
    } else {
        pg_error(
            "42704",
            format!(
                "unrecognized configuration parameter \"{name}\" (scoreland serve accepts: {})",
                SETTINGS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }
}

/// A `SET` value as text, without its quotes.
fn text(value: &Expr) -> String {
    match value {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// A `statement_timeout` value as Postgres reads it (milliseconds without a unit; `us`, `ms`,
/// `s`, `min`, `h`, `d`); `0` or `DEFAULT` is the server's own. Above the server's
/// `--query-timeout` is refused, with the limit named.
fn statement_timeout(value: &str, server: Duration) -> PgWireResult<Option<Duration>> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("default") {
        return Ok(None);
    }
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = (v[..split].trim(), v[split..].trim());
    let invalid = || {
        pg_error(
            "22023",
            format!(
                "invalid value for parameter \"statement_timeout\": \"{value}\" (a number of \
                 milliseconds, or with a unit: ms, s, min, h, d)"
            ),
        )
    };
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let ms_per = match unit {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(invalid()),
    };
    let ms = number * ms_per;
    if !ms.is_finite() || ms < 0.0 {
        return Err(invalid());
    }
    if ms == 0.0 {
        return Ok(None);
    }
    // Compared before it is made a Duration: a huge value would not fit one.
    if ms > server.as_secs_f64() * 1_000.0 {
        return Err(pg_error(
            "22023",
            format!(
                "statement_timeout {value} is above the server's query timeout ({}); set it \
                 lower, or raise scoreland serve --query-timeout",
                humantime::format_duration(server)
            ),
        ));
    }
    Ok(Some(Duration::from_secs_f64(ms / 1_000.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn answer(sql: &str) -> Result<SetAnswer, String> {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        let Statement::Set(s) = statement else {
            panic!("not a SET: {sql}")
        };
        set(&s, Duration::from_secs(300)).map_err(|e| match e {
            PgWireError::UserError(info) => info.code.clone(),
            other => other.to_string(),
        })
    }

    #[test]
    fn set_takes_only_the_settings_clients_send() {
        assert_eq!(answer("SET application_name = 'x'"), Ok(SetAnswer::PassOn));
        assert_eq!(answer("SET extra_float_digits = 3"), Ok(SetAnswer::PassOn));
        assert_eq!(answer("SET TIME ZONE 'UTC'"), Ok(SetAnswer::PassOn));
        assert_eq!(answer("SET client_encoding TO 'UTF8'"), Ok(SetAnswer::Done));
        assert_eq!(
            answer("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            Ok(SetAnswer::Done)
        );
        assert_eq!(
            answer("SET statement_timeout = '30s'"),
            Ok(SetAnswer::StatementTimeout(Some(Duration::from_secs(30))))
        );
        assert_eq!(
            answer("SET statement_timeout = 1500"),
            Ok(SetAnswer::StatementTimeout(Some(Duration::from_millis(
                1500
            ))))
        );
        assert_eq!(
            answer("SET statement_timeout = 0"),
            Ok(SetAnswer::StatementTimeout(None))
        );
        // Refused: DataFusion's settings, unknown ones, writes, and a timeout above the server's.
        for (sql, code) in [
            ("SET datafusion.runtime.memory_limit = '1000G'", "42501"),
            ("SET datafusion.runtime.temp_directory = '/tmp/x'", "42501"),
            ("SET datafusion.execution.target_partitions = 64", "42501"),
            ("SET work_mem = '1GB'", "42704"),
            ("SET transaction_read_only = off", "25006"),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                "25006",
            ),
            ("SET statement_timeout = '1h'", "22023"),
            ("SET statement_timeout = 'soon'", "22023"),
            ("SET statement_timeout = '-1'", "22023"),
            ("SET statement_timeout = '1e400'", "22023"),
            (
                "SET statement_timeout = '99999999999999999999999d'",
                "22023",
            ),
            ("SET ROLE postgres", "42704"),
        ] {
            assert_eq!(answer(sql), Err(code.to_string()), "{sql}");
        }
    }

    #[tokio::test]
    async fn a_plan_that_writes_is_refused_wherever_it_is() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS VALUES (1)").await.unwrap();
        let plan = |sql: &str| {
            let ctx = ctx.clone();
            let sql = sql.to_string();
            async move {
                let statement = Parser::parse_sql(&PostgreSqlDialect {}, &sql)
                    .unwrap()
                    .remove(0);
                plan_read(&ctx, &statement).await.map(|_| ()).map_err(|e| {
                    match e {
                        PgWireError::UserError(info) => info.code.clone(),
                        // Refused by DataFusion's own planner (COPY of sqlparser's kind).
                        other => format!("refused: {other}"),
                    }
                })
            }
        };
        for sql in [
            "SELECT * FROM t",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN ANALYZE SELECT count(*) FROM t",
            "SELECT (SELECT max(column1) FROM t) AS m",
        ] {
            assert_eq!(plan(sql).await, Ok(()), "{sql}");
        }
        for sql in [
            "COPY (SELECT 1 AS a) TO 'x.csv'",
            "EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO 'x.csv'",
            "EXPLAIN COPY t TO 'x.parquet'",
            "SELECT 1 AS identity INTO audiences",
            "EXPLAIN ANALYZE SELECT 1 AS identity INTO audiences",
            "CREATE VIEW v AS SELECT 1",
            "INSERT INTO t VALUES (2)",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (2)",
            "DROP TABLE t",
            "SET datafusion.runtime.memory_limit = '1000G'",
        ] {
            let got = plan(sql).await;
            assert!(
                got == Err("25006".to_string())
                    || got.as_ref().is_err_and(|e| e.starts_with("refused")),
                "{sql}: {got:?}"
            );
        }
    }
}
