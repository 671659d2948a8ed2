//! The order service: each state change is a local transaction with a transactional
//! message keyed by the order id.

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use settle_sdk::msg::check_back;
use settle_sdk::{BarrierTable, BranchQuery, BranchResponse, Msg, SettleClient};
use sqlx::MySqlPool;

use crate::{OrderEvent, STATES};

/// The order service.
#[derive(Clone)]
pub struct OrderService {
    pool: MySqlPool,
    client: SettleClient,
    table: BarrierTable,
    topic: String,
    query_prepared: String,
}

/// Creates the service's tables, empty.
///
/// # Errors
/// A database error.
pub async fn reset(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    sqlx::query("DROP TABLE IF EXISTS orders")
        .execute(pool)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS barrier")
        .execute(pool)
        .await?;
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, state VARCHAR(16) NOT NULL, version BIGINT NOT NULL) ENGINE = InnoDB")
        .execute(pool)
        .await?;
    BarrierTable::named("barrier")
        .unwrap_or_default()
        .create(pool)
        .await
}

async fn query_prepared(State(svc): State<OrderService>, branch: BranchQuery) -> BranchResponse {
    check_back(&svc.pool, &svc.table, branch.0).await
}

impl OrderService {
    /// Starts the service's check-back endpoint on 127.0.0.1 and returns the service.
    ///
    /// # Errors
    /// No port can be bound.
    pub async fn start(
        pool: MySqlPool,
        client: SettleClient,
        topic: &str,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let svc = Self {
            pool,
            client,
            table: BarrierTable::named("barrier").unwrap_or_default(),
            topic: topic.to_owned(),
            query_prepared: format!("http://{addr}/query-prepared"),
        };
        let app = Router::new()
            .route("/query-prepared", get(query_prepared))
            .with_state(svc.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(svc)
    }

    /// Moves order `id` to `STATES[step]` (step 0 creates it), in one local transaction that
    /// commits a transactional message with the event.
    ///
    /// # Errors
    /// The local transaction failed (the message was dropped) or Settle refused.
    pub async fn advance(&self, id: i64, step: usize) -> anyhow::Result<OrderEvent> {
        let state = STATES
            .get(step)
            .ok_or_else(|| anyhow::anyhow!("no step {step}"))?;
        let event = OrderEvent {
            order: id,
            state: (*state).to_owned(),
            step,
            version: i64::try_from(step).unwrap_or(0) + 1,
        };
        let gid = self.client.new_gid().await?;
        let step_url = format!("rocketmq://{}?key=order-{id}&tag={state}", self.topic);
        let ev = event.clone();
        Msg::new(&self.client, &gid)
            .add(&step_url, &event)?
            .do_and_submit_db(&self.query_prepared, &self.pool, &self.table, move |tx| {
                Box::pin(async move {
                    let changed = if ev.step == 0 {
                        sqlx::query("INSERT INTO orders (id, state, version) VALUES (?, ?, 1)")
                            .bind(ev.order)
                            .bind(&ev.state)
                            .execute(&mut *tx)
                            .await
                    } else {
                        sqlx::query(
                            "UPDATE orders SET state = ?, version = ? WHERE id = ? AND version = ?",
                        )
                        .bind(&ev.state)
                        .bind(ev.version)
                        .bind(ev.order)
                        .bind(ev.version - 1)
                        .execute(&mut *tx)
                        .await
                    }
                    .map_err(|e| e.to_string())?
                    .rows_affected();
                    if changed != 1 {
                        return Err(format!(
                            "order {} is not at version {}",
                            ev.order,
                            ev.version - 1
                        ));
                    }
                    Ok(())
                })
            })
            .await?;
        Ok(event)
    }
}
