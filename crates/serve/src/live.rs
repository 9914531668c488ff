//! A warehouse table as the newest committed night. Each scan reads the version that the
//! newest complete runs published (looked up at most once per [`REFRESH`]), so a night a run
//! commits is visible to the next query without a restart, while a query already running keeps
//! the snapshot it started with (its scan holds that version's files).
//!
//! Columns carrying a data usage label the table denies (its `scoreland.serve.deny_labels`
//! property, from the pipeline's `[serve] deny_labels`) or the server denies
//! (`--deny-labels`) are masked: they keep their name and type, every value reads as NULL, and
//! no filter on them reaches the scan (so neither row selection nor file pruning can reveal
//! their values).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::common::metadata::FieldMetadata;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use deltalake::DeltaTable;
use scoreland_runtime::labels::{COLUMN_LABELS, DENY_LABELS, TABLE_LABELS, parse_labels};
use scoreland_sink::{AsOf, PublishedTable, Warehouse};

/// How often a table looks for a newer published version.
pub const REFRESH: Duration = Duration::from_secs(1);

pub struct LiveTable {
    warehouse: Warehouse,
    name: String,
    /// Labels the server denies on every table (`serve --deny-labels`).
    deny: Arc<BTreeSet<String>>,
    /// Scan the version's files as plain Parquet ([`PublishedTable`]) rather than through
    /// delta-rs: a distributed engine's executors can run that scan (`serve --cluster`).
    plain: bool,
    current: Mutex<Current>,
}

struct Current {
    version: Option<u64>,
    table: Arc<DeltaTable>,
    provider: Arc<dyn TableProvider>,
    /// Per column of the provider's schema: whether it is masked.
    masked: Arc<Vec<bool>>,
    checked: Instant,
}

impl std::fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTable")
            .field("name", &self.name)
            .finish()
    }
}

