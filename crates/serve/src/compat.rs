//! What Postgres clients send on connect and for discovery that DataFusion would not plan as
//! Postgres does, made to plan with Postgres' answers: the functions drivers call that
//! `pg_catalog` lacks ([`register`]), `pg_index` and `pg_constraint` with their key columns as
//! arrays, and the rewrites of [`rewrite`] (a statement's meaning is kept; only the forms
//! DataFusion lacks change). Every one is exercised by the start-up and reflection queries of
//! the clients in docs/serve.md (`tests.rs`, tests/clients/).
//!
//! scoreland's tables have no defaults, sequences, identity columns, collations, comments,
//! indexes or constraints; where a client asks for one of those, NULL or no row is the true
//! answer.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int16Builder, Int32Array, Int32Builder, ListArray, ListBuilder,
    RecordBatch, StringArray, StructArray, new_null_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int32Type, Schema, SchemaRef};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::DataType as SqlType;
use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, CastKind, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, Ident, ObjectName, ObjectNamePart, Query, SelectItem,
    SetExpr, Statement, TableAliasColumnDef, TableFactor, Value, ValueWithSpan, VisitMut,
    VisitorMut, visit_expressions, visit_expressions_mut, visit_relations_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::ServeError;

/// Registers the functions and the array-typed catalog tables on `ctx`, after
/// `setup_pg_catalog`.
pub(crate) async fn register(ctx: &SessionContext) -> Result<(), ServeError> {
    let setup = |e: DataFusionError| ServeError::Setup(e.to_string());
    ctx.register_udf(version_udf());
    ctx.register_udf(to_regtype_udf(ctx).await.map_err(setup)?);
    ctx.register_udf(TextFunction::udf("json_build_object", json_build_object));
    ctx.register_udf(ScalarUDF::new_from_impl(ExpandArray::new()));
    ctx.register_udf(like_escape_udf());
    ctx.register_udf(TextFunction::udf("format", format_text));
    ctx.register_udf(current_setting_udf());
    // Every type and collation is visible: the server has one schema search path.
    for name in ["pg_type_is_visible", "pg_collation_is_visible"] {
        ctx.register_udf(Constant::udf(name, ScalarValue::Boolean(Some(true))));
    }
    // No sequences, comments or indexes: NULL.
    for name in [
        "pg_get_serial_sequence",
        "obj_description",
        "col_description",
        "shobj_description",
        "pg_get_indexdef",
    ] {
        ctx.register_udf(Constant::udf(name, ScalarValue::Utf8(None)));
    }
    typed_catalog(ctx).await.map_err(setup)
}

/// `statement` in forms DataFusion plans, or `None` when it needs no change:
/// - in a statement that reads only the catalog, every correlated subquery becomes NULL
///   (drivers reflect columns with subqueries into `pg_attrdef`, `pg_collation` and
///   `pg_sequence`, which DataFusion cannot decorrelate; scoreland's tables have nothing
///   there), keeping its bound parameters in the statement so that the others keep their
///   numbers and types;
/// - `LIKE … ESCAPE 'c'` with another escape than the backslash becomes `LIKE like_escape(…,
///   'c')` (SQLAlchemy lists schemas with `ESCAPE '/'`);
/// - `generate_subscripts(a, 1)` becomes `unnest(generate_series(1, array_length(a, 1)))`;
/// - `information_schema._pg_expandarray(a)` (JDBC's key columns; the parser has stripped the
///   schema by the time it reaches us) becomes `unnest(_pg_expandarray_list(a))`, the same
///   rows of `(x, n)`;
/// - `'pg_catalog.name'::regproc`, which the parser made a lookup of that whole text in
///   `pg_proc`, looks up `name` (the first of its overloads);
/// - `(composite).field` becomes `get_field(composite, 'field')`;
/// - `information_schema.columns`, `views`, `table_constraints`, `key_column_usage` and
///   `referential_constraints` are read from [`CATALOG_VIEWS`], with Postgres' columns;
/// - a function in `FROM` under a bare alias reads as in Postgres ([`from_function`]); in a
///   select list, `generate_series` is rows, and repeated unnamed items get distinct names;
/// - `'x'::name` is text, and the unquoted keyword `user` is `session_user()`;
/// - Grafana's search-path test, which the parser has made `IN ('')`, is `= current_schema()`;
/// - in a statement that reads only the catalog, a boolean catalog column compared with a
///   string (psqlODBC's `i.indisprimary = 't'`) is compared with the boolean the string spells.
pub(crate) fn rewrite(statement: &Statement) -> Option<Statement> {
    let mut rewritten = statement.clone();
    let mut changed = false;
    if !crate::subqueries::reads_data_tables(statement) {
        let _ = visit_expressions_mut(&mut rewritten, |e| {
            match e {
                Expr::Subquery(q) if crate::subqueries::looks_correlated(q).1 => {
                    *e = null_keeping_parameters(e);
                    changed = true;
                }
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq | BinaryOperator::NotEq,
                    right,
                } => {
                    if is_boolean_column(left)
                        && let Some(b) = spelled_boolean(right)
                    {
                        **right = Expr::value(Value::Boolean(b));
                        changed = true;
                    } else if is_boolean_column(right)
                        && let Some(b) = spelled_boolean(left)
                    {
                        **left = Expr::value(Value::Boolean(b));
                        changed = true;
                    }
                }
                // datafusion-pg-catalog replaces Grafana's search-path subquery with `''`
                // (`quote_ident(table_schema) IN ('')`, so no table matched); the search path
                // here is one schema.
                Expr::InList {
                    expr,
                    list,
                    negated: false,
                } if is_grafana_search_path(expr, list) => {
                    *e = Expr::BinaryOp {
                        left: expr.clone(),
                        op: BinaryOperator::Eq,
                        right: Box::new(call("current_schema", vec![])),
                    };
                    changed = true;
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
    }
    let _ = visit_expressions_mut(&mut rewritten, |e| {
        changed |= rewrite_expr(e);
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_relations_mut(&mut rewritten, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| {
                p.as_ident()
                    .map_or_else(|| p.to_string(), |i| i.value.clone())
            })
            .collect();
        if let [.., schema, table] = parts.as_slice()
            && parts.len() <= 3
            && schema.eq_ignore_ascii_case("information_schema")
            && INFORMATION_SCHEMA_VIEWS.contains(&table.to_ascii_lowercase().as_str())
        {
            *name = ObjectName::from(vec![
                Ident::new("pg_catalog"),
                Ident::new(format!("information_schema_{}", table.to_ascii_lowercase())),
            ]);
            changed = true;
        }
        ControlFlow::<()>::Continue(())
    });
    let mut projections = Projections { changed: false };
    let _ = rewritten.visit(&mut projections);
    changed |= projections.changed;
    changed.then_some(rewritten)
}

/// A function in `FROM` under a bare alias, as Postgres reads it (Grafana's
/// `FROM generate_series(…) AS i, string_to_array(…) s`): the alias also names its column, and
/// a function returning one value is one row. Says whether it changed.
fn from_function(factor: &mut TableFactor) -> bool {
    let TableFactor::Table {
        name,
        args: Some(args),
        alias: Some(alias),
        ..
    } = factor
    else {
        return false;
    };
    if !alias.columns.is_empty() {
        return false;
    }
    let function = name.to_string().to_ascii_lowercase();
    match function.as_str() {
        "generate_series" | "pg_catalog.generate_series" => {
            alias.columns = vec![TableAliasColumnDef::from_name(alias.name.value.clone())];
            true
        }
        "string_to_array" | "current_schemas" | "parse_ident" => {
            let args: Vec<String> = args.args.iter().map(|a| a.to_string()).collect();
            let sql = format!("SELECT {name}({}) AS {}", args.join(", "), alias.name);
            let Ok(Statement::Query(subquery)) =
                Parser::parse_sql(&PostgreSqlDialect {}, &sql).map(|mut s| s.remove(0))
            else {
                return false;
            };
            *factor = TableFactor::Derived {
                lateral: false,
                subquery,
                alias: Some(alias.clone()),
                sample: None,
            };
            true
        }
        _ => false,
    }
}

/// The select lists' rewrite (see [`rewrite`]).
struct Projections {
    changed: bool,
}

impl VisitorMut for Projections {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        for twj in select.from.iter_mut() {
            for factor in std::iter::once(&mut twj.relation)
                .chain(twj.joins.iter_mut().map(|j| &mut j.relation))
            {
                self.changed |= from_function(factor);
            }
        }
        let mut names = HashSet::new();
        for (position, item) in select.projection.iter_mut().enumerate() {
            let expr = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => continue,
            };
            // `generate_series(a, b)` in a select list is a set of rows in Postgres and a list
            // in DataFusion: unnested, it is the rows (psqlODBC's foreign keys).
            if let Expr::Function(f) = expr
                && f.name.to_string().eq_ignore_ascii_case("generate_series")
            {
                *expr = call("unnest", vec![expr.clone()]);
                self.changed = true;
            }
            // Two unnamed items of one text (`SELECT NULL, nspname, NULL`): Postgres names both
            // `?column?`; DataFusion wants distinct names, so the later ones get one.
            if let SelectItem::UnnamedExpr(e) = item
                && !names.insert(e.to_string())
            {
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: Ident::with_quote('"', format!("?column?{}", position + 1)),
                };
                self.changed = true;
            }
        }
        ControlFlow::Continue(())
    }
}

