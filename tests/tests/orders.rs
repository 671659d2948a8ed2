//! The ordered-orders example end to end: orders change state through transactional messages
//! on MySQL, RocketMQ is restarted halfway, and the sequence checker and the Redis cache
//! must agree with the database.

use std::time::Duration;

use settle_example_ordered_orders::{run, Options};
use settle_tests::{
    mysql_server_url, redis_url, rocketmq_namesrv, spawn_coordinator, test_config, TestDb,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_arrive_in_sequence_and_the_cache_matches_the_database_across_a_broker_restart(
) -> anyhow::Result<()> {
    let store = TestDb::mysql().await?;
    let mut config = test_config(&store.url);
    config.rocketmq_namesrv = rocketmq_namesrv();
    config.rocketmq_producer_group = format!("settle-orders-{}", &store.name[9..]);
    config.delivery_poll_interval_ms = 100;
    let app = spawn_coordinator(config).await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rocketmq.sh");
    let options = Options {
        coordinator: app.api_url(),
        mysql: mysql_server_url(),
        database: format!("{}_orders", store.name),
        redis: redis_url(),
        namesrv: rocketmq_namesrv(),
        topic: format!("Orders{}", &store.name[9..19]),
        orders: 40,
        concurrency: 8,
        restart_broker: format!("bash {} restart-broker", script.display()),
        settle_timeout: Duration::from_secs(150),
    };
    let report = run(&options).await;
    let pool = store.pool().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {}", options.database))
        .execute(&pool)
        .await?;
    let report = report?;
    assert!(report.ok(), "{report}");
    assert!(report.broker_restarted);
    assert_eq!(report.events_committed, 160);
    app.stop().await;
    Ok(())
}
