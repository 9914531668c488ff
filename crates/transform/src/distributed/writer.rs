//! The writer of kept rows, run by a cluster's executors on top of the dedupe: each task
//! writes its partition's kept rows as the single-machine transform writes them (a file per
//! score date, `score_date=…/part-<attempt>-<partition>-<task>.parquet`), summarises them on
//! the way, and answers with what it wrote and its summaries' figures. Its files go into a
//! directory this machine and every executor share (`file:///…`), or are written in the
//! executor's work directory ([`scratch`]) and uploaded to the staging bucket
//! (`<staging>/<run>/kept-<attempt>/`).
//!
//! Each task answers with batches of [`schema`]: a group's scores (for the exact deciles,
//! computed by the driver), in chunks, then one last row whose `report` is a [`Report`] as
//! JSON. A task names its files with an id of its own, so a task run twice never writes over
//! another's files: the driver keeps the files the job's answer lists.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, ListArray, RecordBatch, StringArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use scoreland_runtime::engine::NodeCodec;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::OutputFormat;
use crate::error::TransformError;
use crate::scores::{Worker, WriteOptions, Written, output_schema};
use crate::summary::GroupFigures;

/// The node's tag on the wire.
const NAME: &str = "scoreland.kept-writer";

/// Scores a row of the answer carries at most (512 KiB).
const SCORES_PER_ROW: usize = 64 * 1024;

/// What every task of the writer is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// The directory the files go into: `file:///…` (shared) or a bucket's URL.
    pub out: String,
    /// The job's attempt, in every file's name.
    pub attempt: String,
    /// The models the rows are written for, in the mapping's order.
    pub models: Vec<String>,
    pub keep_null_identities: bool,
    pub run_id: Option<String>,
    pub format: OutputFormat,
}

/// What a task wrote and saw.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Its files, relative to the output directory (`score_date=…/part-….parquet`).
    pub files: Vec<String>,
    pub rows_in: u64,
    pub null_identities: u64,
    pub rows_out: u64,
    pub groups: Vec<GroupFigures>,
}

/// The columns of the writer's answer.
pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, true),
        Field::new("score_date", DataType::Date32, true),
        Field::new(
            "scores",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, false))),
            true,
        ),
        Field::new("report", DataType::Utf8, true),
    ]))
}

/// Writes the kept rows of `input` (the scores' columns, then their row counts).
pub(crate) struct WriteKeptExec {
    spec: Arc<Spec>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl WriteKeptExec {
    pub(crate) fn new(spec: Spec, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema()),
            input.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        WriteKeptExec {
            spec: Arc::new(spec),
            input,
            properties,
        }
    }
}

impl fmt::Debug for WriteKeptExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteKeptExec")
            .field("out", &self.spec.out)
            .finish()
    }
}

impl DisplayAs for WriteKeptExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WriteKeptExec: out={}", self.spec.out)
    }
}

impl ExecutionPlan for WriteKeptExec {
    fn name(&self) -> &str {
        "WriteKeptExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|c| {
            DataFusionError::Internal(format!("WriteKeptExec has one input, not {}", c.len()))
        })?;
        Ok(Arc::new(WriteKeptExec::new((*self.spec).clone(), input)))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let rows = self.input.execute(partition, ctx.clone())?;
        let spec = self.spec.clone();
        let answer = futures::stream::once(async move {
            let batches = write_partition(&spec, partition, rows, &ctx)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema(), answer)))
    }
}

/// Where a task writes: the shared directory itself, or a directory of its own here whose
/// files are then uploaded to the bucket.
enum Target {
    Shared(PathBuf),
    Bucket {
        local: PathBuf,
        store: Arc<dyn object_store::ObjectStore>,
        prefix: ObjectPath,
        url: String,
    },
}

