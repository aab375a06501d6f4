//! `hourglass query` against the local ClickHouse, with seeded ground truth:
//! two projects' events written to `events`, their rollups computed by the
//! aggregator's own windowing core and flushed by its sink (so the hourly and
//! daily views fill as in production), and a Parquet lake of the same events.
//! Checks tenant isolation through every endpoint, exact numbers at 5m/1h/1d,
//! sessions, pagination, user deletion (and that a lake replay does not bring
//! the user back), and that bad tokens and parameters get clear 4xx answers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::common::TestEnv;
use crate::common::seeded_project::{generate, seed, t0};
use chrono::{DateTime, Duration, Utc};
use hourglass_core::contract::EventEnvelope;
use hourglass_core::histogram::ValueHistogram;
use hourglass_lake::store::LocalStore;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "a-shared-secret-of-the-apps-auth-service-0123456789";

fn token(claims: Value) -> String {
    crate::common::hs256_token(SECRET, &claims)
}

fn claims(project: &str) -> Value {
    json!({"project_id": project, "sub": "test", "exp": Utc::now().timestamp() + 3600})
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// `method path` with the token: the status and the JSON body.
    async fn call(&self, method: reqwest::Method, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, token, path).await
    }

    async fn delete_user(&self, token: &str, user: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, token, &format!("/v1/users/{user}"))
            .await
    }

    async fn ok(&self, token: &str, path: &str) -> Value {
        let (status, body) = self.get(token, path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Every page of a raw-events listing.
    async fn all_pages(&self, token: &str, path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=700&cursor={c}"),
                None => format!("{path}{sep}limit=700"),
            };
            let page = self.ok(token, &url).await;
            out.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

async fn start(cfg: hourglass_core::Config) -> (Api, tokio_util::sync::CancellationToken) {
    let (base, stop) = crate::common::start_query_api(cfg).await;
    let api = Api {
        base,
        http: reqwest::Client::new(),
    };
    (api, stop)
}

#[derive(Default)]
struct Bucket {
    events: u64,
    users: HashSet<String>,
    values: Vec<f64>,
}

fn truth(events: &[EventEnvelope], project: &str, event: &str, step: i64) -> BTreeMap<i64, Bucket> {
    let mut out: BTreeMap<i64, Bucket> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.project_id == project && e.event == event)
    {
        let t = e.timestamp.timestamp();
        let b = out.entry(t - t.rem_euclid(step)).or_default();
        b.events += 1;
        b.users.insert(e.user().to_owned());
        b.values.extend(e.value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_scoped_reads_match_the_seeded_truth() {
    let mut env = TestEnv::new("query").await;
    env.cfg.aggregator.dimensions = vec!["path".into(), "tenant_id".into()];
    env.migrate().await;
    let acme = generate("acme", 1, 2_500);
    let globex = generate("globex", 2, 800);
    let all: Vec<EventEnvelope> = acme.iter().chain(&globex).cloned().collect();
    let lake_dir = std::env::temp_dir().join(format!("{}-lake", env.name));
    let lake = LocalStore::new(&lake_dir);
    seed(&env, &all, &lake).await;
    eprintln!(
        "seeded {} acme and {} globex events",
        acme.len(),
        globex.len()
    );

    let mut cfg = env.cfg.clone();
    cfg.query.jwt_secret = SECRET.into();
    // Most tokens here read the whole project; the tenant rules are checked
    // with the bad tokens below.
    cfg.query.allow_project_wide_tokens = true;
    cfg.query.max_page_size = 1000;
    let (api, stop) = start(cfg.clone()).await;
    let acme_token = token(claims("acme"));
    let globex_token = token(claims("globex"));
    let from = t0().timestamp();
    let to = from + 2 * 86_400;

    // 1. Rollups at 5m, 1h and 1d equal the truth; p95 equals one
    // HdrHistogram fed the bucket's values, and is within its precision.
    for (step, secs) in [("5m", 300), ("1h", 3600), ("1d", 86_400)] {
        for (project, tok, events) in [
            ("acme", &acme_token, &acme),
            ("globex", &globex_token, &globex),
        ] {
            let answer = api
                .ok(
                    tok,
                    &format!("/v1/metrics?event=api_call&step={step}&from={from}&to={to}"),
                )
                .await;
            let points = answer["series"][0]["points"].as_array().unwrap();
            let expected = truth(events, project, "api_call", secs);
            assert_eq!(points.len(), expected.len(), "{project} {step}: buckets");
            for p in points {
                let t = DateTime::parse_from_rfc3339(p["time"].as_str().unwrap())
                    .unwrap()
                    .timestamp();
                let b = &expected[&t];
                assert_eq!(p["events"], b.events, "{project} {step} {t}: events");
                assert_eq!(
                    p["users"],
                    b.users.len() as u64,
                    "{project} {step} {t}: users"
                );
                let mut h = ValueHistogram::new(3, 3_600_000.0);
                b.values.iter().for_each(|v| h.record(*v));
                let p95 = p["p95"].as_f64().unwrap();
                assert!(
                    (p95 - h.quantile(0.95)).abs() < 1e-9,
                    "{project} {step} {t}: p95 {p95} vs {}",
                    h.quantile(0.95)
                );
                let mut sorted = b.values.clone();
                sorted.sort_by(f64::total_cmp);
                let exact = sorted[((0.95 * sorted.len() as f64).ceil() as usize).max(1) - 1];
                assert!(
                    (p95 - exact).abs() <= exact * 1e-3 + 1e-3,
                    "{project} {step}: p95 {p95} vs true {exact}"
                );
                let sum: f64 = b.values.iter().sum();
                assert!((p["value_sum"].as_f64().unwrap() - sum).abs() < 1e-6 * sum.max(1.0));
            }
        }
    }
    // group_by and where, and fill.
    let by_path = api
        .ok(
            &acme_token,
            &format!("/v1/metrics?event=page_view&step=1d&from={from}&to={to}&group_by=path"),
        )
        .await;
    let mut per_path: HashMap<String, u64> = HashMap::new();
    for e in acme.iter().filter(|e| e.event == "page_view") {
        *per_path
            .entry(e.properties["path"].as_str().unwrap().into())
            .or_default() += 1;
    }
    let series = by_path["series"].as_array().unwrap();
    assert_eq!(series.len(), per_path.len());
    for s in series {
        let path = s["group"]["path"].as_str().unwrap();
        let n: u64 = s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["events"].as_u64().unwrap())
            .sum();
        assert_eq!(n, per_path[path], "page views of {path}");
    }
    let docs = api
        .ok(
            &acme_token,
            &format!("/v1/metrics?event=page_view&step=1d&from={from}&to={to}&where=path:/docs"),
        )
        .await;
    let n: u64 = docs["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["events"].as_u64().unwrap())
        .sum();
    assert_eq!(n, per_path["/docs"]);
    let filled = api
        .ok(
            &acme_token,
            &format!("/v1/metrics?event=signup_never_sent&step=1h&from={from}&to={to}&fill=true"),
        )
        .await;
    assert_eq!(
        filled["series"][0]["points"].as_array().unwrap().len(),
        48,
        "48 zero hours"
    );

    // The event names each project has rollups of (what the page lists).
    for (tok, events) in [(&acme_token, &acme), (&globex_token, &globex)] {
        let names = api
            .ok(tok, &format!("/v1/event-names?from={from}&to={to}"))
            .await;
        let expected: std::collections::BTreeSet<&str> =
            events.iter().map(|e| e.event.as_str()).collect();
        let got: Vec<&str> = names["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
    }

    // 2. Isolation: globex's token never sees an acme row, whatever it asks.
    let acme_ids: HashSet<String> = acme.iter().map(|e| e.event_id.to_string()).collect();
    let globex_events = api
        .all_pages(&globex_token, &format!("/v1/events?from={from}&to={to}"))
        .await;
    assert_eq!(globex_events.len(), globex.len());
    assert!(globex_events.iter().all(|e| e["project_id"] == "globex"));
    let acme_event = acme.iter().find(|e| e.event == "api_call").unwrap();
    let by_id = format!("/v1/events/{}?from={from}&to={to}", acme_event.event_id);
    let (status, _) = api.get(&globex_token, &by_id).await;
    assert_eq!(status, 404, "another project's event is not found");
    let found = api.ok(&acme_token, &by_id).await;
    assert_eq!(found["event_id"], acme_event.event_id.to_string());
    // Without a range, an id that is not a UUIDv7 is looked for among the
    // last 31 days only (these events are older), a UUIDv7 around its time.
    let (status, body) = api
        .get(&acme_token, &format!("/v1/events/{}", acme_event.event_id))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("`from`"),
        "{body}"
    );
    let v7 = acme
        .iter()
        .find(|e| e.event_id.get_version_num() == 7)
        .unwrap();
    let found = api
        .ok(&acme_token, &format!("/v1/events/{}", v7.event_id))
        .await;
    assert_eq!(found["event_id"], v7.event_id.to_string());
    let timeline = api
        .ok(
            &globex_token,
            &format!("/v1/users/{}/events?from={from}&to={to}", acme_event.user()),
        )
        .await;
    assert_eq!(timeline["events"].as_array().unwrap().len(), 0);
    for crafted in [
        "group_by=path)%20OR%201%3D1%20--",
        "group_by=project_id",
        "where=path:x'%20OR%20'1'%3D'1",
        "where=project_id:acme",
        "event=api_call'%20OR%20project_id%3D'acme",
    ] {
        let (status, body) = api
            .get(
                &globex_token,
                &format!("/v1/metrics?event=api_call&step=1d&from={from}&to={to}&{crafted}"),
            )
            .await;
        let text = body.to_string();
        assert!(
            status == 400
                || body["series"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|s| s["points"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|p| p["events"].as_u64().unwrap() <= globex.len() as u64))),
            "{crafted}: {status} {text}"
        );
        assert!(!text.contains("acme"), "{crafted} leaked: {text}");
    }
    let sessions = api
        .ok(
            &globex_token,
            &format!("/v1/sessions?from={from}&to={to}&limit=1000"),
        )
        .await;
    assert!(
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["session_id"].as_str().unwrap().starts_with("globex-"))
    );
    // A tenant-scoped token sees only its tenant's events.
    let t1 = token(
        json!({"project_id": "acme", "tenant_id": "t1", "exp": Utc::now().timestamp() + 600}),
    );
    let t1_events = api
        .all_pages(&t1, &format!("/v1/events?from={from}&to={to}"))
        .await;
    let t1_truth = acme
        .iter()
        .filter(|e| e.properties["tenant_id"] == "t1")
        .count();
    assert_eq!(t1_events.len(), t1_truth);
    assert!(
        t1_events
            .iter()
            .all(|e| e["properties"]["tenant_id"] == "t1")
    );
    let t1_day = api
        .ok(
            &t1,
            &format!("/v1/metrics?event=page_view&step=1d&from={from}&to={to}"),
        )
        .await;
    let n: u64 = t1_day["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["events"].as_u64().unwrap())
        .sum();
    assert_eq!(
        n,
        acme.iter()
            .filter(|e| e.event == "page_view" && e.properties["tenant_id"] == "t1")
            .count() as u64
    );

    // 3. Pagination returns every event exactly once, newest first.
    let pages = api
        .all_pages(&acme_token, &format!("/v1/events?from={from}&to={to}"))
        .await;
    let ids: Vec<String> = pages
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), acme.len(), "every event once");
    assert_eq!(unique.len(), acme.len(), "no event twice");
    assert!(ids.iter().all(|id| acme_ids.contains(id)));
    let times: Vec<DateTime<Utc>> = pages
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");

    // 4. Sessions: counts and durations equal the truth.
    let mut by_session: BTreeMap<String, (i64, i64, u64, u64)> = BTreeMap::new();
    for e in &acme {
        let s =
            by_session
                .entry(e.session_id.clone().unwrap())
                .or_insert((i64::MAX, i64::MIN, 0, 0));
        let ms = e.timestamp.timestamp_millis();
        s.0 = s.0.min(ms);
        s.1 = s.1.max(ms);
        s.2 += 1;
        s.3 += u64::from(e.event == "error" || e.properties.get("error") == Some(&json!(true)));
    }
    let answer = api
        .ok(
            &acme_token,
            &format!("/v1/sessions?from={from}&to={to}&limit=50&order=duration"),
        )
        .await;
    assert_eq!(
        answer["summary"]["unique_sessions"],
        by_session.len() as u64
    );
    assert_eq!(answer["summary"]["total_events"], acme.len() as u64);
    let mut durations: Vec<(i64, &String)> =
        by_session.iter().map(|(id, s)| (s.1 - s.0, id)).collect();
    durations.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let avg = durations.iter().map(|d| d.0 as f64 / 1000.0).sum::<f64>() / durations.len() as f64;
    assert!((answer["summary"]["avg_duration_secs"].as_f64().unwrap() - avg).abs() < 1e-6);
    for (got, (ms, id)) in answer["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&durations)
    {
        let s = &by_session[*id];
        assert_eq!(got["session_id"], id.as_str());
        assert_eq!(got["duration_secs"].as_f64().unwrap(), *ms as f64 / 1000.0);
        assert_eq!(got["events"], s.2);
        assert_eq!(got["errors"], s.3);
    }
    let by_errors = api
        .ok(
            &acme_token,
            &format!("/v1/sessions?from={from}&to={to}&limit=5&order=error_rate"),
        )
        .await;
    let top = by_errors["sessions"][0]["error_rate"].as_f64().unwrap();
    let best = by_session
        .values()
        .map(|s| s.3 as f64 / s.2 as f64)
        .fold(0.0, f64::max);
    assert_eq!(top, best);

    // 5. Deleting a user: admin only; afterwards no endpoint returns the
    // user's events, and a replay from the lake does not bring them back.
    let victim = acme_event.user().to_owned();
    let victim_events: Vec<&EventEnvelope> = acme.iter().filter(|e| e.user() == victim).collect();
    let (status, _) = api.delete_user(&acme_token, &victim).await;
    assert_eq!(status, 403, "no admin claim");
    let admin = token(
        json!({"project_id": "acme", "sub": "ops@acme", "hourglass_admin": true, "exp": Utc::now().timestamp() + 600}),
    );
    // The export first: everything held of the user, as NDJSON, oldest
    // first, admin only; its events exactly the seeded ones.
    let export = |token: String, user: String| {
        let url = format!("{}/v1/users/{user}/export", api.base);
        let http = api.http.clone();
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let kind = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, kind, r.text().await.unwrap())
        }
    };
    let (status, _, _) = export(acme_token.clone(), victim.clone()).await;
    assert_eq!(status, 403, "export needs the admin claim");
    let (status, kind, text) = export(admin.clone(), victim.clone()).await;
    assert_eq!(
        (status, kind.as_deref()),
        (200, Some("application/x-ndjson"))
    );
    let exported: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut want: Vec<(String, String)> = victim_events
        .iter()
        .map(|e| (e.timestamp.to_rfc3339(), e.event_id.to_string()))
        .collect();
    want.sort();
    let got: Vec<(String, String)> = exported
        .iter()
        .map(|e| {
            let t: chrono::DateTime<Utc> = e["timestamp"].as_str().unwrap().parse().unwrap();
            (t.to_rfc3339(), e["event_id"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(got, want, "the user's events, oldest first");
    assert!(exported.iter().all(|e| e["project_id"] == "acme"));
    let (status, body) = api.delete_user(&admin, &victim).await;
    assert_eq!(status, 200);
    assert_eq!(body["events_removed"], victim_events.len() as u64);
    assert!(body["still_held"].to_string().contains("rollup"));
    let after = api
        .all_pages(&acme_token, &format!("/v1/events?from={from}&to={to}"))
        .await;
    assert_eq!(after.len(), acme.len() - victim_events.len());
    assert!(after.iter().all(|e| e["user_id"] != victim.as_str()));
    let timeline = api
        .ok(
            &acme_token,
            &format!("/v1/users/{victim}/events?from={from}&to={to}"),
        )
        .await;
    assert_eq!(timeline["events"].as_array().unwrap().len(), 0);
    let (status, _) = api.get(&acme_token, &by_id).await;
    assert_eq!(status, 404);
    // A tenant's admin deletes within its tenant only: the same user id in
    // another tenant keeps its events, now and after a replay.
    let shared = "acme-shared";
    let shared_in = |tenant: &str| {
        acme.iter()
            .filter(|e| e.user() == shared && e.properties["tenant_id"] == tenant)
            .count()
    };
    let t1_admin = token(
        json!({"project_id": "acme", "tenant_id": "t1", "sub": "ops@t1", "hourglass_admin": true, "exp": Utc::now().timestamp() + 600}),
    );
    let (status, body) = api.delete_user(&t1_admin, shared).await;
    assert_eq!(status, 200);
    assert_eq!(body["events_removed"], shared_in("t1") as u64, "{body}");
    assert_eq!(body["tenant_id"], "t1");
    let shared_left = |events: Vec<Value>| {
        assert_eq!(events.len(), shared_in("t2"), "{events:?}");
        assert!(events.iter().all(|e| e["properties"]["tenant_id"] == "t2"));
    };
    shared_left(
        api.all_pages(
            &acme_token,
            &format!("/v1/users/{shared}/events?from={from}&to={to}"),
        )
        .await,
    );
    let replay = hourglass_lake::replay::replay(
        &env.cfg,
        Arc::new(LocalStore::new(&lake_dir)),
        &hourglass_lake::replay::ReplayOptions {
            from: t0(),
            to: t0() + Duration::days(2),
            project: None,
            target: hourglass_lake::replay::Target::ClickHouse,
            kafka_topic: env.cfg.kafka.topic.clone(),
            dry_run: false,
            parallel: 4,
            lateness: Duration::hours(2),
            lead: Duration::hours(1),
            progress: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        replay.deleted_skipped,
        (victim_events.len() + shared_in("t1")) as u64,
        "{replay:?}"
    );
    assert_eq!(
        replay.written, 0,
        "everything else was already there: {replay:?}"
    );
    let after_replay = api
        .all_pages(
            &acme_token,
            &format!("/v1/users/{victim}/events?from={from}&to={to}"),
        )
        .await;
    assert!(after_replay.is_empty(), "the replay brought the user back");
    let (status, _, text) = export(admin.clone(), victim.clone()).await;
    assert_eq!((status, text.as_str()), (200, ""), "nothing left to export");
    shared_left(
        api.all_pages(
            &acme_token,
            &format!("/v1/users/{shared}/events?from={from}&to={to}"),
        )
        .await,
    );

    // 6. Bad parameters: each a clear 400 that names the problem.
    for (query, says) in [
        (
            format!("event=api_call&step=1d&from={from}&to={to}&group_by=country"),
            "unknown dimension",
        ),
        (
            format!("event=api_call&step=1d&from={to}&to={from}"),
            "must be after",
        ),
        (
            format!(
                "event=api_call&step=5m&from={from}&to={}",
                from + 86_400 * 30
            ),
            "at most 2016",
        ),
        (
            format!("event=api_call&step=2m&from={from}&to={to}"),
            "5m, 1h or 1d",
        ),
        (
            format!("event=api_call&step=1h&from={}&to={to}", from + 60),
            "not aligned to 1h: use 2026-01-05T00:00:00Z or 2026-01-05T01:00:00Z",
        ),
        (
            format!("event=api_call&step=1h&from={from}&to={to}&bogus=1"),
            "unknown parameter",
        ),
        (
            format!("step=1h&from={from}&to={to}"),
            "`event` is required",
        ),
        (
            "event=x&step=1h&from=yesterday&to=today".to_owned(),
            "RFC 3339",
        ),
    ] {
        let (status, body) = api.get(&acme_token, &format!("/v1/metrics?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    for (query, says) in [
        ("limit=1000000000".to_owned(), "from 1 to 1000"),
        (
            format!("from={from}&to={}", from + 86_400 * 90),
            "longer than 31 days",
        ),
        ("cursor=%27%20OR%201%3D1".to_owned(), "cursor"),
    ] {
        let (status, body) = api.get(&acme_token, &format!("/v1/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    let (status, body) = api
        .get(
            &acme_token,
            &format!("/v1/sessions?from={from}&to={to}&order=random"),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // 7. Bad tokens.
    let now = Utc::now().timestamp();
    let rsa_key = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/rsa-private.pem"
    ))
    .unwrap();
    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &claims("acme"),
        &EncodingKey::from_rsa_pem(&rsa_key).unwrap(),
    )
    .unwrap();
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims("acme").to_string())
        )
    };
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &claims("acme"),
        &EncodingKey::from_secret(b"another-secret"),
    )
    .unwrap();
    for (name, tok, expected) in [
        (
            "expired",
            token(json!({"project_id": "acme", "exp": now - 3600})),
            401,
        ),
        (
            "not yet valid",
            token(json!({"project_id": "acme", "exp": now + 3600, "nbf": now + 1800})),
            401,
        ),
        ("no exp", token(json!({"project_id": "acme"})), 401),
        ("wrong key", wrong_key, 401),
        ("alg none", unsigned, 401),
        ("RS256 to an HS256 service", rs256.clone(), 401),
        ("garbage", "not.a.jwt".to_owned(), 401),
        (
            "no project claim",
            token(json!({"sub": "x", "exp": now + 600})),
            403,
        ),
        (
            "empty project",
            token(json!({"project_id": "", "exp": now + 600})),
            403,
        ),
        (
            "tenant null",
            token(json!({"project_id": "acme", "tenant_id": null, "exp": now + 600})),
            403,
        ),
        (
            "tenant a number",
            token(json!({"project_id": "acme", "tenant_id": 5, "exp": now + 600})),
            403,
        ),
        (
            "tenant empty",
            token(json!({"project_id": "acme", "tenant_id": "", "exp": now + 600})),
            403,
        ),
    ] {
        let (status, body) = api
            .get(&tok, &format!("/v1/events?from={from}&to={to}"))
            .await;
        assert_eq!(status, expected, "{name}: {body}");
        assert!(body.get("events").is_none(), "{name} leaked rows");
    }
    let r = api
        .http
        .get(format!("{}/v1/events", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "no Authorization header");

    // The OpenAPI document lists every route.
    let doc: Value = reqwest::get(format!("{}/openapi.json", api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/v1/metrics",
        "/v1/events",
        "/v1/events/{event_id}",
        "/v1/users/{user}/events",
        "/v1/users/{user}",
        "/v1/users/{user}/export",
        "/v1/sessions",
    ] {
        assert!(
            paths.contains(p),
            "{p} missing from /openapi.json: {paths:?}"
        );
    }

    // 8. Query cost: reads go through a read-only ClickHouse user, and a
    // query past a configured limit is stopped with a clear 422.
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hourglass_query_reader_read_only 1"),
        "{metrics}"
    );
    let mut reader = cfg.clickhouse.clone();
    reader.user = cfg.query.read_user.clone();
    let refused = hourglass_core::clickhouse::client(&reader)
        .query("INSERT INTO deletions (project_id, user) VALUES ('acme', 'x')")
        .execute()
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("readonly"), "{refused}");
    let mut small = cfg.clone();
    small.query.max_result_rows = 100;
    small.query.max_page_size = 99;
    let (small_api, small_stop) = start(small).await;
    // Two days at 5m by path: hundreds of (bucket, path) rows.
    let (status, body) = small_api
        .get(
            &acme_token,
            &format!("/v1/metrics?event=page_view&step=5m&from={from}&to={to}&group_by=path"),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "query_too_large");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("query.max_result_rows")
    );
    // The largest page reads one row more than it shows (is there a next
    // page?): exactly the limit.
    let page = small_api
        .ok(
            &acme_token,
            &format!("/v1/events?from={from}&to={to}&limit=99"),
        )
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 99);
    small_stop.cancel();
    stop.cancel();

    // An RS256 service accepts RS256 and refuses the HS/RS confusion: a token
    // signed with HS256 using the RSA public key as the secret.
    let mut rs_cfg = cfg.clone();
    rs_cfg.query.jwt_algorithm = hourglass_core::config::JwtAlgorithm::RS256;
    rs_cfg.query.jwt_public_key_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/rsa-public.pem"
    )
    .into();
    let (rs_api, rs_stop) = start(rs_cfg).await;
    let page = rs_api
        .ok(&rs256, &format!("/v1/events?from={from}&to={to}&limit=3"))
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    let public = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/rsa-public.pem"
    ))
    .unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims("acme"),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let (status, _) = rs_api.get(&confused, "/v1/events").await;
    assert_eq!(status, 401, "HS256 signed with the public key");
    rs_stop.cancel();

    let _ = std::fs::remove_dir_all(&lake_dir);
    env.teardown().await;
}
