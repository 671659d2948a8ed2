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
//! What costs time is round trips to the database, not rows: the statements of each step
//! travel together as one multi-statement text ([`super::sql`]), so that a batch costs two
//! round trips (`BEGIN` and the reads; the writes and `COMMIT`), three when it commits or
//! acknowledges messages, whatever its size.
//!
//! A transition that refuses (an illegal operation, a lost lease) fails only its own command:
//! it wrote nothing. If the database refuses the whole batch (a value it will not store, say),
//! each command is run again alone, so that only the faulty one fails. A deadlock or lock
//! timeout runs the batch again. A command is answered only once its batch committed, with
//! the state after its change, so that what follows (phase 2) runs from memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::sqlite::SqlitePool;
use sqlx::{Either, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

use super::connect::{is_transient, pause_before_retry, Dialect, TRANSIENT_RETRIES};
use super::sql::{Script, Sql};
use super::{rows, Result, Store, StoreError, BRANCH_COLUMNS, GLOBAL_COLUMNS};
use crate::clock::Clock;
use crate::otlp::{new_span_id, Kind, Span};
use crate::telemetry::Metrics;
use crate::txn::change::{Attempt, OutboxEffect};
use crate::txn::{
    BranchOp, BranchStatus, Change, Current, Decision, GlobalTxn, OutboxMessage, OutboxState,
    TxnError,
};

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
    pub(crate) fn start(
        conns: Vec<Conn>,
        max_batch: usize,
        clock: Clock,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let tasks = conns
            .into_iter()
            .map(|conn| {
                tokio::spawn(run(
                    rx.clone(),
                    conn,
                    max_batch,
                    clock.clone(),
                    metrics.clone(),
                ))
            })
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
    metrics: Option<Arc<Metrics>>,
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
        let (started, commands) = (std::time::Instant::now(), batch.len());
        let span = metrics
            .as_ref()
            .filter(|m| m.tracer().is_on())
            .map(|_| Span::start("store batch", Kind::Internal, "", new_span_id()));
        run_batch(&mut conn, batch, &clock, Some(turn)).await;
        if let Some(m) = &metrics {
            m.store_batch(commands, started.elapsed());
            if let Some(span) = span {
                m.tracer().record(
                    span.with("settle.commands", commands.to_string())
                        .end(false),
                );
            }
        }
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
            warn!(error = %crate::telemetry::error_chain(&e), commands = batch.len(), "a batch failed; running its commands one by one");
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
        // The same text once, not wrapped in a second "database error".
        StoreError::Database(sqlx::Error::Io(io)) => StoreError::Database(sqlx::Error::Io(
            std::io::Error::new(io.kind(), io.to_string()),
        )),
        StoreError::Database(e) => StoreError::Database(sqlx::Error::Protocol(e.to_string())),
        other => StoreError::Database(sqlx::Error::Protocol(other.to_string())),
    }
}

/// Whether the batch met a row another writer inserted after it read (MySQL 1062, SQLite
/// 2067): reading again sees it.
pub(super) fn is_duplicate_key(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

type Outcomes = Vec<std::result::Result<Applied, TxnError>>;

/// A command decided in a batch not yet committed: its answer, sharing the transaction's
/// state with the batch until the batch is done.
struct Decided {
    duplicate: bool,
    current: Arc<Current>,
}

impl Decided {
    /// The answer, once the batch let go of the state (no copy unless a later command of the
    /// batch changed the same transaction).
    fn applied(self) -> Applied {
        Applied {
            duplicate: self.duplicate,
            current: Arc::unwrap_or_clone(self.current),
        }
    }
}

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
    /// Shared with the answers of the commands decided so far: a command's answer is the
    /// state after its change, copied only if a later command of the batch changes it again.
    current: Arc<Current>,
    existed: bool,
    /// Something changed: its branches are compared with what was read.
    dirty: bool,
    /// Its own row changed.
    global_dirty: bool,
    /// Status of each stored branch operation (by id) when read.
    read_status: HashMap<i64, BranchStatus>,
    /// Its row's mutable columns as read (and locked), to write only those that changed.
    read_columns: Option<Vec<Stored>>,
}

impl Work {
    /// Nothing read yet about `gid`.
    fn new(gid: &str) -> Self {
        Self {
            current: Arc::new(Current {
                gid: gid.to_owned(),
                txn: None,
                branches: Vec::new(),
            }),
            existed: false,
            dirty: false,
            global_dirty: false,
            read_status: HashMap::new(),
            read_columns: None,
        }
    }
}

