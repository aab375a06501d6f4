//! The pipeline's topics: created with the configured durability
//! (`kafka.replication_factor` copies, `min.insync.replicas`), and existing
//! ones checked against it, so that `acks=all` means what the operator
//! asked for and not an acknowledgement from a single broker.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::client_config;
use crate::config::KafkaConfig;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(
        "kafka.replication_factor is {wanted}, but the cluster at {brokers} has {found} broker(s): lower it (and kafka.min_insync_replicas) or add brokers"
    )]
    TooFewBrokers {
        wanted: i32,
        found: usize,
        brokers: String,
    },
    #[error("creating topic {topic}: {code:?}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// How a topic stands in the cluster, as far as durability goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDurability {
    pub topic: String,
    /// Fewest copies any of its partitions has.
    pub replicas: usize,
    /// Its `min.insync.replicas`, when the cluster answers DescribeConfigs.
    pub min_insync_replicas: Option<i32>,
}

/// What is weaker than configured, one sentence per finding.
pub fn weaknesses(cfg: &KafkaConfig, topics: &[TopicDurability]) -> Vec<String> {
    let mut found = Vec::new();
    for t in topics {
        if (t.replicas as i64) < i64::from(cfg.replication_factor) {
            found.push(format!(
                "topic {} has partitions with {} replica(s); kafka.replication_factor is {}: an acknowledged event may live on fewer brokers than configured",
                t.topic, t.replicas, cfg.replication_factor
            ));
        }
        if let Some(isr) = t.min_insync_replicas
            && isr < cfg.min_insync_replicas
        {
            found.push(format!(
                "topic {} has min.insync.replicas {isr}; kafka.min_insync_replicas is {}: acks=all is satisfied by fewer copies than configured",
                t.topic, cfg.min_insync_replicas
            ));
        }
    }
    found
}

fn admin(cfg: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    client_config(cfg).create()
}

/// Brokers in the cluster and, for each of `topics` that exists, the fewest
/// replicas of any of its partitions (metadata is a blocking call).
async fn metadata(
    cfg: &KafkaConfig,
    topics: &[&str],
) -> Result<(usize, BTreeMap<String, usize>), KafkaError> {
    let client: BaseConsumer = client_config(cfg).create()?;
    let wanted: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let m = client.fetch_metadata(None, ADMIN_TIMEOUT)?;
        let replicas = m
            .topics()
            .iter()
            .filter(|t| wanted.iter().any(|w| w == t.name()) && t.error().is_none())
            .filter_map(|t| {
                let fewest = t.partitions().iter().map(|p| p.replicas().len()).min()?;
                Some((t.name().to_owned(), fewest))
            })
            .collect();
        Ok((m.brokers().len(), replicas))
    })
    .await
    .expect("metadata task")
}

/// Each existing topic of `topics` as the cluster holds it. A cluster that
/// does not answer DescribeConfigs leaves `min_insync_replicas` unknown.
pub async fn describe(
    cfg: &KafkaConfig,
    topics: &[&str],
) -> Result<Vec<TopicDurability>, KafkaError> {
    let (_, replicas) = metadata(cfg, topics).await?;
    with_configs(cfg, replicas).await
}

/// `replicas` (topic → fewest replicas, from metadata) with each topic's
/// `min.insync.replicas` read from the cluster.
async fn with_configs(
    cfg: &KafkaConfig,
    replicas: BTreeMap<String, usize>,
) -> Result<Vec<TopicDurability>, KafkaError> {
    let admin = admin(cfg)?;
    let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let mut out = Vec::new();
    for (topic, replicas) in replicas {
        let isr = match admin
            .describe_configs(&[ResourceSpecifier::Topic(&topic)], &opts)
            .await
        {
            Ok(results) => results.into_iter().flatten().find_map(|r| {
                r.get("min.insync.replicas")?
                    .value
                    .as_deref()?
                    .parse::<i32>()
                    .ok()
            }),
            Err(e) => {
                tracing::debug!(%topic, error = %e, "cannot read the topic's configuration");
                None
            }
        };
        out.push(TopicDurability {
            topic,
            replicas,
            min_insync_replicas: isr,
        });
    }
    Ok(out)
}

