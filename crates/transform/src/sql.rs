//! Ad-hoc SQL over landed tables: each table is registered from exactly the files its latest
//! commit lists, so a reader never sees uncommitted files.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use url::Url;

use crate::error::{Context, TransformError};

#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Runs `sql` over `tables` (name, file extension, absolute file URLs). `stores` registers the
/// object store of each non-local URL scheme and bucket.
pub async fn query_files(
    tables: &[(String, String, Vec<Url>)],
    stores: &[(Url, Arc<dyn ObjectStore>)],
    sql: &str,
) -> Result<QueryOutput, TransformError> {
    let ctx = SessionContext::new();
    for (url, store) in stores {
        ctx.register_object_store(url, store.clone());
    }
    for (name, ext, files) in tables {
        if files.is_empty() {
            continue;
        }
        let format: Arc<dyn FileFormat> = match ext.as_str() {
            "csv" => Arc::new(CsvFormat::default().with_has_header(true)),
            "json" => Arc::new(JsonFormat::default()),
            _ => Arc::new(ParquetFormat::default()),
        };
        let urls = files
            .iter()
            .map(|u| ListingTableUrl::parse(u.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .context(format!("naming the files of table {name}"))?;
        let options = ListingOptions::new(format).with_file_extension(format!(".{ext}"));
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await
            .context(format!("reading the schema of table {name}"))?;
        let table = ListingTable::try_new(config).context(format!("opening table {name}"))?;
        ctx.register_table(name.as_str(), Arc::new(table))
            .context(format!("registering table {name}"))?;
    }
    let df = ctx.sql(sql).await.context("planning the query")?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.context("running the query")?;
    Ok(QueryOutput { schema, batches })
}
