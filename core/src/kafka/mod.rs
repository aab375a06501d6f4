//! Kafka client builders: every producer and consumer in Hourglass is made
//! here, so delivery guarantees are decided in one place.

pub mod assign;
mod batch_producer;
pub mod tansu_store;
pub mod topics;

pub use batch_producer::{BatchAcks, BatchOutcome, BatchProducer};
pub use topics::{TopicError, delete_topics, ensure_pipeline_topics, ensure_topics};

use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};

use crate::config::KafkaConfig;

/// Base config shared by every client: brokers plus the user's extra properties.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    user_properties(&mut c, cfg);
    c
}

/// `kafka.client`, then `kafka.sasl_password`: applied last by every
/// builder, so the user's settings win over Hourglass's tuning.
fn user_properties(c: &mut ClientConfig, cfg: &KafkaConfig) {
    for (k, v) in &cfg.client {
        c.set(k, v);
    }
    if !cfg.sasl_password.is_empty() {
        c.set("sasl.password", &cfg.sasl_password);
    }
}

/// The durable producer of the contract: idempotent, `acks=all`, zstd.
pub fn producer(cfg: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    producer_tuned(cfg, &[])
}

/// [`producer`] with throughput settings of the caller's (linger, queue size,
/// delivery timeout). Delivery guarantees cannot be tuned away here; the
/// user's own `kafka.client` properties still apply last.
pub fn producer_tuned(
    cfg: &KafkaConfig,
    tuning: &[(&str, String)],
) -> Result<FutureProducer, KafkaError> {
    producer_config(cfg, tuning).create()
}

fn producer_config(cfg: &KafkaConfig, tuning: &[(&str, String)]) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "30000");
    for (k, v) in tuning {
        c.set(*k, v);
    }
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd");
    user_properties(&mut c, cfg);
    c
}

/// Consumer settings for components that own their offsets: nothing is
/// committed or stored automatically; a component stores an offset only once
/// the work it covers is durable.
pub fn consumer_config(cfg: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (cfg.session_timeout_ms / 10).max(100).to_string(),
        )
        // The rebalance timeout too; librdkafka wants it >= the session.
        .set(
            "max.poll.interval.ms",
            cfg.session_timeout_ms.max(60_000).to_string(),
        )
        .set("fetch.max.bytes", "16777216")
        .set("max.partition.fetch.bytes", "4194304")
        // Once a partition's local queue is full, librdkafka waits this long
        // before fetching it again (default 1 s). A consumer that works on
        // each record (the aggregator, the archiver) fills its queue all the
        // time and sat idle most of each second.
        .set("fetch.queue.backoff.ms", "20")
        // librdkafka fetches a partition again only once the local queue
        // is below this many records (default 100,000). A fetch of
        // max.partition.fetch.bytes brings about 150,000 of the contract's
        // records, so at the default the queue ran dry while the next fetch
        // was on its way: the aggregator waited for records 37 % of the
        // time. Memory stays bounded by queued.max.messages.kbytes (64 MB).
        .set("queued.min.messages", "300000")
        // See `kafka.fetch_wait_max_ms`. The aggregator's idle check may
        // wait behind a pending fetch on the same connection (tansu answers
        // one request at a time); its timeout is 2 s.
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string());
    user_properties(&mut c, cfg);
    c
}

/// [`consumer_config`] plus statistics every 5 s, which carry each
/// partition's lag: for consumers whose context reports it
/// ([`record_consumer_lag`]) and that poll. Others would queue them, and
/// the default context logs each one.
pub fn lag_reporting_consumer_config(cfg: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut c = consumer_config(cfg, group_id);
    c.set("statistics.interval.ms", "5000");
    c
}

/// Set `gauge` (labelled by partition) to how many records of each assigned
/// partition the component has not read yet, from librdkafka's periodic
/// statistics: the high watermark minus the next offset the application
/// reads. Not the committed offset: the aggregator commits only as a hint at
/// its checkpoints, so a lag counted from commits looked like a pipeline
/// falling behind while it was seconds behind. Before the first record is
/// read, the committed lag stands in.
pub fn record_consumer_lag(stats: &Statistics, gauge: &'static str) {
    for topic in stats.topics.values() {
        for (partition, p) in &topic.partitions {
            if let Some(lag) = unread(p) {
                metrics::gauge!(gauge, "partition" => partition.to_string()).set(lag as f64);
            }
        }
    }
}

fn unread(p: &rdkafka::statistics::Partition) -> Option<i64> {
    if p.partition < 0 || p.hi_offset < 0 {
        return None;
    }
    if p.app_offset >= 0 {
        Some((p.hi_offset - p.app_offset).max(0))
    } else {
        (p.consumer_lag >= 0).then_some(p.consumer_lag)
    }
}

/// A consumer context that only reports lag (for consumers that keep their
/// offsets in Kafka and need no rebalance hooks).
pub struct LagReporting {
    pub gauge: &'static str,
    pub group_health: crate::consumer::GroupHealth,
}

impl ClientContext for LagReporting {
    fn stats(&self, stats: Statistics) {
        record_consumer_lag(&stats, self.gauge);
        self.group_health.record(&stats);
    }
}

impl ConsumerContext for LagReporting {}

impl crate::consumer::WatchedContext for LagReporting {
    fn group_health(&self) -> &crate::consumer::GroupHealth {
        &self.group_health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_and_the_sasl_password_apply_to_every_client() {
        let mut cfg = KafkaConfig::default();
        cfg.client
            .insert("security.protocol".into(), "SASL_SSL".into());
        cfg.client.insert("linger.ms".into(), "50".into());
        cfg.sasl_password = "s3cret".into();
        for c in [client_config(&cfg), consumer_config(&cfg, "g")] {
            assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(c.get("sasl.password"), Some("s3cret"));
        }
        let consumer = consumer_config(&cfg, "g");
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("queued.min.messages"), Some("300000"));
        cfg.client
            .insert("queued.min.messages".into(), "1000".into());
        let consumer = consumer_config(&cfg, "g");
        assert_eq!(consumer.get("queued.min.messages"), Some("1000"));
        cfg.client.remove("queued.min.messages");
        // librdkafka is built with OpenSSL: a TLS client can be made.
        cfg.client.insert("security.protocol".into(), "SSL".into());
        cfg.sasl_password.clear();
        let made: Result<rdkafka::producer::BaseProducer, _> = client_config(&cfg).create();
        assert!(made.is_ok(), "{:?}", made.err());
    }
}