/// `quote_ident(table_schema) IN ('')`: what Grafana's search-path test becomes in the parser.
fn is_grafana_search_path(expr: &Expr, list: &[Expr]) -> bool {
    let [
        Expr::Value(ValueWithSpan {
            value: Value::SingleQuotedString(empty),
            ..
        }),
    ] = list
    else {
        return false;
    };
    let Expr::Function(f) = expr else {
        return false;
    };
    empty.is_empty()
        && f.name.to_string().eq_ignore_ascii_case("quote_ident")
        && matches!(plain_args(f).as_slice(),
            [Expr::Identifier(c)] if c.value.eq_ignore_ascii_case("table_schema"))
}

/// The names of `pg_catalog`'s boolean columns (`indisprimary`, `attisdropped`, …), read from
/// the catalog when the first server starts (it is the same for every server).
static BOOLEAN_COLUMNS: OnceLock<HashSet<String>> = OnceLock::new();

fn is_boolean_column(e: &Expr) -> bool {
    let name = match e {
        Expr::Identifier(i) => i,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => i,
            None => return false,
        },
        _ => return false,
    };
    BOOLEAN_COLUMNS
        .get()
        .is_some_and(|names| names.contains(&name.value.to_ascii_lowercase()))
}

/// The boolean a string literal spells as Postgres reads it (`'t'`, `'false'`, `'on'`, …).
fn spelled_boolean(e: &Expr) -> Option<bool> {
    let Expr::Value(ValueWithSpan {
        value: Value::SingleQuotedString(s),
        ..
    }) = e
    else {
        return None;
    };
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// One expression's rewrite (see [`rewrite`]); says whether it changed.
fn rewrite_expr(e: &mut Expr) -> bool {
    match e {
        Expr::Like {
            pattern,
            escape_char: escape @ Some(_),
            ..
        }
        | Expr::ILike {
            pattern,
            escape_char: escape @ Some(_),
            ..
        } => {
            let Some(Value::SingleQuotedString(c)) = escape.as_ref().map(|v| v.value.clone())
            else {
                return false;
            };
            if c == "\\" {
                return false;
            }
            let p = std::mem::replace(pattern.as_mut(), Expr::value(Value::Null));
            **pattern = call(
                "like_escape",
                vec![p, Expr::value(Value::SingleQuotedString(c))],
            );
            *escape = None;
            true
        }
        // `(composite).field`, which DataFusion plans only on a column: `get_field`.
        Expr::CompoundFieldAccess { root, access_chain }
            if matches!(root.as_ref(), Expr::Nested(_))
                && access_chain
                    .iter()
                    .all(|a| matches!(a, AccessExpr::Dot(Expr::Identifier(_)))) =>
        {
            let Expr::Nested(inner) = root.as_ref() else {
                return false;
            };
            // `(_pg_expandarray(a)).x` and `.n` (already `unnest(_pg_expandarray(a))`):
            // the elements and their positions, unnested alike.
            if let (Some(array), [AccessExpr::Dot(Expr::Identifier(field))]) =
                (expanded_array(inner), access_chain.as_slice())
            {
                let elements = match field.value.to_ascii_lowercase().as_str() {
                    "x" => array,
                    "n" => call(
                        "generate_series",
                        vec![
                            Expr::value(Value::Number("1".into(), false)),
                            call("array_length", vec![array]),
                        ],
                    ),
                    _ => return false,
                };
                *e = call("unnest", vec![elements]);
                return true;
            }
            let mut out = inner.as_ref().clone();
            for access in access_chain.iter() {
                if let AccessExpr::Dot(Expr::Identifier(field)) = access {
                    let name = Value::SingleQuotedString(field.value.clone());
                    out = call("get_field", vec![out, Expr::value(name)]);
                }
            }
            *e = out;
            true
        }
        // The keyword `user` (parsed as a call without parentheses) is the session's user, as
        // `current_user` is to the parser (Grafana's search path).
        Expr::Function(f)
            if matches!(f.args, FunctionArguments::None)
                && f.name.to_string().eq_ignore_ascii_case("user") =>
        {
            f.name = ObjectName::from(vec![Ident::new("session_user")]);
            true
        }
        // `'x'::name`: Postgres' identifier type is text here.
        Expr::Cast { data_type, .. } if is_name_type(data_type) => {
            *data_type = SqlType::Text;
            true
        }
        Expr::Subquery(q) => match regproc_name(q) {
            Some(name) => {
                let lookup = format!(
                    "SELECT min(oid) FROM pg_catalog.pg_proc WHERE proname = '{}'",
                    name.replace('\'', "''")
                );
                match Parser::parse_sql(&PostgreSqlDialect {}, &lookup).map(|mut s| s.remove(0)) {
                    Ok(Statement::Query(query)) => {
                        *q = query;
                        true
                    }
                    _ => false,
                }
            }
            None => false,
        },
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            // No comments: NULL, whatever the arguments would evaluate to (Metabase passes
            // `format('%I.%I', …)::regclass`, which DataFusion cannot cast).
            if matches!(
                name.as_str(),
                "col_description" | "obj_description" | "shobj_description"
            ) {
                *e = Expr::Cast {
                    kind: CastKind::Cast,
                    expr: Box::new(null_keeping_parameters(e)),
                    data_type: SqlType::Text,
                    array: false,
                    format: None,
                };
                return true;
            }
            let args = plain_args(f);
            match (name.as_str(), args.as_slice()) {
                ("generate_subscripts" | "pg_catalog.generate_subscripts", [array, dim]) => {
                    let length = call("array_length", vec![(*array).clone(), (*dim).clone()]);
                    let series = call(
                        "generate_series",
                        vec![Expr::value(Value::Number("1".into(), false)), length],
                    );
                    *e = call("unnest", vec![series]);
                    true
                }
                ("information_schema._pg_expandarray" | "_pg_expandarray", [array]) => {
                    *e = call("unnest", vec![call(EXPAND_ARRAY, vec![(*array).clone()])]);
                    true
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Postgres' `name` (identifiers), `pg_catalog.name` too.
fn is_name_type(t: &SqlType) -> bool {
    matches!(t, SqlType::Custom(n, modifiers)
        if modifiers.is_empty()
            && matches!(n.to_string().to_ascii_lowercase().as_str(), "name" | "pg_catalog.name"))
}

/// `name` of the lookup datafusion-pg-catalog makes of `'pg_catalog.name'::regproc`,
/// `(SELECT oid FROM pg_catalog.pg_proc WHERE proname = 'pg_catalog.name')`.
fn regproc_name(q: &Query) -> Option<String> {
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    let Some(Expr::BinaryOp { right, .. }) = &select.selection else {
        return None;
    };
    let Expr::Value(ValueWithSpan {
        value: Value::SingleQuotedString(name),
        ..
    }) = right.as_ref()
    else {
        return None;
    };
    let lookup = format!("SELECT oid FROM pg_catalog.pg_proc WHERE proname = '{name}'");
    let bare = name.strip_prefix("pg_catalog.")?;
    (q.to_string() == lookup).then(|| bare.to_string())
}

/// `a` of `unnest(_pg_expandarray_list(a))`, or of `_pg_expandarray(a)`.
fn expanded_array(e: &Expr) -> Option<Expr> {
    let Expr::Function(unnest) = e else {
        return None;
    };
    if matches!(
        unnest.name.to_string().as_str(),
        "information_schema._pg_expandarray" | "_pg_expandarray"
    ) {
        return match plain_args(unnest).as_slice() {
            [array] => Some((*array).clone()),
            _ => None,
        };
    }
    let outer = plain_args(unnest);
    let [Expr::Function(expand)] = outer.as_slice() else {
        return None;
    };
    let inner = plain_args(expand);
    let [array] = inner.as_slice() else {
        return None;
    };
    (unnest.name.to_string() == "unnest" && expand.name.to_string() == EXPAND_ARRAY)
        .then(|| (*array).clone())
}

/// The positional arguments of a plain function call (no `DISTINCT`, `ORDER BY` or names).
fn plain_args(f: &Function) -> Vec<&Expr> {
    let FunctionArguments::List(list) = &f.args else {
        return Vec::new();
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
        return Vec::new();
    }
    list.args
        .iter()
        .map_while(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect()
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// NULL in place of `e`, with `e`'s bound parameters still in the statement: `CASE WHEN p1
/// IS NULL AND … THEN NULL END`, each parameter with the cast it had (so its type is the
/// one the client was told).
fn null_keeping_parameters(e: &Expr) -> Expr {
    let mut kept: Vec<Expr> = Vec::new();
    let _ = visit_expressions(e, |x| {
        let typed = match x {
            Expr::Cast { expr, .. } if is_placeholder(expr) => Some(x.clone()),
            x if is_placeholder(x) => Some(x.clone()),
            _ => None,
        };
        if let Some(t) = typed
            && !kept.iter().any(|k| k == &t || is_cast_of(k, &t))
        {
            kept.push(t);
        }
        ControlFlow::<()>::Continue(())
    });
    let null = Expr::value(Value::Null);
    let Some(condition) = kept
        .into_iter()
        .map(|p| Expr::IsNull(Box::new(p)))
        .reduce(|a, b| Expr::BinaryOp {
            left: Box::new(a),
            op: BinaryOperator::And,
            right: Box::new(b),
        })
    else {
        return null;
    };
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![datafusion::sql::sqlparser::ast::CaseWhen {
            condition,
            result: null,
        }],
        else_result: None,
    }
}

fn is_placeholder(e: &Expr) -> bool {
    matches!(e, Expr::Value(v) if matches!(v.value, Value::Placeholder(_)))
}

/// Whether `cast` is a cast of the placeholder `bare` (the bare one is then not kept twice).
fn is_cast_of(cast: &Expr, bare: &Expr) -> bool {
    matches!(cast, Expr::Cast { expr, .. } if expr.as_ref() == bare)
}

/// `version()` as drivers parse it (SQLAlchemy and Npgsql read the Postgres version from it).
fn version_udf() -> ScalarUDF {
    let text = format!(
        "PostgreSQL 16.6 (scoreland {}, DataFusion {}; read-only)",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(text.clone()))))),
    )
}

/// The settings `current_setting(name)` answers (drivers read them on connect and when they
/// reflect), with the values the server runs with.
const SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_read_only", "on"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("standard_conforming_strings", "on"),
    ("timezone", "UTC"),
    ("transaction_read_only", "on"),
];

/// `current_setting(name [, missing_ok])`: one of [`SETTINGS`]; another name is Postgres'
/// error, or NULL with `missing_ok`.
fn current_setting_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(TextFunction {
        name: "current_setting",
        signature: Signature::one_of(
            vec![
                datafusion::logical_expr::TypeSignature::Exact(vec![DataType::Utf8]),
                datafusion::logical_expr::TypeSignature::Exact(vec![
                    DataType::Utf8,
                    DataType::Boolean,
                ]),
            ],
            Volatility::Stable,
        ),
        body: current_setting,
    })
}