fn df_err(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl LiveTable {
    /// The table at its published version now; `None` when the warehouse has no such table.
    pub async fn open(
        warehouse: Warehouse,
        name: &str,
        deny: Arc<BTreeSet<String>>,
        plain: bool,
    ) -> Result<Option<LiveTable>> {
        let Some(table) = warehouse
            .table_as_of(name, AsOf::Published)
            .await
            .map_err(df_err)?
        else {
            return Ok(None);
        };
        let current = Current::of(&warehouse, name, table, &deny, plain).await?;
        Ok(Some(LiveTable {
            warehouse,
            name: name.to_string(),
            deny,
            plain,
            current: Mutex::new(current),
        }))
    }

    /// The version to scan: the cached one, or a newer published one when it is time to look.
    async fn fresh(&self) -> Result<(Arc<DeltaTable>, Arc<dyn TableProvider>, Arc<Vec<bool>>)> {
        {
            let c = self.current.lock().expect("not poisoned");
            if c.checked.elapsed() < REFRESH {
                return Ok((c.table.clone(), c.provider.clone(), c.masked.clone()));
            }
        }
        // The version to serve, found cheaply: the one a run published, or else the newest in
        // the log from the one served on. The table is loaded again only when it differs.
        let (served, table) = {
            let c = self.current.lock().expect("not poisoned");
            (c.version, c.table.clone())
        };
        let wanted = match self
            .warehouse
            .published_versions()
            .await
            .map_err(df_err)?
            .get(&self.name)
        {
            Some(v) => *v,
            None => table
                .log_store()
                .get_latest_version(served.unwrap_or(0))
                .await
                .map_err(df_err)?,
        };
        let newer = if Some(wanted) == served {
            None
        } else {
            match self
                .warehouse
                .delta_table(&self.name, Some(wanted))
                .await
                .map_err(df_err)?
            {
                Some(t) => {
                    Some(Current::of(&self.warehouse, &self.name, t, &self.deny, self.plain).await?)
                }
                None => None,
            }
        };
        let mut c = self.current.lock().expect("not poisoned");
        c.checked = Instant::now();
        if let Some(next) = newer {
            tracing::info!(table = self.name, version = ?next.version, "serving a newer night");
            *c = next;
        }
        Ok((c.table.clone(), c.provider.clone(), c.masked.clone()))
    }
}

impl Current {
    /// Table `name` at the version `t` was loaded at, as served: its scan, and which columns
    /// are masked.
    async fn of(
        warehouse: &Warehouse,
        name: &str,
        t: DeltaTable,
        deny: &BTreeSet<String>,
        plain: bool,
    ) -> Result<Current> {
        let delta = t.table_provider().await.map_err(df_err)?;
        let config = t
            .snapshot()
            .map_err(df_err)?
            .metadata()
            .configuration()
            .clone();
        let provider: Arc<dyn TableProvider> = if plain {
            let files = warehouse.files_of(name, &t).map_err(df_err)?;
            Arc::new(PublishedTable::new(files))
        } else {
            delta
        };
        let masked = masked_columns(&provider.schema(), &config, deny);
        Ok(Current {
            version: t.version(),
            table: Arc::new(t),
            provider,
            masked: Arc::new(masked),
            checked: Instant::now(),
        })
    }
}

/// Per column of `schema`: whether it carries a label denied by the table (`config`'s
/// [`DENY_LABELS`]) or by `deny`. A column carries its own labels ([`COLUMN_LABELS`]) and,
/// when it holds a field of the dataset (it has an `xdm_path`), the dataset's
/// ([`TABLE_LABELS`]).
pub(crate) fn masked_columns(
    schema: &SchemaRef,
    config: &std::collections::HashMap<String, String>,
    deny: &BTreeSet<String>,
) -> Vec<bool> {
    let mut denied = deny.clone();
    denied.extend(parse_labels(
        config.get(DENY_LABELS).map_or("", String::as_str),
    ));
    let dataset = parse_labels(config.get(TABLE_LABELS).map_or("", String::as_str));
    schema
        .fields()
        .iter()
        .map(|f| {
            let meta = f.metadata();
            let own = parse_labels(meta.get(COLUMN_LABELS).map_or("", String::as_str));
            let of_dataset = meta.contains_key("xdm_path") && !dataset.is_disjoint(&denied);
            of_dataset || !own.is_disjoint(&denied)
        })
        .collect()
}

/// `plan` (the scan of `projection` of the table whose schema is `table`) with the masked
/// columns' values NULL.
fn mask(
    plan: Arc<dyn ExecutionPlan>,
    table: &SchemaRef,
    projection: Option<&Vec<usize>>,
    masked: &[bool],
) -> Result<Arc<dyn ExecutionPlan>> {
    let table_index = |i: usize| projection.map_or(i, |p| p[i]);
    let schema = plan.schema();
    if !(0..schema.fields().len()).any(|i| masked.get(table_index(i)) == Some(&true)) {
        return Ok(plan);
    }
    let exprs = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let expr: Arc<dyn PhysicalExpr> = if masked.get(table_index(i)) == Some(&true) {
                // The column as the table declares it (metadata and all): plans compare
                // their schemas with it.
                let declared = table.field(table_index(i));
                Arc::new(Literal::new_with_metadata(
                    ScalarValue::try_from(f.data_type())?,
                    Some(FieldMetadata::from(declared)),
                ))
            } else {
                Arc::new(Column::new(f.name(), i))
            };
            Ok((expr, f.name().clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.current.lock().expect("not poisoned").provider.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let (provider, masked) = {
            let c = self.current.lock().expect("not poisoned");
            (c.provider.clone(), c.masked.clone())
        };
        // A filter on a masked column is applied above the scan, to its NULLs: it must not
        // select rows or prune files by the real values.
        let schema = provider.schema();
        let on_masked = |e: &Expr| {
            e.column_refs().iter().any(|c| {
                schema
                    .index_of(c.name())
                    .is_ok_and(|i| masked.get(i) == Some(&true))
            })
        };
        let mut answer = provider.supports_filters_pushdown(filters)?;
        for (a, f) in answer.iter_mut().zip(filters) {
            if on_masked(f) {
                *a = TableProviderFilterPushDown::Unsupported;
            }
        }
        Ok(answer)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // A newer version's schema only ever adds columns at the end, so the projection
        // planned on still names the same columns.
        let (table, provider, masked) = self.fresh().await?;
        table.update_datafusion_session(state).map_err(df_err)?;
        let plan = provider.scan(state, projection, filters, limit).await?;
        mask(plan, &provider.schema(), projection, &masked)
    }
}