/// Messages one command committed.
struct Enqueued {
    gid: String,
    /// The transaction's W3C `traceparent`, carried by its messages.
    traceparent: String,
    /// When, ms.
    now: i64,
    /// When they may go out, ms.
    due: i64,
    state: OutboxState,
    messages: Vec<OutboxMessage>,
}

/// Why a released message was not sent: its transaction ended failed first.
pub const WITHDRAWN: &str = "withdrawn: its transaction ended failed before it was sent";

/// A message the broker acknowledged: (row id, transaction, sharding key).
type Acknowledged = (i64, String, String);

/// Everything a batch decided, before it is written.
#[derive(Default)]
struct Plan {
    /// Messages committed: transaction, when, state, messages.
    enqueue: Vec<Enqueued>,
    /// Transactions whose held messages go out, by the time they do.
    release_held: BTreeMap<i64, BTreeSet<String>>,
    /// Transactions whose held messages are dropped, by the time they are.
    drop_held: BTreeMap<i64, BTreeSet<String>>,
    /// Transactions whose held messages become dead letters: (time, transaction, why).
    dead_held: Vec<(i64, String, String)>,
    /// Messages acknowledged by the broker, by time and claim.
    sent: BTreeMap<(i64, String), Vec<Acknowledged>>,
    /// Sharding keys whose next message may go now, by the time it may.
    wake: BTreeMap<i64, BTreeSet<String>>,
    /// Rounds that did not settle their transaction, for its timeline.
    attempts: Vec<(String, Attempt)>,
}

impl Plan {
    fn add(&mut self, gid: &str, traceparent: &str, now: i64, effect: OutboxEffect) {
        if let Some(a) = effect.attempt {
            self.attempts.push((gid.to_owned(), a));
        }
        if let Some((state, messages)) = effect.enqueue {
            self.enqueue.push(Enqueued {
                gid: gid.to_owned(),
                traceparent: traceparent.to_owned(),
                now,
                due: effect.deliver_from,
                state,
                messages,
            });
        }
        if effect.release_held {
            self.release_held
                .entry(now)
                .or_default()
                .insert(gid.to_owned());
        }
        if let Some(why) = effect.dead_held {
            self.dead_held.push((now, gid.to_owned(), why));
        }
        if effect.drop_held {
            self.drop_held
                .entry(now)
                .or_default()
                .insert(gid.to_owned());
        }
        if !effect.wake_keys.is_empty() {
            self.wake.entry(now).or_default().extend(effect.wake_keys);
        }
        // An acknowledged message's key is not woken here: the claim that sent it holds the
        // key and gives it back once its whole run is recorded.
        for m in effect.sent {
            self.sent.entry((now, m.owner)).or_default().push((
                m.id,
                gid.to_owned(),
                m.sharding_key,
            ));
        }
    }
}

/// Decides every command against the state read, in order.
fn decide_all(
    cmds: &[Command],
    stamp: &Stamp,
    work: &mut HashMap<String, Work>,
    plan: &mut Plan,
) -> Vec<std::result::Result<Decided, TxnError>> {
    cmds.iter()
        .map(|cmd| {
            let w = work.get_mut(&cmd.gid).ok_or_else(|| TxnError::NotFound {
                gid: cmd.gid.clone(),
            })?;
            match (cmd.decide)(&w.current, stamp)? {
                Decision::Apply(change) => {
                    let now = change.now;
                    let effect = Arc::make_mut(&mut w.current).apply(change)?;
                    w.dirty = true;
                    w.global_dirty |= effect.global_changed;
                    let traceparent = w
                        .current
                        .txn
                        .as_ref()
                        .map_or("", |t| t.options.traceparent.as_str());
                    plan.add(&cmd.gid, traceparent, now, effect);
                    Ok(Decided {
                        duplicate: false,
                        current: Arc::clone(&w.current),
                    })
                }
                Decision::AlreadyDone => Ok(Decided {
                    duplicate: true,
                    current: Arc::clone(&w.current),
                }),
            }
        })
        .collect()
}

/// A value written to a column of a global row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Text(&'a str),
    Int(i64),
    OptInt(Option<i64>),
}

impl Value<'_> {
    fn write(self, sql: &mut Sql) {
        match self {
            Self::Text(v) => sql.text(v),
            Self::Int(v) => sql.int(v),
            Self::OptInt(v) => sql.opt_int(v),
        };
    }

    fn stored(self) -> Stored {
        match self {
            Self::Text(v) => Stored::Text(v.to_owned()),
            Self::Int(v) => Stored::Int(v),
            Self::OptInt(v) => Stored::OptInt(v),
        }
    }

    fn is(self, stored: &Stored) -> bool {
        match (self, stored) {
            (Self::Text(a), Stored::Text(b)) => a == b,
            (Self::Int(a), Stored::Int(b)) => a == *b,
            (Self::OptInt(a), Stored::OptInt(b)) => a == *b,
            _ => false,
        }
    }
}