fn current_setting(args: &[ArrayRef], n: usize) -> Result<StringArray> {
    let answer = |name: &str, missing_ok: bool| -> Result<Option<String>> {
        let lower = name.to_ascii_lowercase();
        match SETTINGS.iter().find(|(n, _)| *n == lower) {
            Some((_, v)) => Ok(Some(v.to_string())),
            None if missing_ok => Ok(None),
            None => Err(DataFusionError::Execution(format!(
                "unrecognized configuration parameter \"{name}\""
            ))),
        }
    };
    let names = datafusion::arrow::compute::cast(&args[0], &DataType::Utf8)?;
    let names = names.as_string::<i32>();
    let missing_ok = match args.get(1) {
        Some(a) => {
            let a = datafusion::arrow::compute::cast(a, &DataType::Boolean)?;
            Some(a.as_boolean().clone())
        }
        None => None,
    };
    (0..n)
        .map(|i| {
            if names.is_null(i) {
                return Ok(None);
            }
            let ok = missing_ok
                .as_ref()
                .is_some_and(|m| m.is_valid(i) && m.value(i));
            answer(names.value(i), ok)
        })
        .collect()
}

/// A function of any arguments with one answer.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl Constant {
    fn udf(name: &'static str, value: ScalarValue) -> ScalarUDF {
        ScalarUDF::new_from_impl(Constant {
            name,
            value,
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// `like_escape(pattern, escape)`: the pattern with `escape` as its escape character
/// rewritten to use the backslash, DataFusion's only one (as Postgres' own `like_escape`).
fn like_escape_udf() -> ScalarUDF {
    create_udf(
        "like_escape",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let n = args
                .iter()
                .find_map(|a| match a {
                    ColumnarValue::Array(a) => Some(a.len()),
                    ColumnarValue::Scalar(_) => None,
                })
                .unwrap_or(1);
            let patterns = args[0].to_array(n)?;
            let escapes = args[1].to_array(n)?;
            let (patterns, escapes) = (patterns.as_string::<i32>(), escapes.as_string::<i32>());
            let out: StringArray = (0..n)
                .map(|i| {
                    if patterns.is_null(i) || escapes.is_null(i) {
                        return Ok(None);
                    }
                    let mut escape = escapes.value(i).chars();
                    match (escape.next(), escape.next()) {
                        (None, _) => Ok(Some(patterns.value(i).replace('\\', "\\\\"))),
                        (Some(c), None) => Ok(Some(to_backslash(patterns.value(i), c))),
                        _ => Err(DataFusionError::Execution(
                            "invalid escape string: it must be empty or one character".into(),
                        )),
                    }
                })
                .collect::<Result<_>>()?;
            Ok(
                if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                    ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
                } else {
                    ColumnarValue::Array(Arc::new(out))
                },
            )
        }),
    )
}

