//! Compiled JSON Schema validators, cached per tool: compiling is far more
//! expensive than validating, and a tool's schema rarely changes. An entry
//! is reused only while the tool's stored schema is the one it was compiled
//! from, so an edited schema takes effect at once.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Beyond this many tools the cache starts over (bounded memory).
const MAX_ENTRIES: usize = 10_000;
/// At most this many violations are listed.
const MAX_VIOLATIONS: usize = 100;

type Entry = (Value, Arc<jsonschema::Validator>);

static CACHE: LazyLock<Mutex<HashMap<Uuid, Entry>>> = LazyLock::new(Default::default);

/// One schema violation: where (JSON pointer into `input_json`) and what.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON pointer, `""` for the whole input.
    pub pointer: String,
    pub message: String,
}

/// The validator of `schema` for `tool_id`, compiled once.
pub fn validator(tool_id: Uuid, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    if let Ok(cache) = CACHE.lock()
        && let Some((cached_schema, validator)) = cache.get(&tool_id)
        && cached_schema == schema
    {
        return Ok(validator.clone());
    }
    // With default features off, a remote `$ref` is an error, not a fetch.
    let compiled = Arc::new(jsonschema::validator_for(schema).map_err(|e| e.to_string())?);
    if let Ok(mut cache) = CACHE.lock() {
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(tool_id, (schema.clone(), compiled.clone()));
    }
    Ok(compiled)
}

/// Every violation of `instance` (up to a bound), each with its pointer.
pub fn violations(validator: &jsonschema::Validator, instance: &Value) -> Vec<Violation> {
    validator
        .iter_errors(instance)
        .take(MAX_VIOLATIONS)
        .map(|e| {
            let mut message = e.to_string();
            if message.len() > 300 {
                let mut cut = 300;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push('…');
            }
            Violation {
                pointer: e.instance_path().to_string(),
                message,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_every_violation_with_pointers_and_recompiles_on_change() {
        let id = Uuid::new_v4();
        let schema = json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}, "s": {"type": "string", "maxLength": 2}},
            "required": ["n", "s", "r"]
        });
        let v = validator(id, &schema).expect("compiles");
        let found = violations(&v, &json!({"n": "x", "s": "long"}));
        let mut pointers: Vec<&str> = found.iter().map(|v| v.pointer.as_str()).collect();
        pointers.sort_unstable();
        assert_eq!(pointers, vec!["", "/n", "/s"], "{found:?}");
        assert!(violations(&v, &json!({"n": 1, "s": "ab", "r": 0})).is_empty());
        let again = validator(id, &schema).expect("cached");
        assert!(Arc::ptr_eq(&v, &again));
        let changed = validator(id, &json!({"type": "string"})).expect("recompiled");
        assert!(!Arc::ptr_eq(&v, &changed));
        assert!(validator(Uuid::new_v4(), &json!({"type": 12})).is_err());
    }
}
