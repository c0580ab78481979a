//! The event log's JSON Schema (`docs/schema/event.schema.json`), generated from the event
//! types themselves (`schemars` derives on [`crate::event`]), so it cannot drift from what
//! `--log` writes: `watcher schema` prints it, `cargo xtask schema` writes the file, and a test
//! checks the file is current and that every log the tests produce validates against it.
//!
//! Every record is one of the `kind` variants; unknown properties are refused
//! (`unevaluatedProperties: false`), so a field added to the types without regenerating the
//! schema fails the tests instead of going undocumented.
use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use crate::event::{Event, SCHEMA_VERSION, Ts};

impl JsonSchema for Ts {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "RFC 3339 UTC with nanoseconds, e.g. 2026-11-23T19:10:00.123456789Z",
            "type": "string",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?Z$",
        })
    }
}

/// Refuse unknown properties in every object that declares properties (the flattened process
/// fields are merged into each record by schemars).
fn close(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("unevaluatedProperties".into(), Value::Bool(false));
            }
            for (_, x) in m.iter_mut() {
                close(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close),
        _ => {}
    }
}

/// The schema as a JSON value.
pub fn schema() -> Value {
    let mut v = serde_json::to_value(schemars::schema_for!(Event)).unwrap_or(Value::Null);
    // The records: each variant is `$ref` to its type plus the `kind` constant, and is closed
    // there (a closed `$defs` target would not see `kind`, evaluated beside the `$ref`).
    let variants: Vec<String> = v["oneOf"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["$ref"].as_str()?.strip_prefix("#/$defs/").map(str::to_string)).collect())
        .unwrap_or_default();
    if let Some(defs) = v.get_mut("$defs").and_then(Value::as_object_mut) {
        for (name, d) in defs.iter_mut() {
            if variants.contains(name) {
                if let Some(props) = d.get_mut("properties") {
                    close(props);
                }
            } else {
                close(d);
            }
        }
    }
    if let Some(one) = v.get_mut("oneOf").and_then(Value::as_array_mut) {
        for x in one {
            x["unevaluatedProperties"] = Value::Bool(false);
        }
    }
    if let Value::Object(m) = &mut v {
        m.insert(
            "title".into(),
            Value::from(format!("watcher event log record (schema {SCHEMA_VERSION}), one per line of a JSONL log")),
        );
        m.insert("$comment".into(), Value::from("Generated from watcher/src/event.rs: `cargo xtask schema`."));
    }
    v
}

/// The schema file's text (pretty JSON, trailing newline).
pub fn render() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    s.push('\n');
    s
}
