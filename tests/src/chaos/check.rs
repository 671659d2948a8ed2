//! The invariant checker: what every side recorded (the initiators, the coordinator's store,
//! the participants' databases and barriers, the consumers, Redis), held against the
//! promises. [`Evidence`] is gathered after the faults are healed and everything had time to
//! settle; [`check`] is pure, so each rule is unit-tested.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::plain::{self, PlainKind, PlainTxn};
use super::workload::{Told, Transfer};

/// A message as the coordinator's outbox holds it.
#[derive(Debug, Clone)]
pub struct Outboxed {
    /// `GID-BRANCH`.
    pub message_id: String,
    /// Its transaction.
    pub gid: String,
    /// Topic.
    pub topic: String,
    /// Sharding key.
    pub key: String,
    /// Sequence within the key.
    pub seq: i64,
    /// `held`, `pending`, `sent`, `dropped` or `dead`.
    pub status: String,
}

/// A bank after the run.
#[derive(Debug, Clone, Default)]
pub struct Bank {
    /// Account id to (balance, frozen, incoming).
    pub accounts: BTreeMap<i64, (i64, i64, i64)>,
    /// Barrier rows: (gid, branch id, op, reason).
    pub barrier: HashSet<(String, String, String, String)>,
}

/// Everything the checker reads.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Every transfer begun, with what its initiator was told.
    pub transfers: Vec<Transfer>,
    /// Every account's opening balance.
    pub opening_balance: i64,
    /// The two banks.
    pub banks: [Bank; 2],
    /// Status of every transaction in the coordinator's store.
    pub statuses: HashMap<String, String>,
    /// Every message in the outbox.
    pub outbox: Vec<Outboxed>,
    /// Message ids as each topic's orderly consumer received them, duplicates included.
    pub received: HashMap<String, Vec<String>>,
    /// Orders in the order service's database: id to version.
    pub orders: BTreeMap<i64, i64>,
    /// The order cache in Redis: id to the cached version (none if missing).
    pub cached_orders: BTreeMap<i64, Option<i64>>,
    /// Cache entries seen going back to an older version while the run went on.
    pub cache_went_back: Vec<String>,
    /// Every plain transaction begun, with what its initiator was told.
    pub plain: Vec<PlainTxn>,
    /// What the plain load's participant answered.
    pub plain_calls: plain::Calls,
}

/// One broken promise, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Its kind (a row of the report).
    pub kind: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What a participant answered to one operation of one branch (a gid, a branch id and a
/// route): how often, and when first, as numbers in the participant's own count of the calls
/// it answered (the first call answered is 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answers {
    /// Calls answered 200.
    pub ok: u32,
    /// Calls answered anything else.
    pub other: u32,
    /// The number of the first call.
    pub first: u64,
    /// The number of the first call answered 200.
    pub first_ok: Option<u64>,
}

impl Answers {
    /// Records call number `n`, answered 200 (`ok`) or not.
    pub fn record(&mut self, n: u64, ok: bool) {
        if !self.called() {
            self.first = n;
        }
        if ok {
            self.ok += 1;
            self.first_ok.get_or_insert(n);
        } else {
            self.other += 1;
        }
    }

    /// Whether it was called at all.
    pub fn called(&self) -> bool {
        self.ok + self.other > 0
    }
}

/// Every kind of violation, in report order.
pub const KINDS: [&str; 15] = [
    "not settled",
    "told committed, did not commit",
    "told not committed, committed",
    "money created or destroyed",
    "effect missing or applied twice",
    "confirmed and cancelled",
    "confirm without a Try",
    "committed message lost",
    "message of an uncommitted transaction",
    "per-key order broken",
    "cache older than the database",
    "cache version went back",
    "saga step not done or undone",
    "saga step called when not due",
    "saga step out of order",
];

/// Whether a key's messages, committed in the order `committed` (every one of them sent),
/// arrived as at-least-once delivery in order may deliver them: what a consumer received
/// (`got`, duplicates included; messages of the key that are not in `committed` left out)
/// starts with the first, goes on one at a time or goes back to replay from an earlier one,
/// and ends with the last. So 5 6 and 5 6 5 6 and 5 5 6 pass; 6 5, 5 6 5 and 5 6 5 7 do
/// not: a repeat must replay the key's order from where it went back, and the consumer must
/// end with the newest state.
///
/// # Errors
/// What broke the order.
pub fn replayed_in_order(committed: &[&str], got: &[&str]) -> Result<(), String> {
    let at: HashMap<&str, usize> = committed.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let positions: Vec<usize> = got.iter().filter_map(|m| at.get(m).copied()).collect();
    let (Some(first), Some(last)) = (positions.first(), positions.last()) else {
        return if committed.is_empty() {
            Ok(())
        } else {
            Err(format!("none of {committed:?} arrived"))
        };
    };
    if *first != 0 {
        return Err(format!(
            "{} arrived first, before {}",
            committed[*first], committed[0]
        ));
    }
    for pair in positions.windows(2) {
        if pair[1] > pair[0] + 1 {
            return Err(format!(
                "{} arrived right after {}, skipping {}",
                committed[pair[1]],
                committed[pair[0]],
                committed[pair[0] + 1]
            ));
        }
    }
    if *last + 1 != committed.len() {
        return Err(format!(
            "the last to arrive was {}, not the newest {}: the consumer ends behind",
            committed[*last],
            committed[committed.len() - 1]
        ));
    }
    Ok(())
}

