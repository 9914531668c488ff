//! Guards against a rewrite the Postgres-compatibility parser makes on every statement: a
//! scalar subquery in a select list that looks correlated (it names a table its own `FROM`
//! does not alias) or holds a bound parameter becomes NULL. For the catalog queries drivers
//! send on connect that is the true answer (scoreland's tables have no defaults, identity
//! options, collations or comments), but on the warehouse's tables it would silently return
//! NULLs, and a parameter removed with its subquery shifts the others onto the wrong
//! placeholders. Such statements are refused, with the way around, before that parser runs.
//! Catalog queries go the other way: the correlated subqueries the parser leaves (inside
//! `CASE`) become NULL too ([`crate::compat::rewrite`]), so that column reflection plans.
//!
//! The same parser stamps `LIMIT 1` on every other select-list subquery, which would turn
//! Postgres' error for a scalar subquery of many rows (`21000`) into an arbitrary row; such
//! subqueries get `LIMIT 2` first ([`single_row_subqueries`]), which the parser keeps, and
//! DataFusion raises the error itself.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, LimitClause, Query, SelectItem, SetExpr, Statement, TableFactor, Value, Visit, VisitMut,
    Visitor, VisitorMut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The text to hand to the compatibility parser, from one parse of `sql`: `Err(why)` when that
/// parser would change a statement under the client; `Ok(Some(text))` when uncorrelated
/// select-list subqueries without a limit got `LIMIT 2`, so that one of more than one row
/// fails as in Postgres instead of being cut to its first row; `Ok(None)`: the text as it is.
/// What does not parse here is left to the real parser and its own error.
pub fn prepare(sql: &str) -> Result<Option<String>, String> {
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Ok(None);
    };
    for statement in &statements {
        let mut finder = Finder {
            data_tables: reads_data_tables(statement),
            found: None,
        };
        let _ = statement.visit(&mut finder);
        if let Some(why) = finder.found {
            return Err(why);
        }
    }
    let mut stamp = Stamp(false);
    for statement in &mut statements {
        let _ = statement.visit(&mut stamp);
    }
    Ok(stamp.0.then(|| {
        statements
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }))
}

/// Puts `LIMIT 2` on uncorrelated select-list subqueries without a limit; says if it did.
struct Stamp(bool);

impl VisitorMut for Stamp {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        for item in &mut select.projection {
            let (SelectItem::UnnamedExpr(Expr::Subquery(sub))
            | SelectItem::ExprWithAlias {
                expr: Expr::Subquery(sub),
                ..
            }) = item
            else {
                continue;
            };
            let unlimited = sub.limit_clause.is_none() && sub.fetch.is_none();
            if unlimited && looks_correlated(sub) == (false, false) {
                sub.limit_clause = Some(LimitClause::LimitOffset {
                    limit: Some(Expr::value(Value::Number("2".into(), false))),
                    offset: None,
                    limit_by: vec![],
                });
                self.0 = true;
            }
        }
        ControlFlow::Continue(())
    }
}

/// Whether `statement` reads any table outside `pg_catalog` and `information_schema`.
pub(crate) fn reads_data_tables(statement: &Statement) -> bool {
    let mut data_tables = false;
    let _ = visit_relations(statement, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.to_string().to_lowercase())
            .collect();
        let catalog = parts
            .first()
            .is_some_and(|s| s == "pg_catalog" || s == "information_schema")
            || parts.last().is_some_and(|t| t.starts_with("pg_"));
        data_tables |= !catalog;
        ControlFlow::<()>::Continue(())
    });
    data_tables
}

struct Finder {
    data_tables: bool,
    found: Option<String>,
}

impl Visitor for Finder {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_ref() else {
            return ControlFlow::Continue(());
        };
        for item in &select.projection {
            let (SelectItem::UnnamedExpr(Expr::Subquery(sub))
            | SelectItem::ExprWithAlias {
                expr: Expr::Subquery(sub),
                ..
            }) = item
            else {
                continue;
            };
            let (placeholder, correlated) = looks_correlated(sub);
            if placeholder {
                self.found = Some(
                    "a bound parameter inside a subquery of the select list is not supported by \
                     scoreland serve; put the value in the query text, or bind on the client \
                     (psycopg2, psycopg's ClientCursor, JDBC's preferQueryMode=simple)"
                        .into(),
                );
                return ControlFlow::Break(());
            }
            if correlated && self.data_tables {
                self.found = Some(
                    "a correlated subquery in the select list is not supported by scoreland \
                     serve; write it as a JOIN (or a CTE joined to the query)"
                        .into(),
                );
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

/// (holds a placeholder, names a table its `FROM` does not alias): the compatibility parser's
/// own test for "correlated", so exactly what it would replace.
pub(crate) fn looks_correlated(sub: &Query) -> (bool, bool) {
    let SetExpr::Select(select) = sub.body.as_ref() else {
        return (false, false);
    };
    let mut aliases = HashSet::new();
    for twj in &select.from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            if let TableFactor::Table {
                alias: Some(alias), ..
            } = factor
            {
                aliases.insert(alias.name.value.clone());
            }
        }
    }
    struct Check<'a> {
        aliases: &'a HashSet<String>,
        placeholder: bool,
        correlated: bool,
    }
    impl Visitor for Check<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Value(v) if matches!(v.value, Value::Placeholder(_)) => {
                    self.placeholder = true;
                }
                Expr::CompoundIdentifier(ids) if !ids.is_empty() => {
                    self.correlated |= !self.aliases.contains(&ids[0].value);
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut check = Check {
        aliases: &aliases,
        placeholder: false,
        correlated: false,
    };
    let _ = sub.visit(&mut check);
    (check.placeholder, check.correlated || check.placeholder)
}

#[cfg(test)]
mod tests {
    use super::prepare;

    #[test]
    fn only_what_the_compatibility_parser_would_change_is_refused() {
        // A correlated subquery over the warehouse's tables: refused.
        assert!(
            prepare(
                "SELECT s.identity, (SELECT max(t.score) FROM scores t WHERE t.identity = s.identity) FROM scores s"
            )
            .is_err()
        );
        // A parameter in a select-list subquery: refused, even over the catalog.
        assert!(prepare("SELECT (SELECT $1::VARCHAR) AS v").is_err());
        // Plain queries, uncorrelated subqueries, and the catalog queries drivers send: kept.
        assert!(
            prepare("SELECT model, count(*) FROM scores WHERE identity = $1 GROUP BY 1").is_ok()
        );
        assert!(prepare("SELECT (SELECT max(x.score) FROM scores x) AS m").is_ok());
        assert!(
            prepare(
                "SELECT a.attname, (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d \
                 WHERE d.adrelid = a.attrelid) FROM pg_catalog.pg_attribute a"
            )
            .is_ok()
        );
    }
}
