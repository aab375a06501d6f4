//! Values the types accept but the pipeline cannot run with, checked in one
//! place: at every component's start and by `hourglass config --check`
//! (which the chart test runs on every rendered values file), so a value is
//! refused before a deployment, not by one component after the others
//! started.

use super::Config;

/// How many copies of a request's body ingest's memory budget charges for
/// its events once they are parsed (see `ingest/src/budget.rs`).
pub const INGEST_EVENT_COPIES: usize = 3;

/// The most `contract.import_max_past_days` may be: every event time then
/// lies within 96 months, so no INSERT of the loader or the aggregator spans
/// the 100 monthly partitions a ClickHouse block may hold.
pub const MAX_IMPORT_PAST_DAYS: u32 = 2_900;

/// Every problem found, one per line, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct InvalidConfig(pub Vec<String>);

impl Config {
    /// Every value the pipeline cannot run with, all at once.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        let c = &self.contract;
        check(
            c.import_max_past_days <= MAX_IMPORT_PAST_DAYS
                && c.max_past_days <= c.import_max_past_days,
            format!(
                "contract.import_max_past_days ({}) must be at most {MAX_IMPORT_PAST_DAYS} (about 95 months) and at least contract.max_past_days ({})",
                c.import_max_past_days, c.max_past_days
            ),
        );
        check(
            !c.tenant_property.is_empty(),
            "contract.tenant_property must name a property".into(),
        );

        let k = &self.kafka;
        check(
            k.replication_factor >= 1
                && (1..=k.replication_factor).contains(&k.min_insync_replicas),
            format!(
                "kafka.min_insync_replicas ({}) must be from 1 to kafka.replication_factor ({}), which must be at least 1",
                k.min_insync_replicas, k.replication_factor
            ),
        );
        check(
            k.partitions >= 1,
            format!("kafka.partitions ({}) must be at least 1", k.partitions),
        );

        let ch = &self.clickhouse;
        check(
            !ch.is_cluster() || (ch.insert_quorum >= 1 && ch.insert_quorum_timeout_secs >= 1),
            format!(
                "clickhouse.insert_quorum ({}) and clickhouse.insert_quorum_timeout_secs ({}) must be at least 1 with clickhouse.cluster set",
                ch.insert_quorum, ch.insert_quorum_timeout_secs
            ),
        );
        check(
            ch.cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            format!(
                "clickhouse.cluster ({:?}) must be a cluster name of letters, digits, `_` and `-`",
                ch.cluster
            ),
        );

        let i = &self.ingest;
        check(
            i.rate_limit_events_per_sec == 0 || (i.rate_limit_burst as usize) >= c.max_batch_events,
            format!(
                "ingest.rate_limit_burst ({}) must be at least contract.max_batch_events ({}), or a full batch could never pass",
                i.rate_limit_burst, c.max_batch_events
            ),
        );
        check(
            i.max_decoded_bytes >= i.max_body_bytes,
            "ingest.max_decoded_bytes must be at least ingest.max_body_bytes".into(),
        );
        let largest = i.max_body_bytes + INGEST_EVENT_COPIES * i.max_decoded_bytes;
        check(
            i.max_in_flight_bytes >= largest,
            format!(
                "ingest.max_in_flight_bytes ({}) must hold one largest request: max_body_bytes + {INGEST_EVENT_COPIES} × max_decoded_bytes = {largest}",
                i.max_in_flight_bytes
            ),
        );
        check(i.replicas >= 1, "ingest.replicas must be at least 1".into());
        let hashing = i.ip_policy == crate::config::IpPolicy::Hash
            || self
                .projects
                .values()
                .any(|p| p.ip_policy == Some(crate::config::IpPolicy::Hash));
        check(
            !hashing || !i.ip_hash_key.is_empty(),
            "ingest.ip_hash_key must be set where an ip_policy is `hash`".into(),
        );
        let ttl = self.clickhouse.events_retention_days;
        if ttl > 0 {
            // Only days set on purpose: the defaults' 0 ("forever") is what
            // the TTL was always for.
            let longer = |raw: Option<u32>| raw.is_some_and(|d| d == 0 || d > ttl);
            let mut keeping: Vec<&str> = self
                .projects
                .iter()
                .filter(|(_, p)| {
                    let tier = self.retention.tiers.get(&p.tier);
                    longer(p.raw_days.or(tier.and_then(|t| t.raw_days)))
                })
                .map(|(id, _)| id.as_str())
                .collect();
            if self.retention.raw_days > ttl {
                keeping.push("(projects not listed: retention.raw_days)");
            }
            check(
                keeping.is_empty(),
                format!(
                    "clickhouse.events_retention_days ({ttl}) deletes raw events of every project after {ttl} days, but these keep them longer: {}; set their days at most {ttl}, or leave the TTL at 0 and use [retention]",
                    keeping.join(", ")
                ),
            );
        }
        for (id, p) in &self.projects {
            check(
                !id.is_empty() && !id.contains('\u{1f}'),
                format!("projects.{id:?}: a project id must be non-empty text"),
            );
            check(
                p.tier.is_empty() || self.retention.tiers.contains_key(&p.tier),
                format!(
                    "projects.{id}.tier ({:?}) names no [retention.tiers.{}]",
                    p.tier, p.tier
                ),
            );
            check(
                p.events_burst == 0 || p.events_burst >= p.events_per_sec,
                format!(
                    "projects.{id}.events_burst ({}) must be 0 or at least its events_per_sec ({})",
                    p.events_burst, p.events_per_sec
                ),
            );
        }
        check(
            i.header_read_timeout_secs > 0 && i.body_read_timeout_secs > 0,
            "ingest.header_read_timeout_secs and ingest.body_read_timeout_secs must be at least 1"
                .into(),
        );