/// `format(fmt, args…)`: Postgres' `%s` (text, NULL as empty), `%I` (an identifier, quoted
/// when it needs to be), `%L` (a literal, NULL as `NULL`) and `%%` (Metabase builds type and
/// table names with it).
fn format_text(args: &[ArrayRef], n: usize) -> Result<StringArray> {
    let texts = args
        .iter()
        .map(|a| Ok(datafusion::arrow::compute::cast(a, &DataType::Utf8)?))
        .collect::<Result<Vec<ArrayRef>>>()?;
    let texts: Vec<&StringArray> = texts.iter().map(|a| a.as_string::<i32>()).collect();
    let Some((format, values)) = texts.split_first() else {
        return Err(DataFusionError::Plan(
            "format() needs a format string".into(),
        ));
    };
    (0..n)
        .map(|i| {
            if format.is_null(i) {
                return Ok(None);
            }
            let value = |k: usize| {
                values
                    .get(k)
                    .and_then(|v| (!v.is_null(i)).then(|| v.value(i)))
            };
            let mut out = String::new();
            let (mut chars, mut next) = (format.value(i).chars(), 0);
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                let spec = chars.next();
                if spec == Some('%') {
                    out.push('%');
                    continue;
                }
                if next >= values.len() {
                    return Err(DataFusionError::Execution(
                        "format(): too few arguments".into(),
                    ));
                }
                let v = value(next);
                next += 1;
                match (spec, v) {
                    (Some('s'), v) => out.push_str(v.unwrap_or("")),
                    (Some('I'), Some(v)) => out.push_str(&quote_ident(v)),
                    (Some('I'), None) => {
                        return Err(DataFusionError::Execution(
                            "format(): a NULL cannot be an identifier (%I)".into(),
                        ));
                    }
                    (Some('L'), Some(v)) => {
                        out.push('\'');
                        out.push_str(&v.replace('\'', "''"));
                        out.push('\'');
                    }
                    (Some('L'), None) => out.push_str("NULL"),
                    (spec, _) => {
                        return Err(DataFusionError::Execution(format!(
                            "format(): unsupported conversion %{}",
                            spec.map(String::from).unwrap_or_default()
                        )));
                    }
                }
            }
            Ok(Some(out))
        })
        .collect::<Result<_>>()
}

/// `name` as Postgres' `quote_ident` writes it: bare when lower-case letters, digits and `_`
/// (not starting with a digit), otherwise in double quotes with inner ones doubled.
fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A LIKE pattern escaped with `escape`, escaped with the backslash instead.
fn to_backslash(pattern: &str, escape: char) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            match chars.next() {
                Some(next @ ('%' | '_')) => {
                    out.push('\\');
                    out.push(next);
                }
                Some('\\') => out.push_str("\\\\"),
                Some(next) => out.push(next),
                None => {}
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// `json_build_object(key, value, …)`: a JSON object as text (SQLAlchemy's column reflection
/// asks for one per identity column; scoreland's tables have none).
fn json_build_object(columns: &[ArrayRef], n: usize) -> Result<StringArray> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default();
    let formatters: Vec<_> = columns
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(n);
    for row in 0..n {
        let mut object = serde_json::Map::new();
        for (k, v) in (0..columns.len() / 2).map(|p| (2 * p, 2 * p + 1)) {
            let key = formatters[k].value(row).to_string();
            let value = if columns[v].is_null(row) {
                serde_json::Value::Null
            } else {
                let text = formatters[v].value(row).to_string();
                match columns[v].data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => text.into(),
                    _ => serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
                }
            };
            object.insert(key, value);
        }
        out.push(Some(serde_json::Value::Object(object).to_string()));
    }
    Ok(StringArray::from(out))
}

