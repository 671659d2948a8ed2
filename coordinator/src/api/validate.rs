//! Input rules. Every check names the field and the problem; nothing is written before all
//! checks pass.

use settle_protocol::GlobalRequest;

use super::error::ApiError;
use crate::config::Config;
use crate::txn::target::Target;
use crate::txn::{NewBranch, TransOptions, TransType};

/// Longest gid or branch id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest URL, in bytes.
pub const MAX_URL_LEN: usize = 1024;
/// Longest rollback reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Most bytes of `branch_headers`, names and values together: they are stored with the
/// transaction's options, in a column of 64 KiB.
pub const MAX_HEADERS_BYTES: usize = 16 * 1024;
/// Longest stored text (`custom_data`, a payload, a branch's data, the steps and payloads
/// as stored), in bytes: the 16 MiB column they are stored in. The request body limit
/// (`--body-limit-bytes`, 1 MiB by default) is usually the tighter one.
pub const MAX_TEXT_BYTES: usize = 16 * 1024 * 1024 - 1;

/// Checks that `value`, stored as JSON, fits its column.
///
/// # Errors
/// A 400 naming `field` and the limit.
pub fn stored_json<T: serde::Serialize>(field: &str, value: &T) -> Result<(), ApiError> {
    let len = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if len > MAX_TEXT_BYTES {
        return Err(ApiError::bad(
            "too_large",
            format!("{field} take {len} bytes stored; at most {MAX_TEXT_BYTES} can be stored"),
        ));
    }
    Ok(())
}

/// Checks that a text to store fits its column.
///
/// # Errors
/// A 400 naming `field` and the limit.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::bad(
            "too_large",
            format!(
                "{field} is {} bytes long; at most {max} can be stored",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a gid or branch id: non-empty, at most 128 bytes of `[A-Za-z0-9_.:-]`.
///
/// # Errors
/// A 400 naming `field`.
pub fn id(field: &'static str, value: &str) -> Result<(), ApiError> {
    let code = if field == "gid" {
        "invalid_gid"
    } else {
        "invalid_branch_id"
    };
    if value.is_empty() {
        return Err(ApiError::bad(code, format!("{field} is missing or empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(ApiError::bad(
            code,
            format!(
                "{field} is {} bytes long; at most {MAX_ID_LEN} are allowed",
                value.len()
            ),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(ApiError::bad(
            code,
            format!(
                "{field} '{}' contains '{c}'; only A-Z a-z 0-9 _ . : - are allowed",
                value.escape_default()
            ),
        ));
    }
    Ok(())
}

/// Parses a `trans_type` and checks that Settle drives it.
///
/// # Errors
/// A 400 for an unknown or unsupported type.
pub fn trans_type(value: &str) -> Result<TransType, ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad(
            "invalid_trans_type",
            "trans_type is missing or empty",
        ));
    }
    let t: TransType = value.parse().map_err(|_| {
        ApiError::bad(
            "invalid_trans_type",
            format!(
                "unknown trans_type '{}': expected tcc, msg, saga, xa or workflow",
                value.escape_default()
            ),
        )
    })?;
    if crate::txn::policy::policy(t).is_none() {
        return Err(ApiError::bad(
            "unsupported_trans_type",
            format!("trans_type '{t}' is not supported by this Settle server (tcc, msg, saga and xa are)"),
        ));
    }
    Ok(t)
}

/// Checks a branch URL: absolute http or https with a host, at most 1024 bytes.
///
/// # Errors
/// A 400 naming `field`.
pub fn url(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad(
            "invalid_url",
            format!("{field} is missing or empty"),
        ));
    }
    if value.len() > MAX_URL_LEN {
        return Err(ApiError::bad(
            "invalid_url",
            format!(
                "{field} is {} bytes long; at most {MAX_URL_LEN} are allowed",
                value.len()
            ),
        ));
    }
    match Target::parse(value) {
        Ok(Target::Http(_)) => Ok(()),
        Ok(Target::RocketMq(_)) => Err(ApiError::bad(
            "invalid_url",
            format!(
                "{field} '{}' has scheme 'rocketmq'; only http and https are supported here",
                value.escape_default()
            ),
        )),
        Err(e) => Err(ApiError::bad("invalid_url", format!("{field} {e}"))),
    }
}

