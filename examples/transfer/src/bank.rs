//! One bank: an account service with its own database, serving the debit and credit branches.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use settle_sdk::{BarrierTable, BranchQuery, BranchResponse};
use sqlx::MySqlPool;

/// The body of both branches of a transfer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Movement {
    /// Account id at this bank.
    pub account: i64,
    /// Amount in cents.
    pub amount: i64,
}

/// Failures injected on purpose, as shares between 0 and 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Share of Tries (TCC) or actions (saga) answered FAILURE before doing anything (the
    /// transfer rolls back).
    pub try_fail_rate: f64,
    /// Share of Confirms (TCC) or actions (saga) answered 500 after committing (the
    /// coordinator retries; the barrier makes the retry a no-op).
    pub confirm_fail_rate: f64,
}

#[derive(Clone)]
struct Bank {
    pool: MySqlPool,
    table: BarrierTable,
    faults: Faults,
}

/// Creates the bank's tables (accounts and barrier), empty, and opens `accounts` accounts
/// holding `balance` each.
///
/// # Errors
/// A database error.
pub async fn reset(pool: &MySqlPool, accounts: i64, balance: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DROP TABLE IF EXISTS account")
        .execute(pool)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS barrier")
        .execute(pool)
        .await?;
    sqlx::query(
        "CREATE TABLE account (
           id BIGINT PRIMARY KEY,
           balance BIGINT NOT NULL,
           frozen BIGINT NOT NULL DEFAULT 0,
           incoming BIGINT NOT NULL DEFAULT 0,
           settled_version BIGINT NOT NULL DEFAULT 0
         ) ENGINE = InnoDB",
    )
    .execute(pool)
    .await?;
    barrier_table().create(pool).await?;
    for id in 1..=accounts {
        sqlx::query("INSERT INTO account (id, balance) VALUES (?, ?)")
            .bind(id)
            .bind(balance)
            .execute(pool)
            .await?;
    }
    Ok(())
}

fn barrier_table() -> BarrierTable {
    BarrierTable::named("barrier").unwrap_or_default()
}

/// Sums of the bank's columns: (balance, frozen, incoming, accounts below zero).
///
/// # Errors
/// A database error.
pub async fn totals(pool: &MySqlPool) -> Result<(i64, i64, i64, i64), sqlx::Error> {
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(balance), 0) AS SIGNED), CAST(COALESCE(SUM(frozen), 0) AS SIGNED),
                CAST(COALESCE(SUM(incoming), 0) AS SIGNED), CAST(COALESCE(SUM(balance < 0), 0) AS SIGNED)
         FROM account",
    )
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// The settled balance of an account (what it owns once every transfer in flight has
/// settled: `balance + frozen`) and the version of that figure, which only a confirm moves.
///
/// # Errors
/// A database error, or no such account.
pub async fn settled(pool: &MySqlPool, account: i64) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT CAST(balance + frozen AS SIGNED), settled_version FROM account WHERE id = ?",
    )
    .bind(account)
    .fetch_one(pool)
    .await
}

/// Every account's settled balance and version: (id, balance, version).
///
/// # Errors
/// A database error.
pub async fn all_settled(pool: &MySqlPool) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, CAST(balance + frozen AS SIGNED), settled_version FROM account ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Serves the bank on 127.0.0.1 (port 0) and returns its base URL.
///
/// # Errors
/// No port can be bound.
pub async fn serve(pool: MySqlPool, faults: Faults) -> std::io::Result<String> {
    let bank = Arc::new(Bank {
        pool,
        table: barrier_table(),
        faults,
    });
    let app = Router::new()
        .route("/debit/try", post(debit_try))
        .route("/debit/confirm", post(debit_confirm))
        .route("/debit/cancel", post(debit_cancel))
        .route("/credit/try", post(credit_try))
        .route("/credit/confirm", post(credit_confirm))
        .route("/credit/cancel", post(credit_cancel))
        .route("/trans-out", post(trans_out))
        .route("/trans-out-revert", post(trans_out_revert))
        .route("/trans-in", post(trans_in))
        .route("/trans-in-revert", post(trans_in_revert))
        .with_state(bank);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(
            listener.tap_io(|tcp| {
                // Small request/answer exchanges: do not wait for more bytes to fill a packet.
                let _ = tcp.set_nodelay(true);
            }),
            app,
        )
        .await
    });
    Ok(format!("http://{addr}"))
}

