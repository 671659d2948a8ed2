//! Who may use the coordinator, and whom the coordinator may call.
//!
//! - [`allowlist`]: the destinations branch calls, check-backs and HTTP steps may go to,
//!   checked when a URL is registered and again, after name resolution, before every call.
//! - [`tokens`]: optional bearer tokens with a `client` and an `operator` scope.

pub mod allowlist;
pub mod tokens;

pub use allowlist::{Allowlist, AllowlistResolver, Refused};
pub use tokens::{Denied, Grant, Scope, Secret, Tokens};