/// A mutable column's value as read, kept to compare with once the batch decided (rather
/// than a copy of the whole transaction, whose steps and payloads never change).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    Text(String),
    Int(i64),
    OptInt(Option<i64>),
}

/// A mutable column of a global row, and how to read its value from a transaction.
type Column = (&'static str, for<'t> fn(&'t GlobalTxn) -> Value<'t>);

/// The columns of a global row that a transition may change.
const MUTABLE_COLUMNS: [Column; 14] = [
    ("status", |t| Value::Text(t.status.as_str())),
    ("update_time", |t| Value::Int(t.update_time)),
    ("finish_time", |t| Value::OptInt(t.finish_time)),
    ("rollback_time", |t| Value::OptInt(t.rollback_time)),
    ("submit_time", |t| Value::OptInt(t.submit_time)),
    ("callback_due", |t| Value::OptInt(t.callback_due)),
    ("rollback_reason", |t| Value::Text(&t.rollback_reason)),
    ("next_cron_time", |t| Value::Int(t.next_cron_time)),
    ("next_cron_interval", |t| Value::Int(t.next_cron_interval)),
    ("owner", |t| Value::Text(&t.owner)),
    ("lease_token", |t| Value::Text(&t.lease_token)),
    ("lease_expire", |t| Value::Int(t.lease_expire)),
    ("retry_count", |t| Value::Int(t.retry_count)),
    ("last_error", |t| Value::Text(&t.last_error)),
];

/// The mutable columns of a global row as read, in the order of [`MUTABLE_COLUMNS`].
fn read_columns(t: &GlobalTxn) -> Vec<Stored> {
    MUTABLE_COLUMNS
        .iter()
        .map(|(_, value)| value(t).stored())
        .collect()
}

/// The mutable columns of a global row that differ between `read` (see [`read_columns`])
/// and `now`, with their new values.
fn changed_columns<'a>(read: &[Stored], now: &'a GlobalTxn) -> Vec<(&'static str, Value<'a>)> {
    MUTABLE_COLUMNS
        .iter()
        .zip(read)
        .filter(|((_, value), was)| !value(now).is(was))
        .map(|((name, value), _)| (*name, value(now)))
        .collect()
}

const INSERT_GLOBAL: &str = "INSERT INTO trans_global (gid, trans_type, status, custom_data, \
     steps, payloads, query_prepared, protocol, options, rollback_reason, create_time, \
     update_time, finish_time, rollback_time, submit_time, callback_due, next_cron_time, \
     next_cron_interval, owner, lease_token, lease_expire, retry_count, last_error) VALUES ";

const INSERT_BRANCH: &str = "INSERT INTO trans_branch_op (gid, branch_id, op, url, data, \
     status, create_time, update_time, finish_time) VALUES ";

const INSERT_OUTBOX: &str = "INSERT INTO outbox (gid, branch_id, topic, tag, sharding_key, \
     seq, message_id, body, status, next_attempt_time, create_time, traceparent) VALUES ";

const INSERT_ATTEMPT: &str =
    "INSERT INTO trans_attempt (gid, at_time, round, error, next_retry) VALUES ";

/// Longest error text kept with an attempt, bytes.
const ATTEMPT_ERROR_BYTES: usize = 500;

/// Most rows in one multi-row statement.
const ROWS_PER_STATEMENT: usize = 500;
/// A multi-row statement is ended once its text is this long, bytes.
const STATEMENT_BYTES: usize = 1024 * 1024;

/// Adds multi-row `INSERT`s of `items` to `script`: `head` then one `(...)` per item, written
/// by `row`, as many statements as the row and size limits need.
fn insert_rows<T>(
    script: &mut Script,
    dialect: Dialect,
    head: &str,
    items: &[T],
    mut row: impl FnMut(&mut Sql, &T),
) {
    let mut statement: Option<(Sql, usize)> = None;
    for item in items {
        let (sql, n) = statement.get_or_insert_with(|| (Sql::new(dialect, head), 0));
        if *n > 0 {
            sql.push(", ");
        }
        row(sql, item);
        *n += 1;
        if *n >= ROWS_PER_STATEMENT || sql.len() >= STATEMENT_BYTES {
            if let Some((sql, _)) = statement.take() {
                script.add(sql);
            }
        }
    }
    if let Some((sql, _)) = statement {
        script.add(sql);
    }
}