/// Checks the branch operations a request creates (whatever its type made of its steps):
/// each URL and body must be one Settle can call or publish, and there may be at most
/// `max_branches` branches.
///
/// # Errors
/// A 400 naming the operation and what is wrong with it.
pub fn ops(
    ops: &[NewBranch],
    rocketmq: bool,
    max_branches: usize,
    max_message_bytes: usize,
) -> Result<(), ApiError> {
    let branches: std::collections::BTreeSet<&str> =
        ops.iter().map(|o| o.branch_id.as_str()).collect();
    if branches.len() > max_branches {
        return Err(ApiError::bad(
            "too_many",
            format!(
                "a transaction may carry at most {max_branches} branches (--max-branches), got {}",
                branches.len()
            ),
        ));
    }
    for op in ops {
        let what = format!("the {} of branch {}", op.op, op.branch_id);
        text(&format!("the payload of {what}"), &op.data, MAX_TEXT_BYTES)?;
        if op.url.len() > MAX_URL_LEN {
            return Err(ApiError::bad(
                "invalid_steps",
                format!("{what} is a URL longer than {MAX_URL_LEN} bytes"),
            ));
        }
        match Target::parse(&op.url) {
            Ok(Target::Http(_)) => {}
            Ok(Target::RocketMq(_)) if rocketmq => {
                // What the broker would refuse is refused here, before anything is stored.
                if op.data.is_empty() {
                    return Err(ApiError::bad(
                        "invalid_steps",
                        format!("{what} goes to RocketMQ with an empty payload, which the broker refuses"),
                    ));
                }
                if op.data.len() > max_message_bytes {
                    return Err(ApiError::bad(
                        "too_large",
                        format!(
                            "the payload of {what} is {} bytes; a RocketMQ message may have at most {max_message_bytes} (--max-message-bytes)",
                            op.data.len()
                        ),
                    ));
                }
            }
            Ok(Target::RocketMq(_)) => {
                return Err(ApiError::bad(
                    "rocketmq_not_configured",
                    format!("{what} goes to RocketMQ, but this server has no RocketMQ name server configured (--rocketmq-namesrv)"),
                ));
            }
            Err(e) => return Err(ApiError::bad("invalid_steps", format!("{what}: {e}"))),
        }
    }
    Ok(())
}

