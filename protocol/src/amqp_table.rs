//! Celery's headers on AMQP: an AMQP field table each way. py-amqp writes integers as
//! signed 64-bit, floats as doubles, strings as long strings and `None` as void.

use amq_protocol_types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::{Map, Number, Value};

use super::headers::{shared_name, Headers};

/// AMQP header table → message headers (Celery's headers are JSON-shaped). A table's
/// keys are distinct, so no name is searched for among the others.
pub fn table_to_headers(table: &FieldTable) -> Headers {
    Headers::from_distinct(
        table
            .inner()
            .iter()
            .map(|(k, v)| (shared_name(k.as_str()), value_to_json(v)))
            .collect(),
    )
}

fn entries_of(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
        .collect()
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        AMQPValue::Double(f) => Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
        AMQPValue::DecimalValue(d) => Number::from_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(table) => Value::Object(entries_of(table)),
        AMQPValue::Void => Value::Null,
    }
}

/// Message headers → AMQP header table, with the types py-amqp uses.
pub fn headers_to_table(headers: &Headers) -> FieldTable {
    table_of(headers.iter())
}

fn table_of<'a>(entries: impl Iterator<Item = (&'a str, &'a Value)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in entries {
        table.insert(k.into(), json_to_value(v));
    }
    table
}

fn json_to_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(items) => {
            AMQPValue::FieldArray(FieldArray::from(items.iter().map(json_to_value).collect::<Vec<_>>()))
        }
        Value::Object(map) => AMQPValue::FieldTable(table_of(map.iter().map(|(k, v)| (k.as_str(), v)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn celery_headers_survive_the_amqp_table() {
        let headers = json!({"task": "math.add", "retries": 0, "timelimit": [null, 1.5], "stamps": {}, "ignore_result": false, "eta": null});
        let map = Headers::from(headers.as_object().unwrap().clone());
        assert_eq!(table_to_headers(&headers_to_table(&map)), map);
    }
}
