//! Alerts for the operators' webhook, shared by every instance through `settle_alert`: a
//! transaction's alert is opened once (its primary key decides which instance fires it),
//! resolved once when the transaction settles, and each event is delivered by whichever
//! instance claims it; the row goes once "resolved" was delivered.

use sqlx::Row;

use super::{Result, Store};

/// An unfinished transaction that calls for an alert and has none open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertCandidate {
    /// The transaction.
    pub gid: String,
    /// `tcc` or `msg`.
    pub trans_type: String,
    /// Its status.
    pub status: String,
    /// Failed rounds in a row.
    pub retry_count: i64,
    /// When it was created, ms.
    pub create_time: i64,
    /// What went wrong last.
    pub last_error: String,
}

/// An open alert whose transaction has settled (or was deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledAlert {
    /// The transaction.
    pub gid: String,
    /// When the alert fired, ms.
    pub fired_time: i64,
    /// The final status; `None` when the transaction is gone from the store.
    pub status: Option<String>,
}

/// An event waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAlert {
    /// The transaction.
    pub gid: String,
    /// Whether this is the "resolved" event (else "firing").
    pub resolved: bool,
    /// The JSON body to post.
    pub body: String,
    /// Failed deliveries of this event so far.
    pub attempts: i64,
    /// When it was due, ms (what [`Store::claim_alert`] compares against).
    pub next_try: i64,
}

/// `next_try` of an alert with nothing to deliver.
const NOTHING_DUE: i64 = i64::MAX / 4;

const UNFINISHED: &str = "('prepared', 'submitted', 'aborting')";

