//! The one configuration tree.
//!
//! Layers, later wins: built-in defaults (which work against the local stack
//! with no file at all), then a TOML file, then environment variables named
//! `HOURGLASS_<SECTION>__<KEY>` (e.g. `HOURGLASS_KAFKA__BROKERS`,
//! `HOURGLASS_AGGREGATOR__GRACE_SECS`). Unknown keys are refused by name.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::contract::ContractLimits;

/// Environment variable naming the TOML file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "HOURGLASS_CONFIG";

pub mod reference;
mod validate;
pub use validate::{INGEST_EVENT_COPIES, InvalidConfig, MAX_IMPORT_PAST_DAYS};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub s3: S3Config,
    pub telemetry: TelemetryConfig,
    pub contract: ContractLimits,
    pub ingest: IngestConfig,
    pub aggregator: AggregatorConfig,
    pub loader: LoaderConfig,
    pub consumers: ConsumersConfig,
    pub lake: LakeConfig,
    pub query: QueryConfig,
    pub batch: BatchConfig,
    pub retention: RetentionConfig,
    /// Projects with limits of their own, `[projects.<project_id>]` (the id
    /// the write keys name). A project not listed has only the global limits.
    pub projects: BTreeMap<String, ProjectConfig>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Defaults, then `file` (or the file named by `HOURGLASS_CONFIG`), then
    /// `HOURGLASS_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let env_file = std::env::var_os(CONFIG_PATH_ENV).map(std::path::PathBuf::from);
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Every key lives in a section, so only `HOURGLASS_<SECTION>__<KEY>`
        // names are config; the scripts' own variables (HOURGLASS_CONFIG,
        // HOURGLASS_STACK_DIR, HOURGLASS_PYTHON) are not.
        figment = figment.merge(
            Env::prefixed("HOURGLASS_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        figment.extract().map_err(|e| ConfigError(Box::new(e)))
    }

    /// The effective configuration as TOML (what `hourglass config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config always serializes")
    }

    /// [`Self::to_toml`] with every secret that is set shown as
    /// `<redacted>`: what `hourglass config` prints, so the effective
    /// configuration can be shared or logged without its passwords.
    pub fn to_toml_redacted(&self) -> String {
        let mut c = self.clone();
        let redact = |s: &mut String| {
            if !s.is_empty() {
                *s = REDACTED.into();
            }
        };
        redact(&mut c.kafka.sasl_password);
        for (name, value) in &mut c.kafka.client {
            if is_secret_name(name) {
                redact(value);
            }
        }
        redact(&mut c.clickhouse.password);
        redact(&mut c.s3.secret_access_key);
        redact(&mut c.query.jwt_secret);
        redact(&mut c.query.read_password);
        redact(&mut c.ingest.ip_hash_key);
        c.to_toml()
    }
}

/// What [`Config::to_toml_redacted`] shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// A librdkafka property holding a secret (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("password") || name.contains("secret") || name == "ssl.key.pem"
}

/// The Kafka-protocol cluster and the topics Hourglass uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Topic every normalized event is published to.
    pub topic: String,
    /// Topic for records that can never be processed (original bytes kept).
    pub dlq_topic: String,
    /// Partitions used when Hourglass creates `topic` (the local stack, tests).
    pub partitions: i32,
    /// Copies of each partition when Hourglass creates a topic (`hourglass
    /// migrate --create-topics`, the chart's pre-install job, the local
    /// stack); creating fails, naming both numbers, when the cluster has
    /// fewer brokers. Ingest and the loader warn at start about an existing
    /// topic with fewer copies. 1 on the local stack's single broker; the
    /// chart sets 3.
    pub replication_factor: i32,
    /// `min.insync.replicas` of the topics Hourglass creates: with the
    /// producers' `acks=all`, an event is acknowledged once this many
    /// copies hold it, and a partition with fewer copies in sync refuses
    /// writes (ingest answers 503) rather than keep a single copy. At most
    /// `replication_factor`; an existing topic set lower is warned about at
    /// start. The chart sets 2.
    pub min_insync_replicas: i32,
    /// Extra librdkafka properties applied to every client, e.g.
    /// `security.protocol = "SASL_SSL"`, `sasl.mechanism = "SCRAM-SHA-512"`,
    /// `sasl.username`, `ssl.ca.location`.
    pub client: BTreeMap<String, String>,
    /// `sasl.password`, kept apart from `client` so it can come from the
    /// environment (`HOURGLASS_KAFKA__SASL_PASSWORD`, a Secret in the chart).
    pub sasl_password: String,
    /// Consumer-group session: a member silent this long is dropped. Long
    /// enough to ride out a broker that stalls (tansu's SQLite store went
    /// 10 s without answering heartbeats under load), short enough that a
    /// crashed member's partitions move on.
    pub session_timeout_ms: u32,
    /// How long a consumer's fetch may wait at the broker for data
    /// (`fetch.wait.max.ms`). 100 ms: the aggregator's idle check queries
    /// offsets on the connection a waiting fetch holds (tansu answers one
    /// request at a time), and with 500 ms the aggregator's exactly-once
    /// suite took 823 s against 437-479 s in earlier trials (on a slower day
    /// of this VM: the setting's share is not measured). On the local stack's tansu
    /// `sqlite://`, 500 ms costs the broker a third less CPU under the demo
    /// (the `local_broker` benchmark): `HOURGLASS_KAFKA__FETCH_WAIT_MAX_MS=500`
    /// for a demo-only machine.
    pub fetch_wait_max_ms: u32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:19092".into(),
            topic: "events".into(),
            dlq_topic: "events.dlq".into(),
            partitions: 8,
            replication_factor: 1,
            min_insync_replicas: 1,
            client: BTreeMap::new(),
            sasl_password: String::new(),
            session_timeout_ms: 30_000,
            fetch_wait_max_ms: 100,
        }
    }
}

