//! W3C trace context (`traceparent`) carried from HTTP requests into NATS
//! headers and on to the workers, so one call's log lines join up across
//! the ingress, the api and the workers (log field `trace_id`).

use std::fmt;

/// The header name in HTTP and in NATS messages.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2
        || !text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TraceContext {
    /// A new root trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: crate::crypto::random_bytes::<16>(),
            parent_id: crate::crypto::random_bytes::<8>(),
            sampled: true,
        }
    }

    /// Parses a `traceparent` value (version 00); `None` when malformed or
    /// all-zero, as the spec requires.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id = unhex::<16>(trace)?;
        let parent_id = unhex::<8>(parent)?;
        let flags = unhex::<1>(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The same trace, one hop further (a new parent id).
    pub fn child(&self) -> Self {
        Self {
            parent_id: crate::crypto::random_bytes::<8>(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The incoming HTTP request's context continued, or a new root.
    pub fn from_http(headers: &axum::http::HeaderMap) -> Self {
        headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
            .map_or_else(Self::new_root, |parent| parent.child())
    }

    /// The context a NATS message carried, continued one hop.
    pub fn from_nats(headers: Option<&async_nats::HeaderMap>) -> Option<Self> {
        headers?
            .get(TRACEPARENT)
            .and_then(|v| Self::parse(v.as_str()))
            .map(|parent| parent.child())
    }

    /// Adds this context to outgoing NATS headers.
    pub fn inject(&self, headers: &mut async_nats::HeaderMap) {
        headers.insert(TRACEPARENT, self.to_string().as_str());
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            if self.sampled { "01" } else { "00" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example_and_round_trips() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(v).expect("valid");
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.sampled);
        assert_eq!(ctx.to_string(), v);
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn travels_through_nats_headers() {
        let ctx = TraceContext::new_root();
        let mut headers = async_nats::HeaderMap::new();
        ctx.inject(&mut headers);
        let got = TraceContext::from_nats(Some(&headers)).expect("carried");
        assert_eq!(got.trace_id, ctx.trace_id);
        assert_ne!(got.parent_id, ctx.parent_id);
        assert!(TraceContext::from_nats(None).is_none());
    }
}
