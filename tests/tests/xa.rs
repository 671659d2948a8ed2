//! XA end to end on real MariaDB XA: two banks, each a database of its own, whose transfer
//! legs run as XA branches prepared with the SDK's `xa_local`; the coordinator commits or
//! rolls them back through `xa_phase_two`. Includes a coordinator killed between the two
//! commits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::any;
use axum::Router;
use settle_sdk::protocol::BranchParams;
use settle_sdk::xa::{xa_local, xa_phase_two, XaError};
use settle_sdk::{BranchQuery, BranchResponse, SdkError, SettleClient};
use settle_tests::{eventually, spawn_coordinator, test_config, SettleProcess, TestDb};
use sqlx::{MySqlPool, Row};

const BINARY: &str = env!("CARGO_BIN_EXE_settle-under-test");
const SETTLE: Duration = Duration::from_secs(30);

/// The two banks' databases and the coordinator their branches register with.
#[derive(Clone)]
struct Banks {
    a: MySqlPool,
    b: MySqlPool,
    coordinator: Arc<std::sync::Mutex<SettleClient>>,
    base: String,
    /// Bank B answers its next this many commits with an error.
    refuse_commits: Arc<AtomicUsize>,
}

impl Banks {
    async fn start(a: &TestDb, b: &TestDb, api: &str) -> anyhow::Result<Self> {
        let (a, b) = (a.pool().await?, b.pool().await?);
        for (pool, balance) in [(&a, 10_000), (&b, 0)] {
            sqlx::query("CREATE TABLE account (id INT PRIMARY KEY, balance INT NOT NULL)")
                .execute(pool)
                .await?;
            sqlx::query("INSERT INTO account VALUES (1, ?)")
                .bind(balance)
                .execute(pool)
                .await?;
        }
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let mut banks = Self {
            a,
            b,
            coordinator: Arc::new(std::sync::Mutex::new(SettleClient::new(api))),
            base: String::new(),
            refuse_commits: Arc::default(),
        };
        banks.base = format!("http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/{route}", any(bank_call))
            .with_state(banks.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(banks)
    }

    fn url(&self, route: &str) -> String {
        format!("{}/{route}", self.base)
    }

    fn point_at(&self, api: &str) {
        *self
            .coordinator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = SettleClient::new(api);
    }

    async fn balances(&self) -> anyhow::Result<(i64, i64)> {
        let read = |pool: &MySqlPool| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT CAST(balance AS SIGNED) FROM account WHERE id = 1",
                )
                .fetch_one(&pool)
                .await
            }
        };
        Ok((read(&self.a).await?, read(&self.b).await?))
    }

    /// The xids of `gid`'s branches held prepared (`XA RECOVER` lists those of the whole
    /// server, both banks' databases).
    async fn prepared(&self, gid: &str) -> anyhow::Result<Vec<String>> {
        let prefix = format!("{gid}-");
        let rows = sqlx::query("XA RECOVER").fetch_all(&self.a).await?;
        let mut xids: Vec<String> = rows
            .iter()
            .filter_map(|r| r.try_get_unchecked::<String, _>("data").ok())
            .filter(|xid| xid.starts_with(&prefix))
            .collect();
        xids.sort();
        Ok(xids)
    }
}

/// `/out` and `/in` run a transfer leg as an XA branch (the body is the amount; bank B takes
/// at most 1,000 at once); `/xa-a` and `/xa-b` are the banks' phase 2.
async fn bank_call(
    State(banks): State<Banks>,
    Path(route): Path<String>,
    BranchQuery(params): BranchQuery,
    body: String,
) -> BranchResponse {
    let amount: i64 = body.trim().parse().unwrap_or(0);
    match route.as_str() {
        "out" | "in" => {
            let (pool, phase_two, delta) = if route == "out" {
                (&banks.a, banks.url("xa-a"), -amount)
            } else {
                (&banks.b, banks.url("xa-b"), amount)
            };
            let client = banks
                .coordinator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let leg = xa_local(&client, pool, &params, &phase_two, |conn| {
                Box::pin(async move {
                    let moved = sqlx::query(
                        "UPDATE account SET balance = balance + ? WHERE id = 1 AND balance + ? >= 0",
                    )
                    .bind(delta)
                    .bind(delta)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| e.to_string())?;
                    if moved.rows_affected() == 0 {
                        return Err("insufficient balance".to_owned());
                    }
                    if delta > 1_000 {
                        return Err("bank B takes at most 1,000 at once".to_owned());
                    }
                    Ok(())
                })
            })
            .await;
            match leg {
                Ok(()) => BranchResponse::Success,
                Err(XaError::Business(e)) => BranchResponse::Failure(e),
                Err(e) => BranchResponse::Error(e.to_string()),
            }
        }
        "xa-a" => phase_two(&banks.a, &params).await,
        "xa-b" => {
            let refuse = params.op == "commit"
                && banks
                    .refuse_commits
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if refuse {
                return BranchResponse::Error("bank B is not ready".into());
            }
            phase_two(&banks.b, &params).await
        }
        _ => BranchResponse::Error(format!("no route {route}")),
    }
}

