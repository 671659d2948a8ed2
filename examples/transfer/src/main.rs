//! `transfer`: runs concurrent money transfers between two banks through a Settle
//! coordinator and checks that no money was created or lost. See the README.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use settle_example_transfer::bank::Faults;
use settle_example_transfer::driver::{BalanceEvents, Mode};
use settle_example_transfer::{run, Options};

/// Concurrent money transfers between two banks (TCC or saga), checked for conservation.
#[derive(Debug, Parser)]
#[command(name = "transfer", version)]
struct Args {
    /// How each transfer runs: `tcc` or `saga`.
    #[arg(long, value_enum, default_value_t = ModeArg::Tcc)]
    mode: ModeArg,
    /// Base URL of the coordinator's DTM API.
    #[arg(long, default_value = "http://127.0.0.1:36789/api/dtmsvr")]
    coordinator: String,
    /// MySQL server for the two banks (their databases are recreated).
    #[arg(
        long,
        env = "TRANSFER_MYSQL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    mysql: String,
    /// Prefix of the banks' databases: PREFIX_a and PREFIX_b.
    #[arg(long, default_value = "settle_transfer")]
    database_prefix: String,
    /// Transfers in all.
    #[arg(long, short = 'n', default_value_t = 200)]
    transfers: usize,
    /// Transfers running at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Accounts per bank.
    #[arg(long, default_value_t = 10)]
    accounts: i64,
    /// Opening balance of every account, in cents.
    #[arg(long, default_value_t = 10_000)]
    opening_balance: i64,
    /// Share (0..1) of Tries (saga: actions) that fail on purpose, rolling their transfer back.
    #[arg(long, default_value_t = 0.0)]
    try_fail_rate: f64,
    /// Share (0..1) of Confirms (saga: actions) that answer 500 after committing, so the
    /// coordinator retries.
    #[arg(long, default_value_t = 0.0)]
    confirm_fail_rate: f64,
    /// Seconds to wait for every transaction to settle.
    #[arg(long, default_value_t = 300)]
    settle_timeout_s: u64,
    /// RocketMQ name server: emit balance changes after commit (the coordinator must be
    /// started with the same --rocketmq-namesrv) and keep a Redis balance cache from them.
    #[arg(long)]
    rocketmq_namesrv: Option<String>,
    /// Topic of balance changes.
    #[arg(long, default_value = "BalanceEvents")]
    topic: String,
    /// Redis for the balance cache.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Tcc,
    Saga,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
        mode: match args.mode {
            ModeArg::Tcc => Mode::Tcc,
            ModeArg::Saga => Mode::Saga,
        },
        coordinator: args.coordinator,
        mysql: args.mysql,
        database_prefix: args.database_prefix,
        transfers: args.transfers,
        concurrency: args.concurrency,
        accounts: args.accounts,
        opening_balance: args.opening_balance,
        faults: Faults {
            try_fail_rate: args.try_fail_rate,
            confirm_fail_rate: args.confirm_fail_rate,
        },
        settle_timeout: Duration::from_secs(args.settle_timeout_s),
        balance_events: args.rocketmq_namesrv.map(|namesrv| BalanceEvents {
            namesrv,
            topic: args.topic,
            redis: args.redis,
        }),
    };
    match runtime.block_on(run(&options)) {
        Ok(report) => {
            println!("{report}");
            if report.conserved() {
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
