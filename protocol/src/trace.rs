//! W3C trace context (`traceparent`), as Settle carries it: the initiator's header is kept
//! with its transaction, and every call the coordinator makes for it (branch calls, published
//! messages) carries the same trace id with a span id of its own, so that one business
//! request is one trace across services.
//!
//! A `traceparent` is `VERSION-TRACEID-PARENTID-FLAGS`: 2, 32, 16 and 2 lowercase hex
//! digits; an all-zero trace or parent id is invalid, and so is version `ff`.

/// The header's name.
pub const HEADER: &str = "traceparent";

/// The message property a published message carries it in.
pub const PROPERTY: &str = "traceparent";

fn hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `value` is a valid `traceparent` (version 00 layout; later versions may append
/// fields, which are ignored).
pub fn is_valid(value: &str) -> bool {
    let mut parts = value.split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let extra = parts.next().is_some();
    hex(version, 2)
        && version != "ff"
        && !(version == "00" && extra)
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
}

/// The trace id of a valid `traceparent`.
pub fn trace_id(value: &str) -> Option<&str> {
    is_valid(value).then(|| &value[3..35])
}

/// The parent (span) id of a valid `traceparent`: the caller's span.
pub fn parent_id(value: &str) -> Option<&str> {
    is_valid(value).then(|| &value[36..52])
}

/// `value` (valid) with `span_id` as its parent id: what a call made on behalf of the span
/// `value` names sends, once it opened its own span `span_id` (not zero).
pub fn child(value: &str, span_id: u64) -> Option<String> {
    if !is_valid(value) || span_id == 0 {
        return None;
    }
    Some(format!(
        "00-{}-{span_id:016x}-{}",
        &value[3..35],
        &value[53..55]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W3C_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_is_valid_and_keeps_its_trace_id_in_a_child() {
        assert!(is_valid(W3C_EXAMPLE));
        assert_eq!(
            trace_id(W3C_EXAMPLE),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(parent_id(W3C_EXAMPLE), Some("00f067aa0ba902b7"));
        assert_eq!(
            child(W3C_EXAMPLE, 0xabc).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01")
        );
    }

    #[test]
    fn malformed_or_zero_ids_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!is_valid(bad), "{bad}");
            assert_eq!(child(bad, 1), None);
        }
        assert!(is_valid(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
    }
}
