//! Whether a logical plan only reads: the one allow-list that `serve` and `scoreland sql`
//! (here or on a cluster) check every statement's plan against, subqueries and the plans
//! inside `EXPLAIN`/`EXPLAIN ANALYZE` included. Every node kind is named, so a kind DataFusion
//! adds later fails to compile here until someone decides whether it only reads.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;

/// What `plan` would do besides reading, wherever in the plan it is (`"COPY … TO 'x.csv'"`,
/// `"Insert Into scores"`, `"CreateView"`, `"the statement SetVariable"`), or `None` when it
/// only reads. DataFusion's own [`SQLOptions`] check (DDL, DML and statements off) is asked
/// too, as a second opinion.
pub fn first_write(plan: &LogicalPlan) -> Result<Option<String>, DataFusionError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let mut found = None;
    plan.apply_with_subqueries(|node| {
        Ok(match writes(node) {
            Some(what) => {
                found = Some(what);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    })?;
    if found.is_none()
        && let Err(e) = options.verify_plan(plan)
    {
        found = Some(e.strip_backtrace());
    }
    Ok(found)
}

/// What `node` would do besides reading, or `None` for a node that only reads.
fn writes(node: &LogicalPlan) -> Option<String> {
    match node {
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Window(_)
        | LogicalPlan::Aggregate(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Join(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Union(_)
        | LogicalPlan::TableScan(_)
        | LogicalPlan::EmptyRelation(_)
        | LogicalPlan::Subquery(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Values(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::Distinct(_)
        | LogicalPlan::DescribeTable(_)
        | LogicalPlan::Unnest(_)
        | LogicalPlan::RecursiveQuery(_) => None,
        LogicalPlan::Statement(s) => Some(format!("the statement {}", s.name())),
        LogicalPlan::Dml(d) => Some(format!("{} {}", d.op, d.table_name)),
        LogicalPlan::Ddl(d) => Some(d.name().to_string()),
        LogicalPlan::Copy(c) => Some(format!("COPY … TO '{}'", c.output_url)),
        LogicalPlan::Extension(e) => Some(format!("the plan node {}", e.node.name())),
    }
}
