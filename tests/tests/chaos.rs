//! A minute of chaos: three coordinators on one database (one with its clock 30 s fast),
//! transfers, ordered orders and plain TCCs, messages and sagas through a load balancer, and a
//! seeded schedule of faults (coordinators killed and paused, the database crashed, paused,
//! black-holed and its connections reset, participants slow or down, their database
//! black-holed, the broker restarted or black-holed, Redis restarted and its connections
//! reset). Every promise is
//! checked from every side afterwards (see `settle_tests::chaos`).
//!
//! `SETTLE_CHAOS_SEED` and `SETTLE_CHAOS_SECONDS` choose another seed or length; a failing
//! run prints its seed, and `settle-chaos --seed S --duration D` replays its schedule.

use std::time::Duration;

use settle_tests::chaos::{run, Options};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minute_of_seeded_faults_breaks_no_promise() -> anyhow::Result<()> {
    let seed = env_or("SETTLE_CHAOS_SEED", 20_261_124);
    let seconds = env_or("SETTLE_CHAOS_SECONDS", 60);
    let report = run(&Options {
        seed,
        duration: Duration::from_secs(seconds),
        settle_timeout: Duration::from_secs(90),
        binary: env!("CARGO_BIN_EXE_settle-under-test").to_owned(),
        workers: 6,
    })
    .await?;
    println!("{report}");
    assert!(report.ok(), "seed {seed} broke a promise:\n{report}");
    let faults: usize = report.faults.values().sum();
    assert!(
        faults as u64 >= seconds / 15,
        "only {faults} faults in {seconds}s"
    );
    assert!(
        report.transfers.1 > 0
            && report.order_steps.committed > 0
            && report.plain_tccs.1 > 0
            && report.plain_messages.1 > 0
            && report.plain_sagas.1 > 0
            && report.plain_sagas.2 > 0,
        "a workload committed nothing, or no saga was compensated:\n{report}"
    );
    Ok(())
}