/// Log a warning for each of `topics` that is weaker than configured (a
/// cluster that cannot be asked is logged too; nothing is refused: the
/// topics are the operator's).
pub async fn warn_if_weaker(cfg: &KafkaConfig, topics: &[&str]) {
    log_weaknesses(cfg, describe(cfg, topics).await);
}

fn log_weaknesses(cfg: &KafkaConfig, described: Result<Vec<TopicDurability>, KafkaError>) {
    match described {
        Ok(found) => {
            for w in weaknesses(cfg, &found) {
                tracing::warn!("{w}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not check the topics' durability"),
    }
}

/// At a component's start, in the background (a slow broker must not hold
/// the start up): warn when the pipeline's topics are weaker than
/// configured, since `acks=all` means only what they were made with.
pub fn check_pipeline_topics_in_background(cfg: &KafkaConfig) {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        warn_if_weaker(&cfg, &[cfg.topic.as_str(), cfg.dlq_topic.as_str()]).await;
    });
}

/// The pipeline's own topics, where missing: `kafka.topic` with
/// `kafka.partitions` partitions, and the one-partition dead-letter topic.
pub async fn ensure_pipeline_topics(cfg: &KafkaConfig) -> Result<(), TopicError> {
    ensure_topics(
        cfg,
        &[
            (cfg.topic.as_str(), cfg.partitions),
            (cfg.dlq_topic.as_str(), 1),
        ],
    )
    .await
}

/// Create topics that do not exist yet (the broker may not auto-create),
/// with `kafka.replication_factor` copies and `kafka.min_insync_replicas`;
/// refused, naming both numbers, when the cluster has fewer brokers than
/// copies asked for. Topics that already exist are left as they are (and
/// warned about when weaker than configured).
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[(&str, i32)]) -> Result<(), TopicError> {
    let names: Vec<&str> = topics.iter().map(|(n, _)| *n).collect();
    let (brokers, existing) = metadata(cfg, &names).await?;
    if topics.iter().any(|(n, _)| !existing.contains_key(*n))
        && brokers < cfg.replication_factor.max(1) as usize
    {
        return Err(TopicError::TooFewBrokers {
            wanted: cfg.replication_factor,
            found: brokers,
            brokers: cfg.brokers.clone(),
        });
    }
    let admin = admin(cfg)?;
    let retention = (7 * 24 * 3600 * 1000u64).to_string();
    let isr = cfg.min_insync_replicas.to_string();
    let new: Vec<NewTopic> = topics
        .iter()
        .filter(|(name, _)| !existing.contains_key(*name))
        .map(|(name, partitions)| {
            NewTopic::new(
                name,
                *partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
            .set("retention.ms", &retention)
            .set("min.insync.replicas", &isr)
        })
        .collect();
    if !new.is_empty() {
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicError::Create { topic, code }),
            }
        }
    }
    if !existing.is_empty() {
        // The metadata read above already holds their replicas.
        log_weaknesses(cfg, with_configs(cfg, existing).await);
    }
    Ok(())
}

/// Delete topics (tests clean up after themselves with this).
pub async fn delete_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<(), KafkaError> {
    let admin = admin(cfg)?;
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    admin.delete_topics(topics, &opts).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rf: i32, isr: i32) -> KafkaConfig {
        KafkaConfig {
            replication_factor: rf,
            min_insync_replicas: isr,
            ..KafkaConfig::default()
        }
    }

    fn topic(replicas: usize, isr: Option<i32>) -> TopicDurability {
        TopicDurability {
            topic: "events".into(),
            replicas,
            min_insync_replicas: isr,
        }
    }

    #[test]
    fn a_topic_weaker_than_configured_is_named() {
        let w = weaknesses(&cfg(3, 2), &[topic(1, Some(1))]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("topic events has partitions with 1 replica(s)"));
        assert!(w[1].contains("min.insync.replicas 1; kafka.min_insync_replicas is 2"));
        assert!(weaknesses(&cfg(3, 2), &[topic(3, Some(2))]).is_empty());
        // Stronger than configured is fine; an unknown setting is not guessed.
        assert!(weaknesses(&cfg(1, 1), &[topic(3, None)]).is_empty());
    }
}
