//! The HTTP API under random and mutated DTM requests: huge, deeply nested, invalid UTF-8,
//! wrong types, wrong content types. Whatever arrives, the answer is never a 5xx, the
//! coordinator never panics, and a refused request writes nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use settle_coordinator::Application;
use settle_tests::{spawn_coordinator, test_config, TestSqlite};

struct Target {
    runtime: tokio::runtime::Runtime,
    app: Application,
    http: reqwest::Client,
    _db: TestSqlite,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let db = TestSqlite::new();
        let mut config = test_config(&db.url);
        config.body_limit_bytes = 256 * 1024;
        let app = runtime
            .block_on(spawn_coordinator(config))
            .expect("the coordinator starts");
        Target {
            runtime,
            app,
            http: reqwest::Client::new(),
            _db: db,
        }
    })
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        (1usize..300_000).prop_map(|n| Value::String("é".repeat(n / 2))),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 16] = [
    "gid",
    "trans_type",
    "steps",
    "payloads",
    "custom_data",
    "query_prepared",
    "branch_headers",
    "timeout_to_fail",
    "request_timeout",
    "retry_interval",
    "wait_result",
    "concurrent",
    "branch_id",
    "confirm",
    "cancel",
    "data",
];

/// A valid request of each route for `gid`.
fn template(route: &str, gid: &str) -> Value {
    match route {
        "registerBranch" => json!({"gid": gid, "trans_type": "tcc", "branch_id": "01",
            "data": "{}", "confirm": "http://127.0.0.1:9/confirm", "cancel": "http://127.0.0.1:9/cancel"}),
        "submit" | "prepare" => json!({"gid": gid, "trans_type": "msg",
            "steps": [{"action": "http://127.0.0.1:9/step"}], "payloads": ["{}"],
            "query_prepared": "http://127.0.0.1:9/query", "custom_data": "",
            "branch_headers": {"X-Trace": "1"}, "timeout_to_fail": 5}),
        _ => json!({"gid": gid, "trans_type": "tcc"}),
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, Value),
    Remove(usize),
    Unknown(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..FIELDS.len(), any_json()).prop_map(|(f, v)| Mutation::Set(f, v)),
        (0..FIELDS.len()).prop_map(Mutation::Remove),
        (".{1,10}", any_json()).prop_map(|(k, v)| Mutation::Unknown(k, v)),
    ]
}

#[derive(Debug, Clone)]
enum Body {
    Mutated(Vec<Mutation>),
    Nested(usize),
    Bytes(Vec<u8>),
    HugeGid(usize),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        6 => prop::collection::vec(mutation(), 0..4).prop_map(Body::Mutated),
        1 => (1usize..20_000).prop_map(Body::Nested),
        2 => prop::collection::vec(any::<u8>(), 0..2_000).prop_map(Body::Bytes),
        1 => (129usize..100_000).prop_map(Body::HugeGid),
    ]
}

fn render(body: &Body, route: &str, gid: &str) -> Vec<u8> {
    match body {
        Body::Mutated(mutations) => {
            let mut v = template(route, gid);
            let obj: &mut Map<String, Value> = v.as_object_mut().expect("an object");
            for m in mutations {
                match m {
                    // The gid stays this case's own, so that what a refusal wrote can be looked up.
                    Mutation::Set(0, _) | Mutation::Remove(0) => {}
                    Mutation::Set(f, value) => {
                        obj.insert(FIELDS[*f].to_owned(), value.clone());
                    }
                    Mutation::Remove(f) => {
                        obj.remove(FIELDS[*f]);
                    }
                    Mutation::Unknown(k, value) if k != "gid" => {
                        obj.insert(k.clone(), value.clone());
                    }
                    Mutation::Unknown(..) => {}
                }
            }
            v.to_string().into_bytes()
        }
        Body::Nested(depth) => {
            let mut s = format!("{{\"gid\":\"{gid}\",\"trans_type\":\"tcc\",\"steps\":");
            s.push_str(&"[".repeat(*depth));
            s.push_str(&"]".repeat(*depth));
            s.push('}');
            s.into_bytes()
        }
        Body::Bytes(bytes) => bytes.clone(),
        Body::HugeGid(n) => json!({"gid": "g".repeat(*n), "trans_type": "tcc"})
            .to_string()
            .into_bytes(),
    }
}

const ROUTES: [&str; 6] = [
    "prepare",
    "submit",
    "abort",
    "registerBranch",
    "forceStop",
    "resetNextCronTime",
];
const CONTENT_TYPES: [Option<&str>; 5] = [
    Some("application/json"),
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
    Some("application/json; charset=latin1"),
    None,
];

static CASE: AtomicU64 = AtomicU64::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_request_gets_a_5xx_and_a_refused_one_writes_nothing(
        route in 0..ROUTES.len(),
        content_type in 0..CONTENT_TYPES.len(),
        body in body(),
    ) {
        let t = target();
        let route = ROUTES[route];
        let gid = format!("fz-{}", CASE.fetch_add(1, Ordering::Relaxed));
        let bytes = render(&body, route, &gid);
        let (status, answer, stored) = t.runtime.block_on(async {
            let mut r = t.http.post(format!("{}/{route}", t.app.api_url())).body(bytes);
            if let Some(ct) = CONTENT_TYPES[content_type] {
                r = r.header("content-type", ct);
            }
            let r = r.send().await.expect("the coordinator answers");
            let status = r.status().as_u16();
            let answer = r.text().await.unwrap_or_default();
            let q: Value = t.http
                .get(format!("{}/query", t.app.api_url()))
                .query(&[("gid", gid.as_str())])
                .send().await.expect("query answers")
                .json().await.expect("query answers JSON");
            (status, answer, q)
        });
        prop_assert!(status < 500, "{route} answered {status}: {answer}");
        if status != 200 {
            prop_assert!(stored["transaction"].is_null(), "{route} refused ({status}) but wrote {stored}");
        }
    }

    #[test]
    fn reads_with_random_queries_get_no_5xx(query in prop::collection::vec((".{0,12}", ".{0,40}"), 0..5), route in prop_oneof![Just("query"), Just("all"), Just("newGid"), Just("resetCronTime")]) {
        let t = target();
        let status = t.runtime.block_on(async {
            t.http.get(format!("{}/{route}", t.app.api_url())).query(&query)
                .send().await.expect("the coordinator answers").status().as_u16()
        });
        prop_assert!(status < 500, "{route}?{query:?} answered {status}");
    }
}