/// A transaction's status once it committed (a saga: once every action succeeded).
pub const SUCCEED: &str = "succeed";
/// A transaction's status once it rolled back (a saga: once it was compensated).
pub const FAILED: &str = "failed";

/// Checks every invariant; returns the violations (none when every promise held) and the
/// duplicates absorbed (messages received more than once).
pub fn check(e: &Evidence) -> (Vec<Violation>, usize) {
    let mut v = Vec::new();
    let mut add = |kind: &'static str, detail: String| v.push(Violation { kind, detail });

    for (gid, status) in &e.statuses {
        if status != SUCCEED && status != FAILED {
            add(KINDS[0], format!("{gid} is {status}"));
        }
    }
    let committed = |gid: &str| e.statuses.get(gid).is_some_and(|s| s == SUCCEED);

    // What each initiator was told, against what happened (a saga's, below).
    let told = e.transfers.iter().map(|t| (&t.gid, t.told)).chain(
        e.plain
            .iter()
            .filter(|t| t.kind != PlainKind::Saga)
            .map(|t| (&t.gid, t.told)),
    );
    for (gid, told) in told {
        match told {
            Told::Committed if !committed(gid) => add(
                KINDS[1],
                format!(
                    "{gid} is {}",
                    e.statuses.get(gid).map_or("unknown", String::as_str)
                ),
            ),
            Told::NotCommitted | Told::RolledBack if committed(gid) => add(KINDS[2], gid.clone()),
            _ => {}
        }
    }
    check_plain(e, &mut add);
    for t in e.plain.iter().filter(|t| t.kind == PlainKind::Saga) {
        let status = e.statuses.get(&t.gid).map(String::as_str);
        saga_told(&t.gid, t.told, status, &mut add);
        let calls = SagaCalls::read(&t.after, |branch, route| {
            e.plain_calls
                .get(&(t.gid.clone(), branch.to_owned(), route.to_owned()))
                .copied()
                .unwrap_or_default()
        });
        saga_outcome(&t.gid, status, &calls, &mut add);
        saga_order(&t.gid, &calls, &mut add);
    }

    // The books: every account holds its opening balance moved by exactly the committed
    // transfers, nothing is left frozen or incoming.
    let mut expected: [BTreeMap<i64, i64>; 2] = Default::default();
    for (bank, b) in e.banks.iter().enumerate() {
        for id in b.accounts.keys() {
            expected[bank].insert(*id, e.opening_balance);
        }
    }
    for t in e.transfers.iter().filter(|t| committed(&t.gid)) {
        *expected[t.from].entry(t.from_account).or_default() -= t.amount;
        *expected[1 - t.from].entry(t.to_account).or_default() += t.amount;
    }
    let (mut before, mut after) = (0, 0);
    for (bank, b) in e.banks.iter().enumerate() {
        for (id, (balance, frozen, incoming)) in &b.accounts {
            before += e.opening_balance;
            after += balance + frozen + incoming;
            let want = expected[bank].get(id).copied().unwrap_or_default();
            if (*balance, *frozen, *incoming) != (want, 0, 0) {
                add(
                    KINDS[4],
                    format!(
                        "bank {} account {id}: balance {balance}, frozen {frozen}, incoming {incoming}; committed transfers make it {want}, 0, 0",
                        ["a", "b"][bank]
                    ),
                );
            }
        }
    }
    if before != after {
        add(
            KINDS[3],
            format!("{before} in the banks before, {after} after"),
        );
    }

    // Barriers: a transaction's branches all confirmed or all cancelled, a confirm only
    // after its Try.
    for (bank, b) in e.banks.iter().enumerate() {
        let tried: HashSet<(&str, &str)> = b
            .barrier
            .iter()
            .filter(|(_, _, op, reason)| op == "try" && reason == "try")
            .map(|(gid, branch, _, _)| (gid.as_str(), branch.as_str()))
            .collect();
        for (gid, branch, op, _) in &b.barrier {
            if op == "confirm" && !tried.contains(&(gid.as_str(), branch.as_str())) {
                add(
                    KINDS[6],
                    format!("{gid} branch {branch} at bank {}", ["a", "b"][bank]),
                );
            }
        }
    }
    let mut ops: HashMap<&str, HashSet<&str>> = HashMap::new();
    for b in &e.banks {
        for (gid, _, op, _) in &b.barrier {
            ops.entry(gid).or_default().insert(op);
        }
    }
    for (gid, ops) in ops {
        if ops.contains("confirm") && ops.contains("cancel") {
            add(KINDS[5], gid.to_owned());
        }
    }

    // Messages: every committed one received, none of an uncommitted transaction, each
    // key's committed sequence a subsequence of what its consumer received.
    let by_id: HashMap<&str, &Outboxed> = e
        .outbox
        .iter()
        .map(|m| (m.message_id.as_str(), m))
        .collect();
    let mut duplicates = 0;
    let mut received_by_key: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for (topic, ids) in &e.received {
        let distinct: HashSet<&str> = ids.iter().map(String::as_str).collect();
        duplicates += ids.len() - distinct.len();
        for id in ids {
            match by_id.get(id.as_str()) {
                Some(m) if committed(&m.gid) => received_by_key
                    .entry((topic.as_str(), m.key.as_str()))
                    .or_default()
                    .push(id),
                Some(m) => add(
                    KINDS[8],
                    format!(
                        "{id} ({} is {})",
                        m.gid,
                        e.statuses.get(&m.gid).map_or("unknown", String::as_str)
                    ),
                ),
                None => add(KINDS[8], format!("{id} is in no transaction's outbox")),
            }
        }
    }
    let mut sequences: BTreeMap<(&str, &str), Vec<&Outboxed>> = BTreeMap::new();
    for m in e.outbox.iter().filter(|m| committed(&m.gid)) {
        if m.status != "sent" {
            add(
                KINDS[7],
                format!("{} is {} in the outbox", m.message_id, m.status),
            );
            continue;
        }
        sequences.entry((&m.topic, &m.key)).or_default().push(m);
    }
    for ((topic, key), mut sequence) in sequences {
        sequence.sort_by_key(|m| m.seq);
        let got = received_by_key
            .get(&(topic, key))
            .cloned()
            .unwrap_or_default();
        let got_set: HashSet<&str> = got.iter().copied().collect();
        let mut lost = false;
        for m in &sequence {
            if !got_set.contains(m.message_id.as_str()) {
                add(
                    KINDS[7],
                    format!("{} (key {key}) was never received", m.message_id),
                );
                lost = true;
            }
        }
        if lost {
            continue;
        }
        let committed: Vec<&str> = sequence.iter().map(|m| m.message_id.as_str()).collect();
        if let Err(why) = replayed_in_order(&committed, &got) {
            add(KINDS[9], format!("key {key}: {why}"));
        }
    }
    // Each committed order step carries one committed message.
    let mut steps: HashMap<&str, i64> = HashMap::new();
    for m in e
        .outbox
        .iter()
        .filter(|m| committed(&m.gid) && m.key.starts_with("order-"))
    {
        *steps.entry(m.key.as_str()).or_default() += 1;
    }
    for (id, version) in &e.orders {
        let key = format!("order-{id}");
        let messages = steps.get(key.as_str()).copied().unwrap_or(0);
        if messages != *version {
            add(
                KINDS[7],
                format!("order {id} is at version {version} with {messages} committed messages"),
            );
        }
    }

    // The cache, after quiescence, holds what the database holds.
    for (id, version) in &e.orders {
        let cached = e.cached_orders.get(id).copied().flatten();
        if cached != Some(*version) {
            add(
                KINDS[10],
                format!("order {id}: database version {version}, cache {cached:?}"),
            );
        }
    }
    for key in &e.cache_went_back {
        add(KINDS[11], key.clone());
    }
    v.sort_by_key(|x| (KINDS.iter().position(|k| *k == x.kind), x.detail.clone()));
    (v, duplicates)
}

