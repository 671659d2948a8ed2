//! `registerBranch` (aliases `registerTccBranch`, `registerXaBranch`): add a branch to a
//! prepared transaction.

use axum::extract::State;
use axum::Json;
use settle_protocol::{DtmResult, RegisterBranchRequest};
use tracing::info;

use super::body::JsonBody;
use super::error::ApiError;
use super::{validate, AppState};
use crate::telemetry::ApiOp;
use crate::txn::tcc::branch_ops;
use crate::txn::TransType;

fn field<'a>(req: &'a RegisterBranchRequest, name: &'static str) -> &'a str {
    req.get(name).map(String::as_str).unwrap_or_default()
}

/// `POST registerBranch`: registers a TCC branch's confirm and cancel with a prepared
/// transaction. Registering the same branch again changes nothing.
///
/// # Errors
/// 400 for bad input (every value must be a string; gid, branch_id, confirm and cancel are
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
        if trans_type != TransType::Tcc {
            return Err(ApiError::bad(
                "unsupported_trans_type",
                format!("registerBranch is for tcc branches, not {trans_type}"),
            ));
        }
        let confirm = field(&req, "confirm");
        validate::url("confirm", confirm)?;
        let cancel = field(&req, "cancel");
        validate::url("cancel", cancel)?;
        state.allowlist.check_url(confirm)?;
        state.allowlist.check_url(cancel)?;
        validate::text("data", field(&req, "data"), validate::MAX_TEXT_BYTES)?;
        Ok((gid, branch_id, trans_type, confirm, cancel))
    })();
    let (gid, branch_id, trans_type, confirm, cancel) = checked.inspect_err(|_| {
        state.metrics.request(ApiOp::Rejected);
    })?;
    state.metrics.request(ApiOp::RegisterBranch);
    let ops = branch_ops(branch_id, field(&req, "data"), confirm, cancel).to_vec();
    state
        .apply
        .register(gid, trans_type, ops, state.config.max_branches)
        .await?;
    info!(gid = %gid, branch_id = %branch_id, "branch registered");
    Ok(Json(DtmResult::success()))
}
