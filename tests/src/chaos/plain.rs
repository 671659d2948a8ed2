//! Plain load: two-branch TCCs, two-step messages and three-step sagas against a participant
//! that only answers and records, so that the coordinator's own promises are checked apart
//! from any business logic. The participant refuses 5% of Tries (the initiator then aborts)
//! and answers 10% of confirms, cancels and message steps with a 500 (the coordinator
//! retries). Half the messages are prepared first; their check-back answers what the
//! initiator decided. Half the sagas are chains (step 1 after 0, 2 after 1), half concurrent
//! with an order (0 and 1 at once, 2 after both); half of them wait for their first round
//! (`wait_result`). The participant refuses 5% of saga actions with a 409 (the action fails
//! for good and the saga compensates), answers 10% of actions and compensates with a 500 and
//! 5% of compensates with a 409 (a compensate is never failed for good: both are retried). It
//! numbers every call it answers, so that the checker can tell which came first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use rand::Rng;
use settle_protocol::{BranchParams, GlobalRequest};
use settle_sdk::msg::Msg;
use settle_sdk::{SdkError, SettleClient};

use settle_sdk::Saga;

use super::check::Answers;
use super::workload::{Stop, Told};

/// Which kind of transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainKind {
    /// A TCC of two branches.
    Tcc,
    /// A message of two HTTP steps.
    Msg,
    /// A saga of [`SAGA_STEPS`] steps, in a chain or concurrent with an order.
    Saga,
}

/// One plain transaction and what its initiator was told.
#[derive(Debug, Clone)]
pub struct PlainTxn {
    /// Its gid.
    pub gid: String,
    /// Its kind.
    pub kind: PlainKind,
    /// What the initiator was told.
    pub told: Told,
    /// A saga's steps, each with the steps it runs after (empty for a TCC or a message).
    pub after: Vec<Vec<usize>>,
}

impl PlainTxn {
    /// `gid` of `kind` (a saga's steps running after `after`), whose initiator got `result`.
    fn told<T>(
        gid: String,
        kind: PlainKind,
        result: &Result<T, SdkError>,
        after: &[&[usize]],
    ) -> Self {
        Self {
            gid,
            kind,
            told: Told::of(result),
            after: after.iter().map(|b| b.to_vec()).collect(),
        }
    }
}

/// Branches (TCC) and steps (msg) of every plain TCC and message.
pub const BRANCHES: usize = 2;
/// Steps of every plain saga.
pub const SAGA_STEPS: usize = 3;
/// A chain: each step after the one before it.
const CHAIN: [&[usize]; SAGA_STEPS] = [&[], &[0], &[1]];
/// Steps 0 and 1 at once, step 2 after both.
const FORK_JOIN: [&[usize]; SAGA_STEPS] = [&[], &[], &[0, 1]];

/// Calls the participant answered, by (gid, branch id, route).
pub type Calls = HashMap<(String, String, String), Answers>;

#[derive(Default)]
struct Recorded {
    calls: Calls,
    /// Calls answered so far: the last call's number.
    answered: u64,
    /// Messages whose initiator decided to commit (what the check-back answers).
    decided: HashSet<String>,
}

/// The participant of the plain load, on 127.0.0.1.
#[derive(Clone)]
pub struct Recorder {
    base: String,
    state: Arc<Mutex<Recorded>>,
}

impl Recorder {
    /// Starts it.
    ///
    /// # Errors
    /// It cannot bind a port.
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(Recorded::default()));
        let app = Router::new()
            .route("/{route}", any(answer))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            base: format!("http://{addr}"),
            state,
        })
    }

    fn url(&self, route: &str) -> String {
        format!("{}/{route}", self.base)
    }

    /// Every call answered so far.
    pub fn calls(&self) -> Calls {
        lock(&self.state).calls.clone()
    }
}

