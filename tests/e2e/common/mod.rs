//! Helpers shared by the end-to-end tests: each test gets its own ClickHouse
//! database, topic and consumer group (random names), so tests run in
//! parallel against one local stack (`hourglass stack up`, which the README's
//! test command starts) and clean up after themselves.
#![allow(dead_code)]

pub mod browser;
pub mod generator;
pub mod grafana;
pub mod lost_answers;
pub mod readme;
pub mod rollup_truth;
pub mod scenario;
pub mod seeded_project;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hourglass_core::Config;
use rand::Rng;

pub fn hourglass_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hourglass")
}

/// A per-test configuration with unique names.
pub struct TestEnv {
    pub cfg: Config,
    pub name: String,
    /// Children started by [`TestEnv::spawn`]: killed when the env drops, so
    /// a failed assertion does not leave a component running into the next
    /// suite.
    children: std::sync::Mutex<Vec<u32>>,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The children's log is the only account of why a wait timed
            // out; a broker that stopped answering shows only in its own.
            print_tail(&std::env::temp_dir().join(format!("{}.log", self.name)), 80);
            print_tail(&checkout_dir().join(".stack/kafka/server.log"), 20);
        }
        let me = hourglass_bin();
        for pid in self.children.lock().map(|c| c.clone()).unwrap_or_default() {
            // Only if the pid is still one of ours (pids are reused).
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(me.as_bytes()));
            if ours {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn print_tail(path: &std::path::Path, lines: usize) {
    if let Ok(log) = std::fs::read_to_string(path) {
        let all: Vec<&str> = log.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        eprintln!("--- last {} lines of {} ---", tail.len(), path.display());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

impl TestEnv {
    pub async fn new(label: &str) -> Self {
        let suffix: u32 = rand::rng().random();
        let name = format!("hgt_{label}_{suffix:08x}");
        let mut cfg = Config::default();
        cfg.clickhouse.database = name.clone();
        cfg.kafka.topic = name.clone();
        cfg.kafka.dlq_topic = format!("{name}.dlq");
        // Every consumer group the test's own too: a group that an earlier
        // scenario's members (or a tansu rebalance gone wrong) left behind
        // never holds up the next one.
        cfg.aggregator.group_id = format!("{name}-agg");
        cfg.loader.group_id = format!("{name}-load");
        cfg.lake.group_id = format!("{name}-arch");
        let env = Self {
            cfg,
            name,
            children: Default::default(),
        };
        env.check_stack().await;
        env
    }

    async fn check_stack(&self) {
        let ok = reqwest::get(format!("{}/?query=SELECT%201", self.cfg.clickhouse.url))
            .await
            .is_ok_and(|r| r.status().is_success());
        assert!(
            ok,
            "ClickHouse does not answer at {}: start the local stack with `hourglass stack up` (scripts/test does)",
            self.cfg.clickhouse.url
        );
    }

    pub async fn migrate(&self) {
        hourglass_sql::migrate(&self.cfg.clickhouse)
            .await
            .expect("migrate");
    }

    pub async fn create_topic(&self, partitions: i32) {
        hourglass_core::kafka::ensure_topics(
            &self.cfg.kafka,
            &[(self.cfg.kafka.topic.as_str(), partitions)],
        )
        .await
        .expect("create topic");
    }

    pub fn clickhouse(&self) -> clickhouse::Client {
        hourglass_core::clickhouse::client(&self.cfg.clickhouse)
    }

    /// The last offset of each non-empty partition of the test's topic.
    pub async fn partition_ends(&self, partitions: i32) -> std::collections::BTreeMap<u16, i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = hourglass_core::kafka::client_config(&self.cfg.kafka)
            .set("group.id", format!("{}-ends", self.name))
            .create()
            .unwrap();
        (0..partitions)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&self.cfg.kafka.topic, p, Duration::from_secs(10))
                    .unwrap();
                (p as u16, high - 1)
            })
            .filter(|(_, last)| *last >= 0)
            .collect()
    }

    /// Wait until the loader's progress (`loader_progress`) is `ends`.
    pub async fn wait_loaded_to(
        &self,
        ends: &std::collections::BTreeMap<u16, i64>,
        timeout: Duration,
        what: &str,
    ) {
        wait_until(timeout, what, || async {
            let rows: Vec<(u16, i64)> = self
                .clickhouse()
                .query("SELECT partition_id, max(last_offset) FROM loader_progress GROUP BY partition_id")
                .fetch_all()
                .await
                .unwrap_or_default();
            rows.into_iter().collect::<std::collections::BTreeMap<u16, i64>>() == *ends
        })
        .await;
    }

    /// Make `table` refuse every row whose `event` is `event` (a column
    /// default that throws, computed before anything is written): a stand-in
    /// for any refusal of the data by the server.
    pub async fn refuse_event(&self, table: &str, event: &str) {
        self.clickhouse()
            .query(&format!(
                "ALTER TABLE {table} ADD COLUMN refused UInt8 DEFAULT throwIf(event = '{event}')"
            ))
            .execute()
            .await
            .unwrap();
    }

    /// Environment that points an `hourglass` child process at this test's names.
    pub fn child_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "HOURGLASS_KAFKA__TOPIC".into(),
                self.cfg.kafka.topic.clone(),
            ),
            (
                "HOURGLASS_KAFKA__DLQ_TOPIC".into(),
                self.cfg.kafka.dlq_topic.clone(),
            ),
            (
                "HOURGLASS_CLICKHOUSE__DATABASE".into(),
                self.cfg.clickhouse.database.clone(),
            ),
            (
                "HOURGLASS_CLICKHOUSE__URL".into(),
                self.cfg.clickhouse.url.clone(),
            ),
            (
                "HOURGLASS_CLICKHOUSE__CLUSTER".into(),
                self.cfg.clickhouse.cluster.clone(),
            ),
            (
                "HOURGLASS_AGGREGATOR__GROUP_ID".into(),
                self.cfg.aggregator.group_id.clone(),
            ),
            (
                "HOURGLASS_LOADER__GROUP_ID".into(),
                self.cfg.loader.group_id.clone(),
            ),
            (
                "HOURGLASS_LAKE__GROUP_ID".into(),
                self.cfg.lake.group_id.clone(),
            ),
            (
                "HOURGLASS_AGGREGATOR__HTTP_LISTEN".into(),
                "127.0.0.1:0".into(),
            ),
        ]
    }

    pub fn spawn(&self, args: &[&str], extra_env: &[(&str, String)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("{}.log", self.name)))
            .expect("log file");
        let child = Command::new(hourglass_bin())
            .args(args)
            .envs(self.child_env())
            .envs(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .env(
                "RUST_LOG",
                // HG_TEST_RUST_LOG raises a child's log level when chasing a failure.
                std::env::var("HG_TEST_RUST_LOG").unwrap_or_else(|_| {
                    "warn,hourglass_core::consumer=info,hourglass_aggregator=info".into()
                }),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn hourglass");
        if let Ok(mut children) = self.children.lock() {
            children.push(child.id());
        }
        child
    }

    /// Drop the test's database. Its topic stays: deleting a topic while
    /// other clients refresh metadata crashed librdkafka (a SIGSEGV in its
    /// metadata cache) against tansu, and the stack's broker state is thrown
    /// away with the clone anyway.
    pub async fn teardown(&self) {
        self.drop_database().await;
    }

    pub async fn drop_database(&self) {
        let on_cluster = if self.cfg.clickhouse.is_cluster() {
            format!(" ON CLUSTER `{}`", self.cfg.clickhouse.cluster)
        } else {
            String::new()
        };
        let _ = self
            .clickhouse()
            .query(&format!(
                "DROP DATABASE IF EXISTS `{}`{on_cluster}",
                self.cfg.clickhouse.database
            ))
            .execute()
            .await;
    }
}

