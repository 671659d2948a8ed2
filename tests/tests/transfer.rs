//! The transfer example end to end: concurrent transfers (TCC, and saga) with injected
//! failures, through a real coordinator and two bank services on MySQL with barriers; no
//! money is created or lost.

use std::time::Duration;

use settle_example_transfer::bank::Faults;
use settle_example_transfer::{run, Mode, Options};
use settle_tests::{mysql_server_url, spawn_coordinator, test_config, TestDb};

/// Runs 80 transfers of `mode`, 8 at a time, with injected failures, and checks the books.
async fn transfers_with_injected_failures_conserve_money(mode: Mode) -> anyhow::Result<()> {
    let store = TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&store.url)).await?;
    // The banks' databases are named after the store's, so they are unique to this run.
    let options = Options {
        mode,
        coordinator: app.api_url(),
        mysql: mysql_server_url(),
        database_prefix: store.name.clone(),
        transfers: 80,
        concurrency: 8,
        accounts: 5,
        opening_balance: 1_000,
        faults: Faults {
            try_fail_rate: 0.15,
            confirm_fail_rate: 0.2,
        },
        settle_timeout: Duration::from_secs(60),
        balance_events: None,
    };
    let report = run(&options).await;
    let pool = store.pool().await?;
    for bank in ["a", "b"] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {}_{bank}", store.name))
            .execute(&pool)
            .await?;
    }
    let report = report?;
    assert!(report.conserved(), "{report}");
    assert!(
        report.committed > 0 && report.rolled_back > 0,
        "both outcomes were exercised: {report}"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tcc_transfers_with_injected_failures_conserve_money() -> anyhow::Result<()> {
    transfers_with_injected_failures_conserve_money(Mode::Tcc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_saga_transfers_with_injected_failures_conserve_money() -> anyhow::Result<()> {
    transfers_with_injected_failures_conserve_money(Mode::Saga).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_transfers_emit_balance_changes_that_keep_the_redis_cache_exact(
) -> anyhow::Result<()> {
    let store = TestDb::mysql().await?;
    let mut config = test_config(&store.url);
    config.rocketmq_namesrv = settle_tests::rocketmq_namesrv();
    config.rocketmq_producer_group = format!("settle-transfer-{}", &store.name[9..]);
    config.delivery_poll_interval_ms = 100;
    let app = spawn_coordinator(config).await?;
    let options = Options {
        mode: Mode::Tcc,
        coordinator: app.api_url(),
        mysql: mysql_server_url(),
        database_prefix: store.name.clone(),
        transfers: 60,
        concurrency: 8,
        accounts: 5,
        opening_balance: 1_000,
        faults: Faults {
            try_fail_rate: 0.15,
            confirm_fail_rate: 0.2,
        },
        settle_timeout: Duration::from_secs(90),
        balance_events: Some(settle_example_transfer::driver::BalanceEvents {
            namesrv: settle_tests::rocketmq_namesrv(),
            topic: format!("Balances{}", &store.name[9..19]),
            redis: settle_tests::redis_url(),
        }),
    };
    let report = run(&options).await;
    let pool = store.pool().await?;
    for bank in ["a", "b"] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {}_{bank}", store.name))
            .execute(&pool)
            .await?;
    }
    let report = report?;
    assert_eq!(report.cache_mismatches, Some(0), "{report}");
    assert!(report.conserved(), "{report}");
    app.stop().await;
    Ok(())
}