async fn answer(
    State(state): State<Arc<Mutex<Recorded>>>,
    Path(route): Path<String>,
    Query(p): Query<BranchParams>,
) -> Response {
    let status = {
        let mut r = lock(&state);
        let status = match route.as_str() {
            "query" => {
                // The check-back: it does not count as a call of the transaction.
                return if r.decided.contains(&p.gid) {
                    (StatusCode::OK, r#"{"dtm_result":"SUCCESS"}"#).into_response()
                } else {
                    (StatusCode::CONFLICT, r#"{"dtm_result":"FAILURE"}"#).into_response()
                };
            }
            "try" | "action" | "compensate" if rand::rng().random_bool(0.05) => 409,
            "confirm" | "cancel" | "step" | "action" | "compensate"
                if rand::rng().random_bool(0.1) =>
            {
                500
            }
            _ => 200,
        };
        r.answered += 1;
        let n = r.answered;
        r.calls
            .entry((p.gid, p.branch_id, route))
            .or_default()
            .record(n, status == 200);
        status
    };
    match status {
        200 => (StatusCode::OK, r#"{"dtm_result":"SUCCESS"}"#).into_response(),
        409 => (StatusCode::CONFLICT, r#"{"dtm_result":"FAILURE"}"#).into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "on purpose").into_response(),
    }
}

/// Where the plain load runs.
#[derive(Clone)]
pub struct Plain {
    /// Initiator's client (through the balancer).
    pub client: SettleClient,
    /// The participant.
    pub recorder: Recorder,
    /// Seconds after which an unsubmitted transaction is rolled back (or checked back).
    pub timeout_to_fail_s: i64,
}

impl Plain {
    /// Runs `workers` TCC initiators, `workers` message initiators and `workers` saga
    /// initiators until `stop`; returns every transaction begun.
    pub async fn run(self, workers: usize, stop: Stop) -> Vec<PlainTxn> {
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut set = tokio::task::JoinSet::new();
        for kind in [PlainKind::Tcc, PlainKind::Msg, PlainKind::Saga] {
            for _ in 0..workers {
                let (w, stop, done) = (self.clone(), stop.clone(), done.clone());
                set.spawn(async move {
                    while !stop.stopped() {
                        let t = match kind {
                            PlainKind::Tcc => w.tcc().await,
                            PlainKind::Msg => w.msg().await,
                            PlainKind::Saga => w.saga().await,
                        };
                        let refused = t.told != Told::Committed;
                        lock(&done).push(t);
                        if refused {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                });
            }
        }
        while set.join_next().await.is_some() {}
        let all = std::mem::take(&mut *lock(&done));
        all
    }

    fn request(&self, prefix: &str, trans_type: &str) -> GlobalRequest {
        GlobalRequest {
            timeout_to_fail: self.timeout_to_fail_s,
            ..GlobalRequest::new(
                format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
                trans_type,
            )
        }
    }

    async fn tcc(&self) -> PlainTxn {
        let request = self.request("chaos-pt", "tcc");
        let gid = request.gid.clone();
        let r = self.recorder.clone();
        let result = self
            .client
            .tcc_global_with(request, |tcc| async move {
                for n in 0..BRANCHES {
                    tcc.call_branch(
                        &serde_json::json!({ "n": n }),
                        &r.url("try"),
                        &r.url("confirm"),
                        &r.url("cancel"),
                    )
                    .await?;
                }
                Ok(())
            })
            .await;
        PlainTxn::told(gid, PlainKind::Tcc, &result, &[])
    }

    async fn msg(&self) -> PlainTxn {
        let request = self.request("chaos-pm", "msg");
        let gid = request.gid.clone();
        let prepared = rand::rng().random_bool(0.5);
        let result = async {
            let mut msg = Msg::with_options(&self.client, request);
            for n in 0..BRANCHES {
                msg = msg.add(&self.recorder.url("step"), &serde_json::json!({ "n": n }))?;
            }
            if prepared {
                msg.prepare(&self.recorder.url("query")).await?;
            }
            // The local transaction commits: from now on the check-back says so.
            lock(&self.recorder.state).decided.insert(gid.clone());
            msg.submit().await
        }
        .await;
        PlainTxn::told(gid, PlainKind::Msg, &result, &[])
    }

    async fn saga(&self) -> PlainTxn {
        let mut request = self.request("chaos-ps", "saga");
        let (fork_join, wait) = {
            let mut rng = rand::rng();
            (rng.random_bool(0.5), rng.random_bool(0.5))
        };
        request.wait_result = wait;
        let gid = request.gid.clone();
        let after = if fork_join { FORK_JOIN } else { CHAIN };
        let result = async {
            let mut saga = Saga::with_options(&self.client, request);
            for n in 0..SAGA_STEPS {
                saga = saga.add(
                    &self.recorder.url("action"),
                    &self.recorder.url("compensate"),
                    &serde_json::json!({ "n": n }),
                )?;
            }
            for (step, before) in after.iter().enumerate() {
                if fork_join && !before.is_empty() {
                    saga = saga.after(step, before);
                }
            }
            saga.submit().await
        }
        .await;
        PlainTxn::told(gid, PlainKind::Saga, &result, &after)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
