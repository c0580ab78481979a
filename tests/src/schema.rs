//! Every event log the tests read (`read_jsonl`) is checked against the published schema,
//! `docs/schema/event.schema.json` (generated from the event types: `cargo xtask schema`), so
//! a record the schema does not describe fails the test that produced it.
use std::{path::Path, sync::OnceLock};

use serde_json::Value;

/// The schema file.
pub fn schema_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("docs/schema/event.schema.json")
}

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let path = schema_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{}: not a valid schema: {e}", path.display()))
    })
}

/// Whether `lines` are an event log (their first record is a `start`, or every record has a
/// `kind` and a `ts`).
pub fn is_event_log(lines: &[Value]) -> bool {
    lines.first().is_some_and(|v| v["kind"] == "start")
        || (!lines.is_empty() && lines.iter().all(|v| v["kind"].is_string() && v["ts"].is_string()))
}

/// Every record valid, or an error naming `path:line` and what is wrong.
pub fn check(path: &Path, lines: &[(usize, Value)]) -> Result<(), String> {
    let v = validator();
    for (n, rec) in lines {
        if let Some(e) = v.iter_errors(rec).next() {
            return Err(format!(
                "{}:{n}: the record does not match {}: {e} at {}\n{rec}",
                path.display(),
                schema_path().display(),
                e.instance_path
            ));
        }
    }
    Ok(())
}
