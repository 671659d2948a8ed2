//! The fault schedule: which fault, when, for how long, drawn from one seed.
//!
//! The same seed and duration give the same schedule, so a failing run can be replayed. One
//! fault is active at a time; a fault starts every 3 to 12 s (never more than 15 s apart, so
//! an hour holds 240 or more) and lasts 1 to 5 s, after which it is healed.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Coordinators the runner starts on one database.
pub const COORDINATORS: usize = 3;

/// A fault the runner injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// A coordinator is killed (SIGKILL) and started again when the fault ends.
    KillCoordinator(usize),
    /// A coordinator is paused (SIGSTOP) and resumed (SIGCONT) when the fault ends.
    PauseCoordinator(usize),
    /// Nothing passes between the coordinators and MySQL (a frozen or unreachable database).
    DatabaseBlackHole,
    /// Every connection between the coordinators and MySQL is reset, new ones too.
    DatabaseResets,
    /// A bank (participant) answers every call 200 to 800 ms late.
    SlowParticipant(usize),
    /// A bank (participant) refuses every connection.
    ParticipantDown(usize),
    /// Nothing passes between the participants and their databases.
    ParticipantDatabaseBlackHole,
    /// The RocketMQ broker is killed (SIGKILL) and started again.
    BrokerRestart,
    /// Every connection to Redis is reset, new ones too.
    RedisResets,
    /// MariaDB is killed (SIGKILL) and started again (crash recovery) when the fault ends.
    DatabaseCrash,
    /// MariaDB is paused (SIGSTOP) and resumed (SIGCONT) when the fault ends.
    DatabasePause,
    /// Redis is killed (SIGKILL) and started again on its append-only file.
    RedisRestart,
    /// Nothing passes from the coordinators (and the consumers) to the broker.
    BrokerBlackHole,
}

impl Fault {
    /// Every fault kind, once (coordinator and bank faults on their first instance).
    pub const KINDS: [&'static str; 13] = [
        "kill coordinator",
        "pause coordinator",
        "database black hole",
        "database resets",
        "slow participant",
        "participant down",
        "participant database black hole",
        "broker restart",
        "redis resets",
        "database crash",
        "database pause",
        "redis restart",
        "broker black hole",
    ];

    /// The kind, as the report names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KillCoordinator(_) => Self::KINDS[0],
            Self::PauseCoordinator(_) => Self::KINDS[1],
            Self::DatabaseBlackHole => Self::KINDS[2],
            Self::DatabaseResets => Self::KINDS[3],
            Self::SlowParticipant(_) => Self::KINDS[4],
            Self::ParticipantDown(_) => Self::KINDS[5],
            Self::ParticipantDatabaseBlackHole => Self::KINDS[6],
            Self::BrokerRestart => Self::KINDS[7],
            Self::RedisResets => Self::KINDS[8],
            Self::DatabaseCrash => Self::KINDS[9],
            Self::DatabasePause => Self::KINDS[10],
            Self::RedisRestart => Self::KINDS[11],
            Self::BrokerBlackHole => Self::KINDS[12],
        }
    }

    fn draw(rng: &mut StdRng) -> Self {
        let coordinator = rng.random_range(0..COORDINATORS);
        let bank = rng.random_range(0..2);
        match rng.random_range(0..Self::KINDS.len()) {
            0 => Self::KillCoordinator(coordinator),
            1 => Self::PauseCoordinator(coordinator),
            2 => Self::DatabaseBlackHole,
            3 => Self::DatabaseResets,
            4 => Self::SlowParticipant(bank),
            5 => Self::ParticipantDown(bank),
            6 => Self::ParticipantDatabaseBlackHole,
            7 => Self::BrokerRestart,
            8 => Self::RedisResets,
            9 => Self::DatabaseCrash,
            10 => Self::DatabasePause,
            11 => Self::RedisRestart,
            _ => Self::BrokerBlackHole,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KillCoordinator(i) | Self::PauseCoordinator(i) => {
                write!(f, "{} {}", self.kind(), i + 1)
            }
            Self::SlowParticipant(b) | Self::ParticipantDown(b) => {
                write!(f, "{} (bank {})", self.kind(), ["a", "b"][*b])
            }
            _ => f.write_str(self.kind()),
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// When it starts, from the start of the run.
    pub at: Duration,
    /// How long it lasts.
    pub hold: Duration,
    /// What it is.
    pub fault: Fault,
}

/// The faults of a run of `duration` with `seed`, in time order.
pub fn schedule(seed: u64, duration: Duration) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan = Vec::new();
    let mut at = Duration::from_millis(rng.random_range(2_000..5_000));
    while at < duration {
        let hold = Duration::from_millis(rng.random_range(1_000..5_000));
        let fault = Fault::draw(&mut rng);
        plan.push(Planned { at, hold, fault });
        // The next fault starts after this one healed, 3 to 12 s after this one began.
        let gap = Duration::from_millis(rng.random_range(3_000..12_000))
            .max(hold + Duration::from_millis(500));
        at += gap;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let d = Duration::from_secs(600);
        assert_eq!(schedule(7, d), schedule(7, d));
        assert_ne!(schedule(7, d), schedule(8, d));
    }

    #[test]
    fn faults_come_at_least_every_fifteen_seconds_and_never_overlap() {
        for seed in 0..50 {
            let plan = schedule(seed, Duration::from_secs(3_600));
            assert!(plan.len() >= 240, "seed {seed}: {} faults", plan.len());
            for w in plan.windows(2) {
                assert!(w[1].at - w[0].at <= Duration::from_secs(15));
                assert!(w[0].at + w[0].hold < w[1].at);
            }
        }
    }

    #[test]
    fn an_hour_draws_every_kind() {
        let plan = schedule(1, Duration::from_secs(3_600));
        for kind in Fault::KINDS {
            assert!(
                plan.iter().any(|p| p.fault.kind() == kind),
                "{kind} never drawn"
            );
        }
    }
}
