//! The batched writer: every change of a transaction's state goes through here.
//!
//! Callers hand [`Store::write`] a command: a gid and the transition that decides the
//! change, as a function of the transaction's current state. Writers (one per connection)
//! take every command queued when they become free, up to a maximum, and run them as one
//! database transaction (group commit in the coordinator, with no fixed wait):
//!
//! 1. read every transaction the batch names, locking the rows (`FOR UPDATE`, in gid order,
//!    so that two batches never wait for each other in a cycle), and their branch operations;
//! 2. let each command's transition decide against that state, in arrival order, applying
//!    each change in memory so that a later command on the same gid sees it;
//! 3. write the difference with multi-row statements: new rows in one `INSERT` per table,
//!    changed rows grouped by their new values into one `UPDATE ... WHERE ... IN (...)`;
//! 4. commit, then answer every command.
//!
//! A transition that refuses (an illegal operation, a lost lease) fails only its own command:
//! it wrote nothing. If the database refuses the whole batch (a value it will not store, say),
//! each command is run again alone, so that only the faulty one fails. A deadlock or lock
//! timeout runs the batch again. A command is answered only once its batch committed, with
//! the state after its change, so that what follows (phase 2) runs from memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

use super::connect::{is_transient, pause_before_retry, Dialect, TRANSIENT_RETRIES};
use super::{marks, rows, Result, Store, StoreError, BRANCH_COLUMNS, GLOBAL_COLUMNS};
use crate::clock::Clock;
use crate::txn::change::OutboxEffect;
use crate::txn::{BranchStatus, Change, Current, Decision, OutboxMessage, OutboxState, TxnError};

/// What a batch gives every command it decides: one time and one fresh fencing token, so that
/// the rows a batch changes the same way are written by one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The batch's time, ms.
    pub now: i64,
    /// A fencing token for the leases the batch grants.
    pub token: String,
}

/// A transition deciding a command's change from the transaction's current state. It may be
/// called more than once (a batch that deadlocked is run again).
pub type Decide = Box<dyn Fn(&Current, &Stamp) -> Result<Decision<Change>, TxnError> + Send + Sync>;

/// A committed command: whether it was a duplicate, and the transaction's state after it.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The transition had already happened; nothing was written for this command.
    pub duplicate: bool,
    /// The transaction and its branch operations after the command.
    pub current: Current,
}

struct Command {
    gid: String,
    decide: Decide,
    reply: oneshot::Sender<Result<Applied>>,
}

/// A writer's connection.
pub(crate) enum Conn {
    /// MySQL: a connection of its own, reopened from `pool` after a failure.
    MySql {
        pool: MySqlPool,
        conn: Option<MySqlConnection>,
    },
    /// SQLite: the pool of the one writer connection, shared with the other writes.
    SqlitePool(SqlitePool),
}

impl Conn {
    pub(crate) fn mysql(pool: MySqlPool, conn: MySqlConnection) -> Self {
        Self::MySql {
            pool,
            conn: Some(conn),
        }
    }
}