/// Poll `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Wait until `measure` reaches `target`, failing only when it has not moved
/// for `stall` (a slow machine is not a failure; a stuck consumer is).
pub async fn wait_for_progress<F, Fut>(stall: Duration, what: &str, target: u64, mut measure: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    let mut last = measure().await;
    let mut moved = Instant::now();
    while last < target {
        if moved.elapsed() > stall {
            panic!("{what}: stuck at {last} of {target} for {stall:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = measure().await;
        if now != last {
            last = now;
            moved = Instant::now();
        }
    }
}

/// Run `hourglass args…` to its end with `vars` (no config file) and
/// return what it printed; fails the test if it failed.
pub fn run_hourglass(args: &[&str], vars: &[(String, String)]) -> String {
    let out = Command::new(hourglass_bin())
        .args(args)
        .env_remove("HOURGLASS_CONFIG")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hourglass {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

pub fn sigterm(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

pub fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The checkout the tests run from. Read at run time (cargo sets it for
/// `cargo test`): the build cache is shared between clones, so a binary
/// built in another clone of the same commit is reused here, with that
/// clone's path compiled in.
pub fn checkout_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// PID of a local-stack server this stack started (None: someone else's).
pub fn stack_pid(key: &str) -> Option<i32> {
    let dir = std::env::var_os("HOURGLASS_STACK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| checkout_dir().join(".stack"));
    std::fs::read_to_string(dir.join(key).join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `hourglass stack up`, as an operator would after an outage.
pub fn stack_up() {
    let status = Command::new(hourglass_bin())
        .args(["stack", "up"])
        .current_dir(checkout_dir())
        .status()
        .expect("run hourglass stack up");
    assert!(status.success(), "stack up after the outage");
}

/// A token signed with HS256 and `secret` (the query API's
/// `query.jwt_secret`), carrying `claims`.
pub fn hs256_token(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `hourglass query` in this process on a free port, once it is ready: its
/// base URL, and the token that stops it.
pub async fn start_query_api(mut cfg: Config) -> (String, tokio_util::sync::CancellationToken) {
    let port = free_port();
    cfg.query.listen = format!("127.0.0.1:{port}");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(hourglass_query::run(cfg, stop.clone()));
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), "the query API", || async {
        reqwest::get(format!("{base}/health/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    (base, stop)
}

/// The Python that has the tests' tools (scripts/lib.sh's venv: the Segment
/// SDK, pyarrow, duckdb, chdb-core).
pub fn python() -> String {
    std::env::var("HOURGLASS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A port free right now on 127.0.0.1 (for a child's listen address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `hourglass ingest` as a child process with one write key.
pub struct Ingest {
    pub child: Child,
    pub url: String,
    pub key: String,
    pub project: String,
}

impl Ingest {
    /// Start ingest for `env`'s topic and wait until it is ready.
    pub async fn start(env: &TestEnv, project: &str, extra_env: &[(&str, String)]) -> Self {
        Self::start_projects(env, &[project], extra_env).await
    }

    /// Ingest with a write key for each of `projects` ([`Self::key_of`]);
    /// `key` and `project` are the first's.
    pub async fn start_projects(
        env: &TestEnv,
        projects: &[&str],
        extra_env: &[(&str, String)],
    ) -> Self {
        let port = free_port();
        let keys: Vec<String> = projects
            .iter()
            .map(|p| {
                let hash = hourglass_ingest::keys::hash_key(&Self::key_of(env, p));
                format!(r#"{{project_id="{p}",sha256="{hash}"}}"#)
            })
            .collect();
        let project = projects[0];
        let key = Self::key_of(env, project);
        let mut vars = vec![
            ("HOURGLASS_INGEST__LISTEN", format!("127.0.0.1:{port}")),
            ("HOURGLASS_INGEST__KEYS", format!("[{}]", keys.join(","))),
        ];
        vars.extend(extra_env.iter().cloned());
        let child = env.spawn(&["ingest"], &vars);
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/health/ready");
        wait_until(Duration::from_secs(30), "ingest ready", || {
            let ready = ready.clone();
            async move {
                reqwest::get(&ready)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        Self {
            child,
            url,
            key,
            project: project.into(),
        }
    }

    /// The write key of `project` in [`Self::start_projects`].
    pub fn key_of(env: &TestEnv, project: &str) -> String {
        format!("hgk_test_{}_{project}", env.name)
    }

    /// POST `body` to `path` with this write key (Basic auth, as Segment SDKs do).
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.post_as(&self.key, path, body).await
    }

    /// POST `body` to `path` with the write key `key`.
    pub async fn post_as(
        &self,
        key: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .basic_auth(key, Some(""))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("ingest answers")
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        sigterm(&mut self.child);
    }
}

/// Every record of `topic` from the beginning, until `expected` are read and
/// no more arrive for `quiet` (so extra records would be seen), or `timeout`.
pub fn read_topic(
    cfg: &hourglass_core::config::KafkaConfig,
    expected: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = hourglass_core::kafka::consumer_config(cfg, "hgt-reader")
        .create()
        .expect("reader");
    let metadata = consumer
        .fetch_metadata(Some(&cfg.topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(&cfg.topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < timeout && (out.len() < expected || last.elapsed() < quiet) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(m.detach());
                last = Instant::now();
            }
            Some(Err(e)) => panic!("reading {}: {e}", cfg.topic),
            None => {}
        }
    }
    out
}