/// Writes one partition's kept rows; the answer's batches.
async fn write_partition(
    spec: &Spec,
    partition: usize,
    mut rows: SendableRecordBatchStream,
    ctx: &TaskContext,
) -> Result<Vec<RecordBatch>, TransformError> {
    let task = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{}-{partition:03}-{}", spec.attempt, &task[..8]);
    let target = target(spec, &name, ctx)?;
    let dir = match &target {
        Target::Shared(dir) | Target::Bucket { local: dir, .. } => dir.clone(),
    };
    let opts = WriteOptions {
        dir: dir.clone(),
        props: crate::run::writer_properties(&spec.format)?,
        run_id: spec.run_id.clone(),
        workers: 1,
    };
    let input = rows.schema();
    let scores = Arc::new(Schema::new(
        input.fields()[..input.fields().len().saturating_sub(1)].to_vec(),
    ));
    let schema = output_schema(&scores, &opts)?;
    let mut worker = Worker::named(name);
    let shape = (&scores, spec.models.as_slice(), spec.keep_null_identities);
    let written = async {
        while let Some(batch) = rows.next().await {
            let batch = batch.map_err(|e| TransformError::Cluster {
                engine: "this executor".into(),
                message: e.to_string(),
            })?;
            worker.deduplicated(shape, &opts, &schema, &batch)?;
        }
        worker.close(&opts)
    }
    .await;
    let (written, files) = match written {
        Ok(w) => w,
        Err(e) => {
            if let Target::Bucket { local, .. } = &target {
                let _ = std::fs::remove_dir_all(local);
            }
            return Err(e);
        }
    };
    let relative: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(&dir).ok())
        .map(|f| f.to_string_lossy().replace('\\', "/"))
        .collect();
    if let Target::Bucket {
        local,
        store,
        prefix,
        url,
    } = &target
    {
        let uploaded = async {
            for (file, rel) in files.iter().zip(&relative) {
                let to = ObjectPath::from_iter(
                    prefix.parts().chain(ObjectPath::from(rel.as_str()).parts()),
                );
                crate::shared::upload(store, file, &to, &format!("{url}{rel}")).await?;
            }
            Ok::<_, TransformError>(())
        }
        .await;
        let _ = std::fs::remove_dir_all(local);
        uploaded?;
    }
    answer(written, relative)
}

/// Where `spec.out` puts this task's files.
fn target(spec: &Spec, name: &str, ctx: &TaskContext) -> Result<Target, TransformError> {
    let bad =
        |why: String| TransformError::Config(format!("the kept rows' output {}: {why}", spec.out));
    let url = Url::parse(&spec.out).map_err(|e| bad(e.to_string()))?;
    if url.scheme() == "file" {
        let dir = url
            .to_file_path()
            .map_err(|()| bad("is not a local path".into()))?;
        return Ok(Target::Shared(dir));
    }
    let store = ctx
        .runtime_env()
        .object_store(
            ObjectStoreUrl::parse(&url[..url::Position::BeforePath])
                .map_err(|e| bad(e.to_string()))?,
        )
        .map_err(|e| bad(e.to_string()))?;
    let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
    Ok(Target::Bucket {
        local: scratch(ctx).join(format!("scoreland-kept-{name}")),
        store,
        prefix,
        url: spec.out.clone(),
    })
}

/// Where a task writes files before they are uploaded: the executor's work directory (the
/// task runtime's temporary directory there, removed with it), or `TMPDIR` when it was started
/// without one.
fn scratch(ctx: &TaskContext) -> PathBuf {
    ctx.runtime_env()
        .disk_manager
        .temp_dir_paths()
        .into_iter()
        .next()
        .unwrap_or_else(std::env::temp_dir)
}

/// A task's answer: each group's scores in chunks, then its [`Report`].
fn answer(written: Written, files: Vec<String>) -> Result<Vec<RecordBatch>, TransformError> {
    let mut report = Report {
        files,
        rows_in: written.rows_in,
        null_identities: written.null_identities,
        rows_out: written.rows_out,
        groups: Vec::new(),
    };
    let mut batches = Vec::new();
    for (figures, scores) in written.groups.into_figures() {
        for chunk in scores.chunks(SCORES_PER_ROW) {
            batches.push(row(Some(&figures.model), figures.date, Some(chunk), None)?);
        }
        report.groups.push(figures);
    }
    let json = serde_json::to_string(&report).map_err(|e| TransformError::Cluster {
        engine: "this executor".into(),
        message: format!("cannot encode the writer's report: {e}"),
    })?;
    batches.push(row(None, None, None, Some(&json))?);
    Ok(batches)
}

