//! The running coordinator: store, driver, scheduler and HTTP server wired together.
//!
//! Tests and the binary both start it through [`Application::start`]; a listen port of 0
//! picks a free port, which [`Application::address`] reports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::access::{AllowlistResolver, Scope};
use crate::alert::AlertSettings;
use crate::api::serve::ServeLimits;
use crate::api::{router, AppState, Shared};
use crate::apply::Orchestrator;
use crate::callback::Notifier;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::delivery::dispatcher::Sink;
use crate::delivery::rocketmq::RocketMqSink;
use crate::delivery::{DispatchSettings, Dispatcher};
use crate::driver::transport::{HttpTransport, Transport};
use crate::driver::{Driver, DriverSettings};
use crate::otlp::Tracer;
use crate::scheduler::Scheduler;
use crate::store::retention::{self, RetentionSettings};
use crate::store::{redact_url, ConnectOptions, Store, StoreError};
use crate::telemetry::Metrics;

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or migrated.
    #[error("cannot open the store at {url}: {source}")]
    Store {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The RocketMQ producer could not start.
    #[error("cannot start the RocketMQ producer for name server {namesrv}: {reason}")]
    RocketMq {
        /// The name server.
        namesrv: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Aligns `clock` with the database's clock; returns how far it moved, in ms.
async fn align_with_database(store: &Store, clock: &Clock) -> Result<i64, StoreError> {
    let before = tokio::time::Instant::now();
    let reference = store.database_now_ms().await?;
    let after = tokio::time::Instant::now();
    Ok(clock.align(reference, before + (after - before) / 2))
}

/// Re-aligns `clock` with the database's every 30 s, against drift and clock steps.
async fn keep_aligned(store: Store, clock: Clock, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match align_with_database(&store, &clock).await {
            Ok(moved) if moved.abs() > 1_000 => {
                warn!(
                    moved_ms = moved,
                    "the database's clock moved against this machine's; following it"
                );
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %crate::telemetry::error_chain(&e), "cannot read the database's clock; keeping the last alignment")
            }
        }
    }
}

