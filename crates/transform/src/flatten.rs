//! From XDM rows to flat columns: discovery of the Customer AI layout, and the expressions that
//! pull each output column out of one schema group.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray, make_array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::{Expr, cast, ident, lit};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::schema::types::SchemaDescriptor;

use crate::config::{Mapping, ModelMapping};
use crate::error::TransformError;

/// The flat output columns, in order, with their types (`influential_factors` keeps the
/// source's list-of-struct type and is added separately).
pub(crate) const FLAT_COLUMNS: [(&str, DataType); 7] = [
    ("identity", DataType::Utf8),
    ("identity_namespace", DataType::Utf8),
    ("score", DataType::Float64),
    ("probability", DataType::Float64),
    ("percentile", DataType::Int32),
    ("propensity_type", DataType::Utf8),
    ("score_date", DataType::Date32),
];

/// The data type at a dotted path, if the schema has it.
pub(crate) fn path_type(schema: &Schema, path: &str) -> Option<DataType> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut field: &Field = schema.field_with_name(first).ok()?;
    for p in parts {
        let DataType::Struct(children) = field.data_type() else {
            return None;
        };
        field = children.iter().find(|f| f.name() == p)?;
    }
    Some(field.data_type().clone())
}

/// The expression reading a dotted path (quoted, so case and leading underscores survive).
pub(crate) fn path_expr(path: &str) -> Expr {
    let mut parts = path.split('.');
    let mut expr = ident(parts.next().unwrap_or_default());
    for p in parts {
        expr = get_field(expr, p);
    }
    expr
}

/// Customer AI's layout, discovered from one schema: `_<tenant>.CustomerAI.<instance>` structs,
/// identity at `_<tenant>.identity.{id, namespace.code}`.
pub(crate) fn discover(schema: &Schema, file: &Path) -> Result<Mapping, TransformError> {
    for field in schema.fields() {
        let DataType::Struct(children) = field.data_type() else {
            continue;
        };
        if !field.name().starts_with('_') {
            continue;
        }
        let Some(cai) = children.iter().find(|c| c.name() == "CustomerAI") else {
            continue;
        };
        let DataType::Struct(instances) = cai.data_type() else {
            continue;
        };
        let tenant = field.name();
        let models: Vec<ModelMapping> = instances
            .iter()
            .filter(|i| matches!(i.data_type(), DataType::Struct(_)))
            .map(|i| {
                let base = format!("{tenant}.CustomerAI.{}", i.name());
                ModelMapping {
                    name: i.name().clone(),
                    score: format!("{base}.score"),
                    probability: Some(format!("{base}.probability")),
                    percentile: Some(format!("{base}.percentile")),
                    propensity_type: Some(format!("{base}.propensityType")),
                    score_date: Some(format!("{base}.scoreDate")),
                    influential_factors: Some(format!("{base}.influentialFactors")),
                    present: Some(base),
                }
            })
            .collect();
        if models.is_empty() {
            continue;
        }
        return Ok(Mapping {
            identity: format!("{tenant}.identity.id"),
            identity_namespace: Some(format!("{tenant}.identity.namespace.code")),
            record_id: Some("_id".into()),
            models,
        });
    }
    Err(TransformError::NoScores {
        file: file.to_path_buf(),
    })
}

/// Merges the models of several discovered mappings (a model may appear in some parts only).
pub(crate) fn merge_mappings(mappings: Vec<Mapping>) -> Option<Mapping> {
    let mut iter = mappings.into_iter();
    let mut first = iter.next()?;
    let mut models: BTreeMap<String, ModelMapping> = first
        .models
        .drain(..)
        .map(|m| (m.name.clone(), m))
        .collect();
    for m in iter {
        for model in m.models {
            models.entry(model.name.clone()).or_insert(model);
        }
    }
    first.models = models.into_values().collect();
    Some(first)
}