/// The ClickHouse server (HTTP interface).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint.
    pub url: String,
    /// Database holding every Hourglass table; created by `hourglass migrate`.
    pub database: String,
    /// ClickHouse user every component writes as (and reads as, unless
    /// `query.read_user` is set).
    pub user: String,
    /// Password of `user` (`HOURGLASS_CLICKHOUSE__PASSWORD`, a Secret in the chart).
    pub password: String,
    /// Days of raw events kept by a table TTL fixed when migration 1 runs,
    /// on servers that support TTL, for every project; 0 keeps forever.
    /// `[retention]` is the way to keep each project's own days (and
    /// changes apply without a migration); with this set, no project may
    /// keep raw events longer.
    pub events_retention_days: u32,
    /// Name of the ClickHouse cluster (its `remote_servers` entry) the
    /// tables live on; empty: one server. When set, migrations create
    /// Replicated tables `ON CLUSTER`, the tables a source partition writes
    /// are sharded by that partition behind Distributed tables of the usual
    /// names, inserts wait for `insert_quorum` replicas and the pipeline's
    /// reads are sequentially consistent (docs/clickhouse-cluster.md). Every
    /// server needs the macros `{shard}` and `{replica}` (unique across the
    /// cluster) and a ZooKeeper or ClickHouse Keeper.
    pub cluster: String,
    /// Replicas of a shard that must hold an insert before it counts (cluster
    /// mode): a majority of each shard's replicas (2 for 2 or 3 replicas), so
    /// that any replica a failed-over consumer reads its checkpoint from
    /// either has every acknowledged flush or refuses to answer.
    pub insert_quorum: u32,
    /// Seconds an insert waits for its quorum (cluster mode) before it fails
    /// as retryable. Rows a timed-out insert wrote stay invisible to the
    /// pipeline until the quorum completes; keep this longer than the replica
    /// outages you want to ride out without operator work.
    pub insert_quorum_timeout_secs: u32,
    /// How rows travel to and from ClickHouse over HTTP: `none`, the
    /// default, for a server on the same host or a fast local network (the
    /// local stack), or `lz4` (ClickHouse's block framing) where the
    /// network is the narrower resource (the Helm chart sets it). LZ4 costs
    /// the loader about 0.3 CPU-seconds per million rows (135 MB of
    /// RowBinary to 70 MB) on both sides (docs/benchmarks.md).
    pub compression: ClickHouseCompression,
}

/// Compression of ClickHouse HTTP requests and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClickHouseCompression {
    None,
    Lz4,
}

impl ClickHouseConfig {
    /// Whether the tables live on a cluster (`cluster` is set).
    pub fn is_cluster(&self) -> bool {
        !self.cluster.is_empty()
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:18123".into(),
            database: "hourglass".into(),
            user: "default".into(),
            password: String::new(),
            events_retention_days: 0,
            cluster: String::new(),
            insert_quorum: 2,
            insert_quorum_timeout_secs: 600,
            compression: ClickHouseCompression::None,
        }
    }
}

/// The S3-compatible object store of the lake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL; empty means AWS's own endpoint for `region`.
    pub endpoint: String,
    /// Region the bucket lives in (signing needs one, also for S3-compatible servers).
    pub region: String,
    /// Bucket of the lake.
    pub bucket: String,
    /// Key prefix under which the lake's Hive-style folders live.
    pub prefix: String,
    /// Static credentials; when empty the standard AWS chain is used
    /// (environment, profile, IRSA web identity, instance metadata).
    pub access_key_id: String,
    /// Secret of `access_key_id` (`HOURGLASS_S3__SECRET_ACCESS_KEY`, a Secret in the chart).
    pub secret_access_key: String,
    /// Path-style addressing, needed by most S3-compatible servers.
    pub force_path_style: bool,
}

