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
    /// Only gids that start with this.
    pub gid_prefix: Option<String>,
    /// Only unfinished transactions whose failed attempts in a row exceed this.
    pub retried_more_than: Option<i64>,
    /// Only unfinished transactions that were due before this time, ms (overdue: nobody
    /// drove them when they were due).
    pub due_before: Option<i64>,
}

/// A `WHERE` clause and its arguments: strings bind first, then integers, so clauses push
/// string conditions before integer ones.
struct Clause<'a> {
    sql: String,
    strings: Vec<std::borrow::Cow<'a, str>>,
    ints: Vec<i64>,
}

impl ListFilter {
    /// The conditions every filter field sets (not the paging).
    fn clause(&self) -> Clause<'_> {
        let mut c = Clause {
            sql: String::from(" WHERE 1 = 1"),
            strings: Vec::new(),
            ints: Vec::new(),
        };
        if let Some(gid) = &self.gid {
            c.sql.push_str(" AND gid = ?");
            c.strings.push(gid.as_str().into());
        }
        if let Some(prefix) = &self.gid_prefix {
            c.sql.push_str(" AND gid LIKE ? ESCAPE '!'");
            c.strings.push(super::like_prefix(prefix).into());
        }
        if let Some(s) = self.status {
            c.sql.push_str(" AND status = ?");
            c.strings.push(s.as_str().into());
        }
        if let Some(t) = self.trans_type {
            c.sql.push_str(" AND trans_type = ?");
            c.strings.push(t.as_str().into());
        }
        if self.retried_more_than.is_some() || self.due_before.is_some() {
            c.sql
                .push_str(" AND status IN ('prepared', 'submitted', 'aborting')");
        }
        if let Some(t) = self.create_time_start {
            c.sql.push_str(" AND create_time >= ?");
            c.ints.push(t);
        }
        if let Some(t) = self.create_time_end {
            c.sql.push_str(" AND create_time <= ?");
            c.ints.push(t);
        }
        if let Some(n) = self.retried_more_than {
            c.sql.push_str(" AND retry_count > ?");
            c.ints.push(n);
        }
        if let Some(t) = self.due_before {
            c.sql.push_str(" AND next_cron_time < ?");
            c.ints.push(t);
        }
        c
    }
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
        let Clause {
            mut sql,
            strings,
            mut ints,
        } = filter.clause();
        sql.insert_str(0, &format!("SELECT {GLOBAL_COLUMNS} FROM trans_global"));
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
                q = q.bind(s.as_ref());
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

    /// Counts unfinished transactions that came due before `due_before` (ms) and were not
    /// driven since (a round that fails moves the due time on): work nobody is doing.
    ///
    /// # Errors
    /// A database error.
    pub async fn count_overdue(&self, due_before: i64) -> Result<i64> {
        let sql = "SELECT COUNT(*) FROM trans_global \
                   WHERE status IN ('prepared', 'submitted', 'aborting') AND next_cron_time < ?";
        on_pool!(self, pool => {
            let n: i64 = sqlx::query_scalar(sql).bind(due_before).fetch_one(pool).await?;
            Ok(n)
        })
    }

    /// Makes unfinished transactions due now and restarts their retry schedule: the one with
    /// `gid`, or every one when `gid` is `None`. Leases held by live instances are kept.
    /// Returns how many were touched.
    ///
    /// # Errors
    /// A database error.
    pub async fn reset_cron(&self, gid: Option<&str>, now: i64) -> Result<u64> {
        let filter = ListFilter {
            gid: gid.map(str::to_owned),
            ..ListFilter::default()
        };
        self.reset_cron_where(&filter, now).await
    }

    /// Makes the unfinished transactions `filter` selects due now and restarts their retry
    /// schedule (paging fields are ignored). Returns how many were touched.
    ///
    /// # Errors
    /// A database error.
    pub async fn reset_cron_where(&self, filter: &ListFilter, now: i64) -> Result<u64> {
        let Clause {
            sql: cond,
            strings,
            ints,
        } = filter.clause();
        let sql = format!(
            "UPDATE trans_global SET next_cron_time = ?, retry_count = 0{cond} \
             AND status IN ('submitted', 'aborting') AND next_cron_time > ?"
        );
        on_writer!(self, pool => {
            let mut q = sqlx::query(&sql).bind(now);
            for s in &strings {
                q = q.bind(s.as_ref());
            }
            for i in &ints {
                q = q.bind(*i);
            }
            Ok(q.bind(now).execute(pool).await?.rows_affected())
        })
    }
}
