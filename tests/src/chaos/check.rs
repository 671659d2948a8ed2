//! The invariant checker: what every side recorded (the initiators, the coordinator's store,
//! the participants' databases and barriers, the consumers, Redis), held against the
//! promises. [`Evidence`] is gathered after the faults are healed and everything had time to
//! settle; [`check`] is pure, so each rule is unit-tested.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

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

/// Every kind of violation, in report order.
pub const KINDS: [&str; 12] = [
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
];

const SUCCEED: &str = "succeed";
const FAILED: &str = "failed";

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

    // What each initiator was told, against what happened.
    for t in &e.transfers {
        match t.told {
            Told::Committed if !committed(&t.gid) => add(
                KINDS[1],
                format!(
                    "{} is {}",
                    t.gid,
                    e.statuses.get(&t.gid).map_or("unknown", String::as_str)
                ),
            ),
            Told::NotCommitted if committed(&t.gid) => add(KINDS[2], t.gid.clone()),
            _ => {}
        }
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
        let mut at = 0;
        for m in &sequence {
            match got[at..].iter().position(|id| *id == m.message_id) {
                Some(i) => at += i + 1,
                None => {
                    add(
                        KINDS[9],
                        format!(
                            "key {key}: {} arrived before an earlier message, never after it",
                            m.message_id
                        ),
                    );
                    break;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Redelivered after the later one: the sequence is still there, so order held.
        push(&mut e, "g3-01");
        assert!(kinds(&e).is_empty());
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
}