/// Each of `lists` in statements of at most [`ROWS_PER_STATEMENT`] values.
fn in_chunks<T>(values: &[T]) -> impl Iterator<Item = &[T]> {
    values.chunks(ROWS_PER_STATEMENT)
}

/// How many rows a statement changed (or matched, on MySQL), for either database.
trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::mysql::MySqlQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// What one statement of a round trip gave back.
struct Answer<R> {
    rows: Vec<R>,
    affected: u64,
}

/// Sends `sql` (one or more statements) in one round trip and returns each statement's
/// answer, in order.
async fn trip<DB>(conn: &mut DB::Connection, sql: &str) -> Result<Vec<Answer<DB::Row>>>
where
    DB: sqlx::Database,
    DB::QueryResult: Affected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let mut answers = Vec::new();
    let mut rows = Vec::new();
    let mut stream = sqlx::raw_sql(sql).fetch_many(&mut *conn);
    while let Some(item) = stream.try_next().await? {
        match item {
            Either::Left(done) => answers.push(Answer {
                rows: std::mem::take(&mut rows),
                affected: done.affected(),
            }),
            Either::Right(row) => rows.push(row),
        }
    }
    Ok(answers)
}

/// Runs `script` in as few round trips as its size allows, and returns every statement's
/// answer.
async fn run_script<DB>(conn: &mut DB::Connection, script: &Script) -> Result<Vec<Answer<DB::Row>>>
where
    DB: sqlx::Database,
    DB::QueryResult: Affected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let mut answers = Vec::with_capacity(script.len());
    for (sql, count) in script.trips() {
        let got = trip::<DB>(conn, &sql).await?;
        if got.len() != count {
            return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                "{count} statements sent in one round trip, {} answers received",
                got.len()
            ))));
        }
        answers.extend(got);
    }
    Ok(answers)
}

/// One batch on the writer's connection, for either database. The batch is one database
/// transaction, driven by hand so that it costs as few round trips as its steps allow:
///
/// 1. `BEGIN`, then read and lock every transaction the batch names (in gid order) and read
///    their branch operations: one round trip;
/// 2. decide, in memory;
/// 3. only when messages were committed or acknowledged, take their keys' sequence numbers
///    and record the acknowledgements, checking each claim still holds: one round trip;
/// 4. every other write, then `COMMIT`: one round trip (more only for very large batches).
///
/// On any error the transaction is rolled back before returning.
async fn exec<DB>(
    conn: &mut DB::Connection,
    dialect: Dialect,
    cmds: &[Command],
    stamp: &Stamp,
    turn: &mut Option<Turn>,
) -> Result<Outcomes>
where
    DB: sqlx::Database,
    DB::QueryResult: Affected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c str: sqlx::ColumnIndex<DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<i64>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    let result: Result<Vec<std::result::Result<Decided, TxnError>>> = async {
        // 1. Begin, read and lock, in gid order.
        let gids: BTreeSet<&str> = cmds.iter().map(|c| c.gid.as_str()).collect();
        let mut work: HashMap<String, Work> = gids
            .iter()
            .map(|g| ((*g).to_owned(), Work::new(g)))
            .collect();
        let mut read = Script::default();
        read.add_text(match dialect {
            Dialect::MySql => "BEGIN",
            Dialect::Sqlite => "BEGIN IMMEDIATE",
        });
        let mut globals = Sql::new(
            dialect,
            &format!(
                "SELECT {GLOBAL_COLUMNS} FROM trans_global{} WHERE gid IN ",
                dialect.use_index("uniq_gid")
            ),
        );
        globals
            .text_list(gids.iter().copied())
            .push(" ORDER BY gid")
            .push(dialect.for_update());
        read.add(globals);
        let mut branches = Sql::new(
            dialect,
            &format!(
                "SELECT {BRANCH_COLUMNS} FROM trans_branch_op{} WHERE gid IN ",
                dialect.use_index("uniq_branch_op")
            ),
        );
        branches
            .text_list(gids.iter().copied())
            .push(" ORDER BY id");
        read.add(branches);
        let answers = run_script::<DB>(conn, &read).await?;
        if let [_, found, ops] = answers.as_slice() {
            for row in &found.rows {
                let t = rows::decode_global(row, rows::Reading::Strict)?;
                if let Some(w) = work.get_mut(&t.gid) {
                    w.existed = true;
                    w.read_columns = Some(read_columns(&t));
                    Arc::make_mut(&mut w.current).txn = Some(t);
                }
            }
            for row in &ops.rows {
                let b = rows::decode_branch(row)?;
                if let Some(w) = work.get_mut(&b.gid) {
                    w.read_status.insert(b.id, b.status);
                    Arc::make_mut(&mut w.current).branches.push(b);
                }
            }
        }

        // 2. Decide.
        let mut plan = Plan::default();
        let outcomes = decide_all(cmds, stamp, &mut work, &mut plan);
        let mut dirty: Vec<&Work> = work.values().filter(|w| w.dirty).collect();
        dirty.sort_by(|a, b| a.current.gid.cmp(&b.current.gid));

        // 3. Sequence numbers and acknowledgements, whose answers the rest depends on.
        let seqs = if plan.enqueue.is_empty() && plan.sent.is_empty() {
            HashMap::new()
        } else {
            sequence_and_acknowledge::<DB>(conn, dialect, &plan).await?
        };

        // 4. Everything else, and the commit.
        let mut writes = Script::default();
        write_globals(&mut writes, dialect, &dirty);
        write_branches(&mut writes, dialect, &dirty);
        write_outbox(&mut writes, dialect, &plan, seqs);
        write_attempts(&mut writes, dialect, &plan.attempts);
        writes.add_text("COMMIT");
        // The next batch may start now: this one has only its writes and commit left.
        turn.take();
        fail::fail_point!("store::before_commit", |_| Err(StoreError::injected(
            "store::before_commit"
        )));
        run_script::<DB>(conn, &writes).await?;
        fail::fail_point!("store::after_commit", |_| Err(StoreError::injected(
            "store::after_commit"
        )));
        Ok(outcomes)
    }
    .await;
    if result.is_err() {
        // Nothing of the batch stays; a broken connection is replaced by the caller.
        let _ = trip::<DB>(conn, "ROLLBACK").await;
    }
    // The batch's state is dropped: each answer now owns its transaction's state.
    result.map(|decided| {
        decided
            .into_iter()
            .map(|d| d.map(Decided::applied))
            .collect()
    })
}

