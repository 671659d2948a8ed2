//! Bearer tokens and the two scopes they grant.
//!
//! - `client`: prepare, submit, abort, registerBranch, newGid, version and query (a
//!   transaction read by its gid, as an initiator learns its outcome; `branch_headers` are
//!   shown only to the operator scope).
//! - `operator`: all (every transaction), forceStop, the cron resets, metrics and the admin
//!   routes; an operator token is good for client routes too.
//!
//! A scope is required when at least one token grants it. Without client tokens anyone may
//! use client routes (so DTM clients that send no `Authorization` header keep working);
//! without operator tokens, whoever may use client routes may use operator routes too.
//! Several tokens may be valid at once, so they can be rotated. A token that is sent but
//! matches none is refused even on an open route: a client with a stale token learns at once.
//! Tokens are compared in constant time and never printed.

use std::fmt;

use serde::Deserialize;

/// A secret string: printed as `<redacted>` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Running transactions.
    Client,
    /// Seeing and steering every transaction.
    Operator,
}

impl Scope {
    /// The scope's name in configuration and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Operator => "operator",
        }
    }
}

/// What the caller of one request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The caller may use client routes.
    pub client: bool,
    /// The caller may use operator routes and see `branch_headers`.
    pub operator: bool,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No token was sent to a route that needs one.
    #[error("this route needs a bearer token with the {} scope (Authorization: Bearer TOKEN)", .0.as_str())]
    Missing(Scope),
    /// The token sent is not one of the configured tokens.
    #[error("the bearer token sent is not valid")]
    Wrong,
    /// The header is not `Bearer TOKEN`.
    #[error("the Authorization header must be 'Bearer TOKEN'")]
    Malformed,
    /// The token is valid but lacks the scope.
    #[error("the bearer token sent does not grant the {} scope", .0.as_str())]
    Scope(Scope),
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    client: Vec<Secret>,
    operator: Vec<Secret>,
}

/// Compares two byte strings in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

fn any_same(tokens: &[Secret], sent: &str) -> bool {
    // Every token is compared, so the time does not tell which one matched.
    tokens.iter().fold(false, |found, t| {
        same(t.0.as_bytes(), sent.as_bytes()) | found
    })
}

impl Tokens {
    /// Tokens granting each scope; empty ones are dropped.
    pub fn new(client: Vec<Secret>, operator: Vec<Secret>) -> Self {
        let keep = |v: Vec<Secret>| v.into_iter().filter(|t| !t.0.trim().is_empty()).collect();
        Self {
            client: keep(client),
            operator: keep(operator),
        }
    }

    /// Whether a scope needs a token.
    pub fn required(&self, scope: Scope) -> bool {
        match scope {
            Scope::Client => !self.client.is_empty(),
            Scope::Operator => !self.operator.is_empty(),
        }
    }

    /// What the caller sending `authorization` (the header's value, if any) may do.
    ///
    /// # Errors
    /// [`Denied`] for a malformed header or a token that matches none.
    pub fn grant(&self, authorization: Option<&[u8]>) -> Result<Grant, Denied> {
        let (mut client, mut operator) = (false, false);
        if let Some(header) = authorization {
            if !(self.client.is_empty() && self.operator.is_empty()) {
                let text = std::str::from_utf8(header).map_err(|_| Denied::Malformed)?;
                let (scheme, token) = text.trim().split_once(' ').ok_or(Denied::Malformed)?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(Denied::Malformed);
                }
                let token = token.trim();
                operator = any_same(&self.operator, token);
                client = any_same(&self.client, token);
                if !operator && !client {
                    return Err(Denied::Wrong);
                }
            }
        }
        let client = client || operator || !self.required(Scope::Client);
        let operator = if self.required(Scope::Operator) {
            operator
        } else {
            client
        };
        Ok(Grant { client, operator })
    }

    /// Checks that the caller may use a route of `scope`.
    ///
    /// # Errors
    /// [`Denied`] saying what is missing.
    pub fn check(&self, authorization: Option<&[u8]>, scope: Scope) -> Result<Grant, Denied> {
        let grant = self.grant(authorization)?;
        let ok = match scope {
            Scope::Client => grant.client,
            Scope::Operator => grant.operator,
        };
        if ok {
            Ok(grant)
        } else if authorization.is_none() {
            Err(Denied::Missing(scope))
        } else {
            Err(Denied::Scope(scope))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(client: &[&str], operator: &[&str]) -> Tokens {
        let s = |v: &[&str]| v.iter().map(|t| Secret::new(*t)).collect();
        Tokens::new(s(client), s(operator))
    }

    #[test]
    fn with_no_tokens_everything_is_open() {
        let t = tokens(&[], &[]);
        assert!(t.check(None, Scope::Operator).unwrap().operator);
        assert!(t.check(Some(b"Bearer anything"), Scope::Client).is_ok());
    }

    #[test]
    fn an_operator_token_alone_leaves_client_routes_open() {
        let t = tokens(&[], &["op-1"]);
        assert!(t.check(None, Scope::Client).is_ok());
        assert_eq!(
            t.check(None, Scope::Operator),
            Err(Denied::Missing(Scope::Operator))
        );
        assert!(t.check(Some(b"Bearer op-1"), Scope::Operator).is_ok());
        assert_eq!(
            t.check(Some(b"Bearer op-2"), Scope::Client),
            Err(Denied::Wrong)
        );
    }

    #[test]
    fn without_operator_tokens_client_callers_are_operators() {
        let t = tokens(&["c"], &[]);
        assert_eq!(
            t.check(None, Scope::Operator),
            Err(Denied::Missing(Scope::Operator))
        );
        let g = t.check(Some(b"Bearer c"), Scope::Operator).unwrap();
        assert!(g.client && g.operator);
    }

    #[test]
    fn scopes_are_kept_apart_and_rotation_works() {
        let t = tokens(&["c-old", "c-new"], &["op"]);
        assert_eq!(
            t.check(None, Scope::Client),
            Err(Denied::Missing(Scope::Client))
        );
        assert!(t.check(Some(b"Bearer c-old"), Scope::Client).is_ok());
        assert!(t.check(Some(b"bearer  c-new "), Scope::Client).is_ok());
        assert_eq!(
            t.check(Some(b"Bearer c-new"), Scope::Operator),
            Err(Denied::Scope(Scope::Operator))
        );
        assert!(t.check(Some(b"Bearer op"), Scope::Client).is_ok());
        assert_eq!(
            t.check(Some(b"Basic op"), Scope::Client),
            Err(Denied::Malformed)
        );
        assert_eq!(
            t.check(Some(b"Bearer c-ol"), Scope::Client),
            Err(Denied::Wrong)
        );
        assert_eq!(
            t.check(Some(&[0xff]), Scope::Client),
            Err(Denied::Malformed)
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert!(!format!("{:?}", tokens(&["hunter2"], &[])).contains("hunter2"));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"abcd"));
    }
}
