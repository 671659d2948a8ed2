//! Reading branch operations. They are written by the batched writer ([`super::batch`]).

use super::{marks, rows, Result, Store, BRANCH_COLUMNS};
use crate::txn::BranchOp;

impl Store {
    /// The branch operations of a transaction, in registration order.
    ///
    /// # Errors
    /// A database error, or a stored row Settle cannot read.
    pub async fn find_branches(&self, gid: &str) -> Result<Vec<BranchOp>> {
        let sql = format!("SELECT {BRANCH_COLUMNS} FROM trans_branch_op WHERE gid = ? ORDER BY id");
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(gid).fetch_all(pool).await?;
            rows.iter().map(rows::decode_branch).collect()
        })
    }

    /// The branch operations of several transactions, each list in registration order.
    ///
    /// # Errors
    /// A database error, or a stored row Settle cannot read.
    pub async fn find_branches_of(&self, gids: &[&str]) -> Result<Vec<BranchOp>> {
        if gids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {BRANCH_COLUMNS} FROM trans_branch_op{} WHERE gid IN ({}) ORDER BY id",
            self.dialect().use_index("uniq_branch_op"),
            marks(gids.len())
        );
        on_writer!(self, pool => {
            let mut q = sqlx::query(&sql);
            for g in gids {
                q = q.bind(*g);
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(rows::decode_branch).collect()
        })
    }
}