/// Takes the next sequence numbers of every key the batch enqueues messages for (under the
/// keys' row locks, keys in order: for one key, sequence order is commit order) and records
/// the messages the broker acknowledged, while their claims hold. Returns each key's first
/// new sequence number.
///
/// # Errors
/// A lost lease when a claim no longer holds (run alone, each command then finds out whether
/// it is the one that lost); a database error.
async fn sequence_and_acknowledge<DB>(
    conn: &mut DB::Connection,
    dialect: Dialect,
    plan: &Plan,
) -> Result<HashMap<String, i64>>
where
    DB: sqlx::Database,
    DB::QueryResult: Affected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    // Per key: how many messages, and the earliest time one of them may go out.
    let mut counts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for e in &plan.enqueue {
        for m in e.messages.iter().filter(|m| !m.sharding_key.is_empty()) {
            let c = counts.entry(m.sharding_key.as_str()).or_insert((0, e.due));
            c.0 += 1;
            c.1 = c.1.min(e.due);
        }
    }
    let keys: Vec<(&str, i64, i64)> = counts.iter().map(|(k, (n, t))| (*k, *n, *t)).collect();
    let mut script = Script::default();
    let mut reads = Vec::new();
    for chunk in in_chunks(&keys) {
        // The key is due now, and woken.
        let mut upsert = Sql::new(
            dialect,
            "INSERT INTO outbox_key_seq (sharding_key, last_seq, next_due, wake) VALUES ",
        );
        for (i, (k, n, now)) in chunk.iter().enumerate() {
            if i > 0 {
                upsert.push(", ");
            }
            upsert
                .push("(")
                .text(k)
                .push(", ")
                .int(*n)
                .push(", ")
                .int(*now)
                .push(", 1)");
        }
        upsert.push(match dialect {
            Dialect::MySql => {
                " ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq), \
                 next_due = LEAST(next_due, VALUES(next_due)), wake = wake + 1"
            }
            Dialect::Sqlite => {
                " ON CONFLICT (sharding_key) DO UPDATE SET last_seq = last_seq + excluded.last_seq, \
                 next_due = MIN(next_due, excluded.next_due), wake = wake + 1"
            }
        });
        script.add(upsert);
        let mut select = Sql::new(
            dialect,
            "SELECT sharding_key, last_seq FROM outbox_key_seq WHERE sharding_key IN ",
        );
        select.text_list(chunk.iter().map(|(k, _, _)| *k));
        reads.push(script.len());
        script.add(select);
    }
    let mut acks = Vec::new();
    for ((now, owner), messages) in &plan.sent {
        for chunk in in_chunks(messages) {
            // Still this claim's: a keyless message through its own lease, a keyed one
            // through its key's.
            let keys: BTreeSet<&str> = chunk
                .iter()
                .map(|(_, _, key)| key.as_str())
                .filter(|k| !k.is_empty())
                .collect();
            let mut update = Sql::new(dialect, "UPDATE outbox SET status = 'sent', sent_time = ");
            update
                .int(*now)
                .push(", owner = '', lease_expire = 0 WHERE status = 'pending' AND id IN ")
                .int_list(chunk.iter().map(|(id, _, _)| *id))
                .push(" AND (owner = ")
                .text(owner);
            if !keys.is_empty() {
                update
                    .push(" OR sharding_key IN (SELECT sharding_key FROM outbox_key_seq WHERE owner = ")
                    .text(owner)
                    .push(" AND sharding_key IN ")
                    .text_list(keys.iter().copied())
                    .push(")");
            }
            update.push(")");
            acks.push((script.len(), chunk));
            script.add(update);
        }
    }
    let answers = run_script::<DB>(conn, &script).await?;
    for (at, chunk) in acks {
        if answers[at].affected != chunk.len() as u64 {
            return Err(StoreError::Txn(TxnError::LeaseLost {
                gid: chunk[0].1.clone(),
            }));
        }
    }
    let mut next = HashMap::new();
    for at in reads {
        for row in &answers[at].rows {
            let key: String = row.try_get_unchecked(0)?;
            let last: i64 = row.try_get_unchecked(1)?;
            let n = counts.get(key.as_str()).map_or(0, |c| c.0);
            next.insert(key, last - n + 1);
        }
    }
    Ok(next)
}

