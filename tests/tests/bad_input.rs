//! Bad input gets a clear 4xx naming the problem, and nothing is written.

use serde_json::{json, Value};
use settle_coordinator::Application;
use settle_tests::{spawn_coordinator, test_config, Participant, TestSqlite};

struct Api {
    app: Application,
    _db: TestSqlite,
    http: reqwest::Client,
}

impl Api {
    async fn start() -> anyhow::Result<Self> {
        let db = TestSqlite::new();
        let mut config = test_config(&db.url);
        config.body_limit_bytes = 4096;
        Ok(Self {
            _db: db,
            app: spawn_coordinator(config).await?,
            http: reqwest::Client::new(),
        })
    }

    async fn post_raw(&self, route: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let r = self
            .http
            .post(format!("{}/{route}", self.app.api_url()))
            .body(body.to_owned())
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    async fn post(&self, route: &str, body: Value) -> anyhow::Result<(u16, String)> {
        self.post_raw(route, &body.to_string()).await
    }

    async fn query(&self, gid: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/query", self.app.api_url()))
            .query(&[("gid", gid)])
            .send()
            .await?;
        Ok(r.json().await?)
    }

    async fn transactions(&self) -> anyhow::Result<usize> {
        let r: Value = self
            .http
            .get(format!("{}/all", self.app.api_url()))
            .send()
            .await?
            .json()
            .await?;
        Ok(r["transactions"].as_array().map_or(0, Vec::len))
    }
}

fn assert_rejected(answer: &(u16, String), status: u16, words: &str) {
    assert_eq!(answer.0, status, "{answer:?}");
    assert!(answer.1.contains(words), "expected '{words}' in {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_mistyped_bodies_are_rejected_naming_the_problem() -> anyhow::Result<()> {
    let api = Api::start().await?;
    assert_rejected(
        &api.post_raw("prepare", "{not json").await?,
        400,
        "invalid JSON body",
    );
    assert_rejected(
        &api.post_raw("prepare", "").await?,
        400,
        "request body is empty",
    );
    assert_rejected(
        &api.post("prepare", json!({"gid": 7, "trans_type": "tcc"}))
            .await?,
        400,
        "invalid type: integer `7`, expected a string",
    );
    assert_rejected(
        &api.post("prepare", json!({"trans_type": "tcc"})).await?,
        400,
        "gid is missing or empty",
    );
    assert_rejected(
        &api.post("prepare", json!({"gid": "g1"})).await?,
        400,
        "trans_type is missing",
    );
    assert_rejected(
        &api.post("prepare", json!({"gid": "g1", "trans_type": "tcx"}))
            .await?,
        400,
        "unknown trans_type 'tcx'",
    );
    assert_rejected(
        &api.post("prepare", json!({"gid": "g1", "trans_type": "saga"}))
            .await?,
        400,
        "a saga transaction is created by its submit alone",
    );
    assert_rejected(
        &api.post("prepare", json!({"gid": "g1", "trans_type": "workflow"}))
            .await?,
        400,
        "not supported",
    );
    assert_rejected(
        &api.post(
            "prepare",
            json!({"gid": "g1", "trans_type": "tcc", "timeout_to_fail": "soon"}),
        )
        .await?,
        400,
        "expected i64",
    );
    assert_rejected(
        &api.post(
            "prepare",
            json!({"gid": "g1", "trans_type": "tcc", "request_timeout": -3}),
        )
        .await?,
        400,
        "request_timeout must not be negative",
    );
    assert_eq!(api.transactions().await?, 0, "nothing was written");
    api.app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gids_are_rejected() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let long = "g".repeat(129);
    for (gid, words) in [
        ("", "gid is missing"),
        (long.as_str(), "129 bytes"),
        ("a b", "contains ' '"),
        ("a/b", "contains '/'"),
        ("ünï", "contains 'ü'"),
    ] {
        assert_rejected(
            &api.post("prepare", json!({"gid": gid, "trans_type": "tcc"}))
                .await?,
            400,
            words,
        );
        assert_rejected(
            &api.post("submit", json!({"gid": gid, "trans_type": "tcc"}))
                .await?,
            400,
            words,
        );
    }
    let answer = api
        .http
        .get(format!("{}/query", api.app.api_url()))
        .query(&[("gid", "a b")])
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 400);
    assert_eq!(api.transactions().await?, 0);
    api.app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_branches_are_rejected_and_not_registered() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let p = Participant::start().await?;
    assert_eq!(
        api.post("prepare", json!({"gid": "g1", "trans_type": "tcc"}))
            .await?
            .0,
        200
    );
    let branch = |confirm: &str, cancel: &str| json!({"gid": "g1", "trans_type": "tcc", "branch_id": "01", "data": "{}", "confirm": confirm, "cancel": cancel});
    let ok = p.url("ok");
    assert_rejected(
        &api.post("registerBranch", branch("ftp://h/confirm", &ok))
            .await?,
        400,
        "scheme 'ftp'",
    );
    assert_rejected(
        &api.post("registerBranch", branch(&ok, "not a url")).await?,
        400,
        "cancel 'not a url' is not a URL",
    );
    assert_rejected(
        &api.post("registerBranch", branch(&ok, "")).await?,
        400,
        "cancel is missing",
    );
    assert_rejected(
        &api.post(
            "registerBranch",
            json!({"gid": "g1", "trans_type": "tcc", "branch_id": 1, "confirm": ok, "cancel": ok}),
        )
        .await?,
        400,
        "expected a string",
    );
    assert_rejected(
        &api.post(
            "registerBranch",
            json!({"gid": "g1", "trans_type": "tcc", "confirm": ok, "cancel": ok}),
        )
        .await?,
        400,
        "branch_id is missing",
    );
    assert_rejected(&api.post("registerBranch", json!({"gid": "nope", "trans_type": "tcc", "branch_id": "01", "confirm": ok, "cancel": ok})).await?, 404, "no transaction with gid 'nope'");
    let q = api.query("g1").await?;
    assert_eq!(
        q["branches"].as_array().map(Vec::len),
        Some(0),
        "no branch was written: {q}"
    );
    api.app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_transitions_are_conflicts_and_change_nothing() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let p = Participant::start().await?;
    let branch = json!({"gid": "g2", "trans_type": "tcc", "branch_id": "01", "data": "{}", "confirm": p.url("confirm"), "cancel": p.url("cancel")});
    assert_eq!(
        api.post("prepare", json!({"gid": "g2", "trans_type": "tcc"}))
            .await?
            .0,
        200
    );
    assert_eq!(api.post("registerBranch", branch.clone()).await?.0, 200);
    assert_eq!(
        api.post("abort", json!({"gid": "g2", "trans_type": "tcc"}))
            .await?
            .0,
        200
    );
    // Aborting twice is a duplicate, not an error.
    assert_eq!(
        api.post("abort", json!({"gid": "g2", "trans_type": "tcc"}))
            .await?
            .0,
        200
    );
    let submit = api
        .post("submit", json!({"gid": "g2", "trans_type": "tcc"}))
        .await?;
    assert_rejected(&submit, 409, "cannot submit");
    assert!(
        submit.1.contains("\"dtm_result\":\"FAILURE\""),
        "{submit:?}"
    );
    let late = json!({"gid": "g2", "trans_type": "tcc", "branch_id": "02", "data": "{}", "confirm": p.url("confirm"), "cancel": p.url("cancel")});
    assert_rejected(
        &api.post("registerBranch", late).await?,
        409,
        "cannot register a branch",
    );
    assert_rejected(
        &api.post("prepare", json!({"gid": "g2", "trans_type": "tcc"}))
            .await?,
        409,
        "cannot prepare",
    );
    assert_rejected(
        &api.post("abort", json!({"gid": "unknown", "trans_type": "tcc"}))
            .await?,
        404,
        "no transaction",
    );
    let q = api.query("g2").await?;
    assert_eq!(
        q["branches"].as_array().map(Vec::len),
        Some(2),
        "only branch 01's two operations: {q}"
    );
    assert_ne!(q["transaction"]["status"], "submitted");
    api.app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_rejected() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let big = json!({"gid": "g3", "trans_type": "tcc", "custom_data": "x".repeat(5000)});
    assert_rejected(&api.post("prepare", big).await?, 413, "too large");
    assert!(api.query("g3").await?["transaction"].is_null());
    api.app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_gid_queries_as_null_not_an_error() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let q = api.query("never-seen").await?;
    assert!(q["transaction"].is_null(), "{q}");
    assert_eq!(q["branches"], json!([]));
    api.app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_rejected_naming_the_step() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let msg = |steps: Value, payloads: Value, query: &str| json!({"gid": "m1", "trans_type": "msg", "steps": steps, "payloads": payloads, "query_prepared": query});
    let q = "http://127.0.0.1:1/query";
    assert_rejected(
        &api.post(
            "prepare",
            msg(
                json!([{"action": "http://127.0.0.1:1/a"}]),
                json!(["{}"]),
                "",
            ),
        )
        .await?,
        400,
        "query_prepared is missing",
    );
    assert_rejected(
        &api.post(
            "prepare",
            msg(json!([{"action": "smtp://mail/a"}]), json!(["{}"]), q),
        )
        .await?,
        400,
        "the action of branch 01: 'smtp://mail/a' has scheme 'smtp'",
    );
    assert_rejected(
        &api.post(
            "submit",
            msg(
                json!([{"action": "http://127.0.0.1:1/a"}, {"action": "rocketmq://?key=k"}]),
                json!(["{}", "{}"]),
                q,
            ),
        )
        .await?,
        400,
        "the action of branch 02: 'rocketmq://?key=k' names no topic",
    );
    assert_rejected(
        &api.post(
            "submit",
            msg(json!([{"action": "http://127.0.0.1:1/a"}]), json!([]), q),
        )
        .await?,
        400,
        "1 steps, 0 payloads",
    );
    assert_rejected(
        &api.post("submit", msg(json!([]), json!([]), q)).await?,
        400,
        "at least one step",
    );
    assert_rejected(
        &api.post("submit", msg(json!([{"action": 3}]), json!(["{}"]), q))
            .await?,
        400,
        "invalid type: integer `3`, expected a string",
    );
    assert_rejected(
        &api.post(
            "prepare",
            msg(
                json!([{"action": "http://127.0.0.1:1/a"}]),
                json!(["{}"]),
                "tcp://x",
            ),
        )
        .await?,
        400,
        "query_prepared",
    );
    assert!(
        api.query("m1").await?["transaction"].is_null(),
        "nothing was written"
    );
    api.app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_too_large_to_store_is_refused_naming_it_and_nothing_is_written(
) -> anyhow::Result<()> {
    // MySQL, the store whose columns have sizes, with the default 1 MiB body limit.
    let db = settle_tests::TestDb::mysql().await?;
    let app = spawn_coordinator(test_config(&db.url)).await?;
    let http = reqwest::Client::new();
    let headers: serde_json::Map<String, Value> = (0..700)
        .map(|i| (format!("x-h{i}"), json!("v".repeat(100))))
        .collect();
    let r = http
        .post(format!("{}/prepare", app.api_url()))
        .json(&json!({"gid": "big-headers", "trans_type": "tcc", "branch_headers": headers}))
        .send()
        .await?;
    let answer = (r.status().as_u16(), r.text().await?);
    assert_rejected(&answer, 400, "branch_headers hold");
    assert_rejected(&answer, 400, "at most 16384 can be stored");
    let q: Value = http
        .get(format!("{}/query", app.api_url()))
        .query(&[("gid", "big-headers")])
        .send()
        .await?
        .json()
        .await?;
    assert!(q["transaction"].is_null(), "nothing written: {q}");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_beyond_the_servers_limit_is_refused_and_not_registered() -> anyhow::Result<()> {
    let db = TestSqlite::new();
    let mut config = test_config(&db.url);
    config.max_branches = 2;
    let app = spawn_coordinator(config).await?;
    let http = reqwest::Client::new();
    let p = Participant::start().await?;
    let post = |route: &'static str, body: Value| {
        let (http, url) = (http.clone(), format!("{}/{route}", app.api_url()));
        async move {
            let r = http.post(url).json(&body).send().await?;
            anyhow::Ok((r.status().as_u16(), r.text().await?))
        }
    };
    assert_eq!(
        post("prepare", json!({"gid": "g", "trans_type": "tcc"}))
            .await?
            .0,
        200
    );
    let branch = |id: &str| json!({"gid": "g", "trans_type": "tcc", "branch_id": id, "data": "{}", "confirm": p.url("confirm"), "cancel": p.url("cancel")});
    for id in ["01", "02"] {
        assert_eq!(post("registerBranch", branch(id)).await?.0, 200);
    }
    assert_rejected(
        &post("registerBranch", branch("03")).await?,
        400,
        "may have at most 2 branches; this would make 3",
    );
    // Registering one already there stays a harmless duplicate.
    assert_eq!(post("registerBranch", branch("02")).await?.0, 200);
    let q: Value = http
        .get(format!("{}/query", app.api_url()))
        .query(&[("gid", "g")])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(q["branches"].as_array().map(Vec::len), Some(4), "{q}");
    app.stop().await;
    Ok(())
}
