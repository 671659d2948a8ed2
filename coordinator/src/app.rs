//! The running coordinator: store, driver, scheduler and HTTP server wired together.
//!
//! Tests and the binary both start it through [`Application::start`]; a listen port of 0
//! picks a free port, which [`Application::address`] reports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::api::{router, AppState};
use crate::apply::Orchestrator;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::delivery::rocketmq::RocketMqSink;
use crate::delivery::{DispatchSettings, Dispatcher};
use crate::driver::{Driver, DriverSettings};
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

/// A started coordinator.
pub struct Application {
    address: SocketAddr,
    instance_id: String,
    store: Store,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    scheduler: JoinHandle<()>,
    retention: JoinHandle<()>,
    dispatcher: Option<JoinHandle<()>>,
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
        config.validate()?;
        let store = Store::connect(&ConnectOptions {
            url: config.database_url.clone(),
            max_connections: config.max_connections,
            acquire_timeout: Duration::from_secs(10),
            writers: config.store_writers,
            max_batch: config.max_batch,
            clock: clock.clone(),
        })
        .await
        .map_err(|source| StartError::Store {
            url: redact_url(&config.database_url),
            source,
        })?;
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
        let instance_id = if config.instance_id.is_empty() {
            format!(
                "settle-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        } else {
            config.instance_id.clone()
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        let metrics = Arc::new(Metrics::default());
        let dispatch = Arc::new(tokio::sync::Notify::new());
        let apply = Orchestrator::new(
            store.clone(),
            clock.clone(),
            instance_id.clone().into(),
            i64::try_from(config.lease_ms).unwrap_or(i64::MAX / 4),
            metrics.clone(),
            dispatch.clone(),
        );
        let driver = Driver::new(
            apply.clone(),
            http,
            DriverSettings {
                lease: config.lease(),
                retry_cap_s: config.retry_cap_s,
                max_inflight: config.max_inflight,
                max_answer_bytes: config.max_answer_bytes,
                max_concurrent_calls: config.max_concurrent_calls,
            },
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let dispatcher = if config.rocketmq_namesrv.is_empty() {
            None
        } else {
            let sink = RocketMqSink::start(
                &config.rocketmq_namesrv,
                &config.rocketmq_producer_group,
                Duration::from_millis(config.rocketmq_send_timeout_ms),
            )
            .await
            .map_err(|e| StartError::RocketMq {
                namesrv: config.rocketmq_namesrv.clone(),
                reason: e.to_string(),
            })?;
            let dispatcher = Arc::new(Dispatcher::new(
                apply.clone(),
                Arc::new(sink),
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
                    clock: clock.clone(),
                },
                dispatch.clone(),
            ));
            Some(tokio::spawn(dispatcher.run(shutdown_rx.clone())))
        };
        let scheduler = Scheduler::new(
            store.clone(),
            driver.clone(),
            clock.clone(),
            instance_id.clone(),
            Duration::from_millis(config.poll_interval_ms),
            config.claim_batch,
        );
        let scheduler = tokio::spawn(scheduler.run(shutdown_rx.clone()));
        let retention = tokio::spawn(retention::run(
            store.clone(),
            clock,
            RetentionSettings {
                keep: Duration::from_secs(config.retention_s),
                batch: 500,
                interval: Duration::from_secs(10),
            },
            shutdown_rx.clone(),
        ));
        info!(
            address = %address,
            store = %redact_url(&config.database_url),
            instance = %instance_id,
            "settle coordinator started"
        );
        let state = AppState {
            store: store.clone(),
            apply,
            driver,
            config: Arc::new(config),
            metrics,
        };
        let app = router(state);
        let mut stop = shutdown_rx;
        let server = tokio::spawn(async move {
            axum::serve(
                listener.tap_io(|tcp| {
                    // Small request/answer exchanges: do not wait for more bytes to fill a packet.
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        });
        Ok(Self {
            address,
            instance_id,
            store,
            shutdown,
            server,
            scheduler,
            retention,
            dispatcher,
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

    /// Runs until Ctrl-C or SIGTERM, then stops.
    pub async fn run_until_stopped(self) {
        wait_for_signal().await;
        info!("stopping");
        self.stop().await;
    }

    /// Stops accepting requests and scheduling work, and waits for the server to close.
    /// Leases held by rounds still running simply run out.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.scheduler.await;
        let _ = self.retention.await;
        if let Some(dispatcher) = self.dispatcher {
            let _ = dispatcher.await;
        }
        let _ = self.server.await;
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