/// A function whose answer is text, computed by `body` over the arguments as arrays of `n`
/// rows (`format`, `json_build_object`, `current_setting`).
struct TextFunction {
    name: &'static str,
    signature: Signature,
    body: fn(&[ArrayRef], usize) -> Result<StringArray>,
}

impl TextFunction {
    fn udf(name: &'static str, body: fn(&[ArrayRef], usize) -> Result<StringArray>) -> ScalarUDF {
        ScalarUDF::new_from_impl(TextFunction {
            name,
            signature: Signature::variadic_any(Volatility::Immutable),
            body,
        })
    }
}

impl std::fmt::Debug for TextFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextFunction")
            .field("name", &self.name)
            .finish()
    }
}

// One function per name: the name is the identity.
impl PartialEq for TextFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TextFunction {}

impl std::hash::Hash for TextFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(ColumnarValue::Array(Arc::new((self.body)(&arrays, n)?)))
    }
}

/// The name [`ExpandArray`] is registered under: not `_pg_expandarray`, so that [`rewrite`]
/// never matches its own output.
const EXPAND_ARRAY: &str = "_pg_expandarray_list";

/// `_pg_expandarray_list(a)`: the elements of an integer array with their positions, as a list
/// of `(x, n)` (information_schema's `_pg_expandarray` returns them as rows; [`rewrite`] makes
/// it `unnest(_pg_expandarray_list(a))`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

impl ExpandArray {
    fn new() -> Self {
        ExpandArray {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn fields() -> Fields {
        Fields::from(vec![
            Field::new("x", DataType::Int32, true),
            Field::new("n", DataType::Int32, false),
        ])
    }
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        EXPAND_ARRAY
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::new_list(DataType::Struct(Self::fields()), true))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let lists =
            datafusion::arrow::compute::cast(&input, &DataType::new_list(DataType::Int32, true))?;
        let lists = lists.as_list::<i32>();
        let values = lists.values().as_primitive::<Int32Type>().clone();
        // Positions line up with the values buffer, which may hold values no list refers to.
        let mut positions = vec![0; values.len()];
        for i in 0..lists.len() {
            let (start, end) = (lists.value_offsets()[i], lists.value_offsets()[i + 1]);
            for (n, at) in (start as usize..end as usize).enumerate() {
                positions[at] = n as i32 + 1;
            }
        }
        let rows = StructArray::try_new(
            Self::fields(),
            vec![Arc::new(values), Arc::new(Int32Array::from(positions))],
            None,
        )?;
        let out = ListArray::try_new(
            Arc::new(Field::new_list_field(
                DataType::Struct(Self::fields()),
                true,
            )),
            OffsetBuffer::new(lists.offsets().inner().clone()),
            Arc::new(rows),
            lists.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `to_regtype(name)`: the oid of a type by name, or NULL (psycopg and SQLAlchemy look types
/// up with it on connect), from the static `pg_catalog.pg_type`.
async fn to_regtype_udf(ctx: &SessionContext) -> Result<ScalarUDF> {
    let batches = ctx
        .sql("SELECT typname, oid FROM pg_catalog.pg_type")
        .await?
        .collect()
        .await?;
    let mut types = HashMap::new();
    for b in &batches {
        let names = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let oids = datafusion::arrow::compute::cast(b.column(1), &DataType::Int32)?;
        let (names, oids) = (names.as_string::<i32>(), oids.as_primitive::<Int32Type>());
        for i in 0..b.num_rows() {
            types.insert(names.value(i).to_string(), oids.value(i));
        }
    }
    let lookup = move |name: Option<&str>| {
        let name = name?.trim().trim_matches('"');
        types
            .get(name.strip_prefix("pg_catalog.").unwrap_or(name))
            .copied()
    };
    Ok(create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            Ok(match &args[0] {
                ColumnarValue::Scalar(v) => {
                    let name = match v {
                        ScalarValue::Utf8(s)
                        | ScalarValue::LargeUtf8(s)
                        | ScalarValue::Utf8View(s) => s.as_deref(),
                        _ => None,
                    };
                    ColumnarValue::Scalar(ScalarValue::Int32(lookup(name)))
                }
                ColumnarValue::Array(a) => {
                    let a = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
                    let names = a.as_string::<i32>();
                    let oids: Int32Array = (0..names.len())
                        .map(|i| lookup(names.is_valid(i).then(|| names.value(i))))
                        .collect();
                    ColumnarValue::Array(Arc::new(oids))
                }
            })
        }),
    ))
}

/// The array columns of `pg_index` and `pg_constraint` (key columns, operator classes), which
/// the static catalog holds as text, as integer arrays: SQLAlchemy unnests them.
const ARRAY_COLUMNS: &[(&str, &[&str])] = &[
    (
        "pg_index",
        &["indkey", "indcollation", "indclass", "indoption"],
    ),
    (
        "pg_constraint",
        &[
            "conkey",
            "confkey",
            "conpfeqop",
            "conppeqop",
            "conffeqop",
            "confdelsetcols",
            "conexclop",
        ],
    ),
];

/// Puts `pg_catalog` behind [`TypedCatalog`], with the tables of [`ARRAY_COLUMNS`] converted.
async fn typed_catalog(ctx: &SessionContext) -> Result<()> {
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| DataFusionError::Plan("no catalog named datafusion".into()))?;
    let inner = catalog
        .schema("pg_catalog")
        .ok_or_else(|| DataFusionError::Plan("no pg_catalog".into()))?;
    let mut booleans = HashSet::new();
    for name in inner.table_names() {
        if let Some(table) = inner.table(&name).await? {
            booleans.extend(
                table
                    .schema()
                    .fields()
                    .iter()
                    .filter(|f| f.data_type() == &DataType::Boolean)
                    .map(|f| f.name().to_ascii_lowercase()),
            );
        }
    }
    let _ = BOOLEAN_COLUMNS.set(booleans);
    let mut tables = HashMap::new();
    for (table, columns) in ARRAY_COLUMNS {
        let provider = inner
            .table(table)
            .await?
            .ok_or_else(|| DataFusionError::Plan(format!("no pg_catalog.{table}")))?;
        let batches = ctx.read_table(provider)?.collect().await?;
        let converted = batches
            .iter()
            .map(|b| with_arrays(b, columns))
            .collect::<Result<Vec<_>>>()?;
        let schema = match converted.first() {
            Some(b) => b.schema(),
            None => continue,
        };
        let table_provider: Arc<dyn TableProvider> =
            Arc::new(MemTable::try_new(schema, vec![converted])?);
        tables.insert(table.to_string(), table_provider);
    }
    // `pg_class` is made per query (it lists the warehouse's tables as they come): a view
    // over it, with the columns it lacks as NULLs.
    let pg_class = inner
        .table("pg_class")
        .await?
        .ok_or_else(|| DataFusionError::Plan("no pg_catalog.pg_class".into()))?;
    let text_array = DataType::new_list(DataType::Utf8, true);
    let mut columns: Vec<datafusion::prelude::Expr> = pg_class
        .schema()
        .fields()
        .iter()
        .map(|f| datafusion::prelude::col(datafusion::common::Column::from_name(f.name())))
        .collect();
    for missing in ["relacl", "reloptions"] {
        if pg_class.schema().field_with_name(missing).is_err() {
            columns.push(
                datafusion::prelude::cast(
                    datafusion::prelude::lit(ScalarValue::Null),
                    text_array.clone(),
                )
                .alias(missing),
            );
        }
    }
    let plan = ctx
        .read_table(pg_class)?
        .select(columns)?
        .into_unoptimized_plan();
    let view: Arc<dyn TableProvider> =
        Arc::new(datafusion::catalog::view::ViewTable::new(plan, None));
    tables.insert("pg_class".to_string(), view);
    // `pg_type`'s function columns as the oids of `pg_proc` (Npgsql joins `pg_proc` on them).
    let mut procs = HashMap::new();
    for batch in ctx
        .sql("SELECT proname, min(oid) AS oid FROM pg_catalog.pg_proc GROUP BY proname")
        .await?
        .collect()
        .await?
    {
        let batch = cast_columns(&batch, &[DataType::Utf8, DataType::Int32])?;
        let (names, oids) = (
            batch[0].as_string::<i32>(),
            batch[1].as_primitive::<Int32Type>(),
        );
        for i in 0..batch[0].len() {
            procs.insert(names.value(i).to_string(), oids.value(i));
        }
    }
    let pg_type = inner
        .table("pg_type")
        .await?
        .ok_or_else(|| DataFusionError::Plan("no pg_catalog.pg_type".into()))?;
    let batches = ctx
        .read_table(pg_type)?
        .collect()
        .await?
        .iter()
        .map(|b| with_proc_oids(b, &procs))
        .collect::<Result<Vec<_>>>()?;
    if let Some(first) = batches.first() {
        tables.insert(
            "pg_type".to_string(),
            Arc::new(MemTable::try_new(first.schema(), vec![batches])?),
        );
    }
    let settings = inner
        .table("pg_settings")
        .await?
        .ok_or_else(|| DataFusionError::Plan("no pg_catalog.pg_settings".into()))?;
    tables.insert(
        "pg_settings".to_string(),
        settings_table(settings.schema())?,
    );
    for (name, sql) in CATALOG_VIEWS {
        let plan = ctx.sql(sql).await?.into_unoptimized_plan();
        let view: Arc<dyn TableProvider> = Arc::new(datafusion::catalog::view::ViewTable::new(
            plan,
            Some(sql.to_string()),
        ));
        tables.insert(name.to_string(), view);
    }
    catalog.register_schema("pg_catalog", Arc::new(TypedCatalog { inner, tables }))?;
    Ok(())
}

