//! What the execute path keeps in memory: compiled JSON Schema validators
//! (compiling is far more expensive than validating) and the tools they
//! belong to, looked up by tenant and id or name. Neither can let a stale
//! schema through: a validator is reused only for the schema it was compiled
//! from, and the execute path's single SQL call refuses a cached tool whose
//! stored name or schema differs (`stale`, migration 0006), after which the
//! tool is read afresh.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Beyond this many entries a cache starts over (bounded memory).
const MAX_ENTRIES: usize = 10_000;
/// At most this many violations are listed.
const MAX_VIOLATIONS: usize = 100;

type Entry = (Value, Arc<jsonschema::Validator>);

static CACHE: LazyLock<Mutex<HashMap<Uuid, Entry>>> = LazyLock::new(Default::default);

/// How an execute request names its tool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ToolKey {
    Id(Uuid),
    Name(String),
}

/// A tool as the execute path needs it.
#[derive(Debug)]
pub struct CachedTool {
    pub id: Uuid,
    pub name: String,
    pub input_schema: Value,
    /// `Err` when the stored schema does not compile.
    pub validator: Result<Arc<jsonschema::Validator>, String>,
}

type ToolEntries = HashMap<(Uuid, ToolKey), Arc<CachedTool>>;

static TOOLS: LazyLock<Mutex<ToolEntries>> = LazyLock::new(Default::default);

/// The cached tool of `tenant_id` named by `key`, if any.
pub fn cached_tool(tenant_id: Uuid, key: &ToolKey) -> Option<Arc<CachedTool>> {
    TOOLS.lock().ok()?.get(&(tenant_id, key.clone())).cloned()
}

/// Caches a tool just read from Postgres (its validator compiled once).
pub fn remember_tool(
    tenant_id: Uuid,
    key: &ToolKey,
    id: Uuid,
    name: String,
    input_schema: Value,
) -> Arc<CachedTool> {
    let tool = Arc::new(CachedTool {
        id,
        validator: validator(id, &input_schema),
        name,
        input_schema,
    });
    if let Ok(mut tools) = TOOLS.lock() {
        if tools.len() >= MAX_ENTRIES {
            tools.clear();
        }
        tools.insert((tenant_id, key.clone()), tool.clone());
    }
    tool
}

/// Drops a cached tool found stale or gone.
pub fn forget_tool(tenant_id: Uuid, key: &ToolKey) {
    if let Ok(mut tools) = TOOLS.lock() {
        tools.remove(&(tenant_id, key.clone()));
    }
}

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