async fn phase_two(pool: &MySqlPool, params: &BranchParams) -> BranchResponse {
    match xa_phase_two(pool, params).await {
        Ok(()) => BranchResponse::Success,
        Err(e) => BranchResponse::Error(e.to_string()),
    }
}

async fn transfer(
    client: &SettleClient,
    banks: &Banks,
    gid: &str,
    amount: i64,
) -> Result<(), SdkError> {
    let banks = banks.clone();
    client
        .xa_global(gid, |xa| async move {
            xa.call_branch(&amount, &banks.url("out")).await?;
            xa.call_branch(&amount, &banks.url("in")).await?;
            Ok(())
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xa_branches_commit_together_or_roll_back_together() -> anyhow::Result<()> {
    let (store, a, b) = (
        TestDb::mysql().await?,
        TestDb::mysql().await?,
        TestDb::mysql().await?,
    );
    let app = spawn_coordinator(test_config(&store.url)).await?;
    let banks = Banks::start(&a, &b, &app.api_url()).await?;
    let client = SettleClient::new(app.api_url());

    let ok = client.new_gid().await?;
    transfer(&client, &banks, &ok, 30).await?;
    assert_eq!(client.wait_final(&ok, SETTLE).await?, "succeed");
    assert_eq!(banks.balances().await?, (9_970, 30));
    let q = client.query(&ok).await?;
    let ops: Vec<(String, String, String)> = q
        .branches
        .iter()
        .map(|b| (b.branch_id.clone(), b.op.clone(), b.status.clone()))
        .collect();
    assert!(
        ops.contains(&("02".into(), "commit".into(), "succeed".into())),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("01".into(), "rollback".into(), "prepared".into())),
        "{ops:?}"
    );

    // Bank B refuses the amount: the initiator aborts, and bank A's prepared leg is rolled
    // back.
    let no = client.new_gid().await?;
    let err = transfer(&client, &banks, &no, 2_000)
        .await
        .expect_err("refused");
    assert!(err.is_failure(), "{err}");
    assert_eq!(client.wait_final(&no, SETTLE).await?, "failed");
    assert_eq!(banks.balances().await?, (9_970, 30), "nothing moved");
    assert!(
        banks.prepared(&no).await?.is_empty(),
        "nothing left prepared"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_between_two_commits_commits_the_rest_after_restart(
) -> anyhow::Result<()> {
    settle_tests::init();
    let (store, a, b) = (
        TestDb::mysql().await?,
        TestDb::mysql().await?,
        TestDb::mysql().await?,
    );
    let fast = [
        "--lease-ms",
        "1500",
        "--poll-interval-ms",
        "100",
        "--default-retry-interval-s",
        "1",
    ];
    let first = SettleProcess::start(BINARY, &store.url, &fast).await?;
    let banks = Banks::start(&a, &b, &first.api).await?;
    banks.refuse_commits.store(1_000, Ordering::SeqCst);
    let client = SettleClient::new(first.api.clone());
    let gid = client.new_gid().await?;
    let leg_b = format!("{gid}-02");
    transfer(&client, &banks, &gid, 40).await?;
    eventually("bank A to commit while B waits", SETTLE, || async {
        matches!(banks.prepared(&gid).await, Ok(xids) if xids == [leg_b.clone()])
    })
    .await?;
    first.kill().await?;
    assert_eq!(
        banks.prepared(&gid).await?,
        [leg_b],
        "bank B's leg stays prepared while no coordinator runs"
    );

    banks.refuse_commits.store(0, Ordering::SeqCst);
    let second = SettleProcess::start(BINARY, &store.url, &fast).await?;
    banks.point_at(&second.api);
    let client = SettleClient::new(second.api.clone());
    assert_eq!(client.wait_final(&gid, SETTLE).await?, "succeed");
    assert_eq!(banks.balances().await?, (9_960, 40));
    assert!(banks.prepared(&gid).await?.is_empty());
    second.kill().await?;
    Ok(())
}