/// The plain load: a committed TCC has every branch confirmed and none cancelled, a rolled
/// back one every branch whose Try succeeded cancelled and none confirmed, no confirm comes
/// without its Try; a committed message reached every step, one that did not commit none.
fn check_plain(e: &Evidence, add: &mut impl FnMut(&'static str, String)) {
    let ok = |gid: &str, branch: &str, route: &str| {
        e.plain_calls
            .get(&(gid.to_owned(), branch.to_owned(), route.to_owned()))
            .map_or(0, |c| c.ok)
    };
    let called = |gid: &str, branch: &str, route: &str| {
        e.plain_calls
            .get(&(gid.to_owned(), branch.to_owned(), route.to_owned()))
            .is_some_and(Answers::called)
    };
    for t in e.plain.iter().filter(|t| t.kind != PlainKind::Saga) {
        let status = e.statuses.get(&t.gid).map(String::as_str);
        let branches = (1..=plain::BRANCHES).map(|n| format!("{n:02}"));
        for b in branches {
            let gid = t.gid.as_str();
            match (t.kind, status) {
                (PlainKind::Tcc, Some(SUCCEED)) => {
                    if ok(gid, &b, "confirm") == 0 {
                        add(
                            KINDS[4],
                            format!("{gid} committed, branch {b} never confirmed"),
                        );
                    }
                    if ok(gid, &b, "cancel") > 0 {
                        add(KINDS[5], format!("{gid} committed, branch {b} cancelled"));
                    }
                }
                (PlainKind::Tcc, _) => {
                    if called(gid, &b, "confirm") {
                        add(KINDS[5], format!("{gid} rolled back, branch {b} confirmed"));
                    }
                    if status == Some(FAILED)
                        && ok(gid, &b, "try") > 0
                        && ok(gid, &b, "cancel") == 0
                    {
                        add(
                            KINDS[4],
                            format!("{gid} rolled back, branch {b} tried and never cancelled"),
                        );
                    }
                }
                (PlainKind::Msg, Some(SUCCEED)) => {
                    if ok(gid, &b, "step") == 0 {
                        add(
                            KINDS[7],
                            format!("{gid} committed, step {b} never delivered"),
                        );
                    }
                }
                (PlainKind::Msg, _) => {
                    if called(gid, &b, "step") {
                        add(
                            KINDS[8],
                            format!("{gid} did not commit, step {b} delivered"),
                        );
                    }
                }
                // Left out above; see `saga_outcome`.
                (PlainKind::Saga, _) => {}
            }
            if called(gid, &b, "confirm") && ok(gid, &b, "try") == 0 {
                add(KINDS[6], format!("{gid} branch {b} (plain load)"));
            }
        }
    }
}

/// One saga as its participant saw it: the order of its steps and what each step's action
/// and compensate were answered.
#[derive(Debug, Clone)]
pub struct SagaCalls<'a> {
    /// The steps each step runs after (in a chain, the one before it).
    pub after: &'a [Vec<usize>],
    /// What each step's action was answered.
    pub action: Vec<Answers>,
    /// What each step's compensate was answered.
    pub compensate: Vec<Answers>,
}

