//! The fixed strings of the protocol: transaction types, statuses and branch operations.
//!
//! They are the values DTM stores and sends, so they double as Settle's database codes.

/// Transaction type of a TCC global transaction.
pub const TCC: &str = "tcc";
/// Transaction type of a two-phase (transactional) message.
pub const MSG: &str = "msg";
/// Transaction type of a saga.
pub const SAGA: &str = "saga";
/// Transaction type of an XA transaction.
pub const XA: &str = "xa";
/// Transaction type of a workflow.
pub const WORKFLOW: &str = "workflow";

/// Global or branch status: registered, not yet finished.
pub const STATUS_PREPARED: &str = "prepared";
/// Global status: committed by the initiator, phase 2 (confirm) under way.
pub const STATUS_SUBMITTED: &str = "submitted";
/// Global status: rolled back by the initiator or a timeout, phase 2 (cancel) under way.
pub const STATUS_ABORTING: &str = "aborting";
/// Global or branch status: finished successfully. DTM spells it without the final `ed`.
pub const STATUS_SUCCEED: &str = "succeed";
/// Global or branch status: finished by rolling back.
pub const STATUS_FAILED: &str = "failed";

/// Branch operation: TCC try (called by the initiator, never by the coordinator).
pub const OP_TRY: &str = "try";
/// Branch operation: TCC confirm.
pub const OP_CONFIRM: &str = "confirm";
/// Branch operation: TCC cancel.
pub const OP_CANCEL: &str = "cancel";
/// Branch operation: saga or msg action.
pub const OP_ACTION: &str = "action";
/// Branch operation: saga compensation.
pub const OP_COMPENSATE: &str = "compensate";
/// Branch operation: XA commit of a prepared branch.
pub const OP_COMMIT: &str = "commit";
/// Branch operation: XA rollback of a prepared branch.
pub const OP_ROLLBACK: &str = "rollback";
/// Branch operation of a msg check-back and of the local transaction it guards.
pub const OP_MSG: &str = "msg";

/// Body marker of a successful answer.
pub const RESULT_SUCCESS: &str = "SUCCESS";
/// Body marker of a failed answer: the operation will not succeed if retried.
pub const RESULT_FAILURE: &str = "FAILURE";
/// Body marker of an answer that says "still in progress, ask again later".
pub const RESULT_ONGOING: &str = "ONGOING";
