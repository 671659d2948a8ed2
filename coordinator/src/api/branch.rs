//! `registerBranch` (aliases `registerTccBranch`, `registerXaBranch`): add a branch to a
//! prepared transaction; what it creates is its type's to say.

use axum::extract::State;
use axum::Json;
use settle_protocol::{DtmResult, RegisterBranchRequest};
use tracing::info;

use super::body::JsonBody;
use super::error::ApiError;
use super::{validate, AppState};
use crate::telemetry::ApiOp;
use crate::txn::policy::{field, require};

/// `POST registerBranch`: registers a branch with a prepared transaction: a TCC branch's
/// confirm and cancel, an XA branch's URL (as its type's policy says). Registering the same
/// branch again changes nothing.
///
/// # Errors
/// 400 for bad input (every value must be a string; gid, branch_id and the type's URLs are
/// required), 404 for an unknown gid, 409 if the transaction is no longer prepared.
pub async fn register_branch(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RegisterBranchRequest>,
) -> Result<Json<DtmResult>, ApiError> {
    let checked = (|| {
        let gid = field(&req, "gid");
        validate::id("gid", gid)?;
        let branch_id = field(&req, "branch_id");
        validate::id("branch_id", branch_id)?;
        let trans_type = validate::trans_type(field(&req, "trans_type"))?;
        let ops = require(trans_type)?.register(&req)?;
        for op in &ops {
            validate::url(op.op.as_str(), &op.url)?;
            state.allowlist.check_url(&op.url)?;
        }
        validate::text("data", field(&req, "data"), validate::MAX_TEXT_BYTES)?;
        Ok::<_, ApiError>((gid, branch_id, trans_type, ops))
    })();
    let (gid, branch_id, trans_type, ops) = checked.inspect_err(|_| {
        state.metrics.request(ApiOp::Rejected);
    })?;
    state.metrics.request(ApiOp::RegisterBranch);
    state
        .apply
        .register(gid, trans_type, ops, state.config.max_branches)
        .await?;
    info!(gid = %gid, branch_id = %branch_id, "branch registered");
    Ok(Json(DtmResult::success()))
}