/// What Postgres has and the static catalog lacks, as views: `pg_user` (no rows: `pg_roles` has
/// none), and the parts of `information_schema` clients read that DataFusion's lacks, under
/// names [`rewrite`] sends `information_schema.<name>` to. `columns` gains Postgres' type names
/// (`data_type`, `udt_name`) from `pg_attribute`; the others have no rows, as scoreland's tables
/// have no constraints.
const CATALOG_VIEWS: &[(&str, &str)] = &[
    (
        "pg_user",
        "SELECT rolname AS usename, oid AS usesysid, rolcreatedb AS usecreatedb, \
         rolsuper AS usesuper, rolreplication AS userepl, rolbypassrls AS usebypassrls, \
         '********' AS passwd, rolvaliduntil AS valuntil, rolconfig AS useconfig \
         FROM pg_catalog.pg_roles WHERE rolcanlogin",
    ),
    (
        "information_schema_columns",
        "SELECT c.table_catalog, c.table_schema, c.table_name, c.column_name, \
         c.ordinal_position, c.column_default, c.is_nullable, \
         coalesce(format_type(a.atttypid, a.atttypmod), c.data_type) AS data_type, \
         c.character_maximum_length, c.character_octet_length, c.numeric_precision, \
         c.numeric_precision_radix, c.numeric_scale, c.datetime_precision, c.interval_type, \
         CAST(NULL AS TEXT) AS interval_precision, \
         CAST(NULL AS TEXT) AS character_set_catalog, CAST(NULL AS TEXT) AS character_set_schema, \
         CAST(NULL AS TEXT) AS character_set_name, CAST(NULL AS TEXT) AS collation_catalog, \
         CAST(NULL AS TEXT) AS collation_schema, CAST(NULL AS TEXT) AS collation_name, \
         CAST(NULL AS TEXT) AS domain_catalog, CAST(NULL AS TEXT) AS domain_schema, \
         CAST(NULL AS TEXT) AS domain_name, \
         CASE WHEN t.typname IS NULL THEN NULL ELSE c.table_catalog END AS udt_catalog, \
         CASE WHEN t.typname IS NULL THEN NULL ELSE 'pg_catalog' END AS udt_schema, \
         t.typname AS udt_name, 'NO' AS is_self_referencing, 'NO' AS is_identity, \
         CAST(NULL AS TEXT) AS identity_generation, 'NEVER' AS is_generated, \
         CAST(NULL AS TEXT) AS generation_expression, 'NO' AS is_updatable \
         FROM information_schema.columns c \
         LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = c.table_schema \
         LEFT JOIN pg_catalog.pg_class cl ON cl.relnamespace = n.oid AND cl.relname = c.table_name \
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = cl.oid AND a.attname = c.column_name \
         LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid",
    ),
    (
        "information_schema_views",
        "SELECT table_catalog, table_schema, table_name, definition AS view_definition, \
         'NONE' AS check_option, 'NO' AS is_updatable, 'NO' AS is_insertable_into, \
         'NO' AS is_trigger_updatable, 'NO' AS is_trigger_deletable, \
         'NO' AS is_trigger_insertable_into FROM information_schema.views",
    ),
    (
        "information_schema_table_constraints",
        "SELECT CAST(NULL AS TEXT) AS constraint_catalog, CAST(NULL AS TEXT) AS constraint_schema, \
         CAST(NULL AS TEXT) AS constraint_name, CAST(NULL AS TEXT) AS table_catalog, \
         CAST(NULL AS TEXT) AS table_schema, CAST(NULL AS TEXT) AS table_name, \
         CAST(NULL AS TEXT) AS constraint_type, CAST(NULL AS TEXT) AS is_deferrable, \
         CAST(NULL AS TEXT) AS initially_deferred, CAST(NULL AS TEXT) AS enforced, \
         CAST(NULL AS TEXT) AS nulls_distinct WHERE false",
    ),
    (
        "information_schema_key_column_usage",
        "SELECT CAST(NULL AS TEXT) AS constraint_catalog, CAST(NULL AS TEXT) AS constraint_schema, \
         CAST(NULL AS TEXT) AS constraint_name, CAST(NULL AS TEXT) AS table_catalog, \
         CAST(NULL AS TEXT) AS table_schema, CAST(NULL AS TEXT) AS table_name, \
         CAST(NULL AS TEXT) AS column_name, CAST(NULL AS INT) AS ordinal_position, \
         CAST(NULL AS INT) AS position_in_unique_constraint WHERE false",
    ),
    (
        "information_schema_referential_constraints",
        "SELECT CAST(NULL AS TEXT) AS constraint_catalog, CAST(NULL AS TEXT) AS constraint_schema, \
         CAST(NULL AS TEXT) AS constraint_name, CAST(NULL AS TEXT) AS unique_constraint_catalog, \
         CAST(NULL AS TEXT) AS unique_constraint_schema, \
         CAST(NULL AS TEXT) AS unique_constraint_name, CAST(NULL AS TEXT) AS match_option, \
         CAST(NULL AS TEXT) AS update_rule, CAST(NULL AS TEXT) AS delete_rule WHERE false",
    ),
];