/// Writes this instance's row of `settle_instance` every 5 s, so that operators see which
/// coordinators share the database.
async fn report_alive(
    store: Store,
    clock: Clock,
    id: String,
    address: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let started_time = clock.now_ms();
    loop {
        let me = crate::store::Heartbeat {
            id: &id,
            address: &address,
            version: env!("CARGO_PKG_VERSION"),
            started_time,
        };
        if let Err(e) = store.heartbeat(&me, clock.now_ms()).await {
            warn!(error = %crate::telemetry::error_chain(&e), "cannot record this instance in the store");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// What the coordinator runs on besides its configuration. The default is the real thing:
/// the system clock, participants over HTTP, RocketMQ (when `rocketmq_namesrv` is set).
#[derive(Default)]
pub struct Parts {
    /// Where every part reads the time.
    pub clock: Clock,
    /// How branch calls and check-backs reach participants; `None`: HTTP.
    pub transport: Option<Arc<dyn Transport>>,
    /// Where `rocketmq://` steps are published; `None`: RocketMQ at `rocketmq_namesrv`.
    pub sink: Option<Arc<dyn Sink>>,
    /// Run no background loop: the scheduler's passes, the rounds and the dispatcher's
    /// passes run only when [`ByHand::run`] is called, one at a time, and the heartbeat,
    /// completion callbacks, alerts and retention do not run. The API serves as usual. With
    /// a stepped clock and a transport and sink of its own, a simulation then makes the same
    /// calls in the same order on every run of a seed.
    pub by_hand: bool,
}

/// Background work of a coordinator started with [`Parts::by_hand`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A pass of the scheduler: claims due transactions and queues a round on each.
    Claim,
    /// Runs the queued rounds (from claims, and from submits and aborts the API took), one
    /// after the other.
    Rounds,
    /// A pass of the dispatcher: claims the deliverable messages, publishes them and records
    /// the outcome.
    Deliveries,
}

/// The background work of a coordinator started with [`Parts::by_hand`], run when its
/// caller says.
pub struct ByHand {
    scheduler: Scheduler,
    driver: Driver,
    dispatcher: Option<Arc<Dispatcher>>,
}

impl ByHand {
    /// Runs `work` to its end. Returns how many transactions were claimed, rounds run, or
    /// messages claimed (0: there was nothing to do).
    ///
    /// # Errors
    /// A database error.
    pub async fn run(&self, work: Work) -> Result<usize, StoreError> {
        match work {
            Work::Claim => self.scheduler.pass().await,
            Work::Rounds => Ok(self.driver.run_queued().await),
            Work::Deliveries => match &self.dispatcher {
                Some(dispatcher) => dispatcher.pass_by_hand().await,
                None => Ok(0),
            },
        }
    }
}

/// A started coordinator.
pub struct Application {
    address: SocketAddr,
    instance_id: String,
    store: Store,
    driver: Driver,
    clock: Clock,
    grace: Duration,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    /// The background loops, or the work they would do, to be run by hand.
    background: Background,
}

enum Background {
    Loops {
        scheduler: JoinHandle<()>,
        retention: JoinHandle<()>,
        dispatcher: Option<JoinHandle<()>>,
    },
    ByHand(ByHand),
}

impl Application {
    /// Opens and migrates the store, binds the listener, and starts the scheduler and the
    /// HTTP server.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with_clock(config, Clock::system()).await
    }

    /// [`Application::start`] with the clock every part reads the time from (a test can
    /// start the coordinator on paused tokio time).
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start_with_clock(config: Config, clock: Clock) -> Result<Self, StartError> {
        Self::start_with(
            config,
            Parts {
                clock,
                ..Parts::default()
            },
        )
        .await
    }

    /// [`Application::start`] with the parts given in `parts` in place of the real ones (a
    /// simulation runs the coordinator against participants and a broker of its own).
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start_with(config: Config, parts: Parts) -> Result<Self, StartError> {
        let Parts {
            clock,
            transport,
            sink,
            by_hand,
        } = parts;
        config.validate()?;
        let instance_id = if config.instance_id.is_empty() {
            format!(
                "settle-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        } else {
            config.instance_id.clone()
        };
        let metrics = Arc::new(if config.otlp_endpoint.is_empty() {
            Metrics::default()
        } else {
            Metrics::with_tracer(Tracer::start(
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .build()?,
                &config.otlp_endpoint,
                "settle",
                &instance_id,
            ))
        });
        let store = Store::connect(&ConnectOptions {
            url: config.database_url.clone(),
            max_connections: config.max_connections,
            acquire_timeout: Duration::from_secs(10),
            writers: config.store_writers,
            max_batch: config.max_batch,
            clock: clock.clone(),
            metrics: Some(metrics.clone()),
        })
        .await
        .map_err(|source| StartError::Store {
            url: redact_url(&config.database_url),
            source,
        })?;
        // Leases and due times are read against one clock, the database's: an instance whose
        // own clock is off cannot take over a lease early or run a timeout late.
        if clock.is_alignable() {
            let moved = align_with_database(&store, &clock)
                .await
                .map_err(|source| StartError::Store {
                    url: redact_url(&config.database_url),
                    source,
                })?;
            if moved.abs() > 1_000 {
                warn!(
                    off_by_ms = -moved,
                    "this machine's clock is off the database's; using the database's"
                );
            }
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let allowlist = Arc::new(config.allowlist()?);
        let tokens = Arc::new(config.tokens()?);
        if config.allow_all_destinations {
            warn!("allow_all_destinations is set: anyone who can reach the API can make this coordinator call any address (link-local and metadata addresses excepted)");
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(AllowlistResolver(allowlist.clone())))
            .build()?;
        let upkept = Arc::downgrade(&metrics);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                match upkept.upgrade() {
                    Some(m) => m.upkeep(),
                    None => return,
                }
            }
        });
        let dispatch = Arc::new(tokio::sync::Notify::new());
        let apply = Orchestrator::new(
            store.clone(),
            clock.clone(),
            instance_id.clone().into(),
            i64::try_from(config.lease_ms).unwrap_or(i64::MAX / 4),
            metrics.clone(),
            dispatch.clone(),
        );
        let transport: Arc<dyn Transport> = transport
            .unwrap_or_else(|| Arc::new(HttpTransport::new(http, config.max_answer_bytes)));
        let driver_settings = DriverSettings {
            lease: config.lease(),
            retry_cap_s: config.retry_cap_s,
            max_inflight: config.max_inflight,
            max_concurrent_calls: config.max_concurrent_calls,
            allowlist: allowlist.clone(),
        };
        let driver = if by_hand {
            Driver::by_hand(apply.clone(), transport.clone(), driver_settings)
        } else {
            Driver::new(apply.clone(), transport.clone(), driver_settings)
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let sink: Option<Arc<dyn Sink>> = match sink {
            Some(sink) => Some(sink),
            None if config.rocketmq_namesrv.is_empty() => None,
            None => Some(Arc::new(
                RocketMqSink::start(
                    &config.rocketmq_namesrv,
                    &config.rocketmq_producer_group,
                    Duration::from_millis(config.rocketmq_send_timeout_ms),
                )
                .await
                .map_err(|e| StartError::RocketMq {
                    namesrv: config.rocketmq_namesrv.clone(),
                    reason: e.to_string(),
                })?,
            )),
        };
        let dispatcher = sink.map(|sink| {
            Arc::new(Dispatcher::new(
                apply.clone(),
                sink,
                DispatchSettings {
                    instance_id: instance_id.clone(),
                    poll_interval: Duration::from_millis(config.delivery_poll_interval_ms),
                    lease: Duration::from_millis(
                        config
                            .rocketmq_send_timeout_ms
                            .saturating_mul(4)
                            .max(10_000),
                    ),
                    max_inflight: config.delivery_max_inflight,
                    retry_cap_s: config.retry_cap_s.min(30),
                    dead_letter_after: config.dead_letter_after,
                    clock: clock.clone(),
                },
                dispatch.clone(),
            ))
        });
        let scheduler = Scheduler::new(
            store.clone(),
            driver.clone(),
            clock.clone(),
            instance_id.clone(),
            Duration::from_millis(config.poll_interval_ms),
            config.claim_batch,
        );
        let background = if by_hand {
            Background::ByHand(ByHand {
                scheduler,
                driver: driver.clone(),
                dispatcher,
            })
        } else {
            Background::Loops {
                scheduler: tokio::spawn(scheduler.run(shutdown_rx.clone())),
                dispatcher: dispatcher.map(|d| tokio::spawn(d.run(shutdown_rx.clone()))),
                retention: tokio::spawn(retention::run(
                    store.clone(),
                    clock.clone(),
                    RetentionSettings {
                        keep: Duration::from_secs(config.retention_s),
                        batch: 500,
                        interval: Duration::from_secs(10),
                    },
                    shutdown_rx.clone(),
                )),
            }
        };
        if !by_hand {
            tokio::spawn(report_alive(
                store.clone(),
                clock.clone(),
                instance_id.clone(),
                address.to_string(),
                shutdown_rx.clone(),
            ));
            if clock.is_alignable() {
                tokio::spawn(keep_aligned(
                    store.clone(),
                    clock.clone(),
                    shutdown_rx.clone(),
                ));
            }
            if !config.alert_url.is_empty() {
                // The webhook is the operators' own choice, not a tenant's: no allowlist.
                let webhook = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?;
                let settings = AlertSettings {
                    url: config.alert_url.clone(),
                    after_retries: (config.alert_after_retries > 0)
                        .then_some(config.alert_after_retries),
                    after_age_ms: (config.alert_after_s > 0).then(|| {
                        i64::try_from(config.alert_after_s.saturating_mul(1000))
                            .unwrap_or(i64::MAX / 4)
                    }),
                    interval: Duration::from_millis(config.alert_interval_ms),
                    instance_id: instance_id.clone(),
                };
                tokio::spawn(crate::alert::run(
                    store.clone(),
                    clock.clone(),
                    webhook,
                    settings,
                    metrics.clone(),
                    shutdown_rx.clone(),
                ));
            }
            tokio::spawn(
                Notifier {
                    store: store.clone(),
                    clock: clock.clone(),
                    transport,
                    allowlist: allowlist.clone(),
                    metrics: metrics.clone(),
                    interval: Duration::from_millis(config.poll_interval_ms),
                    instance_id: instance_id.clone(),
                }
                .run(shutdown_rx.clone()),
            );
        }
        info!(
            address = %address,
            store = %redact_url(&config.database_url),
            instance = %instance_id,
            destinations = %allowlist.describe(),
            client_tokens = tokens.required(Scope::Client),
            operator_tokens = tokens.required(Scope::Operator),
            "settle coordinator started"
        );
        let state = AppState::new(Shared {
            store: store.clone(),
            apply,
            driver,
            config: Arc::new(config),
            metrics,
            allowlist,
            tokens,
        });
        let stop_driver = state.driver.clone();
        let stop_clock = state.apply.clock();
        let grace_ms = state.config.shutdown_grace_ms;
        let limits = ServeLimits {
            header_timeout: Duration::from_millis(state.config.http_header_timeout_ms),
            max_connections: state.config.max_http_connections,
            drain: Duration::from_millis(state.config.shutdown_grace_ms),
        };
        let app = router(state);
        let server = tokio::spawn(crate::api::serve::serve(listener, app, limits, shutdown_rx));
        Ok(Self {
            address,
            instance_id,
            store,
            driver: stop_driver,
            clock: stop_clock,
            grace: Duration::from_millis(grace_ms),
            shutdown,
            server,
            background,
        })
    }

    /// The address the API listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Base URL of the DTM API, e.g. `http://127.0.0.1:36789/api/dtmsvr`.
    pub fn api_url(&self) -> String {
        format!("http://{}{}", self.address, settle_protocol::API_PREFIX)
    }

    /// This instance's id in leases.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The store this instance uses.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The background work to run by hand, on a coordinator started with
    /// [`Parts::by_hand`]; `None` on one whose loops run by themselves.
    pub fn by_hand(&self) -> Option<&ByHand> {
        match &self.background {
            Background::ByHand(work) => Some(work),
            Background::Loops { .. } => None,
        }
    }

    /// Runs until Ctrl-C or SIGTERM, then stops.
    pub async fn run_until_stopped(self) {
        wait_for_signal().await;
        info!("stopping");
        self.stop().await;
    }

    /// Stops gracefully: stops accepting connections and claiming work, lets running rounds
    /// and open requests finish (each within `shutdown_grace_ms`), then hands back the
    /// leases it still holds, so that other instances take its work over at once.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        if let Background::Loops {
            scheduler,
            retention,
            dispatcher,
        } = self.background
        {
            let _ = scheduler.await;
            let _ = retention.await;
            if let Some(dispatcher) = dispatcher {
                let _ = dispatcher.await;
            }
        }
        if !self.driver.drain(self.grace).await {
            warn!(grace_ms = self.grace.as_millis(), "rounds still running at the end of the grace period; their leases are handed back and their writes fenced out");
        }
        let _ = self.server.await;
        match self
            .store
            .release_leases(&self.instance_id, self.clock.now_ms())
            .await
        {
            Ok((0, 0)) => {}
            Ok((transactions, messages)) => {
                info!(transactions, messages, "leases handed back");
            }
            Err(e) => {
                warn!(error = %crate::telemetry::error_chain(&e), "cannot hand leases back; they run out by themselves");
            }
        }
        self.store.close().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