impl S3Config {
    /// The built-in keys of the local stack's S3 server (the defaults).
    pub fn has_local_stack_keys(&self) -> bool {
        let d = Self::default();
        self.access_key_id == d.access_key_id && self.secret_access_key == d.secret_access_key
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:19014".into(),
            region: "us-east-1".into(),
            bucket: "hourglass".into(),
            prefix: "lake".into(),
            access_key_id: "hourglass".into(),
            secret_access_key: "hourglass-secret".into(),
            force_path_style: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs, metrics and health endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` for people, `json` for log shippers.
    pub log_format: LogFormat,
    /// tracing filter directive (RUST_LOG syntax); RUST_LOG wins when set.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".into(),
        }
    }
}

/// One project's write key, stored as the SHA-256 of the key (hex): a leaked
/// config file does not leak keys. `hourglass keys new` makes a key and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteKey {
    /// Project whose events this key may send; becomes every event's `project_id`.
    pub project_id: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
}

/// One project's own limits (`[projects.<project_id>]`); 0 leaves a limit off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectConfig {
    /// Events per second the project may send, summed over every ingest
    /// replica (a token bucket; each replica holds `ingest.replicas`' share).
    /// Past it ingest answers 429 `quota_exceeded` naming `events_per_sec`,
    /// with Retry-After.
    pub events_per_sec: u32,
    /// Events the project may send at once after a quiet spell (the bucket's
    /// size, over every replica); 0: one second's worth. Each replica's share
    /// is at least one full batch (`contract.max_batch_events`).
    pub events_burst: u32,
    /// Events the project may send per UTC day, summed over every ingest
    /// replica; past it ingest answers 429 naming `events_per_day` with
    /// Retry-After until midnight UTC. Counted from a replica's start: a
    /// restarted replica starts its share of the day afresh.
    pub events_per_day: u64,
    /// Keys the aggregator holds for this project in one window of one
    /// partition (`aggregator.max_keys_per_window` when 0); the rest fold
    /// into the project's own `__other__`.
    pub max_keys_per_window: usize,
    /// Parse the user agent into `$browser`, `$os`, `$device_class`
    /// properties, over `ingest.user_agent`.
    pub user_agent: Option<bool>,
    /// What the project's events keep of the client's IP address, over
    /// `ingest.ip_policy`.
    pub ip_policy: Option<IpPolicy>,
    /// Retention tier (`[retention.tiers.<name>]`) whose days this project
    /// keeps; empty: the `[retention]` defaults.
    pub tier: String,
    /// Days of raw events kept, over the tier's (0 keeps forever).
    pub raw_days: Option<u32>,
    /// Days of 5-minute rollups kept, over the tier's (0 keeps forever).
    pub rollup_5m_days: Option<u32>,
    /// Days of hourly rollups kept, over the tier's (0 keeps forever).
    pub rollup_1h_days: Option<u32>,
    /// Days of daily rollups kept, over the tier's (0 keeps forever).
    pub rollup_1d_days: Option<u32>,
    /// Days of the project's events kept in the lake (by the `dt=` folder
    /// of their arrival), over the tier's (0 keeps forever).
    pub lake_days: Option<u32>,
}

/// Days of each store a retention tier keeps; a day not given is the
/// `[retention]` default's, 0 keeps forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionTier {
    pub raw_days: Option<u32>,
    pub rollup_5m_days: Option<u32>,
    pub rollup_1h_days: Option<u32>,
    pub rollup_1d_days: Option<u32>,
    pub lake_days: Option<u32>,
}

/// The days each store keeps, for projects without a tier or days of their
/// own, the named tiers, and the retention pass that enforces them (run by
/// `hourglass batch` and `hourglass retention`). A day counts from midnight
/// UTC: keeping 2 days keeps today and the two days before it. 0 keeps
/// forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of raw events (`events`) kept.
    pub raw_days: u32,
    /// Days of 5-minute rollups kept (speed and batch layer).
    pub rollup_5m_days: u32,
    /// Days of hourly rollups kept (speed and batch layer).
    pub rollup_1h_days: u32,
    /// Days of daily rollups kept (speed and batch layer).
    pub rollup_1d_days: u32,
    /// Days of events kept in the lake (by the `dt=` folder of their
    /// arrival). A folder every project has expired is deleted; in one
    /// that only some projects have, their events are removed by rewriting
    /// its files.
    pub lake_days: u32,
    /// Named tiers projects refer to (`[retention.tiers.<name>]`, keys
    /// `raw_days`, `rollup_5m_days`, `rollup_1h_days`, `rollup_1d_days`,
    /// `lake_days`), e.g. `free = {raw_days = 1, rollup_5m_days = 7}`.
    pub tiers: BTreeMap<String, RetentionTier>,
    /// Seconds between two retention passes of `hourglass batch`; 0: only
    /// `hourglass retention` removes data.
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            raw_days: 0,
            rollup_5m_days: 0,
            rollup_1h_days: 0,
            rollup_1d_days: 0,
            lake_days: 0,
            tiers: BTreeMap::new(),
            interval_secs: 3_600,
        }
    }
}

/// Days one project keeps of each store (0: forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionDays {
    pub raw: u32,
    pub rollup_5m: u32,
    pub rollup_1h: u32,
    pub rollup_1d: u32,
    pub lake: u32,
}

impl RetentionConfig {
    /// What a project not listed under `[projects]` keeps.
    pub fn defaults(&self) -> RetentionDays {
        RetentionDays {
            raw: self.raw_days,
            rollup_5m: self.rollup_5m_days,
            rollup_1h: self.rollup_1h_days,
            rollup_1d: self.rollup_1d_days,
            lake: self.lake_days,
        }
    }

    /// What `project` keeps: its own days, else its tier's, else the
    /// defaults. An unknown tier is refused by validation.
    pub fn of(&self, project: &ProjectConfig) -> RetentionDays {
        let d = self.defaults();
        let tier = self.tiers.get(&project.tier).cloned().unwrap_or_default();
        RetentionDays {
            raw: project.raw_days.or(tier.raw_days).unwrap_or(d.raw),
            rollup_5m: project
                .rollup_5m_days
                .or(tier.rollup_5m_days)
                .unwrap_or(d.rollup_5m),
            rollup_1h: project
                .rollup_1h_days
                .or(tier.rollup_1h_days)
                .unwrap_or(d.rollup_1h),
            rollup_1d: project
                .rollup_1d_days
                .or(tier.rollup_1d_days)
                .unwrap_or(d.rollup_1d),
            lake: project.lake_days.or(tier.lake_days).unwrap_or(d.lake),
        }
    }
}

/// What events keep of the client's IP address.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IpPolicy {
    /// Nothing (and `context.ip` is removed).
    #[default]
    Drop,
    /// `$ip` with the host part zeroed (IPv4 /24, IPv6 /48).
    Truncate,
    /// `$ip` as HMAC-SHA-256 with `ingest.ip_hash_key`, 16 bytes in hex.
    Hash,
}

/// The HTTP ingest service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address the API, health and metrics endpoints listen on.
    pub listen: String,
    /// Write keys, `[{project_id, sha256}]`, one per project (more than one
    /// per project rotates keys); `hourglass keys new` makes one.
    pub keys: Vec<WriteKey>,
    /// Optional file of more keys, one `project_id sha256` pair per line (`#`
    /// comments): how a Kubernetes Secret is mounted.
    pub keys_file: String,
    /// Largest request body as sent (compressed or not), in bytes.
    pub max_body_bytes: usize,
    /// Largest body after decompression; a body that inflates past it is refused
    /// while it is being decompressed, never expanded in full.
    pub max_decoded_bytes: usize,
    /// Events per second each write key may send (token bucket); 0 turns the limit off.
    pub rate_limit_events_per_sec: u32,
    /// Bucket size: how many events a key may send at once after a quiet spell.
    pub rate_limit_burst: u32,
    /// Origins allowed by CORS (`*` for any), for browsers and `sendBeacon`.
    pub cors_origins: Vec<String>,
    /// Requests handled at once; past this the service answers 503 at once
    /// instead of queueing without bound.
    pub max_in_flight_requests: usize,
    /// Memory the requests in flight may hold, in bytes: each request is
    /// charged for its body as it arrives and for its events as they are
    /// decoded (their copies included); past this the service answers 503
    /// with Retry-After (`over_memory_budget`) instead of allocating. At
    /// least `max_body_bytes` + 3 × `max_decoded_bytes`.
    pub max_in_flight_bytes: usize,
    /// Requests whose bodies are over 256 KiB (as sent or inflated) decoded
    /// and parsed at a time; the others wait their turn, so a flood of large
    /// or compressed bodies leaves the other core(s) to ordinary batches.
    pub large_body_workers: usize,
    /// Seconds a client may take to send a request's headers; a slower one
    /// (slowloris) has its connection closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a client may take to send a request's body once its headers
    /// are in; a slower one gets 408.
    pub body_read_timeout_secs: u64,
    /// Events waiting in the producer for the broker's acknowledgement; when
    /// full, requests get 503 with Retry-After.
    pub producer_queue_events: u32,
    /// How long the producer keeps trying to deliver an event before the
    /// request fails with 503, in milliseconds.
    pub delivery_timeout_ms: u64,
    /// Producer linger: how long records wait to fill a batch, in milliseconds.
    pub linger_ms: u32,
    /// Seconds a client is told to wait (Retry-After) on 503.
    pub retry_after_secs: u32,
    /// How long a broker that accepts connections but does not answer
    /// metadata is treated as slow (ingest stays ready and keeps publishing)
    /// before it counts as unreachable (not ready, 503 at once).
    pub broker_patience_secs: u64,
    /// Parse each event's user agent (`context.userAgent` of a Segment
    /// event, else the request's `User-Agent`) into the properties
    /// `$browser`, `$browser_version`, `$os`, `$os_version` and
    /// `$device_class` (`desktop`, `mobile`, `tablet`, `bot`, `appliance`),
    /// which `aggregator.dimensions` can name. `projects.<id>.user_agent`
    /// overrides it.
    pub user_agent: bool,
    /// What events keep of the client's IP address (`context.ip` of a
    /// Segment event, else the request's): `drop` keeps nothing (and removes
    /// `context.ip`), `truncate` keeps `$ip` with the last IPv4 octet or the
    /// last 80 bits of IPv6 zeroed, `hash` keeps `$ip` as a keyed hash
    /// (`ip_hash_key`). `projects.<id>.ip_policy` overrides it.
    pub ip_policy: IpPolicy,
    /// Secret key of the `hash` IP policy (HMAC-SHA-256; without a key an
    /// IPv4 hash is reversed by trying all 2^32 addresses).
    pub ip_hash_key: String,
    /// Header your load balancer sets to the client's address (e.g.
    /// `X-Forwarded-For`, whose first address is used, or `X-Real-IP`);
    /// empty: the connection's peer. Only set it behind a proxy that
    /// overwrites it: clients can send any value.
    pub client_ip_header: String,
    /// Ingest replicas that share the projects' quotas: each enforces its
    /// share, the quota divided by this. The chart sets it to the replica
    /// count (`maxReplicas` under autoscaling: fewer pods then admit less
    /// than the quota, never more).
    pub replicas: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:19101".into(),
            keys: Vec::new(),
            keys_file: String::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_decoded_bytes: 16 * 1024 * 1024,
            rate_limit_events_per_sec: 50_000,
            rate_limit_burst: 100_000,
            cors_origins: vec!["*".into()],
            max_in_flight_requests: 1_024,
            max_in_flight_bytes: 192 * 1024 * 1024,
            large_body_workers: 1,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            producer_queue_events: 200_000,
            delivery_timeout_ms: 10_000,
            linger_ms: 5,
            retry_after_secs: 5,
            broker_patience_secs: 30,
            user_agent: true,
            ip_policy: IpPolicy::Drop,
            ip_hash_key: String::new(),
            client_ip_header: String::new(),
            replicas: 1,
        }
    }
}

