//! The value histogram shared by the aggregator, replay and the schema.
//!
//! `value` is recorded into an HdrHistogram in thousandths ([`VALUE_SCALE`]).
//! Its recorded buckets are exported as two parallel arrays (each bucket's
//! highest equivalent value, and its count): exactly what `rollup_5m` stores
//! and what the serving views merge with `sumMap`. Reading a quantile from
//! merged buckets the way [`quantile_from_buckets`] (and the SQL) does gives
//! the same number as one histogram fed every value, provided every writer
//! uses the same significant figures and range.

use hdrhistogram::Histogram;

/// Values are recorded as `round(value * VALUE_SCALE)`. Part of the schema:
/// the serving views divide by it.
pub const VALUE_SCALE: f64 = 1000.0;

#[derive(Debug, Clone)]
pub struct ValueHistogram {
    hist: Histogram<u64>,
    max_scaled: u64,
    /// Values outside `[0, max_value]` that were clamped into range.
    pub clamped: u64,
}

impl ValueHistogram {
    /// `sigfig` 1..=5; `max_value` in units of `value`.
    pub fn new(sigfig: u8, max_value: f64) -> Self {
        let max_scaled = ((max_value * VALUE_SCALE) as u64).max(2);
        let hist = Histogram::new_with_bounds(1, max_scaled, sigfig.clamp(1, 5))
            .expect("bounds and significant figures are valid");
        Self {
            hist,
            max_scaled,
            clamped: 0,
        }
    }

    /// Record one value, clamping (and counting) what is out of range.
    pub fn record(&mut self, value: f64) {
        let scaled = (value * VALUE_SCALE).round();
        let scaled = if scaled < 0.0 || scaled.is_nan() {
            self.clamped += 1;
            0
        } else if scaled > self.max_scaled as f64 {
            self.clamped += 1;
            self.max_scaled
        } else {
            scaled as u64
        };
        self.hist.saturating_record(scaled);
    }

    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The quantile `q` (0..=1) in units of `value`; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / VALUE_SCALE
    }

    /// Recorded buckets as (highest equivalent value, count), ascending.
    pub fn buckets(&self) -> (Vec<u64>, Vec<u64>) {
        self.hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .unzip()
    }

    pub fn merge(&mut self, other: &ValueHistogram) {
        self.hist
            .add(&other.hist)
            .expect("same bounds on both sides");
        self.clamped += other.clamped;
    }

    pub fn clear(&mut self) {
        self.hist.reset();
        self.clamped = 0;
    }
}

/// Merge bucket arrays (what `sumMap` does in ClickHouse).
pub fn merge_buckets<'a>(
    parts: impl IntoIterator<Item = (&'a [u64], &'a [u64])>,
) -> (Vec<u64>, Vec<u64>) {
    let mut merged = std::collections::BTreeMap::<u64, u64>::new();
    for (values, counts) in parts {
        for (v, c) in values.iter().zip(counts) {
            *merged.entry(*v).or_default() += c;
        }
    }
    merged.into_iter().unzip()
}

/// The quantile read from exported buckets, as the serving views read it:
/// the first bucket whose cumulative count reaches `ceil(q * total)`.
pub fn quantile_from_buckets(values: &[u64], counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    let target = ((q * total as f64).ceil() as u64).max(1);
    let mut running = 0;
    for (v, c) in values.iter().zip(counts) {
        running += c;
        if running >= target {
            return *v as f64 / VALUE_SCALE;
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    #[test]
    fn merged_buckets_give_the_same_quantiles_as_one_histogram() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut whole = ValueHistogram::new(3, 3_600_000.0);
        let mut parts: Vec<ValueHistogram> = (0..8)
            .map(|_| ValueHistogram::new(3, 3_600_000.0))
            .collect();
        for i in 0..50_000 {
            // long-tailed latencies
            let v = (rng.random::<f64>().powi(4) * 10_000.0 * 1000.0).round() / 1000.0;
            whole.record(v);
            parts[i % 8].record(v);
        }
        let exported: Vec<_> = parts.iter().map(ValueHistogram::buckets).collect();
        let (values, counts) =
            merge_buckets(exported.iter().map(|(v, c)| (v.as_slice(), c.as_slice())));
        for q in [0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            assert_eq!(
                quantile_from_buckets(&values, &counts, q),
                whole.quantile(q),
                "q={q}"
            );
        }
    }

    #[test]
    fn out_of_range_values_are_clamped_and_counted() {
        let mut h = ValueHistogram::new(3, 10.0);
        h.record(-5.0);
        h.record(5.0);
        h.record(1e9);
        assert_eq!(h.clamped, 2);
        assert_eq!(h.len(), 3);
        assert_eq!(h.quantile(0.0), 0.0);
        assert!(
            (h.quantile(1.0) - 10.0).abs() <= 0.01,
            "{}",
            h.quantile(1.0)
        );
    }

    #[test]
    fn precision_is_three_significant_figures() {
        let mut h = ValueHistogram::new(3, 3_600_000.0);
        h.record(123.456);
        let got = h.quantile(0.5);
        assert!((got - 123.456).abs() / 123.456 < 0.001, "{got}");
    }
}