/// The select list that turns one schema group's rows into `model`'s flat rows, and the
/// filter keeping the rows this model scored.
pub(crate) fn model_select(
    schema: &Schema,
    mapping: &Mapping,
    model: &ModelMapping,
    factors_type: &Option<DataType>,
    batch_id: &str,
    batch_created_ms: i64,
) -> (Vec<Expr>, Option<Expr>) {
    let typed = |path: Option<&String>, ty: &DataType, name: &str| -> Expr {
        match path.filter(|p| path_type(schema, p).is_some()) {
            Some(p) => cast(path_expr(p), ty.clone()).alias(name),
            None => lit(ScalarValue::try_from(ty).unwrap_or(ScalarValue::Null)).alias(name),
        }
    };
    let sources: [Option<&String>; 7] = [
        Some(&mapping.identity),
        mapping.identity_namespace.as_ref(),
        Some(&model.score),
        model.probability.as_ref(),
        model.percentile.as_ref(),
        model.propensity_type.as_ref(),
        model.score_date.as_ref(),
    ];
    let mut exprs = vec![lit(model.name.clone()).alias("model")];
    for (src, (name, ty)) in sources.iter().zip(FLAT_COLUMNS.iter()) {
        exprs.push(typed(*src, ty, name));
    }
    let factors = match factors_type {
        Some(ty) => typed(
            model.influential_factors.as_ref(),
            ty,
            "influential_factors",
        ),
        None => lit(ScalarValue::Utf8(None)).alias("influential_factors"),
    };
    exprs.push(factors);
    let record = mapping.record_id.clone().unwrap_or_else(|| "_id".into());
    exprs.push(typed(Some(&record), &DataType::Utf8, "record_id"));
    exprs.push(lit(batch_id.to_string()).alias("batch_id"));
    exprs.push(
        lit(ScalarValue::TimestampMicrosecond(
            Some(batch_created_ms * 1000),
            Some("UTC".into()),
        ))
        .alias("batch_created"),
    );
    let present = model.present.as_ref().unwrap_or(&model.score).clone();
    let filter = path_type(schema, &present).map(|_| path_expr(&present).is_not_null());
    // A model absent from this group's schema has no rows here.
    let filter = filter.or(Some(lit(false)));
    (exprs, filter)
}

/// Columns a mapping reads, for the type-compatibility check across groups.
pub(crate) fn mapped_paths(mapping: &Mapping) -> Vec<String> {
    let mut paths = vec![mapping.identity.clone()];
    paths.extend(mapping.identity_namespace.clone());
    for m in &mapping.models {
        paths.extend(model_paths(m).map(str::to_string));
    }
    paths
}

/// The paths a model's columns are read from (its presence path aside).
pub(crate) fn model_paths(m: &ModelMapping) -> impl Iterator<Item = &str> {
    std::iter::once(m.score.as_str()).chain(
        [
            &m.probability,
            &m.percentile,
            &m.propensity_type,
            &m.score_date,
            &m.influential_factors,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str),
    )
}

/// Whether two types of one column in different parts can be read as one output column.
pub(crate) fn compatible(a: &DataType, b: &DataType) -> bool {
    a == b
        || (a.is_numeric() && b.is_numeric())
        || (matches!(a, DataType::List(_)) && matches!(b, DataType::List(_)))
}

/// The array at a dotted path of `batch` (struct fields by name), null wherever an ancestor
/// struct is null; `None` when the batch does not have the path.
pub(crate) fn path_array(batch: &RecordBatch, path: &str) -> Option<ArrayRef> {
    let mut parts = path.split('.');
    let mut array = batch.column_by_name(parts.next()?)?.clone();
    for p in parts {
        let parent = array.as_struct_opt()?;
        array = field_of(parent, parent.column_by_name(p)?);
    }
    Some(array)
}

/// `child`, a field of the struct array `parent`, null wherever `parent` is.
pub(crate) fn field_of(parent: &StructArray, child: &ArrayRef) -> ArrayRef {
    match parent.nulls().filter(|n| n.null_count() > 0) {
        Some(nulls) => {
            let merged = NullBuffer::union(Some(nulls), child.nulls());
            let data = child.to_data().into_builder().nulls(merged);
            // SAFETY: the child's own buffers, unchanged, with more of its slots null.
            make_array(unsafe { data.build_unchecked() })
        }
        None => child.clone(),
    }
}

/// The parquet leaf columns under each dotted path: all of them, or only the first when the
/// path is read for whether it is null.
pub(crate) fn leaves<'a>(
    descr: &SchemaDescriptor,
    paths: impl IntoIterator<Item = (&'a str, bool)>,
) -> ProjectionMask {
    let mut picked = Vec::new();
    for (path, first_only) in paths {
        let parts: Vec<&str> = path.split('.').collect();
        for (i, column) in descr.columns().iter().enumerate() {
            let leaf = column.path().parts();
            if leaf.len() >= parts.len() && leaf.iter().zip(&parts).all(|(a, b)| a == b) {
                picked.push(i);
                if first_only {
                    break;
                }
            }
        }
    }
    picked.sort_unstable();
    picked.dedup();
    ProjectionMask::leaves(descr, picked)
}

/// `array` as `ty`, as DataFusion's `CAST` does (an impossible value is an error, not a null).
pub(crate) fn cast_to(array: &ArrayRef, ty: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == ty {
        return Ok(array.clone());
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(array, ty, &options)
}