/// New transactions in multi-row `INSERT`s; changed ones grouped by their new values, one
/// `UPDATE ... WHERE gid IN (...)` per group.
fn write_globals(script: &mut Script, dialect: Dialect, dirty: &[&Work]) {
    let created: Vec<&GlobalTxn> = dirty
        .iter()
        .filter(|w| !w.existed)
        .filter_map(|w| w.current.txn.as_ref())
        .collect();
    insert_rows(script, dialect, INSERT_GLOBAL, &created, |sql, t| {
        let e = rows::EncodedGlobal::new(t);
        sql.push("(")
            .text(&t.gid)
            .push(", ")
            .text(t.trans_type.as_str())
            .push(", ")
            .text(t.status.as_str())
            .push(", ")
            .text(&t.custom_data)
            .push(", ")
            .text(&e.steps)
            .push(", ")
            .text(&e.payloads)
            .push(", ")
            .text(&t.query_prepared)
            .push(", ")
            .text(&t.protocol)
            .push(", ")
            .text(&e.options)
            .push(", ")
            .text(&t.rollback_reason)
            .push(", ")
            .int(t.create_time)
            .push(", ")
            .int(t.update_time)
            .push(", ")
            .opt_int(t.finish_time)
            .push(", ")
            .opt_int(t.rollback_time)
            .push(", ")
            .opt_int(t.submit_time)
            .push(", ")
            .opt_int(t.callback_due)
            .push(", ")
            .int(t.next_cron_time)
            .push(", ")
            .int(t.next_cron_interval)
            .push(", ")
            .text(&t.owner)
            .push(", ")
            .text(&t.lease_token)
            .push(", ")
            .int(t.lease_expire)
            .push(", ")
            .int(t.retry_count)
            .push(", ")
            .text(&t.last_error)
            .push(")");
    });
    // Rows whose same columns changed are updated by one statement: a column with one new
    // value for all of them is set to it, one whose value differs row by row (a lease
    // token) is set by a `CASE` on the gid. Columns that did not change are not written.
    type Row<'a> = (&'a str, Vec<Value<'a>>);
    let mut groups: BTreeMap<Vec<&'static str>, Vec<Row<'_>>> = BTreeMap::new();
    for w in dirty.iter().filter(|w| w.existed && w.global_dirty) {
        if let (Some(read), Some(t)) = (&w.read_columns, &w.current.txn) {
            let changed = changed_columns(read, t);
            if changed.is_empty() {
                continue;
            }
            let (names, values): (Vec<&'static str>, Vec<Value<'_>>) = changed.into_iter().unzip();
            groups
                .entry(names)
                .or_default()
                .push((t.gid.as_str(), values));
        }
    }
    for (names, rows) in &groups {
        for chunk in in_chunks(rows) {
            let mut sql = Sql::new(dialect, "UPDATE trans_global SET ");
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push(name).push(" = ");
                let first = chunk[0].1[i];
                if chunk.iter().all(|(_, v)| v[i] == first) {
                    first.write(&mut sql);
                } else {
                    sql.push("CASE gid");
                    for (gid, v) in chunk {
                        sql.push(" WHEN ").text(gid).push(" THEN ");
                        v[i].write(&mut sql);
                    }
                    sql.push(" END");
                }
            }
            sql.push(" WHERE gid IN ")
                .text_list(chunk.iter().map(|(gid, _)| *gid));
            script.add(sql);
        }
    }
}

