//! The simulation tier: the coordinator's scheduler, driver and dispatcher, run in this
//! process over an in-memory SQLite store against simulated participants and a simulated
//! broker that fail, stall and duplicate, on simulated time, everything chosen by one seed.
//!
//! A seed fixes the workload (which TCCs, messages and sagas, their branches, steps, keys and
//! orders, which Tries fail, which initiators crash, what each check-back will say, which saga
//! actions refuse and how often a saga's participant answers "not yet" or refuses a
//! compensation before it does what is asked), the clock's steps, and
//! every fault: whether a call or publish fails is a function of the seed and of the call
//! itself (transaction, branch, operation and how many times it was made before), not of
//! the order calls happen to arrive in. Time is a stepped clock that moves only when the
//! simulation steps it, so timeouts, retry backoff and leases run over minutes of simulated
//! time in a fraction of a second.
//!
//! A seed replays exactly. The coordinator is started by hand ([`Parts::by_hand`]): nothing
//! of it runs in the background. At each instant the simulation runs the scheduler's pass,
//! the queued rounds and the dispatcher's pass, in an order the seed picks, until none finds
//! work; requests are made one at a time. So one thing happens at a time, in an order fixed
//! by the seed, and retry jitter is a function of the transaction and its attempt. Every
//! call and publish is traced with its simulated time and outcome; two runs of a seed must
//! give the same trace.
//!
//! Once the faults stop, the transactions must settle within a bound of simulated time, and
//! the same invariants the chaos runner checks must hold: each TCC confirmed everywhere or
//! cancelled everywhere, as decided; no confirm without a successful Try; every effect
//! applied once (duplicates absorbed and counted); a committed message delivered to every
//! step, a rolled-back one to none (a check-back answered 200 with a body that is not a
//! verdict is never a commit); each key's committed sequence received in order; a saga ends
//! `succeed` with every action done and nothing compensated, or `failed` with every step it
//! called compensated, back along its order (the chaos checker's saga rules, on the
//! simulated participant's numbered record of calls), and `failed` if one of its actions
//! refuses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use settle_coordinator::app::{Application, ByHand, Parts, Work};
use settle_coordinator::clock::Clock;
use settle_coordinator::delivery::{Failure, Sink};
use settle_coordinator::driver::transport::{Answer, Request, Transport};
use settle_coordinator::store::OutboxRow;
use settle_coordinator::txn::retry::jitter;
use settle_coordinator::Config;
use settle_protocol::{GlobalRequest, RegisterBranchRequest};
use settle_sdk::SettleClient;

use crate::chaos::check::{replayed_in_order, saga_order, saga_outcome, Answers, SagaCalls};

/// Where simulated participants are reached (the transport never opens it).
const BASE: &str = "http://127.0.0.1:9";
/// The topic of simulated `rocketmq://` steps.
const TOPIC: &str = "SimOrders";
/// Simulated time at the start, ms.
const START_MS: i64 = 1_800_000_000_000;
/// Simulated time during which faults happen, ms.
const FAULTY_MS: i64 = 60_000;
/// Simulated time after the faults stop within which everything must have settled, ms.
const SETTLE_BOUND_MS: i64 = 240_000;
/// Passes at one instant after which work that is still found is a busy loop.
const MAX_PASSES: usize = 200;
/// Mixed into the seed for the generator that orders the coordinator's work.
const ORDER_SALT: u64 = 0x0DE5_5EED_0F0D_E500;

/// SplitMix64: a small, fast generator whose sequence is fixed by its seed.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        to_unit(self.next_u64())
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

#[allow(clippy::cast_precision_loss)]
fn to_unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A number in `[0, 1)` fixed by the seed and `what`: the same question gets the same
/// answer in every run of the seed, whatever order the questions come in (the coordinator's
/// own retry jitter is drawn the same way).
fn roll(seed: u64, what: &impl Hash) -> f64 {
    jitter(&(seed, what))
}

/// What a simulated initiator decided for a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Must end `succeed`, every branch confirmed or step delivered.
    Commit,
    /// Must end `failed`, every registered branch cancelled, nothing delivered.
    Rollback,
    /// May end either way (a saga whose timeout may pass before its actions are done).
    Either,
}