/// The speed layer: event-time windows into `rollup_5m`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Kafka consumer group.
    pub group_id: String,
    /// Tumbling window length in seconds, aligned to UTC (must divide a day).
    pub window_secs: u32,
    /// How long after a window's end, in event time, it still accepts events.
    pub grace_secs: u32,
    /// A partition without events for this long advances its watermark by wall clock.
    pub idle_timeout_secs: u32,
    /// An event dated more than this after the aggregator's clock is set
    /// aside (recorded as late, left to the batch layer) instead of opening
    /// a window that would not close for years. Whatever the input, the
    /// watermark never passes the clock, so a fast client clock cannot close
    /// the current window early for everyone on its partition (metric
    /// outcome `ahead`). At most 86400. Events dated more than 2,901 days
    /// before the clock are set aside the same way (outcome `too_old`):
    /// together they keep the late records one flush writes within 97
    /// months, under the 100 monthly partitions one ClickHouse INSERT may
    /// touch (its windows go out one month per flush).
    pub max_ahead_secs: u32,
    /// Property names whose values become key dimensions (e.g. `path`, `country`).
    pub dimensions: Vec<String>,
    /// Most keys one project may hold in one window of one partition; the
    /// rest of that project's keys fold into its own `__other__`, so a
    /// project whose keys explode never pushes a neighbour's keys there.
    /// `projects.<id>.max_keys_per_window` sets it per project. Memory is
    /// bounded by projects × this.
    pub max_keys_per_window: usize,
    /// Longest dimension value kept, in bytes; longer ones are cut.
    pub max_dimension_len: usize,
    /// HdrHistogram significant figures (1..=5).
    pub histogram_sigfig: u8,
    /// Largest `value` the histogram tracks; larger values are clamped and counted.
    pub histogram_max_value: f64,
    /// Least time between two writes of closed windows, in milliseconds (also
    /// how often idle partitions are checked).
    pub flush_interval_ms: u64,
    /// Address of the health and metrics endpoint.
    pub http_listen: String,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            group_id: "hourglass-aggregator".into(),
            window_secs: 300,
            grace_secs: 60,
            idle_timeout_secs: 30,
            max_ahead_secs: 600,
            dimensions: Vec::new(),
            max_keys_per_window: 10_000,
            max_dimension_len: 200,
            histogram_sigfig: 3,
            histogram_max_value: 3_600_000.0,
            flush_interval_ms: 1_000,
            http_listen: "127.0.0.1:19102".into(),
        }
    }
}