/// The `information_schema` tables [`CATALOG_VIEWS`] completes or adds.
const INFORMATION_SCHEMA_VIEWS: &[&str] = &[
    "columns",
    "views",
    "table_constraints",
    "key_column_usage",
    "referential_constraints",
];

/// `pg_type`'s `regproc` columns: Postgres keeps a function's oid there (0 for none), the
/// static catalog its name (`-` for none).
const REGPROC_COLUMNS: &[&str] = &[
    "typinput",
    "typoutput",
    "typreceive",
    "typsend",
    "typmodin",
    "typmodout",
    "typanalyze",
    "typsubscript",
];

/// `batch` with the [`REGPROC_COLUMNS`] that hold names as the oids `procs` gives them (0 for
/// `-` or a name `pg_proc` lacks).
fn with_proc_oids(batch: &RecordBatch, procs: &HashMap<String, i32>) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        let names = match array.as_string_opt::<i32>() {
            Some(names) if REGPROC_COLUMNS.contains(&field.name().as_str()) => names,
            _ => {
                fields.push(field.as_ref().clone());
                arrays.push(array.clone());
                continue;
            }
        };
        let oids: Int32Array = names
            .iter()
            .map(|n| n.map(|n| procs.get(n).copied().unwrap_or(0)))
            .collect();
        fields.push(Field::new(
            field.name(),
            DataType::Int32,
            field.is_nullable(),
        ));
        arrays.push(Arc::new(oids));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// The columns of `batch` cast to `types`.
fn cast_columns(batch: &RecordBatch, types: &[DataType]) -> Result<Vec<ArrayRef>> {
    batch
        .columns()
        .iter()
        .zip(types)
        .map(|(a, t)| Ok(datafusion::arrow::compute::cast(a, t)?))
        .collect()
}

