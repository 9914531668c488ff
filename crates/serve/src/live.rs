//! A warehouse table as the newest committed night. Each scan reads the version that the
//! newest complete runs published (looked up at most once per [`REFRESH`]), so a night a run
//! commits is visible to the next query without a restart, while a query already running keeps
//! the snapshot it started with (its scan holds that version's files).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;
use scoreland_sink::{AsOf, Warehouse};

/// How often a table looks for a newer published version.
pub const REFRESH: Duration = Duration::from_secs(1);

pub struct LiveTable {
    warehouse: Warehouse,
    name: String,
    current: Mutex<Current>,
}

struct Current {
    version: Option<u64>,
    table: Arc<DeltaTable>,
    provider: Arc<dyn TableProvider>,
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
    pub async fn open(warehouse: Warehouse, name: &str) -> Result<Option<LiveTable>> {
        let Some(current) = load(&warehouse, name).await? else {
            return Ok(None);
        };
        Ok(Some(LiveTable {
            warehouse,
            name: name.to_string(),
            current: Mutex::new(current),
        }))
    }

    /// The version to scan: the cached one, or a newer published one when it is time to look.
    async fn fresh(&self) -> Result<(Arc<DeltaTable>, Arc<dyn TableProvider>)> {
        {
            let c = self.current.lock().expect("not poisoned");
            if c.checked.elapsed() < REFRESH {
                return Ok((c.table.clone(), c.provider.clone()));
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
                Some(t) => Some(current(t).await?),
                None => None,
            }
        };
        let mut c = self.current.lock().expect("not poisoned");
        c.checked = Instant::now();
        if let Some(next) = newer {
            tracing::info!(table = self.name, version = ?next.version, "serving a newer night");
            *c = next;
        }
        Ok((c.table.clone(), c.provider.clone()))
    }
}

async fn load(warehouse: &Warehouse, name: &str) -> Result<Option<Current>> {
    match warehouse
        .table_as_of(name, AsOf::Published)
        .await
        .map_err(df_err)?
    {
        Some(t) => Ok(Some(current(t).await?)),
        None => Ok(None),
    }
}

async fn current(t: DeltaTable) -> Result<Current> {
    let provider = t.table_provider().await.map_err(df_err)?;
    Ok(Current {
        version: t.version(),
        table: Arc::new(t),
        provider,
        checked: Instant::now(),
    })
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
        let provider = self.current.lock().expect("not poisoned").provider.clone();
        provider.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The sink refuses schema changes, so the version scanned has the schema planned on.
        let (table, provider) = self.fresh().await?;
        table.update_datafusion_session(state).map_err(df_err)?;
        provider.scan(state, projection, filters, limit).await
    }
}