/// The batch layer's loader: raw events into ClickHouse `events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Kafka consumer group.
    pub group_id: String,
    /// A batch is written when it holds this many rows (or at `batch_bytes`
    /// or `batch_age_ms`, whichever comes first).
    pub batch_rows: usize,
    /// A batch is written when it holds this many bytes of record values
    /// (or at `batch_rows` or `batch_age_ms`).
    pub batch_bytes: usize,
    /// A batch is written when its first record is this old, in
    /// milliseconds (or at `batch_rows` or `batch_bytes`).
    pub batch_age_ms: u64,
    /// Address of the health and metrics endpoint.
    pub http_listen: String,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            group_id: "hourglass-loader".into(),
            batch_rows: 100_000,
            batch_bytes: 64 * 1024 * 1024,
            batch_age_ms: 1_000,
            http_listen: "127.0.0.1:19103".into(),
        }
    }
}

/// The runtime shared by the three consumers (aggregator, loader,
/// archiver): how they retry a write that fails, and when a consumer the
/// group left without partitions rejoins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumersConfig {
    /// First wait before retrying a failed write (ClickHouse, the lake, the
    /// dead-letter topic), in milliseconds; each further failure doubles it.
    pub retry_initial_ms: u64,
    /// Longest wait between retries, in milliseconds.
    pub retry_max_ms: u64,
    /// Random share added to each wait (0 to 1): 0.5 waits between 1× and
    /// 1.5× the backoff, so replicas that failed together do not retry in step.
    pub retry_jitter: f64,
    /// A consumer whose group has settled (librdkafka's join state
    /// `steady`) with no partition for it for this long leaves and rejoins
    /// the group, in seconds; each rejoin that still leaves it empty doubles
    /// the wait (up to 10 minutes), so a member that is surplus by design
    /// rejoins rarely. Covers coordinators that hand a new member an empty
    /// assignment for good (tansu 0.6 after a member died). 0 turns the
    /// check off.
    pub stuck_assignment_secs: u64,
    /// A partition with records past the group's committed offset, held by
    /// no member of this consumer, whose commit has not moved for this long
    /// makes the consumer leave and rejoin its group, in seconds (doubling
    /// while it keeps finding one, up to 10 minutes). Covers coordinators
    /// that answer a rebalance with an older generation's assignments, so
    /// a dead member's partitions belong to no one (tansu 0.6 when
    /// rebalances race). Above a window plus its grace: the aggregator
    /// commits when windows close. 0 turns the check off.
    pub orphan_partition_secs: u64,
}