impl Expect {
    /// The statuses it may end in.
    fn statuses(self) -> &'static [&'static str] {
        match self {
            Self::Commit => &["succeed"],
            Self::Rollback => &["failed"],
            Self::Either => &["succeed", "failed"],
        }
    }
}

/// How a saga's participant answers one step, whenever a call reaches it.
#[derive(Debug, Clone, Copy, Default)]
struct StepPlan {
    /// The action answers FAILURE (409) once it is done saying "not yet": it fails for
    /// good, and the saga compensates.
    refuses: bool,
    /// Calls of the action answered ONGOING (425) first.
    ongoing_first: u64,
    /// Calls of the compensate answered FAILURE first (which the coordinator must retry).
    compensate_refused_first: u64,
}

/// What a participant does with a call that reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Apply,
    NotYet,
    Refuse,
}

/// A msg's local transaction, as its check-back reports it.
#[derive(Debug, Clone, Copy)]
struct Local {
    committed: bool,
    /// Check-backs answered "ongoing" before the verdict.
    ongoing_first: u64,
}

#[derive(Debug, Default)]
struct World {
    faults_on: bool,
    /// Calls made so far per call identity (transaction, branch, operation).
    attempts: HashMap<String, u64>,
    /// Tries that succeeded: (gid, branch).
    tried: HashSet<(String, String)>,
    /// Effects applied: (gid, branch, op) -> how many calls carried it (1 applied, the rest
    /// absorbed as duplicates).
    effects: HashMap<(String, String, String), u64>,
    /// Messages the broker stored, in order: (key, message id).
    received: Vec<(String, String)>,
    locals: HashMap<String, Local>,
    /// Each saga's participant's plan, step by step.
    sagas: HashMap<String, Vec<StepPlan>>,
    /// What each saga's operations were answered, (gid, branch, op), numbered in the order
    /// the participant answered them, as the chaos checker reads a participant's record.
    answers: HashMap<(String, String, String), Answers>,
    /// Saga calls answered so far.
    answered: u64,
    faults: BTreeMap<&'static str, u64>,
    /// Every call and publish, in the order they happened, with the simulated time and
    /// what was answered: what must be the same on every run of a seed.
    trace: Vec<String>,
}

/// The participants, the initiators' check-back endpoints and the broker, in one place.
#[derive(Debug, Clone)]
struct Sim {
    seed: u64,
    clock: Clock,
    world: Arc<Mutex<World>>,
}