/// Resolves a request's options against the server defaults.
///
/// # Errors
/// A 400 naming a negative or out-of-range option.
pub fn options(
    req: &GlobalRequest,
    config: &Config,
    policy: &dyn crate::txn::policy::Policy,
) -> Result<TransOptions, ApiError> {
    let pick = |field: &'static str, value: i64, default: i64, max: i64| -> Result<i64, ApiError> {
        if value < 0 {
            return Err(ApiError::bad(
                "invalid_option",
                format!("{field} must not be negative, got {value}"),
            ));
        }
        if value > max {
            return Err(ApiError::bad(
                "invalid_option",
                format!("{field} must be at most {max} seconds, got {value}"),
            ));
        }
        Ok(if value == 0 { default } else { value })
    };
    if req.retry_limit < 0 {
        return Err(ApiError::bad(
            "invalid_option",
            format!("retry_limit must not be negative, got {}", req.retry_limit),
        ));
    }
    let header_bytes: usize = req
        .branch_headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if header_bytes > MAX_HEADERS_BYTES {
        return Err(ApiError::bad(
            "too_large",
            format!(
                "branch_headers hold {header_bytes} bytes of names and values; at most {MAX_HEADERS_BYTES} can be stored"
            ),
        ));
    }
    for (k, v) in &req.branch_headers {
        let ok_name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok();
        let ok_value = reqwest::header::HeaderValue::from_str(v).is_ok();
        if !ok_name || !ok_value {
            return Err(ApiError::bad(
                "invalid_option",
                format!(
                    "branch_headers entry '{}' is not a valid HTTP header",
                    k.escape_default()
                ),
            ));
        }
    }
    if req.rollback_reason.len() > MAX_REASON_LEN {
        return Err(ApiError::bad(
            "invalid_option",
            format!(
                "rollback_reason is {} bytes long; at most {MAX_REASON_LEN} are allowed",
                req.rollback_reason.len()
            ),
        ));
    }
    if !matches!(req.protocol.as_str(), "" | "http") {
        return Err(ApiError::bad(
            "invalid_option",
            format!(
                "protocol '{}' is not supported; use http",
                req.protocol.escape_default()
            ),
        ));
    }
    Ok(TransOptions {
        timeout_to_fail: pick(
            "timeout_to_fail",
            req.timeout_to_fail,
            policy.default_timeout_s(config.default_timeout_to_fail_s),
            30 * 86_400,
        )?,
        request_timeout: pick(
            "request_timeout",
            req.request_timeout,
            config.default_request_timeout_s,
            3_600,
        )?,
        retry_interval: pick(
            "retry_interval",
            req.retry_interval,
            config.default_retry_interval_s,
            86_400,
        )?,
        branch_headers: req.branch_headers.clone(),
        concurrent: req.concurrent,
        wait_result: req.wait_result,
        retry_limit: req.retry_limit,
        traceparent: String::new(),
        callback_url: req.callback_url.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_gid_must_be_short_plain_and_present() {
        assert!(id("gid", "order-1:2_3.4").is_ok());
        assert!(message(id("gid", "")).contains("gid is missing"));
        assert!(message(id("gid", &"a".repeat(129))).contains("129 bytes"));
        assert!(id("gid", &"a".repeat(128)).is_ok());
        assert!(message(id("gid", "a b")).contains("' '"));
        assert!(message(id("gid", "a/b")).contains("'/'"));
        assert!(message(id("gid", "é")).contains("'é'"));
    }

    #[test]
    fn trans_types_are_parsed_and_unsupported_ones_named() {
        assert_eq!(trans_type("tcc").ok(), Some(TransType::Tcc));
        assert!(message(trans_type("tcx")).contains("unknown trans_type 'tcx'"));
        assert_eq!(trans_type("saga").ok(), Some(TransType::Saga));
        assert!(message(trans_type("workflow")).contains("not supported"));
        assert!(message(trans_type("")).contains("missing"));
    }

    #[test]
    fn branch_urls_must_be_http() {
        assert!(url("confirm", "http://127.0.0.1:8080/confirm").is_ok());
        assert!(url("confirm", "https://svc.example/confirm?x=1").is_ok());
        assert!(message(url("confirm", "ftp://h/x")).contains("scheme 'ftp'"));
        assert!(message(url("confirm", "not a url")).contains("is not a URL"));
        assert!(message(url("cancel", "")).contains("cancel is missing"));
    }

    fn op(id: &str, url: &str, data: &str) -> NewBranch {
        NewBranch {
            branch_id: id.into(),
            op: crate::txn::Op::Action,
            url: url.into(),
            data: data.into(),
        }
    }

    #[test]
    fn bad_operations_are_named() {
        let check = |ops_: &[NewBranch], rocketmq: bool| message(ops(ops_, rocketmq, 2, 1024));
        assert!(ops(&[op("01", "http://a/x", "{}")], false, 2, 1024).is_ok());
        assert!(check(&[op("01", "mailto:x@y", "{}")], false)
            .contains("the action of branch 01: 'mailto:x@y' has scheme 'mailto'"));
        assert!(check(&[op("01", "rocketmq://?key=1", "{}")], true).contains("names no topic"));
        assert!(check(&[op("01", "rocketmq://t?key=k", "{}")], false)
            .contains("no RocketMQ name server"));
        assert!(ops(&[op("01", "rocketmq://t?key=k", "{}")], true, 2, 1024).is_ok());
        assert!(check(&[op("01", "rocketmq://t?key=k", "")], true).contains("empty payload"));
        let why = check(&[op("01", "rocketmq://t?key=k", &"x".repeat(1025))], true);
        assert!(
            why.contains("1025 bytes") && why.contains("at most 1024"),
            "{why}"
        );
        let three = [
            op("01", "http://a/x", "{}"),
            op("02", "http://a/x", "{}"),
            op("03", "http://a/x", "{}"),
        ];
        assert!(check(&three, false).contains("at most 2 branches"));
    }

    #[test]
    fn options_default_when_zero_and_reject_negatives() {
        let config = Config::default();
        let tcc = crate::txn::policy::require(TransType::Tcc).unwrap();
        let o = options(&GlobalRequest::new("g", "tcc"), &config, tcc).unwrap();
        assert_eq!(
            (o.timeout_to_fail, o.request_timeout, o.retry_interval),
            (35, 3, 10)
        );
        let req = GlobalRequest {
            request_timeout: -1,
            ..GlobalRequest::new("g", "tcc")
        };
        assert!(
            message(options(&req, &config, tcc)).contains("request_timeout must not be negative")
        );
        let req = GlobalRequest {
            timeout_to_fail: 10_000_000,
            ..GlobalRequest::new("g", "tcc")
        };
        assert!(message(options(&req, &config, tcc)).contains("timeout_to_fail must be at most"));
    }
}