impl Default for ConsumersConfig {
    fn default() -> Self {
        Self {
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            retry_jitter: 0.5,
            stuck_assignment_secs: 15,
            orphan_partition_secs: 600,
        }
    }
}

/// Where the lake's objects live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LakeStorage {
    /// A folder on this machine (`lake.local_dir`): the default for one machine.
    Local,
    /// The `[s3]` bucket, under `s3.prefix`.
    S3,
}

/// The archiver (Kafka → Parquet in the lake) and replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Where Parquet files go: a local folder (`local_dir`) or the `[s3]`
    /// bucket under `s3.prefix`.
    pub storage: LakeStorage,
    /// Root folder of the lake when `storage = "local"`.
    pub local_dir: String,
    /// Kafka consumer group of the archiver.
    pub group_id: String,
    /// A file is closed when it holds this many events (or at
    /// `file_max_bytes`, `file_max_age_secs` or an hour boundary).
    pub file_max_rows: usize,
    /// A file is closed when it holds this many bytes of event JSON (or at
    /// `file_max_rows`, `file_max_age_secs` or an hour boundary).
    pub file_max_bytes: usize,
    /// A file is closed when its first event was read this long ago (or at
    /// `file_max_rows` or `file_max_bytes`); files also end at every
    /// hour boundary of `received_at`.
    pub file_max_age_secs: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Files at least this large are uploaded in parts (S3 multipart).
    pub multipart_threshold_bytes: usize,
    /// Address of the archiver's health and metrics endpoint.
    pub http_listen: String,
    /// Seconds between the archiver's compaction passes, which make each
    /// settled hour's files of a partition it owns one file (0: none;
    /// `hourglass compact` runs a pass by hand).
    pub compact_interval_secs: u64,
    /// An hour is compacted once it ended this many seconds ago (records
    /// are foldered by `received_at`, so an hour's records are archived
    /// within `file_max_age_secs` of its end plus the archiver's lag; a
    /// straggler written later is merged by the next pass).
    pub compact_settle_secs: u64,
    /// Hours back from the newest settled one that each pass looks at.
    pub compact_lookback_hours: u32,
    /// A compacted file holds at most this many bytes of source files
    /// (larger partition-hours become several files).
    pub compact_max_bytes: u64,
    /// Once each partition's files of a settled hour are one, merge those
    /// into hour files holding every partition (up to `compact_max_bytes`
    /// each): what DuckDB and Spark read fastest. The archiver holding
    /// partition 0 does it; false keeps one file per partition and hour.
    pub compact_across_partitions: bool,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            storage: LakeStorage::Local,
            local_dir: ".stack/lake".into(),
            group_id: "hourglass-archiver".into(),
            file_max_rows: 1_000_000,
            file_max_bytes: 128 * 1024 * 1024,
            file_max_age_secs: 60,
            row_group_rows: 128 * 1024,
            multipart_threshold_bytes: 16 * 1024 * 1024,
            http_listen: "127.0.0.1:19104".into(),
            compact_interval_secs: 300,
            compact_settle_secs: 600,
            compact_lookback_hours: 48,
            compact_max_bytes: 256 * 1024 * 1024,
            compact_across_partitions: true,
        }
    }
}