/// Handle on the writers: where commands are queued.
#[derive(Clone)]
pub(crate) struct Writer {
    queue: Arc<Mutex<Option<mpsc::UnboundedSender<Command>>>>,
    tasks: Arc<tokio::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts one writer task per connection.
    pub(crate) fn start(conns: Vec<Conn>, max_batch: usize, clock: Clock) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let tasks = conns
            .into_iter()
            .map(|conn| tokio::spawn(run(rx.clone(), conn, max_batch, clock)))
            .collect();
        Self {
            queue: Arc::new(Mutex::new(Some(tx))),
            tasks: Arc::new(tokio::sync::Mutex::new(tasks)),
        }
    }

    fn send(&self, command: Command) -> Result<()> {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match queue.as_ref() {
            Some(tx) => tx.send(command).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// Stops taking commands, lets the writers finish what is queued, and waits for them.
    pub(crate) async fn close(&self) {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let tasks = std::mem::take(&mut *self.tasks.lock().await);
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Store {
    /// Carries out one transition on the transaction `gid` through the batched writer:
    /// `decide` is called with the transaction's state, read under lock in the batch's
    /// database transaction, and the batch's [`Stamp`]; its change is written in that
    /// transaction. Returns once the batch committed.
    ///
    /// # Errors
    /// [`StoreError::Txn`] when the transition refused (nothing was written); a database
    /// error when the command could not be written.
    pub async fn write<F>(&self, gid: &str, decide: F) -> Result<Applied>
    where
        F: Fn(&Current, &Stamp) -> Result<Decision<Change>, TxnError> + Send + Sync + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writer.send(Command {
            gid: gid.to_owned(),
            decide: Box::new(decide),
            reply,
        })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The queue, locked by the writer whose turn it is: a writer takes the commands queued and
/// keeps the turn until its batch has written everything but the commit, so that the next
/// batch is read and written while this one waits for the disk.
type Turn = tokio::sync::OwnedMutexGuard<mpsc::UnboundedReceiver<Command>>;

async fn run(
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Command>>>,
    mut conn: Conn,
    max_batch: usize,
    clock: Clock,
) {
    loop {
        let mut turn = rx.clone().lock_owned().await;
        let Some(first) = turn.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match turn.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch, &clock, Some(turn)).await;
    }
}

async fn run_batch(conn: &mut Conn, batch: Vec<Command>, clock: &Clock, mut turn: Option<Turn>) {
    let first = attempt(conn, &batch, clock, &mut turn).await;
    drop(turn);
    match first {
        Ok(results) => {
            for (cmd, r) in batch.into_iter().zip(results) {
                let _ = cmd.reply.send(r.map_err(StoreError::from));
            }
        }
        Err(e) if batch.len() > 1 => {
            warn!(error = %crate::driver::error_chain(&e), commands = batch.len(), "a batch failed; running its commands one by one");
            for cmd in batch {
                let r = match attempt(conn, std::slice::from_ref(&cmd), clock, &mut None).await {
                    Ok(mut results) => results
                        .pop()
                        .unwrap_or(Err(TxnError::NotFound {
                            gid: cmd.gid.clone(),
                        }))
                        .map_err(StoreError::from),
                    Err(e) => Err(e),
                };
                let _ = cmd.reply.send(r);
            }
        }
        Err(e) => {
            for cmd in batch {
                let _ = cmd.reply.send(Err(clone_error(&e)));
            }
        }
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Txn(t) => StoreError::Txn(t.clone()),
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Database(sqlx::Error::Protocol(other.to_string())),
    }
}

/// Whether the batch met a row another writer inserted after it read (MySQL 1062, SQLite
/// 2067): reading again sees it.
fn is_duplicate_key(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return my.number() == 1062;
    }
    false
}

type Outcomes = Vec<std::result::Result<Applied, TxnError>>;

async fn attempt(
    conn: &mut Conn,
    cmds: &[Command],
    clock: &Clock,
    turn: &mut Option<Turn>,
) -> Result<Outcomes> {
    let mut tries = 0_u32;
    loop {
        let stamp = Stamp {
            now: clock.now_ms(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        };
        let r = match conn {
            Conn::MySql { pool, conn } => {
                if conn.is_none() {
                    *conn = Some(pool.acquire().await?.detach());
                }
                let Some(c) = conn.as_mut() else {
                    return Err(StoreError::Closed);
                };
                let r = exec_mysql(c, cmds, &stamp, turn).await;
                if matches!(&r, Err(StoreError::Database(e)) if !matches!(e, sqlx::Error::Database(_)))
                {
                    // The connection broke: open another for the next try.
                    *conn = None;
                }
                r
            }
            Conn::SqlitePool(pool) => {
                let mut c = pool.acquire().await?;
                exec_sqlite(&mut c, cmds, &stamp, turn).await
            }
        };
        match r {
            Err(StoreError::Database(ref e))
                if (is_transient(e) || is_duplicate_key(e)) && tries < TRANSIENT_RETRIES =>
            {
                tries += 1;
                pause_before_retry(tries).await;
            }
            other => return other,
        }
    }
}

/// One transaction's state in a batch.
struct Work {
    current: Current,
    existed: bool,
    /// Something changed: its branches are compared with what was read.
    dirty: bool,
    /// Its own row changed.
    global_dirty: bool,
    /// Status of each stored branch operation (by id) when read.
    read_status: HashMap<i64, BranchStatus>,
}

/// Everything a batch decided, before it is written.
#[derive(Default)]
struct Plan {
    /// Messages committed: transaction, when, state, messages.
    enqueue: Vec<(String, i64, OutboxState, Vec<OutboxMessage>)>,
    /// Transactions whose held messages go out, by the time they do.
    release_held: BTreeMap<i64, BTreeSet<String>>,
    /// Transactions whose held messages are dropped, by the time they are.
    drop_held: BTreeMap<i64, BTreeSet<String>>,
    /// Messages acknowledged by the broker, by time and claim: (row id, transaction).
    sent: BTreeMap<(i64, String), Vec<(i64, String)>>,
}

impl Plan {
    fn add(&mut self, gid: &str, now: i64, effect: OutboxEffect) {
        if let Some((state, messages)) = effect.enqueue {
            self.enqueue.push((gid.to_owned(), now, state, messages));
        }
        if effect.release_held {
            self.release_held
                .entry(now)
                .or_default()
                .insert(gid.to_owned());
        }
        if effect.drop_held {
            self.drop_held
                .entry(now)
                .or_default()
                .insert(gid.to_owned());
        }
        for m in effect.sent {
            self.sent
                .entry((now, m.owner))
                .or_default()
                .push((m.id, gid.to_owned()));
        }
    }
}

/// Decides every command against the state read, in order.
fn decide_all(
    cmds: &[Command],
    stamp: &Stamp,
    work: &mut HashMap<String, Work>,
    plan: &mut Plan,
) -> Outcomes {
    cmds.iter()
        .map(|cmd| {
            let w = work.get_mut(&cmd.gid).ok_or_else(|| TxnError::NotFound {
                gid: cmd.gid.clone(),
            })?;
            match (cmd.decide)(&w.current, stamp)? {
                Decision::Apply(change) => {
                    let now = change.now;
                    let effect = w.current.apply(change)?;
                    w.dirty = true;
                    w.global_dirty |= effect.global_changed;
                    plan.add(&cmd.gid, now, effect);
                    Ok(Applied {
                        duplicate: false,
                        current: w.current.clone(),
                    })
                }
                Decision::AlreadyDone => Ok(Applied {
                    duplicate: true,
                    current: w.current.clone(),
                }),
            }
        })
        .collect()
}

/// The mutable columns of a global row: rows with equal values are updated together.
#[derive(Hash, PartialEq, Eq)]
struct GlobalValues {
    status: &'static str,
    update_time: i64,
    finish_time: Option<i64>,
    rollback_time: Option<i64>,
    rollback_reason: String,
    next_cron_time: i64,
    next_cron_interval: i64,
    owner: String,
    lease_token: String,
    lease_expire: i64,
    retry_count: i64,
    last_error: String,
}

const UPDATE_GLOBAL: &str = "UPDATE trans_global SET status = ?, update_time = ?, \
     finish_time = ?, rollback_time = ?, rollback_reason = ?, next_cron_time = ?, \
     next_cron_interval = ?, owner = ?, lease_token = ?, lease_expire = ?, retry_count = ?, \
     last_error = ? WHERE gid IN ";

const INSERT_GLOBAL: &str = "INSERT INTO trans_global (gid, trans_type, status, custom_data, \
     steps, payloads, query_prepared, protocol, options, rollback_reason, create_time, \
     update_time, finish_time, rollback_time, next_cron_time, next_cron_interval, owner, \
     lease_token, lease_expire, retry_count, last_error) VALUES ";
const GLOBAL_INSERT_COLUMNS: usize = 21;

const INSERT_BRANCH: &str = "INSERT INTO trans_branch_op (gid, branch_id, op, url, data, \
     status, create_time, update_time, finish_time) VALUES ";
const BRANCH_INSERT_COLUMNS: usize = 9;

const INSERT_OUTBOX: &str = "INSERT INTO outbox (gid, branch_id, topic, tag, sharding_key, \
     seq, message_id, body, status, next_attempt_time, create_time) VALUES ";
const OUTBOX_INSERT_COLUMNS: usize = 11;

/// `(?, ?), (?, ?)`: `rows` groups of `cols` marks.
fn value_rows(rows: usize, cols: usize) -> String {
    let one = format!("({})", marks(cols));
    vec![one; rows].join(", ")
}

/// Splits `len` rows of `cols` values into statements within both databases' limits on
/// bound values.
fn chunks(len: usize, cols: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let per = (30_000 / cols.max(1)).clamp(1, 500);
    (0..len)
        .step_by(per)
        .map(move |start| start..(start + per).min(len))
}

fn next_seq_sql(dialect: Dialect, keys: usize) -> String {
    let values = value_rows(keys, 2);
    match dialect {
        Dialect::MySql => format!(
            "INSERT INTO outbox_key_seq (sharding_key, last_seq) VALUES {values} \
             ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq)"
        ),
        Dialect::Sqlite => format!(
            "INSERT INTO outbox_key_seq (sharding_key, last_seq) VALUES {values} \
             ON CONFLICT (sharding_key) DO UPDATE SET last_seq = last_seq + excluded.last_seq"
        ),
    }
}

/// The body of one batch, for either database: `$tx` is an open transaction.
macro_rules! batch_body {
    ($tx:ident, $dialect:expr, $cmds:expr, $stamp:expr) => {{
        let cmds: &[Command] = $cmds;
        let stamp: &Stamp = $stamp;
        let dialect: Dialect = $dialect;
        // 1. Read and lock, in gid order.
        let gids: BTreeSet<&str> = cmds.iter().map(|c| c.gid.as_str()).collect();
        let mut work: HashMap<String, Work> = gids
            .iter()
            .map(|g| {
                (
                    (*g).to_owned(),
                    Work {
                        current: Current {
                            gid: (*g).to_owned(),
                            txn: None,
                            branches: Vec::new(),
                        },
                        existed: false,
                        dirty: false,
                        global_dirty: false,
                        read_status: HashMap::new(),
                    },
                )
            })
            .collect();
        let select = format!(
            "SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE gid IN ({}) ORDER BY gid{}",
            marks(gids.len()),
            dialect.for_update()
        );
        let mut q = sqlx::query(&select);
        for g in &gids {
            q = q.bind(*g);
        }
        let existing: Vec<String> = {
            let found = q.fetch_all(&mut *$tx).await?;
            let mut existing = Vec::with_capacity(found.len());
            for row in &found {
                let t = rows::decode_global(row)?;
                if let Some(w) = work.get_mut(&t.gid) {
                    existing.push(t.gid.clone());
                    w.existed = true;
                    w.current.txn = Some(t);
                }
            }
            existing
        };
        if !existing.is_empty() {
            let select = format!(
                "SELECT {BRANCH_COLUMNS} FROM trans_branch_op WHERE gid IN ({}) ORDER BY id",
                marks(existing.len())
            );
            let mut q = sqlx::query(&select);
            for g in &existing {
                q = q.bind(g);
            }
            for row in &q.fetch_all(&mut *$tx).await? {
                let b = rows::decode_branch(row)?;
                if let Some(w) = work.get_mut(&b.gid) {
                    w.read_status.insert(b.id, b.status);
                    w.current.branches.push(b);
                }
            }
        }

        // 2. Decide.
        let mut plan = Plan::default();
        let outcomes = decide_all(cmds, stamp, &mut work, &mut plan);

        // 3. Write: new transactions, changed transactions, branches, outbox.
        let mut dirty: Vec<&Work> = work.values().filter(|w| w.dirty).collect();
        dirty.sort_by(|a, b| a.current.gid.cmp(&b.current.gid));
        let created: Vec<&crate::txn::GlobalTxn> = dirty
            .iter()
            .filter(|w| !w.existed)
            .filter_map(|w| w.current.txn.as_ref())
            .collect();
        for range in chunks(created.len(), GLOBAL_INSERT_COLUMNS) {
            let sql = format!(
                "{INSERT_GLOBAL}{}",
                value_rows(range.len(), GLOBAL_INSERT_COLUMNS)
            );
            let encoded: Vec<rows::EncodedGlobal> = created[range.clone()]
                .iter()
                .map(|t| rows::EncodedGlobal::new(t))
                .collect();
            let mut q = sqlx::query(&sql);
            for (t, e) in created[range].iter().zip(&encoded) {
                q = q
                    .bind(&t.gid)
                    .bind(t.trans_type.as_str())
                    .bind(t.status.as_str())
                    .bind(&t.custom_data)
                    .bind(&e.steps)
                    .bind(&e.payloads)
                    .bind(&t.query_prepared)
                    .bind(&t.protocol)
                    .bind(&e.options)
                    .bind(&t.rollback_reason)
                    .bind(t.create_time)
                    .bind(t.update_time)
                    .bind(t.finish_time)
                    .bind(t.rollback_time)
                    .bind(t.next_cron_time)
                    .bind(t.next_cron_interval)
                    .bind(&t.owner)
                    .bind(&t.lease_token)
                    .bind(t.lease_expire)
                    .bind(t.retry_count)
                    .bind(&t.last_error);
            }
            q.execute(&mut *$tx).await?;
        }
        let mut groups: HashMap<GlobalValues, Vec<&str>> = HashMap::new();
        for w in dirty.iter().filter(|w| w.existed && w.global_dirty) {
            if let Some(t) = &w.current.txn {
                groups
                    .entry(GlobalValues {
                        status: t.status.as_str(),
                        update_time: t.update_time,
                        finish_time: t.finish_time,
                        rollback_time: t.rollback_time,
                        rollback_reason: t.rollback_reason.clone(),
                        next_cron_time: t.next_cron_time,
                        next_cron_interval: t.next_cron_interval,
                        owner: t.owner.clone(),
                        lease_token: t.lease_token.clone(),
                        lease_expire: t.lease_expire,
                        retry_count: t.retry_count,
                        last_error: t.last_error.clone(),
                    })
                    .or_default()
                    .push(&t.gid);
            }
        }
        for (v, gids) in &groups {
            let sql = format!("{UPDATE_GLOBAL}({})", marks(gids.len()));
            let mut q = sqlx::query(&sql)
                .bind(v.status)
                .bind(v.update_time)
                .bind(v.finish_time)
                .bind(v.rollback_time)
                .bind(&v.rollback_reason)
                .bind(v.next_cron_time)
                .bind(v.next_cron_interval)
                .bind(&v.owner)
                .bind(&v.lease_token)
                .bind(v.lease_expire)
                .bind(v.retry_count)
                .bind(&v.last_error);
            for g in gids {
                q = q.bind(*g);
            }
            q.execute(&mut *$tx).await?;
        }
        let new_branches: Vec<&crate::txn::BranchOp> = dirty
            .iter()
            .flat_map(|w| w.current.branches.iter().filter(|b| b.id == 0))
            .collect();
        for range in chunks(new_branches.len(), BRANCH_INSERT_COLUMNS) {
            let sql = format!(
                "{INSERT_BRANCH}{}",
                value_rows(range.len(), BRANCH_INSERT_COLUMNS)
            );
            let mut q = sqlx::query(&sql);
            for b in &new_branches[range] {
                q = q
                    .bind(&b.gid)
                    .bind(&b.branch_id)
                    .bind(b.op.as_str())
                    .bind(&b.url)
                    .bind(&b.data)
                    .bind(b.status.as_str())
                    .bind(b.create_time)
                    .bind(b.update_time)
                    .bind(b.finish_time);
            }
            q.execute(&mut *$tx).await?;
        }
        let mut branch_groups: BTreeMap<(&'static str, i64, Option<i64>), Vec<i64>> =
            BTreeMap::new();
        for w in &dirty {
            for b in &w.current.branches {
                if b.id != 0 && w.read_status.get(&b.id) != Some(&b.status) {
                    branch_groups
                        .entry((b.status.as_str(), b.update_time, b.finish_time))
                        .or_default()
                        .push(b.id);
                }
            }
        }
        for ((status, update_time, finish_time), ids) in &branch_groups {
            let sql = format!(
                "UPDATE trans_branch_op SET status = ?, update_time = ?, finish_time = ? \
                 WHERE id IN ({})",
                marks(ids.len())
            );
            let mut q = sqlx::query(&sql)
                .bind(*status)
                .bind(*update_time)
                .bind(*finish_time);
            for id in ids {
                q = q.bind(*id);
            }
            q.execute(&mut *$tx).await?;
        }
        if !plan.enqueue.is_empty() {
            // Each key's next sequence numbers, taken under the key's row lock (keys in
            // order): for one key, sequence order is commit order.
            let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
            for (_, _, _, messages) in &plan.enqueue {
                for m in messages.iter().filter(|m| !m.sharding_key.is_empty()) {
                    *counts.entry(m.sharding_key.as_str()).or_default() += 1;
                }
            }
            let mut next: HashMap<String, i64> = HashMap::new();
            if !counts.is_empty() {
                let keys: Vec<(&str, i64)> = counts.iter().map(|(k, n)| (*k, *n)).collect();
                for range in chunks(keys.len(), 2) {
                    let sql = next_seq_sql(dialect, range.len());
                    let mut q = sqlx::query(&sql);
                    for (k, n) in &keys[range] {
                        q = q.bind(*k).bind(*n);
                    }
                    q.execute(&mut *$tx).await?;
                }
                for range in chunks(keys.len(), 1) {
                    let sql = format!(
                        "SELECT sharding_key, last_seq FROM outbox_key_seq WHERE sharding_key IN ({})",
                        marks(range.len())
                    );
                    let mut q = sqlx::query(&sql);
                    for (k, _) in &keys[range] {
                        q = q.bind(*k);
                    }
                    for row in &q.fetch_all(&mut *$tx).await? {
                        let key: String = row.try_get_unchecked(0)?;
                        let last: i64 = row.try_get(1)?;
                        let n = counts.get(key.as_str()).copied().unwrap_or(0);
                        next.insert(key, last - n + 1);
                    }
                }
            }
            let mut rows_out: Vec<(&str, i64, &OutboxMessage, OutboxState, Option<i64>)> =
                Vec::new();
            for (gid, now, state, messages) in &plan.enqueue {
                for m in messages {
                    let seq = if m.sharding_key.is_empty() {
                        None
                    } else {
                        let slot = next.entry(m.sharding_key.clone()).or_insert(1);
                        let s = *slot;
                        *slot += 1;
                        Some(s)
                    };
                    rows_out.push((gid.as_str(), *now, m, *state, seq));
                }
            }
            for range in chunks(rows_out.len(), OUTBOX_INSERT_COLUMNS) {
                let sql = format!(
                    "{INSERT_OUTBOX}{}",
                    value_rows(range.len(), OUTBOX_INSERT_COLUMNS)
                );
                let mut q = sqlx::query(&sql);
                for (gid, now, m, state, seq) in &rows_out[range] {
                    q = q
                        .bind(*gid)
                        .bind(&m.branch_id)
                        .bind(&m.topic)
                        .bind(&m.tag)
                        .bind(&m.sharding_key)
                        .bind(*seq)
                        .bind(format!("{gid}-{}", m.branch_id))
                        .bind(&m.body)
                        .bind(state.as_str())
                        .bind(*now)
                        .bind(*now);
                }
                q.execute(&mut *$tx).await?;
            }
        }
        for (by_time, sql) in [
            (
                &plan.release_held,
                "UPDATE outbox SET status = 'pending', next_attempt_time = ? WHERE status = 'held' AND gid IN ",
            ),
            (
                &plan.drop_held,
                "UPDATE outbox SET status = 'dropped', next_attempt_time = ? WHERE status = 'held' AND gid IN ",
            ),
        ] {
            for (now, set) in by_time {
                let sql = format!("{sql}({})", marks(set.len()));
                let mut q = sqlx::query(&sql).bind(*now);
                for g in set {
                    q = q.bind(g);
                }
                q.execute(&mut *$tx).await?;
            }
        }
        for ((now, owner), messages) in &plan.sent {
            // Only while the claim holds: a message another dispatcher took over is its.
            let sql = format!(
                "UPDATE outbox SET status = 'sent', sent_time = ?, owner = '', lease_expire = 0 \
                 WHERE status = 'pending' AND owner = ? AND id IN ({})",
                marks(messages.len())
            );
            let mut q = sqlx::query(&sql).bind(*now).bind(owner);
            for (id, _) in messages {
                q = q.bind(*id);
            }
            let n = q.execute(&mut *$tx).await?.rows_affected();
            if n != messages.len() as u64 {
                // Run alone, each command finds out whether it is the one that lost.
                return Err(StoreError::Txn(TxnError::LeaseLost {
                    gid: messages[0].1.clone(),
                }));
            }
        }
        outcomes
    }};
}

async fn exec_mysql(
    conn: &mut MySqlConnection,
    cmds: &[Command],
    stamp: &Stamp,
    turn: &mut Option<Turn>,
) -> Result<Outcomes> {
    let mut tx = conn.begin().await?;
    let result: Result<Outcomes> = async { Ok(batch_body!(tx, Dialect::MySql, cmds, stamp)) }.await;
    // The next batch may start now: this one only has its commit left.
    turn.take();
    finish(tx, result).await
}

/// Commits a batch that went through, and rolls back at once one that did not (so that it
/// holds no lock while the writer waits for its next batch).
async fn finish<DB: sqlx::Database>(
    tx: sqlx::Transaction<'_, DB>,
    result: Result<Outcomes>,
) -> Result<Outcomes> {
    match result {
        Ok(outcomes) => {
            tx.commit().await?;
            Ok(outcomes)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

async fn exec_sqlite(
    conn: &mut sqlx::SqliteConnection,
    cmds: &[Command],
    stamp: &Stamp,
    turn: &mut Option<Turn>,
) -> Result<Outcomes> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let result: Result<Outcomes> =
        async { Ok(batch_body!(tx, Dialect::Sqlite, cmds, stamp)) }.await;
    turn.take();
    finish(tx, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_stay_within_the_bound_value_limits() {
        let all: Vec<_> = chunks(1_201, 21).collect();
        assert_eq!(all.first(), Some(&(0..500)));
        assert_eq!(all.last(), Some(&(1_000..1_201)));
        assert!(chunks(0, 9).next().is_none());
        assert_eq!(value_rows(2, 2), "(?, ?), (?, ?)");
    }
}