/// New branch operations in multi-row `INSERT`s; changed ones grouped by their new values.
fn write_branches(script: &mut Script, dialect: Dialect, dirty: &[&Work]) {
    let created: Vec<&BranchOp> = dirty
        .iter()
        .flat_map(|w| w.current.branches.iter().filter(|b| b.id == 0))
        .collect();
    insert_rows(script, dialect, INSERT_BRANCH, &created, |sql, b| {
        sql.push("(")
            .text(&b.gid)
            .push(", ")
            .text(&b.branch_id)
            .push(", ")
            .text(b.op.as_str())
            .push(", ")
            .text(&b.url)
            .push(", ")
            .text(&b.data)
            .push(", ")
            .text(b.status.as_str())
            .push(", ")
            .int(b.create_time)
            .push(", ")
            .int(b.update_time)
            .push(", ")
            .opt_int(b.finish_time)
            .push(")");
    });
    let mut groups: BTreeMap<(&'static str, i64, Option<i64>), Vec<i64>> = BTreeMap::new();
    for w in dirty {
        for b in &w.current.branches {
            if b.id != 0 && w.read_status.get(&b.id) != Some(&b.status) {
                groups
                    .entry((b.status.as_str(), b.update_time, b.finish_time))
                    .or_default()
                    .push(b.id);
            }
        }
    }
    for ((status, update_time, finish_time), ids) in &groups {
        for chunk in in_chunks(ids) {
            let mut sql = Sql::new(dialect, "UPDATE trans_branch_op SET status = ");
            sql.text(status)
                .push(", update_time = ")
                .int(*update_time)
                .push(", finish_time = ")
                .opt_int(*finish_time)
                .push(" WHERE id IN ")
                .int_list(chunk.iter().copied());
            script.add(sql);
        }
    }
}

/// Rounds that did not settle their transaction, each a row of its timeline.
fn write_attempts(script: &mut Script, dialect: Dialect, attempts: &[(String, Attempt)]) {
    insert_rows(
        script,
        dialect,
        INSERT_ATTEMPT,
        attempts,
        |sql, (gid, a)| {
            let mut error = a.error.clone();
            super::truncate_utf8(&mut error, ATTEMPT_ERROR_BYTES);
            sql.push("(")
                .text(gid)
                .push(", ")
                .int(a.at)
                .push(", ")
                .int(a.count)
                .push(", ")
                .text(&error)
                .push(", ")
                .int(a.next_retry)
                .push(")");
        },
    );
}

/// Messages committed (with the sequence numbers taken from `next`, each key's first new
/// one), and held messages released or dropped.
fn write_outbox(
    script: &mut Script,
    dialect: Dialect,
    plan: &Plan,
    mut next: HashMap<String, i64>,
) {
    let mut rows_out: Vec<(&Enqueued, &OutboxMessage, Option<i64>)> = Vec::new();
    for e in &plan.enqueue {
        for m in &e.messages {
            let seq = if m.sharding_key.is_empty() {
                None
            } else {
                let slot = next.entry(m.sharding_key.clone()).or_insert(1);
                let s = *slot;
                *slot += 1;
                Some(s)
            };
            rows_out.push((e, m, seq));
        }
    }
    insert_rows(
        script,
        dialect,
        INSERT_OUTBOX,
        &rows_out,
        |sql, (e, m, seq)| {
            sql.push("(")
                .text(&e.gid)
                .push(", ")
                .text(&m.branch_id)
                .push(", ")
                .text(&m.topic)
                .push(", ")
                .text(&m.tag)
                .push(", ")
                .text(&m.sharding_key)
                .push(", ")
                .opt_int(*seq)
                .push(", ")
                .text(&format!("{}-{}", e.gid, m.branch_id))
                .push(", ")
                .text(&m.body)
                .push(", ")
                .text(e.state.as_str())
                .push(", ")
                .int(e.due)
                .push(", ")
                .int(e.now)
                .push(", ")
                .text(&e.traceparent)
                .push(")");
        },
    );
    for (now, keys) in &plan.wake {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        for chunk in in_chunks(&keys) {
            let mut sql = Sql::new(dialect, "UPDATE outbox_key_seq SET next_due = ");
            sql.push(dialect.least())
                .push("(next_due, ")
                .int(*now)
                .push("), wake = wake + 1 WHERE sharding_key IN ")
                .text_list(chunk.iter().copied());
            script.add(sql);
        }
    }
    for (now, gid, why) in &plan.dead_held {
        let mut sql = Sql::new(dialect, "UPDATE outbox SET status = 'dead', last_error = ");
        sql.text(why)
            .push(", next_attempt_time = ")
            .int(*now)
            .push(" WHERE status = 'held' AND gid = ")
            .text(gid);
        script.add(sql);
    }
    // A transaction that ends failed sends nothing more: its released messages that no
    // claim holds are withdrawn (those a claim holds may be on their way: they stay pending
    // and are recorded as sent if the broker takes them).
    for (now, set) in &plan.drop_held {
        let gids: Vec<&str> = set.iter().map(String::as_str).collect();
        for chunk in in_chunks(&gids) {
            let mut sql = Sql::new(
                dialect,
                "UPDATE outbox SET status = 'dropped', last_error = ",
            );
            sql.text(WITHDRAWN)
                .push(", next_attempt_time = ")
                .int(*now)
                .push(" WHERE status = 'pending' AND gid IN ")
                .text_list(chunk.iter().copied())
                .push(" AND lease_expire <= ")
                .int(*now)
                .push(
                    " AND NOT EXISTS (SELECT 1 FROM outbox_key_seq k WHERE \
                     k.sharding_key = outbox.sharding_key AND k.lease_expire > ",
                )
                .int(*now)
                .push(")");
            script.add(sql);
        }
    }
    for (by_time, to) in [
        (&plan.release_held, "pending"),
        (&plan.drop_held, "dropped"),
    ] {
        for (now, set) in by_time {
            let gids: Vec<&str> = set.iter().map(String::as_str).collect();
            for chunk in in_chunks(&gids) {
                let mut sql = Sql::new(dialect, "UPDATE outbox SET status = ");
                sql.text(to)
                    .push(", next_attempt_time = ")
                    .int(*now)
                    .push(" WHERE status = 'held' AND gid IN ")
                    .text_list(chunk.iter().copied());
                script.add(sql);
            }
        }
    }
}

async fn exec_mysql(
    conn: &mut MySqlConnection,
    cmds: &[Command],
    stamp: &Stamp,
    turn: &mut Option<Turn>,
) -> Result<Outcomes> {
    exec::<sqlx::MySql>(conn, Dialect::MySql, cmds, stamp, turn).await
}

async fn exec_sqlite(
    conn: &mut sqlx::SqliteConnection,
    cmds: &[Command],
    stamp: &Stamp,
    turn: &mut Option<Turn>,
) -> Result<Outcomes> {
    exec::<sqlx::Sqlite>(conn, Dialect::Sqlite, cmds, stamp, turn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_inserts_are_cut_by_rows_and_by_size() {
        let mut script = Script::default();
        let items: Vec<u32> = (0..1_201).collect();
        insert_rows(
            &mut script,
            Dialect::MySql,
            "INSERT INTO t (a) VALUES ",
            &items,
            |s, i| {
                s.push("(").int(i64::from(*i)).push(")");
            },
        );
        assert_eq!(script.len(), 3);
        let mut script = Script::default();
        let big = "x".repeat(STATEMENT_BYTES / 2 + 1);
        insert_rows(
            &mut script,
            Dialect::Sqlite,
            "INSERT INTO t (a) VALUES ",
            &[&big, &big, &big],
            |s, v| {
                s.push("(").text(v).push(")");
            },
        );
        assert_eq!(script.len(), 2);
    }

    #[test]
    fn only_the_columns_that_changed_since_the_read_are_written() {
        use crate::txn::model::sample;
        use crate::txn::{GlobalStatus, TransType};

        let read = sample(TransType::Tcc, GlobalStatus::Submitted);
        let was = read_columns(&read);
        assert_eq!(was.len(), MUTABLE_COLUMNS.len());
        assert!(changed_columns(&was, &read).is_empty());

        let mut now = read.clone();
        now.status = GlobalStatus::Succeeded;
        now.finish_time = Some(read.update_time + 5);
        now.owner = "instance-b".into();
        let names: Vec<&str> = changed_columns(&was, &now)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["status", "finish_time", "owner"]);
    }
}