/// Signature algorithm the query API accepts (one, pinned: a token signed
/// with any other is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// The batch layer (`hourglass batch`): closed hours recomputed from the raw
/// record, replacing the speed layer's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// An hour is recomputed once it ended this many seconds ago (`hourglass
    /// up` sets 120).
    pub settle_secs: u32,
    /// Seconds between passes looking for due and changed hours.
    pub interval_secs: u32,
    /// Copies of one `event_id` are looked for this many seconds either side
    /// of the hour (a retry re-sent with a new `sent_at` may shift its time).
    pub dedup_margin_secs: u32,
    /// Seconds between a pass's commit and readers switching to it (readers
    /// of one query then see one consistent set of commits).
    pub switch_delay_secs: u32,
    /// Most hours one pass recomputes (oldest first); the rest wait.
    pub max_hours_per_pass: u32,
    /// A holder that has not renewed its lease for this long is gone.
    pub lease_secs: u32,
    /// An hour's or day's earlier versions are deleted once a newer one has
    /// served readers this long (by the retention passes): queries that read
    /// the earlier one have finished.
    pub prune_after_secs: u32,
    /// Address of the health and metrics endpoint.
    pub http_listen: String,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            settle_secs: 3_600,
            interval_secs: 60,
            dedup_margin_secs: 120,
            switch_delay_secs: 3,
            max_hours_per_pass: 48,
            lease_secs: 60,
            prune_after_secs: 600,
            http_listen: "127.0.0.1:19106".into(),
        }
    }
}

/// The read API (`hourglass query`): JWT-scoped reads for apps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Address of the API (and its health and metrics endpoints).
    pub listen: String,
    /// The one signing algorithm accepted; a token signed any other way
    /// (or with `alg: none`) is refused.
    pub jwt_algorithm: JwtAlgorithm,
    /// HS256 shared secret (prefer HOURGLASS_QUERY__JWT_SECRET).
    pub jwt_secret: String,
    /// RS256/ES256: a PEM file holding the one public key tokens are
    /// checked with (or `jwt_jwks_file`).
    pub jwt_public_key_file: String,
    /// RS256/ES256: a JWKS file, the key picked by the token's `kid` (or
    /// `jwt_public_key_file`).
    pub jwt_jwks_file: String,
    /// When set, a token must carry `iss` with this value (a token without
    /// the claim is refused).
    pub jwt_issuer: String,
    /// When set, a token must carry `aud` with this value (a token without
    /// the claim is refused).
    pub jwt_audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway_secs: u64,
    /// Claim naming the project (required in every token).
    pub project_claim: String,
    /// Claim naming the tenant within the project: required in every token
    /// (a non-empty string) unless `allow_project_wide_tokens`.
    pub tenant_claim: String,
    /// Accept tokens without the tenant claim as reading the whole project
    /// (for apps without tenants, or an operator's token). A claim that is
    /// present must still be a non-empty string: `null` is refused either way.
    pub allow_project_wide_tokens: bool,
    /// Boolean claim that allows deleting a user's data.
    pub admin_claim: String,
    /// Events whose name marks them as errors in `/v1/sessions` (also
    /// events with `error_property` true).
    pub error_events: Vec<String>,
    /// A boolean property that marks an event as an error in
    /// `/v1/sessions` (also events named in `error_events`).
    pub error_property: String,
    /// Raw events or sessions per page when `limit` is not given.
    pub default_page_size: u32,
    /// Most raw events or sessions one page may hold (`limit`), and most
    /// names `/v1/event-names` returns.
    pub max_page_size: u32,
    /// Longest range of a raw-events or sessions query.
    pub max_raw_range_days: u32,
    /// Most buckets one `/v1/metrics` answer may hold (2016: 7 days at 5m).
    pub max_buckets: u32,
    /// ClickHouse time limit per query.
    pub query_timeout_ms: u64,
    /// ClickHouse user the API reads as: a read-only one (profile
    /// `readonly = 2`, so the per-query limits below can still be set). Empty
    /// reads as `clickhouse.user`, with a warning at start. Only
    /// `DELETE /v1/users/{user}` writes, as `clickhouse.user`.
    pub read_user: String,
    /// Password of `read_user` (prefer `HOURGLASS_QUERY__READ_PASSWORD`).
    pub read_password: String,
    /// Most rows one ClickHouse query (or any of its subqueries) may return;
    /// over it, 422 `query_too_large`. Must exceed `max_page_size`.
    pub max_result_rows: u64,
    /// Most memory one ClickHouse query may use, in bytes; over it, 422
    /// `query_too_large`.
    pub max_memory_bytes: u64,
    /// Requests per second per token (over it: 429 with `Retry-After`).
    pub rate_limit_per_sec: u32,
    /// Requests one token may make at once after a quiet spell.
    pub rate_limit_burst: u32,
    /// Keep `/v1/metrics` answers over closed windows in memory (5 minutes).
    pub cache_closed_answers: bool,
    /// `GET /v1/users/{user}/export` also reads the lake (`[lake]`, `[s3]`):
    /// events raw retention dropped from ClickHouse are there. Each such
    /// export reads every lake file, one export at a time.
    pub export_from_lake: bool,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:19105".into(),
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret: String::new(),
            jwt_public_key_file: String::new(),
            jwt_jwks_file: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_leeway_secs: 30,
            project_claim: "project_id".into(),
            tenant_claim: "tenant_id".into(),
            allow_project_wide_tokens: false,
            admin_claim: "hourglass_admin".into(),
            error_events: vec!["error".into(), "$exception".into()],
            error_property: "error".into(),
            default_page_size: 100,
            max_page_size: 1000,
            max_raw_range_days: 31,
            max_buckets: 2016,
            query_timeout_ms: 10_000,
            read_user: "hourglass_reader".into(),
            read_password: String::new(),
            max_result_rows: 100_000,
            max_memory_bytes: 1 << 30,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            cache_closed_answers: true,
            export_from_lake: true,
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
mod tests {
    use super::*;

