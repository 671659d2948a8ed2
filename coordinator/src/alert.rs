//! Alerts: the operators' webhook is told when a transaction has failed too many rounds in a
//! row or stays unfinished too long ("firing"), once per transaction, and again once it
//! settles ("resolved").
//!
//! Every few seconds each instance opens alerts for the transactions that call for one, resolves
//! those whose transaction settled, and delivers the events that are due. The state lives in
//! `settle_alert`, so instances sharing a database fire each alert once between them; a
//! delivery that fails is retried with backoff (up to a minute apart) until the webhook
//! takes it. Delivery is at least once: an instance that dies between posting an event and
//! recording it leaves it to be posted again, so receivers key on `gid` and `event`. None of
//! this runs on the driver's path; a slow or dead webhook delays nothing but alerts.
//!
//! The body is JSON:
//! `{"event":"firing","gid":..,"trans_type":..,"status":..,"reason":..,"retry_count":..,
//! "create_time":..,"last_error":..,"fired_time":..,"coordinator":..}` and
//! `{"event":"resolved","gid":..,"status":"succeed"|"failed"|"deleted","fired_time":..,
//! "resolved_time":..,"coordinator":..}` (times in ms since the epoch).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::store::{AlertCandidate, PendingAlert, Store, StoreError};
use crate::telemetry::{error_chain, Metrics};

/// When to alert, and where.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// The webhook (http or https).
    pub url: String,
    /// Alert when a transaction has failed more rounds in a row than this.
    pub after_retries: Option<i64>,
    /// Alert when a transaction is unfinished this long after its creation, ms.
    pub after_age_ms: Option<i64>,
    /// How often to look, ms.
    pub interval: Duration,
    /// This instance, named in events.
    pub instance_id: String,
}

/// Most alerts opened, resolved or delivered in one pass.
const PER_PASS: i64 = 100;
/// How long a delivery may take; an event taken for delivery is due again after twice this.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between deliveries of one event, ms.
const BACKOFF_CAP_MS: i64 = 60_000;

/// Delay before the next try after `attempts` failed deliveries, ms: 1 s, doubling, capped.
pub(crate) fn backoff_ms(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    1_000i64.saturating_mul(1 << exp).min(BACKOFF_CAP_MS)
}

/// Why `c` calls for an alert, in words.
fn reason(c: &AlertCandidate, settings: &AlertSettings, now: i64) -> String {
    match settings.after_retries {
        Some(n) if c.retry_count > n => format!("{} failed rounds in a row", c.retry_count),
        _ => format!(
            "unfinished {} s after it was created",
            (now - c.create_time).max(0) / 1000
        ),
    }
}

fn firing_body(c: &AlertCandidate, settings: &AlertSettings, now: i64) -> String {
    serde_json::json!({
        "event": "firing",
        "gid": c.gid,
        "trans_type": c.trans_type,
        "status": c.status,
        "reason": reason(c, settings, now),
        "retry_count": c.retry_count,
        "create_time": c.create_time,
        "last_error": c.last_error,
        "fired_time": now,
        "coordinator": settings.instance_id,
    })
    .to_string()
}

/// Runs alert passes every `settings.interval` until shutdown.
pub async fn run(
    store: Store,
    clock: Clock,
    http: reqwest::Client,
    settings: AlertSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = pass(&store, &clock, &http, &settings, &metrics).await {
            warn!(error = %error_chain(&e), "alert pass failed; trying again at the next");
        }
        tokio::select! {
            () = tokio::time::sleep(settings.interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One pass: open, resolve, deliver.
///
/// # Errors
/// A store error; deliveries that fail are recorded, not returned.
pub async fn pass(
    store: &Store,
    clock: &Clock,
    http: &reqwest::Client,
    settings: &AlertSettings,
    metrics: &Metrics,
) -> Result<(), StoreError> {
    let now = clock.now_ms();
    let created_before = settings.after_age_ms.map(|age| now - age);
    for c in store
        .alert_candidates(settings.after_retries, created_before, PER_PASS)
        .await?
    {
        if store
            .open_alert(&c.gid, &firing_body(&c, settings, now), now)
            .await?
        {
            info!(gid = %c.gid, reason = %reason(&c, settings, now), "alert fired");
        }
    }
    for s in store.settled_alerts(PER_PASS).await? {
        let body = serde_json::json!({
            "event": "resolved",
            "gid": s.gid,
            "status": s.status.as_deref().unwrap_or("deleted"),
            "fired_time": s.fired_time,
            "resolved_time": now,
            "coordinator": settings.instance_id,
        })
        .to_string();
        if store.resolve_alert(&s.gid, &body, now).await? {
            info!(gid = %s.gid, "alert resolved");
        }
    }
    let claim_until = now + 2 * i64::try_from(DELIVERY_TIMEOUT.as_millis()).unwrap_or(0);
    let mut sending = JoinSet::new();
    for alert in store.due_alerts(now, PER_PASS).await? {
        if !store.claim_alert(&alert, claim_until).await? {
            continue;
        }
        let http = http.clone();
        let url = settings.url.clone();
        sending.spawn(async move {
            let outcome = deliver(&http, &url, &alert).await;
            (alert, outcome)
        });
    }
    while let Some(joined) = sending.join_next().await {
        let Ok((alert, outcome)) = joined else {
            continue;
        };
        let event = if alert.resolved { "resolved" } else { "firing" };
        let now = clock.now_ms();
        match outcome {
            Ok(()) => {
                metrics.alert_delivered(event, true);
                store.alert_delivered(&alert, now).await?;
            }
            Err(error) => {
                metrics.alert_delivered(event, false);
                let next = now + backoff_ms(alert.attempts);
                warn!(gid = %alert.gid, event, attempts = alert.attempts + 1, %error, "alert webhook did not take the event; trying again later");
                store.alert_failed(&alert, &error, next).await?;
            }
        }
    }
    Ok(())
}

/// Posts one event; `Err` says why the webhook did not take it.
async fn deliver(http: &reqwest::Client, url: &str, alert: &PendingAlert) -> Result<(), String> {
    let answer = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(alert.body.clone())
        .timeout(DELIVERY_TIMEOUT)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = answer.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_up_to_a_minute() {
        assert_eq!(backoff_ms(0), 1_000);
        assert_eq!(backoff_ms(1), 2_000);
        assert_eq!(backoff_ms(5), 32_000);
        assert_eq!(backoff_ms(6), 60_000);
        assert_eq!(backoff_ms(1_000), 60_000);
    }

    #[test]
    fn the_reason_names_what_crossed_its_threshold() {
        let settings = AlertSettings {
            url: "http://127.0.0.1:1/alert".into(),
            after_retries: Some(3),
            after_age_ms: Some(60_000),
            interval: Duration::from_secs(1),
            instance_id: "i".into(),
        };
        let mut c = AlertCandidate {
            gid: "g".into(),
            trans_type: "tcc".into(),
            status: "submitted".into(),
            retry_count: 4,
            create_time: 0,
            last_error: String::new(),
        };
        assert_eq!(reason(&c, &settings, 5_000), "4 failed rounds in a row");
        c.retry_count = 1;
        assert_eq!(
            reason(&c, &settings, 90_000),
            "unfinished 90 s after it was created"
        );
        let body: serde_json::Value =
            serde_json::from_str(&firing_body(&c, &settings, 90_000)).unwrap();
        assert_eq!(body["event"], "firing");
        assert_eq!(body["gid"], "g");
        assert_eq!(body["fired_time"], 90_000);
    }
}