impl Store {
    /// Unfinished transactions with more than `retried_more_than` failed rounds in a row
    /// (when `Some`), or created before `created_before` (when `Some`), and no alert open;
    /// at most `limit`.
    ///
    /// # Errors
    /// A database error.
    pub async fn alert_candidates(
        &self,
        retried_more_than: Option<i64>,
        created_before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AlertCandidate>> {
        let sql = format!(
            "SELECT g.gid, g.trans_type, g.status, g.retry_count, g.create_time, g.last_error \
             FROM trans_global g LEFT JOIN settle_alert a ON a.gid = g.gid \
             WHERE g.status IN {UNFINISHED} AND (g.retry_count > ? OR g.create_time < ?) \
             AND a.gid IS NULL ORDER BY g.id LIMIT ?"
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql)
                .bind(retried_more_than.unwrap_or(i64::MAX))
                .bind(created_before.unwrap_or(i64::MIN))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(AlertCandidate {
                        gid: r.try_get_unchecked(0)?,
                        trans_type: r.try_get_unchecked(1)?,
                        status: r.try_get_unchecked(2)?,
                        retry_count: r.try_get(3)?,
                        create_time: r.try_get(4)?,
                        last_error: r.try_get_unchecked(5)?,
                    })
                })
                .collect()
        })
    }

    /// Opens `gid`'s alert with its "firing" event `body`, due now. `false`: one is open
    /// already (another instance opened it first).
    ///
    /// # Errors
    /// A database error.
    pub async fn open_alert(&self, gid: &str, body: &str, now: i64) -> Result<bool> {
        let sql = "INSERT INTO settle_alert (gid, fired_time, firing_body, next_try) \
                   VALUES (?, ?, ?, ?)";
        on_writer!(self, pool => {
            match sqlx::query(sql).bind(gid).bind(now).bind(body).bind(now).execute(pool).await {
                Ok(_) => Ok(true),
                Err(e) if super::batch::is_duplicate_key(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Open alerts whose transaction has reached a final status or is gone; at most `limit`.
    ///
    /// # Errors
    /// A database error.
    pub async fn settled_alerts(&self, limit: i64) -> Result<Vec<SettledAlert>> {
        let sql = format!(
            "SELECT a.gid, a.fired_time, g.status FROM settle_alert a \
             LEFT JOIN trans_global g ON g.gid = a.gid \
             WHERE a.resolved_body IS NULL AND (g.gid IS NULL OR g.status NOT IN {UNFINISHED}) \
             LIMIT ?"
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(SettledAlert {
                        gid: r.try_get_unchecked(0)?,
                        fired_time: r.try_get(1)?,
                        status: r.try_get_unchecked(2)?,
                    })
                })
                .collect()
        })
    }

    /// Resolves `gid`'s alert with the "resolved" event `body`: due now if "firing" was
    /// delivered, else right after it. `false`: already resolved.
    ///
    /// # Errors
    /// A database error.
    pub async fn resolve_alert(&self, gid: &str, body: &str, now: i64) -> Result<bool> {
        let sql =
            "UPDATE settle_alert SET resolved_body = ?, attempts = CASE WHEN firing_sent = 1 \
                   THEN 0 ELSE attempts END, next_try = CASE WHEN firing_sent = 1 THEN ? \
                   ELSE next_try END WHERE gid = ? AND resolved_body IS NULL";
        on_writer!(self, pool => {
            let n = sqlx::query(sql).bind(body).bind(now).bind(gid).execute(pool).await?;
            Ok(n.rows_affected() == 1)
        })
    }

    /// Events due at `now`, the most overdue first; at most `limit`.
    ///
    /// # Errors
    /// A database error.
    pub async fn due_alerts(&self, now: i64, limit: i64) -> Result<Vec<PendingAlert>> {
        let sql = "SELECT gid, firing_sent, firing_body, resolved_body, attempts, next_try \
                   FROM settle_alert WHERE next_try <= ? ORDER BY next_try LIMIT ?";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(now).bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    let resolved = r.try_get::<i64, _>(1)? != 0;
                    let body = if resolved {
                        r.try_get_unchecked::<Option<String>, _>(3)?.unwrap_or_default()
                    } else {
                        r.try_get_unchecked(2)?
                    };
                    Ok(PendingAlert {
                        gid: r.try_get_unchecked(0)?,
                        resolved,
                        body,
                        attempts: r.try_get(4)?,
                        next_try: r.try_get(5)?,
                    })
                })
                .collect()
        })
    }

    /// Takes `alert` for delivery until `until` (ms): another instance finds it due again
    /// only after that. `false`: another instance took it first.
    ///
    /// # Errors
    /// A database error.
    pub async fn claim_alert(&self, alert: &PendingAlert, until: i64) -> Result<bool> {
        let sql = "UPDATE settle_alert SET next_try = ? WHERE gid = ? AND next_try = ?";
        on_writer!(self, pool => {
            let n = sqlx::query(sql)
                .bind(until)
                .bind(&alert.gid)
                .bind(alert.next_try)
                .execute(pool)
                .await?;
            Ok(n.rows_affected() == 1)
        })
    }

    /// Records that `alert` was delivered: after "firing", "resolved" is due at `now` if the
    /// transaction settled meanwhile; after "resolved", the alert is closed.
    ///
    /// # Errors
    /// A database error.
    pub async fn alert_delivered(&self, alert: &PendingAlert, now: i64) -> Result<()> {
        if alert.resolved {
            on_writer!(self, pool => {
                sqlx::query("DELETE FROM settle_alert WHERE gid = ?")
                    .bind(&alert.gid)
                    .execute(pool)
                    .await?;
                Ok(())
            })
        } else {
            let sql = "UPDATE settle_alert SET firing_sent = 1, attempts = 0, last_error = '', \
                       next_try = CASE WHEN resolved_body IS NULL THEN ? ELSE ? END WHERE gid = ?";
            on_writer!(self, pool => {
                sqlx::query(sql)
                    .bind(NOTHING_DUE)
                    .bind(now)
                    .bind(&alert.gid)
                    .execute(pool)
                    .await?;
                Ok(())
            })
        }
    }

    /// Records a failed delivery of `alert`: tried again at `next_try` (ms).
    ///
    /// # Errors
    /// A database error.
    pub async fn alert_failed(
        &self,
        alert: &PendingAlert,
        error: &str,
        next_try: i64,
    ) -> Result<()> {
        let mut error = error.to_owned();
        super::truncate_utf8(&mut error, 1024);
        let sql = "UPDATE settle_alert SET attempts = attempts + 1, last_error = ?, next_try = ? \
                   WHERE gid = ?";
        on_writer!(self, pool => {
            sqlx::query(sql)
                .bind(&error)
                .bind(next_try)
                .bind(&alert.gid)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Alerts open now (fired and not yet resolved).
    ///
    /// # Errors
    /// A database error.
    pub async fn open_alerts(&self) -> Result<i64> {
        on_pool!(self, pool => {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM settle_alert WHERE resolved_body IS NULL",
            )
            .fetch_one(pool)
            .await?;
            Ok(n)
        })
    }
}