impl Sim {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The fault, if any, hitting the `n`th call of `identity` (counted from 0).
    fn fault(
        &self,
        w: &mut World,
        identity: &str,
        table: &[(&'static str, f64)],
    ) -> Option<&'static str> {
        let n = w.attempts.entry(identity.to_owned()).or_default();
        let attempt = *n;
        *n += 1;
        if !w.faults_on {
            return None;
        }
        let r = roll(self.seed, &(identity, attempt));
        let mut edge = 0.0;
        for (kind, p) in table {
            edge += p;
            if r < edge {
                *w.faults.entry(kind).or_default() += 1;
                return Some(kind);
            }
        }
        None
    }

    /// Adds a line to the trace: the simulated time, what was called, what happened.
    fn log(&self, w: &mut World, identity: &str, what: &str) {
        let line = format!("{} {identity}: {what}", self.clock.now_ms() - START_MS);
        w.trace.push(line);
    }

    /// A branch operation or message step: its effect is applied once, however often it is
    /// called (as a barrier would).
    fn branch(&self, gid: &str, branch: &str, op: &str) -> Answer {
        let mut w = self.world();
        let identity = format!("{gid}/{branch}/{op}");
        let fault = self.fault(
            &mut w,
            &identity,
            &[
                ("participant answered 500", 0.2),
                ("participant timed out", 0.07),
                ("participant applied, answer lost", 0.1),
            ],
        );
        let attempt = w.attempts.get(&identity).map_or(0, |n| n - 1);
        let verdict = Self::verdict(&w, gid, branch, op, attempt);
        let reached = !matches!(
            fault,
            Some("participant answered 500" | "participant timed out")
        );
        let what = match (fault, verdict) {
            (Some(kind), _) if !reached => kind,
            (Some(kind), Verdict::Apply) => kind,
            (Some(_), Verdict::NotYet) => "not yet, answer lost",
            (Some(_), Verdict::Refuse) => "refused, answer lost",
            (None, Verdict::Apply) => "applied",
            (None, Verdict::NotYet) => "not yet",
            (None, Verdict::Refuse) => "refused",
        };
        self.log(&mut w, &identity, what);
        if w.sagas.contains_key(gid) {
            w.answered += 1;
            let n = w.answered;
            w.answers
                .entry((gid.to_owned(), branch.to_owned(), op.to_owned()))
                .or_default()
                .record(n, reached && verdict == Verdict::Apply);
        }
        if reached && verdict == Verdict::Apply {
            *w.effects
                .entry((gid.to_owned(), branch.to_owned(), op.to_owned()))
                .or_default() += 1;
        }
        match (fault, verdict) {
            (Some("participant answered 500"), _) => Answer::Status(500, "internal error".into()),
            (Some("participant timed out"), _) => Answer::TimedOut,
            (Some(_), _) => Answer::Failed("connection reset by peer".into()),
            (None, Verdict::Apply) => Answer::Status(200, r#"{"dtm_result":"SUCCESS"}"#.into()),
            (None, Verdict::NotYet) => Answer::Status(425, r#"{"dtm_result":"ONGOING"}"#.into()),
            (None, Verdict::Refuse) => Answer::Status(409, r#"{"dtm_result":"FAILURE"}"#.into()),
        }
    }

    /// What the participant does with the `attempt`th call (from 0) of `op` of `branch` of
    /// `gid`: a saga's follows its plan; any other applies it.
    fn verdict(w: &World, gid: &str, branch: &str, op: &str, attempt: u64) -> Verdict {
        let plan = w.sagas.get(gid).and_then(|steps| {
            let step = branch.parse::<usize>().ok()?.checked_sub(1)?;
            steps.get(step).copied()
        });
        match (plan, op) {
            (Some(p), "action") if attempt < p.ongoing_first => Verdict::NotYet,
            (Some(p), "action") if p.refuses => Verdict::Refuse,
            (Some(p), "compensate") if attempt < p.compensate_refused_first => Verdict::Refuse,
            _ => Verdict::Apply,
        }
    }

    /// A msg's check-back.
    fn check_back(&self, gid: &str) -> Answer {
        let mut w = self.world();
        let identity = format!("{gid}/00/msg");
        let asked = w.attempts.get(&identity).copied().unwrap_or(0);
        let fault = self.fault(
            &mut w,
            &identity,
            &[
                ("check-back answered 500", 0.15),
                ("check-back answered 200 without a verdict", 0.1),
                ("check-back timed out", 0.05),
            ],
        );
        let (what, answer) = match (fault, w.locals.get(gid).copied()) {
            (Some(kind @ "check-back answered 500"), _) => {
                (kind, Answer::Status(500, String::new()))
            }
            (Some(kind @ "check-back answered 200 without a verdict"), _) => {
                (kind, Answer::Status(200, "<html>maintenance</html>".into()))
            }
            (Some(kind), _) => (kind, Answer::TimedOut),
            (None, None) => ("unknown", Answer::Status(404, "unknown".into())),
            (None, Some(local)) if asked < local.ongoing_first => (
                "ongoing",
                Answer::Status(425, r#"{"dtm_result":"ONGOING"}"#.into()),
            ),
            (None, Some(local)) if local.committed => (
                "committed",
                Answer::Status(200, r#"{"dtm_result":"SUCCESS"}"#.into()),
            ),
            (None, Some(_)) => (
                "rolled back",
                Answer::Status(409, r#"{"dtm_result":"FAILURE"}"#.into()),
            ),
        };
        self.log(&mut w, &identity, what);
        answer
    }
}

impl Transport for Sim {
    fn send<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Answer> {
        let param = |name: &str| {
            request
                .query
                .iter()
                .find(|(k, _)| *k == name)
                .map_or("", |(_, v)| *v)
        };
        let (gid, branch, op) = (param("gid"), param("branch_id"), param("op"));
        let answer = match request.url.strip_prefix(BASE) {
            Some("/check") => self.check_back(gid),
            Some(_) => self.branch(gid, branch, op),
            None => Answer::Failed(format!("no simulated participant at {}", request.url)),
        };
        async move { answer }.boxed()
    }
}

impl Sink for Sim {
    fn publish<'a>(&'a self, messages: &'a [OutboxRow]) -> BoxFuture<'a, Vec<Result<(), Failure>>> {
        let mut w = self.world();
        let mut stopped: HashSet<&str> = HashSet::new();
        let results = messages
            .iter()
            .map(|m| {
                let transient = |error: &str| {
                    Err(Failure {
                        error: error.to_owned(),
                        permanent: false,
                    })
                };
                let identity = format!("publish/{}", m.message_id);
                if stopped.contains(m.sharding_key.as_str()) {
                    self.log(
                        &mut w,
                        &identity,
                        "not sent: an earlier message of its key failed",
                    );
                    return transient("an earlier message of the key failed");
                }
                let fault = self.fault(
                    &mut w,
                    &identity,
                    &[
                        ("broker refused for now", 0.15),
                        ("broker stored, ack lost", 0.1),
                    ],
                );
                self.log(&mut w, &identity, fault.unwrap_or("stored"));
                if fault != Some("broker refused for now") {
                    w.received
                        .push((m.sharding_key.clone(), m.message_id.clone()));
                }
                match fault {
                    None => Ok(()),
                    Some(kind) => {
                        stopped.insert(&m.sharding_key);
                        transient(kind)
                    }
                }
            })
            .collect();
        async move { results }.boxed()
    }
}

/// A transaction the simulation started, and what it must come to.
#[derive(Debug, Clone)]
struct Started {
    gid: String,
    trans_type: &'static str,
    expect: Expect,
    /// TCC: branch ids registered. Msg: (branch id, whether it is a broker step).
    branches: Vec<(String, bool)>,
    /// Saga: the steps each step runs after.
    after: Vec<Vec<usize>>,
}

/// What one seed did and found.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// TCCs run.
    pub tccs: usize,
    /// Messages run.
    pub msgs: usize,
    /// Sagas run.
    pub sagas: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Duplicate calls and publishes absorbed.
    pub duplicates: u64,
    /// Simulated time from the end of the faults until everything settled, ms.
    pub settle_ms: i64,
    /// What went wrong; empty when every invariant held.
    pub violations: Vec<String>,
    /// Every call and publish, in order, with the simulated time and what happened.
    pub trace: Vec<String>,
}

impl SeedReport {
    /// A digest of the trace: two runs of a seed that made the same calls in the same order,
    /// with the same outcomes, have the same digest.
    pub fn digest(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.trace.hash(&mut h);
        h.finish()
    }

    /// Where this run's trace first differs from `other`'s: the line number and both lines
    /// (`None` where a trace ended); `None` when they are the same.
    pub fn first_difference<'a>(
        &'a self,
        other: &'a SeedReport,
    ) -> Option<(usize, Option<&'a str>, Option<&'a str>)> {
        let n = self.trace.len().max(other.trace.len());
        (0..n).find_map(|i| {
            let (a, b) = (self.trace.get(i), other.trace.get(i));
            (a != b).then(|| (i, a.map(String::as_str), b.map(String::as_str)))
        })
    }
}

/// The coordinator's configuration in a simulation.
fn config() -> Config {
    Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: "sqlite::memory:".into(),
        poll_interval_ms: 2,
        delivery_poll_interval_ms: 2,
        lease_ms: 20_000,
        retry_cap_s: 8,
        default_retry_interval_s: 1,
        default_request_timeout_s: 3,
        rocketmq_namesrv: "simulated".into(),
        retention_s: 0,
        instance_id: "sim".into(),
        ..Config::default()
    }
}

/// Starts one simulated initiator's transaction, as the seed says.
async fn start_one(
    sim: &Sim,
    client: &SettleClient,
    rng: &mut SplitMix,
    gid: String,
) -> anyhow::Result<Started> {
    let kind = rng.unit();
    if kind < 0.35 {
        start_tcc(sim, client, rng, gid).await
    } else if kind < 0.7 {
        start_msg(sim, client, rng, gid).await
    } else {
        start_saga(sim, client, rng, gid).await
    }
}

async fn start_tcc(
    sim: &Sim,
    client: &SettleClient,
    rng: &mut SplitMix,
    gid: String,
) -> anyhow::Result<Started> {
    let request = GlobalRequest {
        timeout_to_fail: i64::try_from(rng.range(3, 10)).unwrap_or(5),
        concurrent: rng.unit() < 0.3,
        ..GlobalRequest::new(&gid, "tcc")
    };
    client.post("prepare", &request).await?;
    let mut branches = Vec::new();
    let mut all_tried = true;
    for n in 1..=rng.range(1, 4) {
        let branch = format!("{n:02}");
        let register: RegisterBranchRequest = [
            ("gid", gid.as_str()),
            ("trans_type", "tcc"),
            ("branch_id", branch.as_str()),
            ("data", r#"{"amount":1}"#),
            ("confirm", &format!("{BASE}/tcc/confirm")),
            ("cancel", &format!("{BASE}/tcc/cancel")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        client.post("registerBranch", &register).await?;
        branches.push((branch.clone(), false));
        // The Try, made by the initiator itself.
        if rng.unit() < 0.15 {
            all_tried = false;
            break;
        }
        sim.world().tried.insert((gid.clone(), branch));
    }
    let crash = rng.unit() < 0.15;
    let expect = if crash || !all_tried {
        Expect::Rollback
    } else {
        Expect::Commit
    };
    if !crash {
        let route = if expect == Expect::Commit {
            "submit"
        } else {
            "abort"
        };
        client.post(route, &request).await?;
    }
    Ok(Started {
        gid,
        trans_type: "tcc",
        expect,
        branches,
        after: Vec::new(),
    })
}

async fn start_msg(
    sim: &Sim,
    client: &SettleClient,
    rng: &mut SplitMix,
    gid: String,
) -> anyhow::Result<Started> {
    let mut request = GlobalRequest {
        timeout_to_fail: i64::try_from(rng.range(2, 6)).unwrap_or(3),
        query_prepared: format!("{BASE}/check"),
        ..GlobalRequest::new(&gid, "msg")
    };
    let mut branches = Vec::new();
    for n in 1..=rng.range(1, 4) {
        let broker = rng.unit() < 0.6;
        let url = if broker {
            format!("rocketmq://{TOPIC}?key=k{}", rng.range(0, 3))
        } else {
            format!("{BASE}/step/action")
        };
        request
            .steps
            .push(std::iter::once(("action".to_owned(), url)).collect());
        request.payloads.push(format!(r#"{{"n":{n}}}"#));
        branches.push((format!("{n:02}"), broker));
    }
    let mode = rng.unit();
    let expect = if mode < 0.35 {
        // Submitted at once, without a prepare.
        client.post("submit", &request).await?;
        Expect::Commit
    } else if mode < 0.65 {
        client.post("prepare", &request).await?;
        sim.world().locals.insert(
            gid.clone(),
            Local {
                committed: true,
                ongoing_first: 0,
            },
        );
        client.post("submit", &request).await?;
        Expect::Commit
    } else {
        // Prepared, then the initiator goes silent: the check-back decides.
        let local = Local {
            committed: rng.unit() < 0.5,
            ongoing_first: rng.range(0, 3),
        };
        sim.world().locals.insert(gid.clone(), local);
        client.post("prepare", &request).await?;
        if local.committed {
            Expect::Commit
        } else {
            Expect::Rollback
        }
    };
    Ok(Started {
        gid,
        trans_type: "msg",
        expect,
        branches,
        after: Vec::new(),
    })
}

/// A saga of 1 to 4 steps: a chain, or concurrent with each step after a random set of the
/// steps before it (none: all at once). Some actions answer "not yet" a few times, some
/// refuse (then the saga must fail), some compensates refuse a few times; a quarter of the
/// sagas have a timeout, which may pass before their actions are done.
async fn start_saga(
    sim: &Sim,
    client: &SettleClient,
    rng: &mut SplitMix,
    gid: String,
) -> anyhow::Result<Started> {
    let steps = usize::try_from(rng.range(1, 5)).unwrap_or(1);
    let concurrent = rng.unit() < 0.6;
    let after: Vec<Vec<usize>> = (0..steps)
        .map(|i| match i {
            0 => vec![],
            _ if !concurrent => vec![i - 1],
            _ => (0..i).filter(|_| rng.unit() < 0.5).collect(),
        })
        .collect();
    let mut request = GlobalRequest::new(&gid, "saga");
    if rng.unit() < 0.25 {
        request.timeout_to_fail = i64::try_from(rng.range(5, 40)).unwrap_or(10);
    }
    for n in 0..steps {
        request.steps.push(
            [("action", "saga/action"), ("compensate", "saga/compensate")]
                .into_iter()
                .map(|(op, path)| (op.to_owned(), format!("{BASE}/{path}")))
                .collect(),
        );
        request.payloads.push(format!(r#"{{"n":{n}}}"#));
    }
    if concurrent {
        let orders: BTreeMap<String, &Vec<usize>> = after
            .iter()
            .enumerate()
            .filter(|(_, before)| !before.is_empty())
            .map(|(i, before)| (i.to_string(), before))
            .collect();
        request.custom_data = serde_json::json!({"orders": orders, "concurrent": true}).to_string();
    }
    let plan: Vec<StepPlan> = (0..steps)
        .map(|_| StepPlan {
            refuses: rng.unit() < 0.1,
            ongoing_first: if rng.unit() < 0.3 { rng.range(1, 4) } else { 0 },
            compensate_refused_first: if rng.unit() < 0.3 { rng.range(1, 3) } else { 0 },
        })
        .collect();
    let expect = if plan.iter().any(|p| p.refuses) {
        Expect::Rollback
    } else if request.timeout_to_fail > 0 {
        Expect::Either
    } else {
        Expect::Commit
    };
    sim.world().sagas.insert(gid.clone(), plan);
    client.post("submit", &request).await?;
    Ok(Started {
        gid,
        trans_type: "saga",
        expect,
        branches: Vec::new(),
        after,
    })
}

/// Runs the simulation of `seed`.
///
/// # Errors
/// The coordinator could not start, or refused the simulated initiators (not a
/// violation: a broken simulation).
pub async fn run_seed(seed: u64) -> anyhow::Result<SeedReport> {
    let clock = Clock::stepped(START_MS);
    let sim = Sim {
        seed,
        clock: clock.clone(),
        world: Arc::new(Mutex::new(World {
            faults_on: true,
            ..World::default()
        })),
    };
    let app = Application::start_with(
        config(),
        Parts {
            clock: clock.clone(),
            transport: Some(Arc::new(sim.clone())),
            sink: Some(Arc::new(sim.clone())),
            by_hand: true,
        },
    )
    .await?;
    let hand = app
        .by_hand()
        .context("a coordinator started by hand has work to run by hand")?;
    // Picks the order the scheduler, the rounds and the dispatcher run in at each instant.
    let mut order = SplitMix::new(seed ^ ORDER_SALT);
    let mut busy = None;
    let client = SettleClient::new(app.api_url());
    let mut rng = SplitMix::new(seed);
    let count = rng.range(6, 16);
    let mut started = Vec::new();
    let mut next = 0;
    let mut now = START_MS;
    let mut settled_at = None;
    while now < START_MS + FAULTY_MS + SETTLE_BOUND_MS {
        // New transactions keep coming during most of the faulty period.
        if next < count && rng.unit() < 0.4 {
            started.push(start_one(&sim, &client, &mut rng, format!("sim{seed}-{next}")).await?);
            next += 1;
            // Sometimes the coordinator gets to what the requests queued before time moves.
            if order.unit() < 0.5 && !run_due(hand, &mut order).await? {
                busy.get_or_insert(now);
            }
        }
        let step = rng.range(100, 2_500);
        clock.advance(Duration::from_millis(step));
        now += i64::try_from(step).unwrap_or(0);
        if now >= START_MS + FAULTY_MS {
            sim.world().faults_on = false;
            if next == count && all_settled(&app, &client, &started).await? {
                settled_at = Some(now);
                break;
            }
        }
        // The scheduler, the rounds and the dispatcher do what is due now.
        if !run_due(hand, &mut order).await? {
            busy.get_or_insert(now);
        }
    }
    while next < count {
        started.push(start_one(&sim, &client, &mut rng, format!("sim{seed}-{next}")).await?);
        next += 1;
    }
    let mut report = SeedReport {
        seed,
        tccs: started.iter().filter(|s| s.trans_type == "tcc").count(),
        msgs: started.iter().filter(|s| s.trans_type == "msg").count(),
        sagas: started.iter().filter(|s| s.trans_type == "saga").count(),
        settle_ms: settled_at.map_or(SETTLE_BOUND_MS, |t| t - START_MS - FAULTY_MS),
        ..SeedReport::default()
    };
    check(&sim, &app, &client, &started, &mut report).await?;
    if let Some(at) = busy {
        report.violations.push(format!(
            "the coordinator still found work after {MAX_PASSES} passes at {} ms of simulated time (a busy loop)",
            at - START_MS
        ));
    }
    if settled_at.is_none() {
        report.violations.push(format!(
            "not settled {} s of simulated time after the faults stopped",
            SETTLE_BOUND_MS / 1000
        ));
    }
    {
        let w = sim.world();
        report.faults = w.faults.clone();
        report.trace = w.trace.clone();
        report.duplicates = w.effects.values().map(|n| n.saturating_sub(1)).sum::<u64>()
            + (w.received.len() as u64)
                .saturating_sub(w.received.iter().collect::<HashSet<_>>().len() as u64);
    }
    app.stop().await;
    Ok(report)
}

/// Runs what is due now: a pass of the scheduler, the queued rounds and a pass of the
/// dispatcher, in an order `order` picks, again and again until none of them finds anything
/// to do. Returns false if they still found work after [`MAX_PASSES`] (a busy loop).
async fn run_due(hand: &ByHand, order: &mut SplitMix) -> anyhow::Result<bool> {
    let mut work = [Work::Claim, Work::Rounds, Work::Deliveries];
    for _ in 0..MAX_PASSES {
        for i in (1..work.len()).rev() {
            let j = usize::try_from(order.range(0, i as u64 + 1)).unwrap_or(0);
            work.swap(i, j);
        }
        let mut found = 0;
        for w in work {
            found += hand.run(w).await?;
        }
        if found == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether every transaction is final and every committed message is out.
async fn all_settled(
    app: &Application,
    client: &SettleClient,
    started: &[Started],
) -> anyhow::Result<bool> {
    for s in started {
        match client.status(&s.gid).await?.as_deref() {
            Some("succeed" | "failed") => {}
            _ => return Ok(false),
        }
    }
    let unsent = app
        .store()
        .outbox_list(None, None, 10_000)
        .await?
        .into_iter()
        .filter(|e| matches!(e.status.as_str(), "held" | "pending"))
        .count();
    Ok(unsent == 0)
}

/// Checks every invariant, adding what fails to `report`.
///
/// # Errors
/// The coordinator cannot be read.
async fn check(
    sim: &Sim,
    app: &Application,
    client: &SettleClient,
    started: &[Started],
    report: &mut SeedReport,
) -> anyhow::Result<()> {
    let outbox = app.store().outbox_list(None, None, 10_000).await?;
    let mut statuses = Vec::with_capacity(started.len());
    for s in started {
        statuses.push(client.status(&s.gid).await?.unwrap_or_default());
    }
    let w = sim.world();
    let effect = |gid: &str, branch: &str, op: &str| {
        w.effects
            .get(&(gid.to_owned(), branch.to_owned(), op.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let mut v = Vec::new();
    for (s, status) in started.iter().zip(statuses) {
        let want = s.expect.statuses();
        if !want.contains(&status.as_str()) {
            v.push(format!(
                "{} ({}) ended '{status}', not '{}'",
                s.gid,
                s.trans_type,
                want.join("' or '")
            ));
        }
        if s.trans_type == "saga" {
            // The chaos checker's rules, on the participant's numbered record.
            let calls = SagaCalls::read(&s.after, |branch, op| {
                w.answers
                    .get(&(s.gid.clone(), branch.to_owned(), op.to_owned()))
                    .copied()
                    .unwrap_or_default()
            });
            let status = Some(status.as_str()).filter(|s| !s.is_empty());
            let mut add = |kind: &str, detail: String| v.push(format!("{kind}: {detail}"));
            saga_outcome(&s.gid, status, &calls, &mut add);
            saga_order(&s.gid, &calls, &mut add);
        }
        for (branch, broker) in &s.branches {
            let gid = s.gid.as_str();
            if s.trans_type == "tcc" {
                let (confirmed, cancelled) = (
                    effect(gid, branch, "confirm"),
                    effect(gid, branch, "cancel"),
                );
                if confirmed > 0 && !w.tried.contains(&(gid.to_owned(), branch.clone())) {
                    v.push(format!(
                        "{gid} branch {branch} confirmed without a successful Try"
                    ));
                }
                let (done, not_done) = if s.expect == Expect::Commit {
                    (confirmed, cancelled)
                } else {
                    (cancelled, confirmed)
                };
                if done == 0 || not_done > 0 {
                    v.push(format!(
                        "{gid} branch {branch}: confirmed {confirmed}x, cancelled {cancelled}x, expected to {}",
                        if s.expect == Expect::Commit { "confirm" } else { "cancel" }
                    ));
                }
            } else {
                let message_id = format!("{gid}-{branch}");
                let delivered = if *broker {
                    w.received
                        .iter()
                        .filter(|(_, id)| *id == message_id)
                        .count() as u64
                } else {
                    effect(gid, branch, "action")
                };
                match s.expect {
                    Expect::Commit if delivered == 0 => {
                        v.push(format!(
                            "{gid} step {branch} committed but never delivered (lost)"
                        ));
                    }
                    Expect::Rollback if delivered > 0 => {
                        v.push(format!(
                            "{gid} step {branch} delivered though its transaction rolled back"
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    // Each key's committed sequence arrived in order, replays from an earlier message
    // included, ending with the newest.
    let mut committed: BTreeMap<&str, Vec<(i64, String)>> = BTreeMap::new();
    for e in outbox
        .iter()
        .filter(|e| !e.sharding_key.is_empty() && e.status == "sent")
    {
        committed
            .entry(&e.sharding_key)
            .or_default()
            .push((e.seq.unwrap_or(0), format!("{}-{}", e.gid, e.branch_id)));
    }
    for (key, mut seq) in committed {
        seq.sort();
        let got: Vec<&str> = w
            .received
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, id)| id.as_str())
            .collect();
        let committed: Vec<&str> = seq.iter().map(|(_, id)| id.as_str()).collect();
        if let Err(why) = replayed_in_order(&committed, &got) {
            v.push(format!("key {key}: {why} (arrived {got:?})"));
        }
    }
    report.violations.extend(v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_numbers_every_time() {
        let a: Vec<u64> = (0..4).map(|_| SplitMix::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut g = SplitMix::new(7);
        let first = g.next_u64();
        assert_ne!(first, g.next_u64());
        assert_eq!(roll(3, &("g/01/confirm", 0)), roll(3, &("g/01/confirm", 0)));
        assert_ne!(roll(3, &("g/01/confirm", 0)), roll(3, &("g/01/confirm", 1)));
        for _ in 0..1000 {
            let u = g.unit();
            assert!((0.0..1.0).contains(&u));
            let r = g.range(2, 5);
            assert!((2..5).contains(&r));
        }
    }
}
