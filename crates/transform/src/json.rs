//! `to_json(x)`: any value as JSON text, for nested columns in CSV and NDJSON output and for
//! `factors_as_json`. A null stays null.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

pub(crate) fn to_json(expr: Expr) -> Expr {
    ScalarUDF::from(ToJson {
        signature: Signature::any(1, Volatility::Immutable),
    })
    .call(vec![expr])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJson {
    signature: Signature,
}

impl ScalarUDFImpl for ToJson {
    fn name(&self) -> &str {
        "to_json"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(json_text(&array)?))
    }
}

/// One JSON document per row: the array is written as the single field `v` of JSON lines
/// (arrow's writer handles every nested type), and each line's `{"v":…}` is unwrapped. A null
/// row is written as `{}`.
fn json_text(array: &ArrayRef) -> Result<ArrayRef> {
    let schema = Schema::new(vec![Field::new("v", array.data_type().clone(), true)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![array.clone()])?;
    let mut lines = Vec::new();
    {
        let mut writer = LineDelimitedWriter::new(&mut lines);
        writer.write(&batch)?;
        writer.finish()?;
    }
    let text = String::from_utf8(lines)
        .map_err(|e| DataFusionError::Internal(format!("JSON writer produced bad UTF-8: {e}")))?;
    let values: StringArray = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if array.is_null(i) {
                None
            } else {
                line.strip_prefix("{\"v\":")
                    .and_then(|l| l.strip_suffix('}'))
            }
        })
        .collect();
    if values.len() != array.len() {
        return Err(DataFusionError::Internal(format!(
            "JSON writer produced {} lines for {} rows",
            values.len(),
            array.len()
        )));
    }
    Ok(Arc::new(values))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int32Array, ListArray};
    use datafusion::arrow::datatypes::Int32Type;

    use super::*;

    #[test]
    fn lists_become_json_arrays_and_nulls_stay_null() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
            Some(vec![]),
        ]);
        let out = json_text(&(Arc::new(list) as ArrayRef)).unwrap();
        let out = out.as_string::<i32>();
        assert_eq!(out.value(0), "[1,2]");
        assert!(out.is_null(1));
        assert_eq!(out.value(2), "[]");
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![7]));
        assert_eq!(json_text(&ints).unwrap().as_string::<i32>().value(0), "7");
    }
}
