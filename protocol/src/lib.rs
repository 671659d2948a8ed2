//! Wire types of the DTM protocol (v1.19), shared by Settle's coordinator and its SDK.
//!
//! Everything here is plain data plus the few rules of the wire format that both sides must
//! agree on: the JSON bodies of the server routes, the answers, the query parameters of a
//! branch call, and how a branch's answer is classified. Nothing here talks to a network or a
//! database, so the SDK can depend on it without pulling in the server.
//!
//! # Layout
//! - [`request`]: bodies clients send to the coordinator (`prepare`, `submit`, `abort`,
//!   `registerBranch`).
//! - [`answer`]: what the coordinator answers, and the views returned by `query` and `all`.
//! - [`branch`]: how the coordinator calls a branch and how the answer is classified.
//! - [`names`]: the strings of transaction types, statuses and branch operations.

pub mod answer;
pub mod branch;
pub mod names;
pub mod request;
pub mod trace;

pub use answer::{DtmResult, QueryAnswer, TransBranchView, TransGlobalView};
pub use branch::{classify_answer, BranchOutcome, BranchParams};
pub use request::{GlobalRequest, RegisterBranchRequest};

/// Path prefix of every DTM server route.
pub const API_PREFIX: &str = "/api/dtmsvr";
