use ahash::AHashSet;
use hourglass_core::histogram::{ValueHistogram, quantile_from_buckets};

/// Everything one (window, key) of one partition accumulates.
#[derive(Debug, Clone)]
pub struct KeyAggregate {
    pub events: u64,
    pub users: AHashSet<u64>,
    pub value_count: u64,
    pub value_sum: f64,
    pub value_min: f64,
    pub value_max: f64,
    /// Created on the first value: most keys (page views) carry none.
    pub histogram: Option<ValueHistogram>,
}

impl Default for KeyAggregate {
    fn default() -> Self {
        Self {
            events: 0,
            users: AHashSet::new(),
            value_count: 0,
            value_sum: 0.0,
            value_min: f64::INFINITY,
            value_max: f64::NEG_INFINITY,
            histogram: None,
        }
    }
}

impl KeyAggregate {
    /// Add one event; returns whether its value had to be clamped.
    pub fn add(&mut self, user_hash: u64, value: Option<f64>, sigfig: u8, max_value: f64) -> bool {
        self.events += 1;
        self.users.insert(user_hash);
        let Some(v) = value else { return false };
        self.value_count += 1;
        self.value_sum += v;
        self.value_min = self.value_min.min(v);
        self.value_max = self.value_max.max(v);
        let h = self
            .histogram
            .get_or_insert_with(|| ValueHistogram::new(sigfig, max_value));
        let before = h.clamped;
        h.record(v);
        h.clamped != before
    }
}

/// One closed (window, key) of one partition: a row of `rollup_5m` minus the
/// checkpoint columns the flush adds.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    pub window_start_ms: i64,
    pub project_id: String,
    pub event: String,
    /// Canonical JSON object of the configured dimensions.
    pub dimensions: String,
    pub events: u64,
    pub users: u64,
    /// Sorted user hashes, so hourly and daily distinct counts stay exact.
    pub user_hashes: Vec<u64>,
    pub value_count: u64,
    pub value_sum: f64,
    pub value_min: f64,
    pub value_max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub hist_values: Vec<u64>,
    pub hist_counts: Vec<u64>,
}

impl RollupRow {
    pub fn new(window_start_ms: i64, key: &str, agg: KeyAggregate) -> Self {
        let mut parts = key.splitn(3, '\u{1f}');
        let project_id = parts.next().unwrap_or_default().to_owned();
        let event = parts.next().unwrap_or_default().to_owned();
        let dimensions = parts.next().unwrap_or("{}").to_owned();
        let mut user_hashes: Vec<u64> = agg.users.into_iter().collect();
        user_hashes.sort_unstable();
        let (hist_values, hist_counts) = agg
            .histogram
            .as_ref()
            .map(|h| h.buckets())
            .unwrap_or_default();
        // Read from the exported buckets, as the serving views read them
        // (one pass over the histogram instead of one per quantile).
        let q = |q: f64| quantile_from_buckets(&hist_values, &hist_counts, q);
        let has_values = agg.value_count > 0;
        Self {
            window_start_ms,
            project_id,
            event,
            dimensions,
            events: agg.events,
            users: user_hashes.len() as u64,
            user_hashes,
            value_count: agg.value_count,
            value_sum: agg.value_sum,
            value_min: if has_values { agg.value_min } else { 0.0 },
            value_max: if has_values { agg.value_max } else { 0.0 },
            p50: q(0.5),
            p90: q(0.9),
            p95: q(0.95),
            p99: q(0.99),
            hist_values,
            hist_counts,
        }
    }
}
