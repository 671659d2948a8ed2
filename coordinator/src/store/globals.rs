//! Reading global transactions (one, a page, counts by status) and the operator's cron
//! resets.

use sqlx::Row;

use super::{rows, Result, Store, GLOBAL_COLUMNS};
use crate::txn::{GlobalStatus, GlobalTxn, TransType};

/// Filter of [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this gid.
    pub gid: Option<String>,
    /// Only transactions in this status.
    pub status: Option<GlobalStatus>,
    /// Only transactions of this type.
    pub trans_type: Option<TransType>,
    /// Created at or after, ms.
    pub create_time_start: Option<i64>,
    /// Created at or before, ms.
    pub create_time_end: Option<i64>,
    /// Continue after this position (from the previous page).
    pub position: Option<i64>,
    /// Page size.
    pub limit: i64,
}

impl Store {
    /// The global transaction with this gid, if any. A row whose JSON columns cannot be
    /// read is returned with them empty and `last_error` saying so.
    ///
    /// # Errors
    /// A database error, or a stored status or type code Settle does not know.
    pub async fn find(&self, gid: &str) -> Result<Option<GlobalTxn>> {
        let sql = format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE gid = ?");
        on_pool!(self, pool => {
            let row = sqlx::query(&sql).bind(gid).fetch_optional(pool).await?;
            row.as_ref().map(|r| rows::decode_global(r, rows::Reading::Lenient)).transpose()
        })
    }

    /// One page of transactions, newest first, and the position of the next page (`None` on
    /// the last page). Unreadable rows are shown as [`Store::find`] shows them.
    ///
    /// # Errors
    /// A database error, or a stored status or type code Settle does not know.
    pub async fn list(&self, filter: &ListFilter) -> Result<(Vec<GlobalTxn>, Option<i64>)> {
        let mut sql = format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE 1 = 1");
        let mut strings: Vec<&str> = Vec::new();
        let mut ints: Vec<i64> = Vec::new();
        // Strings bind first, then integers: the clauses are pushed in that order.
        if let Some(gid) = &filter.gid {
            sql.push_str(" AND gid = ?");
            strings.push(gid);
        }
        if let Some(s) = filter.status {
            sql.push_str(" AND status = ?");
            strings.push(s.as_str());
        }
        if let Some(t) = filter.trans_type {
            sql.push_str(" AND trans_type = ?");
            strings.push(t.as_str());
        }
        if let Some(t) = filter.create_time_start {
            sql.push_str(" AND create_time >= ?");
            ints.push(t);
        }
        if let Some(t) = filter.create_time_end {
            sql.push_str(" AND create_time <= ?");
            ints.push(t);
        }
        if let Some(p) = filter.position {
            sql.push_str(" AND id < ?");
            ints.push(p);
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let limit = filter.limit.clamp(1, 1000);
        ints.push(limit);
        on_pool!(self, pool => {
            let mut q = sqlx::query(&sql);
            for s in &strings {
                q = q.bind(*s);
            }
            for i in &ints {
                q = q.bind(*i);
            }
            let rows = q.fetch_all(pool).await?;
            let mut last_id = None;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                last_id = Some(row.try_get::<i64, _>("id")?);
                out.push(rows::decode_global(row, rows::Reading::Lenient)?);
            }
            let next = if i64::try_from(out.len()).unwrap_or(i64::MAX) == limit { last_id } else { None };
            Ok((out, next))
        })
    }

    /// Counts unfinished transactions by status (for metrics and operators).
    ///
    /// # Errors
    /// A database error.
    pub async fn count_unfinished(&self) -> Result<Vec<(String, i64)>> {
        let sql = "SELECT status, COUNT(*) FROM trans_global \
                   WHERE status IN ('prepared', 'submitted', 'aborting') GROUP BY status";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok((r.try_get_unchecked::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect()
        })
    }

    /// Makes unfinished transactions due now and restarts their retry schedule: the one with
    /// `gid`, or every one when `gid` is `None`. Leases held by live instances are kept.
    /// Returns how many were touched.
    ///
    /// # Errors
    /// A database error.
    pub async fn reset_cron(&self, gid: Option<&str>, now: i64) -> Result<u64> {
        let mut sql = String::from(
            "UPDATE trans_global SET next_cron_time = ?, retry_count = 0 \
             WHERE status IN ('submitted', 'aborting') AND next_cron_time > ?",
        );
        if gid.is_some() {
            sql.push_str(" AND gid = ?");
        }
        on_writer!(self, pool => {
            let mut q = sqlx::query(&sql).bind(now).bind(now);
            if let Some(gid) = gid {
                q = q.bind(gid);
            }
            Ok(q.execute(pool).await?.rows_affected())
        })
    }
}