        let a = &self.aggregator;
        check(
            a.window_secs > 0 && 3_600 % a.window_secs == 0,
            format!(
                "aggregator.window_secs ({}) must divide an hour (the batch layer recomputes hours of whole windows)",
                a.window_secs
            ),
        );
        check(
            (1..=5).contains(&a.histogram_sigfig),
            "aggregator.histogram_sigfig must be 1..=5".into(),
        );
        check(
            a.max_keys_per_window > 0,
            "aggregator.max_keys_per_window must be > 0".into(),
        );
        check(
            a.max_ahead_secs <= 86_400,
            format!(
                "aggregator.max_ahead_secs ({}) must be at most 86400 (a day): with the oldest event the aggregator windows, it bounds the months one flush spans",
                a.max_ahead_secs
            ),
        );

        let l = &self.loader;
        check(
            l.batch_rows > 0 && l.batch_bytes > 0,
            "loader.batch_rows and loader.batch_bytes must be > 0".into(),
        );
        let r = &self.consumers;
        check(
            r.retry_initial_ms > 0 && r.retry_max_ms >= r.retry_initial_ms,
            format!(
                "consumers.retry_initial_ms ({}) must be > 0 and at most consumers.retry_max_ms ({})",
                r.retry_initial_ms, r.retry_max_ms
            ),
        );
        check(
            (0.0..=1.0).contains(&r.retry_jitter),
            format!(
                "consumers.retry_jitter ({}) must be between 0 and 1",
                r.retry_jitter
            ),
        );
        let k = &self.lake;
        check(
            k.file_max_rows > 0 && k.file_max_bytes > 0,
            "lake.file_max_rows and lake.file_max_bytes must be > 0".into(),
        );
        check(
            k.compact_max_bytes > 0 && k.compact_lookback_hours > 0,
            "lake.compact_max_bytes and lake.compact_lookback_hours must be > 0".into(),
        );

        let q = &self.query;
        check(
            q.max_result_rows > u64::from(q.max_page_size),
            format!(
                "query.max_result_rows ({}) must exceed query.max_page_size ({}): a page reads one row more than it shows",
                q.max_result_rows, q.max_page_size
            ),
        );
        check(
            q.max_memory_bytes > 0 && q.query_timeout_ms > 0,
            "query.max_memory_bytes and query.query_timeout_ms must be > 0".into(),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidConfig(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_every_problem_is_named() {
        Config::default().validate().unwrap();
        let mut c = Config::default();
        c.contract.import_max_past_days = 3_000;
        c.aggregator.window_secs = 7;
        c.aggregator.max_ahead_secs = 100_000;
        c.loader.batch_rows = 0;
        c.query.max_result_rows = 10;
        c.clickhouse.events_retention_days = 30;
        c.projects.insert(
            "p".into(),
            crate::config::ProjectConfig {
                raw_days: Some(60),
                ..Default::default()
            },
        );
        let err = c.validate().unwrap_err();
        let keys = [
            "contract.import_max_past_days",
            "clickhouse.events_retention_days",
            "aggregator.window_secs",
            "aggregator.max_ahead_secs",
            "loader.batch_rows",
            "query.max_result_rows",
        ];
        assert_eq!(err.0.len(), keys.len(), "{err}");
        for (problem, key) in err.0.iter().zip(keys) {
            assert!(problem.starts_with(key), "{problem}");
        }
    }
}