impl<'a> SagaCalls<'a> {
    /// The saga whose steps run after `after`, with what `answers` (given a branch id and
    /// `action` or `compensate`) says each operation was answered.
    pub fn read(after: &'a [Vec<usize>], answers: impl Fn(&str, &str) -> Answers) -> Self {
        let of = |op: &str| {
            (0..after.len())
                .map(|i| answers(&saga_branch(i), op))
                .collect()
        };
        Self {
            after,
            action: of("action"),
            compensate: of("compensate"),
        }
    }
}

/// The branch id of a saga's step `i` (counted from 0), as the coordinator numbers them.
pub fn saga_branch(i: usize) -> String {
    format!("{:02}", i + 1)
}

/// What a saga's initiator was told by its `submit`, against the store (`status`, none if
/// the saga is not there). Submitted (`Ok`), it must be stored (and then end, which "not
/// settled" checks); told it rolls back (a FAILURE), it must be stored and not succeed; told
/// anything else that says it was not stored, it must not be there. Unknown allows all.
pub fn saga_told(
    gid: &str,
    told: Told,
    status: Option<&str>,
    add: &mut impl FnMut(&'static str, String),
) {
    match (told, status) {
        (Told::Committed, None) => {
            add(KINDS[1], format!("{gid}: saga submitted, not in the store"))
        }
        (Told::RolledBack, None) => add(
            KINDS[1],
            format!("{gid}: saga told it rolls back, not in the store"),
        ),
        (Told::RolledBack, Some(SUCCEED)) => add(
            KINDS[2],
            format!("{gid}: saga told it rolls back, succeeded"),
        ),
        (Told::NotCommitted, Some(status)) => add(
            KINDS[2],
            format!("{gid}: saga refused, yet stored ({status})"),
        ),
        _ => {}
    }
}

/// A saga's steps against its outcome (`status` in the store, none if not there):
///
/// - `succeed`: every action answered 200 at least once, no compensate called at all (one
///   runs only once the saga turned to compensation, which it never turns back from);
/// - `failed`: every step whose action was called (whatever it answered, it may have run)
///   compensated with a 200 at least once;
/// - whatever the status: no compensate of a step whose action was never called unless
///   every step it runs after had an action answered 200. The coordinator compensates a step
///   whose action it never called only when that action could have run (it was due, and is
///   marked failed when the saga turns), so a step that was never due is never compensated.
///   Whether such a due step was marked cannot be told from the participant (the answer of
///   a predecessor's 200 may have been lost), so its compensate is allowed, not required;
/// - a saga not in the store had no step called at all.
///
/// A still-running saga is held to the last two only ("not settled" reports it). A late
/// action, arriving after its step was compensated (sent by a coordinator paused while
/// another took the saga over, or retried after its answer was lost), breaks nothing here:
/// it was called, so its step is compensated, as required.
pub fn saga_outcome(
    gid: &str,
    status: Option<&str>,
    s: &SagaCalls<'_>,
    add: &mut impl FnMut(&'static str, String),
) {
    for (i, before) in s.after.iter().enumerate() {
        let (action, compensate) = (&s.action[i], &s.compensate[i]);
        let step = saga_branch(i);
        if status.is_none() && (action.called() || compensate.called()) {
            add(
                KINDS[13],
                format!("{gid}: not in the store, yet step {step} was called"),
            );
        }
        if status == Some(SUCCEED) && action.ok == 0 {
            add(
                KINDS[12],
                format!("{gid} succeeded; the action of step {step} never answered 200"),
            );
        }
        if status == Some(SUCCEED) && compensate.called() {
            add(
                KINDS[13],
                format!("{gid} succeeded, yet step {step} was compensated"),
            );
        }
        if status == Some(FAILED) && action.called() && compensate.ok == 0 {
            add(
                KINDS[12],
                format!("{gid} failed; step {step} was called and never compensated"),
            );
        }
        let due = before.iter().all(|p| s.action[*p].ok > 0);
        if status.is_some() && compensate.called() && !action.called() && !due {
            add(
                KINDS[13],
                format!("{gid}: step {step} compensated, yet its action was never called nor due"),
            );
        }
    }
}

/// The order of a saga's calls, for every step `j` and every step `i` it runs after:
///
/// - forward: every call of action `j` comes after the first 200 of action `i` (the
///   coordinator calls an action once those it runs after succeeded, and has that success
///   written first);
/// - back: when both were compensated, every call of compensate `i` comes after the first
///   200 of compensate `j`. A compensate is called at all only for a step whose action was
///   not left untouched when the saga turned (which the same write that turns it records),
///   and then step `i` waits for it to succeed.
///
/// Both hold under the chaos's faults: a coordinator decides a call from what it read or
/// was answered before, so a late call (from a coordinator paused mid-round, resumed after
/// another took over) or a repeated one (its answer lost) still comes after what allowed
/// it. What is not checked is an action's call after its own compensation (a late call can
/// do that; a participant's barrier turns it into nothing).
pub fn saga_order(gid: &str, s: &SagaCalls<'_>, add: &mut impl FnMut(&'static str, String)) {
    let after = |first: &Answers, then: &Answers| first.first_ok.is_some_and(|n| n < then.first);
    for (j, before) in s.after.iter().enumerate() {
        for &i in before {
            let (a, b) = (saga_branch(i), saga_branch(j));
            if s.action[j].called() && !after(&s.action[i], &s.action[j]) {
                add(
                    KINDS[14],
                    format!("{gid}: action of step {b} called before the action of step {a}, which it runs after, succeeded"),
                );
            }
            if s.compensate[i].called()
                && s.compensate[j].called()
                && !after(&s.compensate[j], &s.compensate[i])
            {
                add(
                    KINDS[14],
                    format!(
                        "{gid}: step {a} compensated before step {b}, which runs after it, was"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_replays_its_order_from_where_it_went_back_and_ends_with_the_newest() {
        let s = ["5", "6", "7"];
        for ok in [
            &["5", "6", "7"][..],
            &["5", "6", "5", "6", "7"],
            &["5", "5", "6", "7", "7"],
            &["5", "6", "7", "6", "7"],
        ] {
            assert_eq!(replayed_in_order(&s, ok), Ok(()), "{ok:?}");
        }
        for bad in [
            &["6", "5", "7"][..],
            &["5", "6", "7", "5"],
            &["5", "6", "5", "7"],
            &["5", "7"],
            &[],
        ] {
            assert!(replayed_in_order(&s, bad).is_err(), "{bad:?}");
        }
        assert_eq!(replayed_in_order(&[], &[]), Ok(()));
    }

    fn transfer(gid: &str, amount: i64, told: Told) -> Transfer {
        Transfer {
            gid: gid.into(),
            from: 0,
            from_account: 1,
            to_account: 1,
            amount,
            told,
        }
    }

    fn message(gid: &str, key: &str, seq: i64) -> Outboxed {
        Outboxed {
            message_id: format!("{gid}-01"),
            gid: gid.into(),
            topic: "T".into(),
            key: key.into(),
            seq,
            status: "sent".into(),
        }
    }

    /// Two banks of one account each; `g1` moved 10 from a to b and committed, `g2` failed.
    fn sound() -> Evidence {
        let mut e = Evidence {
            opening_balance: 100,
            transfers: vec![
                transfer("g1", 10, Told::Committed),
                transfer("g2", 5, Told::NotCommitted),
            ],
            ..Evidence::default()
        };
        e.banks[0].accounts.insert(1, (90, 0, 0));
        e.banks[1].accounts.insert(1, (110, 0, 0));
        for (bank, branch) in [(0, "01"), (1, "02")] {
            for op in ["try", "confirm"] {
                e.banks[bank]
                    .barrier
                    .insert(("g1".into(), branch.into(), op.into(), op.into()));
            }
        }
        e.statuses.insert("g1".into(), "succeed".into());
        e.statuses.insert("g2".into(), "failed".into());
        e.outbox = vec![message("g1", "a-1", 1)];
        e.received
            .insert("T".into(), vec!["g1-01".into(), "g1-01".into()]);
        e
    }

    fn push(e: &mut Evidence, id: &str) {
        e.received.entry("T".into()).or_default().push(id.into());
    }

    fn kinds(e: &Evidence) -> Vec<&'static str> {
        check(e).0.into_iter().map(|v| v.kind).collect()
    }

    /// `ok` calls answered 200 and `other` not.
    fn answered(ok: u32, other: u32) -> Answers {
        Answers {
            ok,
            other,
            first: 1,
            first_ok: (ok > 0).then_some(1),
        }
    }

    #[test]
    fn a_sound_run_has_no_violation_and_counts_its_duplicates() {
        let (v, duplicates) = check(&sound());
        assert_eq!(v, vec![]);
        assert_eq!(duplicates, 1);
    }

    #[test]
    fn an_unsettled_transaction_and_a_misreported_one_are_named() {
        let mut e = sound();
        e.statuses.insert("g3".into(), "submitted".into());
        e.transfers[1].told = Told::Committed;
        assert_eq!(kinds(&e), vec![KINDS[0], KINDS[1]]);
        let mut e = sound();
        e.statuses.insert("g2".into(), "succeed".into());
        // A committed g2 should have moved 5 more: the books say it did not.
        assert!(kinds(&e).contains(&KINDS[2]));
        assert!(kinds(&e).contains(&KINDS[4]));
    }

    #[test]
    fn money_out_of_nowhere_and_an_effect_applied_twice_are_caught() {
        let mut e = sound();
        e.banks[1].accounts.insert(1, (120, 0, 0));
        assert_eq!(kinds(&e), vec![KINDS[3], KINDS[4]]);
        let mut e = sound();
        e.banks[0].accounts.insert(1, (85, 5, 0));
        assert_eq!(kinds(&e), vec![KINDS[4]]);
    }

    #[test]
    fn mixed_outcomes_and_a_confirm_without_try_are_caught() {
        let mut e = sound();
        e.banks[1]
            .barrier
            .insert(("g1".into(), "02".into(), "cancel".into(), "cancel".into()));
        assert_eq!(kinds(&e), vec![KINDS[5]]);
        let mut e = sound();
        e.banks[0].barrier.retain(|(_, _, op, _)| op != "try");
        assert_eq!(kinds(&e), vec![KINDS[6]]);
    }

    #[test]
    fn lost_unexpected_and_reordered_messages_are_caught() {
        let mut e = sound();
        e.received.clear();
        assert_eq!(kinds(&e), vec![KINDS[7]]);
        let mut e = sound();
        e.outbox.push(message("g2", "a-1", 2));
        e.outbox[1].status = "dropped".into();
        push(&mut e, "g2-01");
        assert_eq!(kinds(&e), vec![KINDS[8]]);
        let mut e = sound();
        e.statuses.insert("g3".into(), "succeed".into());
        e.outbox.push(message("g3", "a-1", 2));
        e.received
            .insert("T".into(), vec!["g3-01".into(), "g1-01".into()]);
        assert_eq!(kinds(&e), vec![KINDS[9]]);
        // Redelivered after the earlier one: the later one still reached the consumer first.
        push(&mut e, "g3-01");
        assert_eq!(kinds(&e), vec![KINDS[9]]);
        // In order, then the earlier one alone again: the consumer ends behind.
        let mut e = sound();
        e.statuses.insert("g3".into(), "succeed".into());
        e.outbox.push(message("g3", "a-1", 2));
        e.received.insert(
            "T".into(),
            vec!["g1-01".into(), "g3-01".into(), "g1-01".into()],
        );
        assert_eq!(kinds(&e), vec![KINDS[9]]);
        push(&mut e, "g3-01");
        assert!(kinds(&e).is_empty(), "a replay of the order from g1 on");
    }

    #[test]
    fn an_order_without_its_messages_and_a_stale_cache_are_caught() {
        let mut e = sound();
        e.orders.insert(7, 1);
        e.cached_orders.insert(7, Some(1));
        assert_eq!(kinds(&e), vec![KINDS[7]]);
        e.statuses.insert("o1".into(), "succeed".into());
        e.outbox.push(message("o1", "order-7", 1));
        push(&mut e, "o1-01");
        assert!(kinds(&e).is_empty());
        e.cached_orders.insert(7, None);
        e.cache_went_back.push("order:7 from 2 to 1".into());
        assert_eq!(kinds(&e), vec![KINDS[10], KINDS[11]]);
    }

    /// `pt` a committed plain TCC, `pu` a rolled-back one (Try of 01 ok, 02 refused), `pm` a
    /// committed plain message, `pn` one that did not commit: as they should be.
    fn plain_sound() -> Evidence {
        let mut e = sound();
        let calls = [
            ("pt", "01", "try"),
            ("pt", "02", "try"),
            ("pt", "01", "confirm"),
            ("pt", "02", "confirm"),
            ("pu", "01", "try"),
            ("pu", "01", "cancel"),
            ("pu", "02", "cancel"),
            ("pm", "01", "step"),
            ("pm", "02", "step"),
        ];
        for (gid, branch, route) in calls {
            e.plain_calls
                .insert((gid.into(), branch.into(), route.into()), answered(1, 0));
        }
        e.plain_calls
            .insert(("pu".into(), "02".into(), "try".into()), answered(0, 1));
        for (gid, kind, told, status) in [
            ("pt", PlainKind::Tcc, Told::Committed, "succeed"),
            ("pu", PlainKind::Tcc, Told::NotCommitted, "failed"),
            ("pm", PlainKind::Msg, Told::Committed, "succeed"),
            ("pn", PlainKind::Msg, Told::NotCommitted, "failed"),
        ] {
            e.plain.push(PlainTxn {
                gid: gid.into(),
                kind,
                told,
                after: vec![],
            });
            e.statuses.insert(gid.into(), status.into());
        }
        e
    }

    #[test]
    fn the_plain_loads_promises_are_checked() {
        assert_eq!(check(&plain_sound()).0, vec![]);
        // A committed TCC's branch never confirmed; a rolled-back one's tried branch never
        // cancelled.
        let mut e = plain_sound();
        e.plain_calls
            .remove(&("pt".into(), "02".into(), "confirm".into()));
        e.plain_calls
            .remove(&("pu".into(), "01".into(), "cancel".into()));
        assert_eq!(kinds(&e), vec![KINDS[4], KINDS[4]]);
        // A rolled-back TCC confirmed, even by a call that failed; a confirm with no Try.
        let mut e = plain_sound();
        e.plain_calls
            .insert(("pu".into(), "02".into(), "confirm".into()), answered(0, 1));
        assert_eq!(kinds(&e), vec![KINDS[5], KINDS[6]]);
        // A committed message missing a step; an uncommitted one delivered.
        let mut e = plain_sound();
        e.plain_calls
            .insert(("pm".into(), "02".into(), "step".into()), answered(0, 3));
        e.plain_calls
            .insert(("pn".into(), "01".into(), "step".into()), answered(0, 1));
        assert_eq!(kinds(&e), vec![KINDS[7], KINDS[8]]);
        // What the initiator was told, against the store.
        let mut e = plain_sound();
        e.plain[3].told = Told::Committed;
        assert_eq!(kinds(&e), vec![KINDS[1]]);
    }

    const CHAIN: [&[usize]; 3] = [&[], &[0], &[1]];
    const FORK_JOIN: [&[usize]; 3] = [&[], &[], &[0, 1]];

    fn shape(after: &[&[usize]]) -> Vec<Vec<usize>> {
        after.iter().map(|b| b.to_vec()).collect()
    }

    /// A saga's calls as its participant answered them, in this order: each `+` (answered
    /// 200) or `-` (anything else), `a` (action) or `c` (compensate), and the step (from 0),
    /// as in `"+a0 -a1 +c1 +c0"`.
    fn saga<'a>(after: &'a [Vec<usize>], calls: &str) -> SagaCalls<'a> {
        let mut s = SagaCalls::read(after, |_, _| Answers::default());
        for (n, call) in (1..).zip(calls.split_whitespace()) {
            let b = call.as_bytes();
            let of = if b[1] == b'a' {
                &mut s.action
            } else {
                &mut s.compensate
            };
            of[usize::from(b[2] - b'0')].record(n, b[0] == b'+');
        }
        s
    }

    /// Holds each case, (`status`, calls as [`saga`] reads them, the kinds expected), of a
    /// saga whose steps run after `after` to what `saga_outcome` and `saga_order` find.
    fn saga_cases(after: &[&[usize]], cases: &[(Option<&str>, &str, &[&str])]) {
        let after = shape(after);
        for (status, calls, expected) in cases {
            let s = saga(&after, calls);
            let mut found = Vec::new();
            let mut add = |kind, _| found.push(kind);
            saga_outcome("s", *status, &s, &mut add);
            saga_order("s", &s, &mut add);
            assert_eq!(found, *expected, "{status:?} after {calls:?}");
        }
    }

    const NONE: &[&str] = &[];

    #[test]
    fn answers_count_calls_and_remember_the_first_and_the_first_success() {
        let mut a = Answers::default();
        assert!(!a.called());
        a.record(4, false);
        a.record(7, true);
        a.record(9, true);
        assert_eq!(
            a,
            Answers {
                ok: 2,
                other: 1,
                first: 4,
                first_ok: Some(7)
            }
        );
    }

    #[test]
    fn a_succeeded_saga_has_every_action_done_and_nothing_compensated() {
        let done = Some(SUCCEED);
        saga_cases(
            &CHAIN,
            &[
                (done, "-a0 +a0 +a1 +a2 +a2", NONE),
                (done, "+a0 +a1 -a2", &[KINDS[12]]),
                // Compensated at all, even by a call that failed.
                (done, "+a0 +a1 +a2 -c2", &[KINDS[13]]),
            ],
        );
    }

    #[test]
    fn a_failed_saga_compensates_every_step_it_called() {
        let failed = Some(FAILED);
        saga_cases(
            &CHAIN,
            &[
                // Step 1 refused (409): it and step 0 are compensated, step 2 never runs.
                (failed, "+a0 -a1 -c1 +c1 +c0", NONE),
                // The refused step itself is compensated too: it may have done something.
                (failed, "+a0 -a1 +c0", &[KINDS[12]]),
                // A compensate that never succeeded.
                (failed, "+a0 -a1 +c1 -c0", &[KINDS[12]]),
                // Still running, it is held to nothing it may yet do.
                (Some("aborting"), "+a0 -a1", NONE),
            ],
        );
    }

    #[test]
    fn only_a_step_that_was_due_may_be_compensated_without_its_action() {
        let failed = Some(FAILED);
        saga_cases(
            &CHAIN,
            &[
                // Timed out after step 0 succeeded, before step 1 was called: step 1 was
                // due, so it was marked failed and is compensated (allowed, not required).
                (failed, "+a0 +c1 +c0", NONE),
                (failed, "+a0 +c0", NONE),
                // Step 2 was never due (step 1 never succeeded).
                (failed, "+a0 -a1 +c2 +c1 +c0", &[KINDS[13]]),
                // A saga not in the store is never called.
                (None, "-a0", &[KINDS[13]]),
                (None, "", NONE),
            ],
        );
    }

    #[test]
    fn a_chain_runs_forward_in_order_and_compensates_back_in_reverse() {
        saga_cases(
            &CHAIN,
            &[
                // Action 1 called before action 0 succeeded (its first call failed).
                (Some(SUCCEED), "-a0 +a1 +a0 +a2", &[KINDS[14]]),
                // Compensate 0 called before compensate 1 succeeded, even if it failed.
                (Some(FAILED), "+a0 -a1 -c0 +c1 +c0", &[KINDS[14]]),
                // A late action (a paused coordinator's) after its step was compensated,
                // and calls repeated after their answers were lost: in order.
                (Some(FAILED), "+a0 +a0 +c1 +c1 +c0 +a1", NONE),
            ],
        );
    }

    #[test]
    fn with_orders_a_step_waits_for_those_it_runs_after_both_ways() {
        let failed = Some(FAILED);
        saga_cases(
            &FORK_JOIN,
            &[
                // 0 and 1 at once, 2 after both; 2 refused: 2 first, then 0 and 1.
                (failed, "+a1 +a0 -a2 +c2 +c1 +c0", NONE),
                // 2 before 1 succeeded.
                (Some(SUCCEED), "+a0 +a2 +a1", &[KINDS[14]]),
                // 1 compensated before 2.
                (failed, "+a0 +a1 -a2 +c1 +c2 +c0", &[KINDS[14]]),
                // 0 refused while 1 ran: 2 was never due; 0 and 1 compensated at once.
                (failed, "-a0 +a1 +c0 +c1", NONE),
            ],
        );
    }

    #[test]
    fn a_saga_ends_as_its_initiator_was_told() {
        let kinds = |told, status| {
            let mut found = Vec::new();
            saga_told("s", told, status, &mut |kind, _| found.push(kind));
            found
        };
        for status in [Some(SUCCEED), Some(FAILED), Some("submitted")] {
            assert!(kinds(Told::Committed, status).is_empty());
            assert!(kinds(Told::Unknown, status).is_empty());
        }
        assert!(kinds(Told::Unknown, None).is_empty());
        assert!(kinds(Told::RolledBack, Some(FAILED)).is_empty());
        assert!(kinds(Told::NotCommitted, None).is_empty());
        assert_eq!(kinds(Told::Committed, None), [KINDS[1]]);
        assert_eq!(kinds(Told::RolledBack, None), [KINDS[1]]);
        assert_eq!(kinds(Told::RolledBack, Some(SUCCEED)), [KINDS[2]]);
        assert_eq!(kinds(Told::NotCommitted, Some(FAILED)), [KINDS[2]]);
    }

    #[test]
    fn the_plain_sagas_are_checked_from_the_participants_record() {
        let mut e = plain_sound();
        e.plain.push(PlainTxn {
            gid: "ps".into(),
            kind: PlainKind::Saga,
            told: Told::RolledBack,
            after: shape(&FORK_JOIN),
        });
        e.statuses.insert("ps".into(), FAILED.into());
        let calls = saga(&e.plain[4].after, "+a0 -a1 +c1 +c0");
        for (op, answers) in [("action", &calls.action), ("compensate", &calls.compensate)] {
            for (i, a) in answers.iter().enumerate().filter(|(_, a)| a.called()) {
                e.plain_calls
                    .insert(("ps".into(), saga_branch(i), op.into()), *a);
            }
        }
        assert_eq!(check(&e).0, vec![]);
        // Told it rolls back, it succeeded (and so left its steps compensated).
        e.statuses.insert("ps".into(), SUCCEED.into());
        assert_eq!(
            kinds(&e),
            [KINDS[2], KINDS[12], KINDS[12], KINDS[13], KINDS[13]]
        );
        // Gone from the store.
        e.statuses.remove("ps");
        assert_eq!(kinds(&e)[0], KINDS[1]);
        // Step 01 left uncompensated; the TCC rules leave its branches alone (no confirm
        // is missing).
        e.statuses.insert("ps".into(), FAILED.into());
        e.plain_calls
            .remove(&("ps".into(), "01".into(), "compensate".into()));
        assert_eq!(kinds(&e), [KINDS[12]]);
    }
}