/// Runs `sql` (bound to amount, amount, account, ...) inside the branch's barrier. Returns
/// the answer; `expect_row` makes "no row changed" a business failure.
async fn in_barrier(
    bank: &Bank,
    branch: BranchQuery,
    sql: &'static str,
    binds: Vec<i64>,
    expect_row: &'static str,
) -> BranchResponse {
    let barrier = match branch.barrier(bank.table.clone()) {
        Ok(b) => b,
        Err(e) => return BranchResponse::failure(e.to_string()),
    };
    barrier
        .call(&bank.pool, move |tx| {
            Box::pin(async move {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(b);
                }
                let changed = q
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?
                    .rows_affected();
                if changed == 0 && !expect_row.is_empty() {
                    return Err(expect_row.to_owned());
                }
                Ok(())
            })
        })
        .await
        .into()
}

fn chance(rate: f64) -> bool {
    rate > 0.0 && rand::rng().random_bool(rate.min(1.0))
}

async fn debit_try(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    if chance(bank.faults.try_fail_rate) {
        return BranchResponse::failure("injected try failure");
    }
    in_barrier(
        &bank,
        branch,
        "UPDATE account SET balance = balance - ?, frozen = frozen + ? WHERE id = ? AND balance >= ?",
        vec![m.amount, m.amount, m.account, m.amount],
        "insufficient funds",
    )
    .await
}

async fn confirm_then_maybe_fail(bank: &Bank, r: BranchResponse) -> BranchResponse {
    if r == BranchResponse::Success && chance(bank.faults.confirm_fail_rate) {
        return BranchResponse::Error("injected failure after the confirm committed".into());
    }
    r
}

async fn debit_confirm(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    let r = in_barrier(
        &bank,
        branch,
        "UPDATE account SET frozen = frozen - ?, settled_version = settled_version + 1 WHERE id = ?",
        vec![m.amount, m.account],
        "",
    )
    .await;
    confirm_then_maybe_fail(&bank, r).await
}

async fn debit_cancel(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    in_barrier(
        &bank,
        branch,
        "UPDATE account SET balance = balance + ?, frozen = frozen - ? WHERE id = ?",
        vec![m.amount, m.amount, m.account],
        "",
    )
    .await
}

async fn credit_try(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    if chance(bank.faults.try_fail_rate) {
        return BranchResponse::failure("injected try failure");
    }
    in_barrier(
        &bank,
        branch,
        "UPDATE account SET incoming = incoming + ? WHERE id = ?",
        vec![m.amount, m.account],
        "no such account",
    )
    .await
}

async fn credit_confirm(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    let r = in_barrier(
        &bank,
        branch,
        "UPDATE account SET balance = balance + ?, incoming = incoming - ?, \
         settled_version = settled_version + 1 WHERE id = ?",
        vec![m.amount, m.amount, m.account],
        "",
    )
    .await;
    confirm_then_maybe_fail(&bank, r).await
}

async fn credit_cancel(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    in_barrier(
        &bank,
        branch,
        "UPDATE account SET incoming = incoming - ? WHERE id = ?",
        vec![m.amount, m.account],
        "",
    )
    .await
}

// The saga's steps: a transfer moves the money at once (no frozen or incoming money); a
// compensation moves it back. Each runs in the barrier, which makes a compensation that
// arrives before its action an empty one, and an action that arrives after its
// compensation a no-op.

async fn saga_action(
    bank: &Bank,
    branch: BranchQuery,
    sql: &'static str,
    binds: Vec<i64>,
    expect_row: &'static str,
) -> BranchResponse {
    if chance(bank.faults.try_fail_rate) {
        return BranchResponse::failure("injected action failure");
    }
    let r = in_barrier(bank, branch, sql, binds, expect_row).await;
    confirm_then_maybe_fail(bank, r).await
}

async fn trans_out(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    saga_action(
        &bank,
        branch,
        "UPDATE account SET balance = balance - ?, settled_version = settled_version + 1 \
         WHERE id = ? AND balance >= ?",
        vec![m.amount, m.account, m.amount],
        "insufficient funds",
    )
    .await
}

async fn trans_out_revert(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    in_barrier(
        &bank,
        branch,
        "UPDATE account SET balance = balance + ?, settled_version = settled_version + 1 WHERE id = ?",
        vec![m.amount, m.account],
        "",
    )
    .await
}

async fn trans_in(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    saga_action(
        &bank,
        branch,
        "UPDATE account SET balance = balance + ?, settled_version = settled_version + 1 WHERE id = ?",
        vec![m.amount, m.account],
        "no such account",
    )
    .await
}

async fn trans_in_revert(
    State(bank): State<Arc<Bank>>,
    branch: BranchQuery,
    Json(m): Json<Movement>,
) -> BranchResponse {
    in_barrier(
        &bank,
        branch,
        "UPDATE account SET balance = balance - ?, settled_version = settled_version + 1 WHERE id = ?",
        vec![m.amount, m.account],
        "",
    )
    .await
}
