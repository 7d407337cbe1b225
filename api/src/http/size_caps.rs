//! Caps on the JSON documents tenants store or send through us: an agent
//! version's config, a tool's input schema and a tool call's input. The body
//! limit bounds a request; these bound what one stored value may cost every
//! later read (the catalog, each call's context, each NATS message).

use axum::http::StatusCode;
use serde_json::Value;

use crate::http::error::{AppError, AppResult};

/// The caps, in bytes of compact JSON (`MAX_*_BYTES`).
#[derive(Debug, Clone, Copy)]
pub struct SizeCaps {
    pub agent_config: usize,
    pub tool_schema: usize,
    pub tool_input: usize,
}

/// 413 naming `field`, its size, the cap and the setting that raises it,
/// when `value` is larger than `max` bytes of JSON; else its size.
pub fn check(field: &str, value: &Value, max: usize, setting: &str) -> AppResult<usize> {
    let size = json_len(value);
    if size > max {
        return Err(too_large(format!(
            "{field} is {size} bytes of JSON; at most {max} ({setting})"
        )));
    }
    Ok(size)
}

pub fn too_large(message: String) -> AppError {
    AppError::Status {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "payload_too_large",
        message,
    }
}

/// Compact JSON length, counted without building the string.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn counts_compact_json_and_refuses_only_above_the_cap() {
        let value = json!({"a": [1, 2, "x"]});
        let len = serde_json::to_vec(&value).expect("json").len();
        assert_eq!(json_len(&value), len);
        assert_eq!(check("config", &value, len, "MAX").expect("fits"), len);
        let err =
            check("config", &value, len - 1, "MAX_AGENT_CONFIG_BYTES").expect_err("too large");
        let AppError::Status {
            status, message, ..
        } = err
        else {
            panic!("unexpected error");
        };
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(message.contains("MAX_AGENT_CONFIG_BYTES"), "{message}");
    }
}