    #[test]
    fn printed_config_never_shows_a_secret() {
        let mut c = Config::default();
        c.kafka.sasl_password = "kafka-pw".into();
        c.kafka.client.insert("sasl.username".into(), "hg".into());
        c.kafka
            .client
            .insert("ssl.key.password".into(), "key-pw".into());
        c.clickhouse.password = "ch-pw".into();
        c.query.jwt_secret = "jwt-secret".into();
        c.query.read_password = "reader-pw".into();
        let text = c.to_toml_redacted();
        for secret in [
            "kafka-pw",
            "key-pw",
            "ch-pw",
            "jwt-secret",
            "reader-pw",
            "hourglass-secret",
        ] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        assert!(text.contains("\"sasl.username\" = \"hg\""), "{text}");
        assert_eq!(text.matches(REDACTED).count(), 6, "{text}");
        // Unset secrets stay empty, so the output says they are unset.
        assert!(
            Config::default()
                .to_toml_redacted()
                .contains("password = \"\"")
        );
    }

    #[test]
    fn defaults_point_at_the_local_stack() {
        let c = Config::default();
        assert_eq!(c.kafka.brokers, "127.0.0.1:19092");
        assert_eq!(c.clickhouse.url, "http://127.0.0.1:18123");
        assert_eq!(c.s3.endpoint, "http://127.0.0.1:19014");
        assert_eq!(c.aggregator.window_secs, 300);
    }

    #[test]
    fn file_and_environment_layer_over_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "h.toml",
                "[kafka]\ntopic = \"from-file\"\n[aggregator]\ngrace_secs = 5\n",
            )?;
            jail.set_env("HOURGLASS_AGGREGATOR__GRACE_SECS", "7");
            jail.set_env("HOURGLASS_CLICKHOUSE__DATABASE", "envdb");
            // Variables of the scripts, not of the config tree, are not keys.
            jail.set_env("HOURGLASS_STACK_DIR", "/tmp/x");
            jail.set_env("HOURGLASS_PYTHON", "/usr/bin/python3");
            jail.set_env("HOURGLASS_CONFIG", "h.toml");
            let c = Config::load(Some(Path::new("h.toml"))).unwrap();
            assert_eq!(c.kafka.topic, "from-file");
            assert_eq!(c.aggregator.grace_secs, 7, "environment wins over the file");
            assert_eq!(c.clickhouse.database, "envdb");
            assert_eq!(
                c.kafka.brokers, "127.0.0.1:19092",
                "untouched keys keep defaults"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("h.toml", "[kafka]\nbrokerz = \"x\"\n")?;
            let err = Config::load(Some(Path::new("h.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("brokerz"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn printed_config_loads_back() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("h.toml", &Config::default().to_toml())?;
            assert_eq!(
                Config::load(Some(Path::new("h.toml"))).unwrap(),
                Config::default()
            );
            Ok(())
        });
    }
}
