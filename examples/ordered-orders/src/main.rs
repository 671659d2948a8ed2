//! `ordered-orders`: drives orders through their states with transactional messages, restarts
//! the broker once, and checks order and cache consistency. See the README.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use settle_example_ordered_orders::{run, Options};

/// Orders whose events must reach consumers in order, and a Redis cache that must match the
/// database.
#[derive(Debug, Parser)]
#[command(name = "ordered-orders", version)]
struct Args {
    /// Base URL of the coordinator's DTM API (started with --rocketmq-namesrv).
    #[arg(long, default_value = "http://127.0.0.1:36789/api/dtmsvr")]
    coordinator: String,
    /// MySQL server for the order service.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql: String,
    /// The order service's database (recreated).
    #[arg(long, default_value = "settle_orders")]
    database: String,
    /// Redis for the order cache.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// RocketMQ name server.
    #[arg(long, default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// Topic of order events.
    #[arg(long, default_value = "OrderEvents")]
    topic: String,
    /// Orders to drive.
    #[arg(long, short = 'n', default_value_t = 200)]
    orders: usize,
    /// Orders moving at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Command that restarts the broker once, halfway; empty for none.
    #[arg(long, default_value = "deploy/rocketmq.sh restart-broker")]
    restart_broker: String,
    /// Seconds to wait for every event after the last change.
    #[arg(long, default_value_t = 180)]
    settle_timeout_s: u64,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        eprintln!("error: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    let options = Options {
        coordinator: a.coordinator,
        mysql: a.mysql,
        database: a.database,
        redis: a.redis,
        namesrv: a.namesrv,
        topic: a.topic,
        orders: a.orders,
        concurrency: a.concurrency,
        restart_broker: a.restart_broker,
        settle_timeout: Duration::from_secs(a.settle_timeout_s),
    };
    match runtime.block_on(run(&options)) {
        Ok(report) => {
            println!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
