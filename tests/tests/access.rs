//! Access: the destinations allowlist and bearer tokens.
//!
//! Every destination these tests use is on 127.0.0.0/8: refusals of other addresses are
//! checked at the API, where nothing is sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};
use settle_coordinator::access::Secret;
use settle_coordinator::{Application, Config};
use settle_tests::{eventually, spawn_coordinator, test_config, Participant, TestSqlite};

struct Api {
    app: Application,
    http: reqwest::Client,
}

impl Api {
    async fn start(db: &TestSqlite, tune: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let mut config = test_config(&db.url);
        tune(&mut config);
        Ok(Self {
            app: spawn_coordinator(config).await?,
            http: reqwest::Client::new(),
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        route: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let url = if route.starts_with('/') {
            format!("http://{}{route}", self.app.address())
        } else {
            format!("{}/{route}", self.app.api_url())
        };
        let r = self.http.request(method, url);
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn post(&self, route: &str, token: Option<&str>, body: Value) -> (u16, String) {
        let r = self
            .request(reqwest::Method::POST, route, token)
            .json(&body)
            .send()
            .await
            .expect("the coordinator answers");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    async fn get(&self, route: &str, token: Option<&str>) -> (u16, String) {
        let r = self
            .request(reqwest::Method::GET, route, token)
            .send()
            .await
            .expect("the coordinator answers");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// The stored transaction, read with an operator's view.
    async fn stored(&self, gid: &str, token: Option<&str>) -> Value {
        let (status, body) = self.get(&format!("query?gid={gid}"), token).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("query answers JSON")
    }
}

fn msg(gid: &str, action: &str) -> Value {
    json!({"gid": gid, "trans_type": "msg", "steps": [{"action": action}], "payloads": ["{}"]})
}

#[tokio::test]
async fn destinations_outside_the_loopback_default_are_refused_at_the_api_and_nothing_is_written(
) -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let api = Api::start(&db, |_| {}).await?;
    for (gid, url, named) in [
        (
            "acc-ext",
            "http://pay.example.com/confirm",
            "pay.example.com",
        ),
        ("acc-ten", "http://10.1.2.3:8080/confirm", "10.1.2.3"),
        (
            "acc-meta",
            "http://169.254.169.254/latest/meta-data/",
            "link-local",
        ),
    ] {
        let (status, body) = api.post("submit", None, msg(gid, url)).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains(url) && body.contains(named), "{body}");
        assert!(body.contains("destination_not_allowed"), "{body}");
        assert!(api.stored(gid, None).await["transaction"].is_null());
    }
    let (status, body) = api
        .post(
            "prepare",
            None,
            json!({"gid": "acc-qp", "trans_type": "msg", "query_prepared": "http://192.168.1.1/check",
                   "steps": [{"action": "http://127.0.0.1:9/step"}], "payloads": ["{}"]}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("http://192.168.1.1/check"), "{body}");
    assert!(api.stored("acc-qp", None).await["transaction"].is_null());

    let (status, _) = api
        .post(
            "prepare",
            None,
            json!({"gid": "acc-tcc", "trans_type": "tcc"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = api
        .post(
            "registerBranch",
            None,
            json!({"gid": "acc-tcc", "branch_id": "01", "trans_type": "tcc", "data": "{}",
                   "confirm": "http://127.0.0.1:9/confirm", "cancel": "http://[fe80::1]/cancel"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("fe80::1"), "{body}");
    let stored = api.stored("acc-tcc", None).await;
    assert_eq!(stored["branches"].as_array().map(Vec::len), Some(0));
    api.app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_url_prefix_rule_lets_only_its_paths_through_and_a_refused_url_never_gets_a_call(
) -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let p = Participant::start().await?;
    let allowed = p.url("confirm");
    let prefix = allowed.trim_end_matches("confirm").to_owned() + "conf";
    let api = Api::start(&db, |c| c.allow_destinations = vec![prefix.clone()]).await?;
    let (status, body) = api.post("submit", None, msg("acc-in", &allowed)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post("submit", None, msg("acc-out", &p.url("cancel")))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&prefix),
        "the refusal names the rules: {body}"
    );
    eventually(
        "the allowed step is delivered",
        Duration::from_secs(10),
        || async { p.arrived("confirm") == 1 },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.arrived("cancel"), 0);
    api.app.stop().await;
    Ok(())
}

#[tokio::test]
async fn calls_are_checked_again_before_they_are_made() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let p = Participant::start().await?;
    // Registered while the loopback default allowed it...
    let api = Api::start(&db, |c| {
        c.lease_ms = 300;
    })
    .await?;
    p.script("confirm", &[500; 64]);
    let (status, body) = api
        .post("submit", None, msg("acc-later", &p.url("confirm")))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("the first attempt", Duration::from_secs(10), || async {
        p.arrived("confirm") >= 1
    })
    .await?;
    api.app.stop().await;
    // ...then the coordinator restarts allowing `localhost` by name only: the URL's address
    // (127.0.0.1) is no longer allowed, and a loopback address a name resolves to needs a
    // range too.
    let before = p.arrived("confirm");
    let api = Api::start(&db, |c| {
        c.allow_destinations = vec!["localhost".into()];
        c.lease_ms = 300;
    })
    .await?;
    let port = p.url("x").split(':').nth(2).unwrap_or_default().to_owned();
    let port = port.trim_end_matches("/x");
    let by_name = format!("http://localhost:{port}/confirm");
    let (status, body) = api.post("submit", None, msg("acc-name", &by_name)).await;
    assert_eq!(
        status, 200,
        "a name rule lets the URL be registered: {body}"
    );
    eventually(
        "both are refused at call time",
        Duration::from_secs(15),
        || async {
            let old = api.stored("acc-later", None).await;
            let new = api.stored("acc-name", None).await;
            let e_old = old["transaction"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let e_new = new["transaction"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            e_old.contains("not allowed") && e_new.contains("loopback")
        },
    )
    .await?;
    assert_eq!(
        p.arrived("confirm"),
        before,
        "no refused call reached the participant"
    );
    api.app.stop().await;
    Ok(())
}

#[tokio::test]
async fn redirects_are_not_followed() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/step",
            any(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "/elsewhere")],
                )
            }),
        )
        .route(
            "/elsewhere",
            any(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "SUCCESS" }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let api = Api::start(&db, |_| {}).await?;
    let (status, body) = api
        .post(
            "submit",
            None,
            msg("acc-redirect", &format!("http://{addr}/step")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "the redirect is seen as a failed call",
        Duration::from_secs(10),
        || async {
            let t = api.stored("acc-redirect", None).await;
            t["transaction"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("307")
        },
    )
    .await?;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    api.app.stop().await;
    Ok(())
}

#[tokio::test]
async fn tokens_guard_each_scope_and_a_refused_request_changes_nothing() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let api = Api::start(&db, |c| {
        c.client_tokens = vec![Secret::new("client-old"), Secret::new("client-new")];
        c.operator_tokens = vec![Secret::new("operator-1")];
    })
    .await?;
    let prepare = json!({"gid": "acc-tok", "trans_type": "tcc",
                         "branch_headers": {"Authorization": "Bearer downstream-secret"}});
    for token in [None, Some("client-wrong"), Some("operator-2")] {
        let (status, body) = api.post("prepare", token, prepare.clone()).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body.contains("unauthorized"), "{body}");
    }
    assert!(api.stored("acc-tok", Some("operator-1")).await["transaction"].is_null());
    let (status, body) = api
        .post("prepare", Some("client-new"), prepare.clone())
        .await;
    assert_eq!(status, 200, "{body}");

    // Clients see the transaction but not the headers' values; operators see them.
    let seen = api.stored("acc-tok", Some("client-old")).await.to_string();
    assert!(
        !seen.contains("downstream-secret") && seen.contains("<hidden>"),
        "{seen}"
    );
    let seen = api.stored("acc-tok", Some("operator-1")).await.to_string();
    assert!(seen.contains("downstream-secret"), "{seen}");
    // Listing every transaction is for operators.
    let (status, body) = api.get("all", Some("client-old")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("operator"), "{body}");
    let (status, all) = api.get("all", Some("operator-1")).await;
    assert_eq!(status, 200, "{all}");
    assert!(all.contains("acc-tok"), "{all}");

    // Operator routes refuse client tokens.
    let stop = json!({"gid": "acc-tok"});
    let (status, body) = api
        .post("forceStop", Some("client-old"), stop.clone())
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("operator"), "{body}");
    let (status, _) = api.get("/api/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _) = api.get("/api/metrics", Some("operator-1")).await;
    assert_eq!(status, 200);
    let t = api.stored("acc-tok", Some("operator-1")).await;
    assert_eq!(t["transaction"]["status"], "prepared");
    let (status, body) = api.post("forceStop", Some("operator-1"), stop).await;
    assert_eq!(status, 200, "{body}");
    api.app.stop().await;
    Ok(())
}

#[tokio::test]
async fn without_client_tokens_dtm_clients_that_send_no_header_keep_working() -> anyhow::Result<()>
{
    let db = TestSqlite::new();
    let api = Api::start(&db, |c| c.operator_tokens = vec![Secret::new("op")]).await?;
    let (status, body) = api
        .post(
            "prepare",
            None,
            json!({"gid": "acc-open", "trans_type": "tcc"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post(
            "abort",
            None,
            json!({"gid": "acc-open", "trans_type": "tcc"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api.get("resetCronTime", None).await;
    assert_eq!(status, 401);
    api.app.stop().await;
    Ok(())
}

#[tokio::test]
async fn listening_beyond_loopback_without_an_allowlist_does_not_start() {
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.listen = "0.0.0.0:0".parse().expect("an address");
    let err = spawn_coordinator(config).await.err().expect("refused");
    assert!(err.to_string().contains("allow_destinations"), "{err}");
}

#[tokio::test]
async fn the_sdk_sends_its_token_and_a_tcc_runs_to_the_end() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let p = Participant::start().await?;
    let api = Api::start(&db, |c| c.client_tokens = vec![Secret::new("sdk-token")]).await?;
    let anonymous = settle_sdk::SettleClient::new(api.app.api_url());
    let refused = p
        .run_tcc(
            &anonymous,
            settle_protocol::GlobalRequest::new("acc-sdk-0", "tcc"),
            1,
        )
        .await;
    assert!(refused.is_err(), "a client without the token is refused");
    let client = anonymous.with_token("sdk-token");
    assert!(!format!("{client:?}").contains("sdk-token"));
    p.run_tcc(
        &client,
        settle_protocol::GlobalRequest::new("acc-sdk-1", "tcc"),
        2,
    )
    .await?;
    assert_eq!(
        client
            .wait_final("acc-sdk-1", Duration::from_secs(10))
            .await?,
        "succeed"
    );
    assert_eq!(p.arrived("confirm"), 2);
    api.app.stop().await;
    Ok(())
}
