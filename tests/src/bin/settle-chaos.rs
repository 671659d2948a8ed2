//! `settle-chaos --seed S --duration D`: runs Settle's chaos (three coordinators, transfers,
//! ordered orders and plain TCCs, messages and sagas, a seeded schedule of faults), checks every
//! invariant and prints the report. Exits 1 if a promise was broken. See `settle_tests::chaos`.
//!
//! Needs MariaDB's and Redis's server programs (`deploy/services.sh start` installs them) and
//! the RocketMQ name server and broker (`deploy/rocketmq.sh install`): a run starts a server
//! of each of its own, to crash them and cut their links.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use settle_tests::chaos::{run, Options};

/// Runs Settle under a seeded schedule of faults and checks its promises.
#[derive(Debug, Parser)]
#[command(name = "settle-chaos")]
struct Args {
    /// Seed of the fault schedule (a run prints its seed; the same seed replays the same
    /// faults). Default: drawn from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of faults.
    #[arg(long, default_value_t = 60, value_parser = seconds)]
    duration: u64,
    /// Seconds everything may take to settle once the faults stopped.
    #[arg(long, default_value_t = 90, value_parser = seconds)]
    settle_timeout: u64,
    /// Initiators per workload.
    #[arg(long, default_value_t = 6)]
    workers: usize,
    /// The settle binary (default: `settle-under-test` beside this one).
    #[arg(long)]
    binary: Option<String>,
}

/// Seconds, written `90` or `90s` (or `2m`).
fn seconds(s: &str) -> Result<u64, String> {
    let (n, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    n.parse::<u64>()
        .map(|n| n * unit)
        .map_err(|_| format!("'{s}' is not a number of seconds (90, 90s or 2m)"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let binary = args.binary.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("settle-under-test")))
            .map_or_else(|| "settle".to_owned(), |p| p.display().to_string())
    });
    if !std::path::Path::new(&binary).exists() {
        eprintln!(
            "settle-chaos: no coordinator binary at {binary}: build it with `cargo build -p settle-tests --bins` (add --release as for this one), or pass --binary"
        );
        return ExitCode::from(2);
    }
    let options = Options {
        seed,
        duration: Duration::from_secs(args.duration),
        settle_timeout: Duration::from_secs(args.settle_timeout),
        binary,
        workers: args.workers,
    };
    eprintln!(
        "[chaos] seed {seed}: replay with settle-chaos --seed {seed} --duration {}",
        args.duration
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("settle-chaos: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
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
            eprintln!("settle-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}