pub(crate) fn row(
    model: Option<&str>,
    date: Option<i32>,
    scores: Option<&[f64]>,
    report: Option<&str>,
) -> Result<RecordBatch, TransformError> {
    let values = Float64Array::from(scores.unwrap_or_default().to_vec());
    let list = ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float64, false)),
        OffsetBuffer::from_lengths([values.len()]),
        Arc::new(values),
        scores.is_none().then(|| vec![false].into()),
    )
    .map_err(|e| answer_err(&e))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![model])),
        Arc::new(Date32Array::from(vec![date])),
        Arc::new(list),
        Arc::new(StringArray::from(vec![report])),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| answer_err(&e))
}

fn answer_err(e: &dyn fmt::Display) -> TransformError {
    TransformError::Cluster {
        engine: "this executor".into(),
        message: format!("cannot build the writer's answer: {e}"),
    }
}

/// The writer's [`NodeCodec`], for the cluster's processes.
#[derive(Debug)]
pub struct KeptWriterCodec;

impl NodeCodec for KeptWriterCodec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn encode(&self, plan: &dyn ExecutionPlan) -> Option<Result<Vec<u8>>> {
        let node = plan.downcast_ref::<WriteKeptExec>()?;
        Some(serde_json::to_vec(node.spec.as_ref()).map_err(|e| {
            DataFusionError::Internal(format!("cannot encode the writer of kept rows: {e}"))
        }))
    }

    fn decode(
        &self,
        bytes: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let spec: Spec = serde_json::from_slice(bytes).map_err(|e| {
            DataFusionError::Internal(format!("cannot decode the writer of kept rows: {e}"))
        })?;
        // The attempt goes into every file's name: never a path.
        if spec.attempt.is_empty()
            || spec.attempt.len() > 32
            || !spec.attempt.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(DataFusionError::Internal(format!(
                "the writer of kept rows names its attempt {:?}: not 1 to 32 letters and digits",
                spec.attempt
            )));
        }
        let [input] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "the writer of kept rows has one input, not {}",
                inputs.len()
            )));
        };
        Ok(Arc::new(WriteKeptExec::new(spec, input.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::empty::EmptyExec;

    #[test]
    fn the_writer_travels_with_its_spec_and_a_garbled_one_is_refused() {
        let input: Arc<dyn ExecutionPlan> =
            Arc::new(EmptyExec::new(Arc::new(Schema::new(vec![Field::new(
                "__rows",
                DataType::Int64,
                false,
            )]))));
        let spec = Spec {
            out: "s3://bucket/stage/run/kept-0a1b2c3d/".into(),
            attempt: "0a1b2c3d".into(),
            models: vec!["churn".into(), "upsell".into()],
            keep_null_identities: true,
            run_id: Some("run-1".into()),
            format: OutputFormat::default(),
        };
        let node = WriteKeptExec::new(spec, input.clone());
        let codec = KeptWriterCodec;
        assert!(codec.encode(input.as_ref()).is_none(), "not the writer");
        let bytes = codec.encode(&node).unwrap().unwrap();
        let back = codec.decode(&bytes, std::slice::from_ref(&input)).unwrap();
        let back = back.downcast_ref::<WriteKeptExec>().unwrap();
        assert_eq!(back.spec.out, node.spec.out);
        assert_eq!(back.spec.models, node.spec.models);
        assert_eq!(back.spec.run_id.as_deref(), Some("run-1"));
        assert!(
            codec
                .decode(b"{\"out\": 1}", std::slice::from_ref(&input))
                .is_err()
        );
        assert!(codec.decode(&bytes, &[]).is_err());
        for hostile in [
            "",
            "../../etc",
            "a/b",
            "0a1b\\x",
            "0a1b.2c",
            &"a".repeat(33),
        ] {
            let spec = Spec {
                attempt: hostile.to_string(),
                ..back.spec.as_ref().clone()
            };
            let bytes = serde_json::to_vec(&spec).unwrap();
            let e = codec
                .decode(&bytes, std::slice::from_ref(&input))
                .err()
                .unwrap_or_else(|| panic!("{hostile:?} was taken"));
            assert!(e.to_string().contains("names its attempt"), "{e}");
        }
    }
}