/// `pg_settings` with the rows of [`SETTINGS`] (JDBC reads `max_index_keys` there), in the
/// library's columns: what a column says of a setting beyond its value is NULL.
fn settings_table(schema: SchemaRef) -> Result<Arc<dyn TableProvider>> {
    let text = |value: fn(&(&'static str, &'static str)) -> &'static str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(SETTINGS.iter().map(value)))
    };
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "name" => text(|(name, _)| name),
            "setting" | "reset_val" | "boot_val" => text(|(_, value)| value),
            "source" => text(|_| "default"),
            _ => new_null_array(f.data_type(), SETTINGS.len()),
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// `batch` with `columns` parsed from text (`1 2`, `[1, 2]`, `{1,2}`) into integer lists:
/// int2 for key positions and options, int4 (oids) for the others.
fn with_arrays(batch: &RecordBatch, columns: &[&str]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        if !columns.contains(&field.name().as_str()) || !matches!(field.data_type(), DataType::Utf8)
        {
            fields.push(field.as_ref().clone());
            arrays.push(array.clone());
            continue;
        }
        let small = matches!(
            field.name().as_str(),
            "indkey" | "indoption" | "conkey" | "confkey" | "confdelsetcols"
        );
        let text = array.as_string::<i32>();
        let numbers = |i: usize| {
            text.value(i)
                .split(|c: char| !(c.is_ascii_digit() || c == '-'))
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<i64>().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let list: ArrayRef = if small {
            let mut b = ListBuilder::new(Int16Builder::new());
            for i in 0..text.len() {
                if text.is_null(i) {
                    b.append_null();
                } else {
                    b.append_value(numbers(i).into_iter().map(|v| Some(v as i16)));
                }
            }
            Arc::new(b.finish())
        } else {
            let mut b = ListBuilder::new(Int32Builder::new());
            for i in 0..text.len() {
                if text.is_null(i) {
                    b.append_null();
                } else {
                    b.append_value(numbers(i).into_iter().map(|v| Some(v as i32)));
                }
            }
            Arc::new(b.finish())
        };
        fields.push(Field::new(field.name(), list.data_type().clone(), true));
        arrays.push(list);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// `pg_catalog` with some of its tables replaced.
#[derive(Debug)]
struct TypedCatalog {
    inner: Arc<dyn SchemaProvider>,
    tables: HashMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for TypedCatalog {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.push("pg_user".to_string());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.tables.get(name) {
            Some(t) => Ok(Some(t.clone())),
            None => self.inner.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name) || self.inner.table_exist(name)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::{rewrite, to_backslash};

    fn rewritten(sql: &str) -> String {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        rewrite(&statement).map_or_else(|| "unchanged".into(), |s| s.to_string())
    }

    #[test]
    fn like_patterns_move_to_the_backslash() {
        assert_eq!(to_backslash("pg/_%", '/'), "pg\\_%");
        assert_eq!(to_backslash("a//b", '/'), "a/b");
        assert_eq!(to_backslash("50!%", '!'), "50\\%");
        assert_eq!(to_backslash("c:\\x", '/'), "c:\\\\x");
        assert_eq!(
            rewritten(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE $1 || '%' ESCAPE '/'"
            ),
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE like_escape($1 || '%', '/')"
        );
        assert_eq!(
            rewritten("SELECT 1 WHERE 'a' LIKE 'a' ESCAPE '\\'"),
            "unchanged"
        );
    }

    #[test]
    fn catalog_subqueries_become_null_and_keep_their_parameters() {
        let sql = "SELECT a.attname, CASE WHEN a.attidentity != $1::VARCHAR THEN (SELECT s.seqstart \
                   FROM pg_catalog.pg_sequence s WHERE a.attidentity != $2::VARCHAR AND s.seqrelid = a.attrelid) \
                   ELSE NULL END FROM pg_catalog.pg_attribute a WHERE a.attnum > $3::SMALLINT";
        assert_eq!(
            rewritten(sql),
            "SELECT a.attname, CASE WHEN a.attidentity <> $1::VARCHAR THEN CASE WHEN $2::VARCHAR IS NULL \
             THEN NULL END ELSE NULL END FROM pg_catalog.pg_attribute a WHERE a.attnum > $3::SMALLINT"
        );
        // Over the warehouse's tables nothing is nulled (subqueries.rs refuses what must be).
        assert_eq!(
            rewritten("SELECT (SELECT max(t.score) FROM scores t WHERE t.id = s.id) FROM scores s"),
            "unchanged"
        );
    }

    #[test]
    fn set_returning_catalog_functions_become_unnest() {
        assert_eq!(
            rewritten("SELECT generate_subscripts(i.indkey, 1) AS ord FROM pg_catalog.pg_index i"),
            "SELECT unnest(generate_series(1, array_length(i.indkey, 1))) AS ord FROM pg_catalog.pg_index i"
        );
        assert_eq!(
            rewritten(
                "SELECT (information_schema._pg_expandarray(i.indkey)).n FROM pg_catalog.pg_index i"
            ),
            "SELECT unnest(generate_series(1, array_length(i.indkey))) FROM pg_catalog.pg_index i"
        );
        assert_eq!(
            rewritten(
                "SELECT information_schema._pg_expandarray(i.indkey) AS keys FROM pg_catalog.pg_index i"
            ),
            "SELECT unnest(_pg_expandarray_list(i.indkey)) AS keys FROM pg_catalog.pg_index i"
        );
        // As it reaches the hook: datafusion-pg-catalog has stripped the schema.
        assert_eq!(
            rewritten(
                "SELECT (_pg_expandarray(i.indkey)).n, _pg_expandarray(i.indkey) AS keys FROM pg_catalog.pg_index i"
            ),
            "SELECT unnest(generate_series(1, array_length(i.indkey))), \
             unnest(_pg_expandarray_list(i.indkey)) AS keys FROM pg_catalog.pg_index i"
        );
        assert_eq!(
            rewritten("SELECT (r.keys).x FROM r"),
            "SELECT get_field(r.keys, 'x') FROM r"
        );
    }

    #[test]
    fn identifiers_are_quoted_as_postgres_quotes_them() {
        assert_eq!(super::quote_ident("scores"), "scores");
        assert_eq!(super::quote_ident("Scores"), "\"Scores\"");
        assert_eq!(super::quote_ident("a\"b c"), "\"a\"\"b c\"");
        assert_eq!(super::quote_ident("1a"), "\"1a\"");
    }

    #[test]
    fn qualified_regproc_lookups_find_the_function() {
        assert_eq!(
            rewritten(
                "SELECT typinput = (SELECT oid FROM pg_catalog.pg_proc WHERE proname = 'pg_catalog.array_in') FROM pg_catalog.pg_type"
            ),
            "SELECT typinput = (SELECT min(oid) FROM pg_catalog.pg_proc WHERE proname = 'array_in') FROM pg_catalog.pg_type"
        );
        assert_eq!(
            rewritten("SELECT (SELECT oid FROM pg_catalog.pg_proc WHERE proname = 'array_in')"),
            "unchanged"
        );
        assert_eq!(
            rewritten(
                "SELECT (SELECT oid FROM pg_catalog.pg_proc WHERE proname = 'boolin' AND pronargs = 1)"
            ),
            "unchanged"
        );
    }

    #[test]
    fn postgres_forms_of_odbc_jdbc_and_grafana_are_rewritten() {
        // psqlODBC's foreign keys: rows from generate_series, `'x'::name` as text.
        assert_eq!(
            rewritten("SELECT 'datafusion'::name AS cat, generate_series(1, 3) AS i"),
            "SELECT 'datafusion'::TEXT AS cat, unnest(generate_series(1, 3)) AS i"
        );
        // psqlODBC's SQLTables: repeated unnamed items get distinct names.
        assert_eq!(
            rewritten("SELECT NULL, nspname, NULL FROM pg_catalog.pg_namespace"),
            "SELECT NULL, nspname, NULL AS \"?column?3\" FROM pg_catalog.pg_namespace"
        );
        // Grafana: functions under bare aliases in FROM, `user`, and the search path.
        assert_eq!(
            rewritten(
                "SELECT s[i], user FROM generate_series(1, 2) AS i, string_to_array('a,b', ',') s"
            ),
            "SELECT s[i], session_user FROM generate_series(1, 2) AS i (i), \
             (SELECT string_to_array('a,b', ',') AS s) s"
        );
        assert_eq!(
            rewritten(
                "SELECT table_name FROM information_schema.tables WHERE quote_ident(table_schema) IN ('')"
            ),
            "SELECT table_name FROM information_schema.tables WHERE quote_ident(table_schema) = current_schema()"
        );
        assert_eq!(
            rewritten("SELECT count(*) FROM scores WHERE identity IN ('')"),
            "unchanged"
        );
        // information_schema tables DataFusion lacks or has fewer columns of.
        assert_eq!(
            rewritten(
                "SELECT udt_name FROM \"information_schema\".\"columns\" c JOIN information_schema.table_constraints t ON true"
            ),
            "SELECT udt_name FROM pg_catalog.information_schema_columns c \
             JOIN pg_catalog.information_schema_table_constraints t ON true"
        );
        // No comments: NULL, and the arguments (which may not plan) are gone.
        assert_eq!(
            rewritten("SELECT col_description(format('%I', t)::regclass::oid, 1) FROM t"),
            "SELECT CAST(NULL AS TEXT) FROM t"
        );
    }
}
