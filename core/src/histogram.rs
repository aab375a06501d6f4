//! The value histogram shared by the aggregator, replay and the schema.
//!
//! `value` is recorded into an HdrHistogram in thousandths ([`VALUE_SCALE`]).
//! Its recorded buckets are exported as two parallel arrays (each bucket's
//! highest equivalent value, and its count): exactly what `rollup_5m` stores
//! and what the serving views merge with `sumMap`. Reading a quantile from
//! merged buckets the way [`quantile_from_buckets`] (and the SQL) does gives
//! the same number as one histogram fed every value, provided every writer
//! uses the same significant figures and range.

use std::sync::OnceLock;

use hdrhistogram::Histogram;

/// Values are recorded as `round(value * VALUE_SCALE)`. Part of the schema:
/// the serving views divide by it.
pub const VALUE_SCALE: f64 = 1000.0;

/// How many values a histogram keeps as a plain list before it takes its
/// dense HdrHistogram form. A dense histogram over the default range (one
/// hour in thousandths, 3 significant figures) is 23,552 counters, 188 KB,
/// zeroed when made and scanned in full for every bucket export and
/// quantile; most (window, key) pairs see a few hundred values, for which
/// that was the aggregator's largest cost per event.
const LIST_LIMIT: usize = 2048;

/// An HdrHistogram of `value`, kept as the list of its values until it holds
/// more than [`LIST_LIMIT`]. Both forms count into HdrHistogram's own buckets
/// (its bucket arithmetic is asked, not copied), so the buckets and
/// quantiles are those of one `hdrhistogram::Histogram` fed the same values.
#[derive(Debug, Clone)]
pub struct ValueHistogram {
    sigfig: u8,
    max_scaled: u64,
    /// Scaled and clamped values, in arrival order, while few.
    list: Vec<u64>,
    dense: Option<Box<Histogram<u64>>>,
    /// Values outside `[0, max_value]` that were clamped into range.
    pub clamped: u64,
}

impl ValueHistogram {
    /// `sigfig` 1..=5; `max_value` in units of `value`.
    pub fn new(sigfig: u8, max_value: f64) -> Self {
        Self {
            sigfig: sigfig.clamp(1, 5),
            max_scaled: ((max_value * VALUE_SCALE) as u64).max(2),
            list: Vec::new(),
            dense: None,
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
        if let Some(dense) = self.dense.as_mut() {
            dense.saturating_record(scaled);
            return;
        }
        self.list.push(scaled);
        if self.list.len() > LIST_LIMIT {
            let mut dense = Histogram::new_with_bounds(1, self.max_scaled, self.sigfig)
                .expect("bounds and significant figures are valid");
            for v in std::mem::take(&mut self.list) {
                dense.saturating_record(v);
            }
            self.dense = Some(Box::new(dense));
        }
    }

    pub fn len(&self) -> u64 {
        match &self.dense {
            Some(dense) => dense.len(),
            None => self.list.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The quantile `q` (0..=1) in units of `value`, as HdrHistogram's
    /// `value_at_quantile` gives it; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if let Some(dense) = &self.dense {
            return dense.value_at_quantile(q) as f64 / VALUE_SCALE;
        }
        if self.list.is_empty() {
            return 0.0;
        }
        if q <= 0.0 {
            let lowest = self.list.iter().min().copied().unwrap_or_default();
            return shape(self.sigfig).lowest_equivalent(lowest) as f64 / VALUE_SCALE;
        }
        let (values, counts) = self.buckets();
        quantile_from_buckets(&values, &counts, q)
    }

    /// Recorded buckets as (highest equivalent value, count), ascending.
    pub fn buckets(&self) -> (Vec<u64>, Vec<u64>) {
        if let Some(dense) = &self.dense {
            return dense
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .unzip();
        }
        let shape = shape(self.sigfig);
        let mut highest: Vec<u64> = self
            .list
            .iter()
            .map(|v| shape.highest_equivalent(*v))
            .collect();
        highest.sort_unstable();
        let (mut values, mut counts) = (Vec::new(), Vec::<u64>::new());
        for v in highest {
            match values.last() {
                Some(last) if *last == v => *counts.last_mut().expect("paired") += 1,
                _ => {
                    values.push(v);
                    counts.push(1);
                }
            }
        }
        (values, counts)
    }
}

/// An empty histogram of `sigfig` significant figures, asked for bucket
/// bounds only: they depend on the significant figures and the lowest
/// discernible value (1), not on the highest trackable one.
fn shape(sigfig: u8) -> &'static Histogram<u8> {
    static SHAPES: [OnceLock<Histogram<u8>>; 5] = [const { OnceLock::new() }; 5];
    let sigfig = sigfig.clamp(1, 5);
    SHAPES[usize::from(sigfig - 1)].get_or_init(|| {
        Histogram::new_with_bounds(1, 2, sigfig).expect("bounds and significant figures are valid")
    })
}

/// A ClickHouse expression giving the bucket ([`ValueHistogram::buckets`]'s
/// value: the highest equivalent value, in thousandths) that
/// [`ValueHistogram::record`] puts `value_expr` (a non-null Float64) in:
/// the same rounding (half away from zero), the same clamping to
/// `[0, max_value]`, the same HdrHistogram bucket arithmetic. The batch layer
/// computes its histograms with it inside ClickHouse; a test holds it equal
/// to the Rust side over many values.
pub fn sql_bucket(value_expr: &str, sigfig: u8, max_value: f64) -> String {
    let max_scaled = ((max_value * VALUE_SCALE) as u64).max(2);
    // HdrHistogram's sub-bucket count is the power of two at or above
    // 2 * 10^sigfig, 2^(m+1). Values below it have buckets of width one;
    // above, a value with highest bit k shares its bucket with the 2^(k-m)
    // values that agree with it above bit k-m.
    let magnitude = (2.0 * 10f64.powi(i32::from(sigfig.clamp(1, 5))))
        .log2()
        .ceil() as u32;
    let m = magnitude - 1;
    let exact_below = 1u64 << magnitude;
    // Rust's round() goes half away from zero, ClickHouse's round() may go
    // to even, so it is spelt out (y - floor(y) is exact below 2^52).
    // Negative values land on 0 either way.
    let y = format!("(({value_expr}) * 1000.0)");
    let s = format!(
        "toUInt64(if({y} <= 0, 0, least(if({y} - floor({y}) >= 0.5, floor({y}) + 1, floor({y})), {max_scaled})))"
    );
    // floor(log2()) of a float can be one off near powers of two: corrected
    // both ways by exact integer comparisons.
    let k0 = format!("toInt32(floor(log2(toFloat64(greatest({s}, 1)))))");
    let k = format!(
        "({k0} - (bitShiftLeft(toUInt64(1), {k0}) > {s}) + (bitShiftLeft(toUInt64(1), {k0} + 1) <= {s}))"
    );
    format!(
        "if({s} < {exact_below}, {s}, bitOr({s}, toUInt64(bitShiftLeft(toUInt64(1), greatest({k} - {m}, 0)) - 1)))"
    )
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

    /// Both forms against `hdrhistogram::Histogram` itself, across the
    /// switch from list to dense.
    #[test]
    fn buckets_and_quantiles_are_hdrhistogram_s() {
        let mut rng = SmallRng::seed_from_u64(11);
        for n in [1, 2, 3, 10, 100, LIST_LIMIT, LIST_LIMIT + 1, 10_000] {
            for sigfig in [2, 3] {
                let mut ours = ValueHistogram::new(sigfig, 3_600_000.0);
                let mut hdr = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, sigfig).unwrap();
                for _ in 0..n {
                    let v = (rng.random::<f64>().powi(4) * 100_000.0 * 1000.0).round() / 1000.0;
                    ours.record(v);
                    hdr.record((v * VALUE_SCALE).round() as u64).unwrap();
                }
                let want: (Vec<u64>, Vec<u64>) = hdr
                    .iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value()))
                    .unzip();
                assert_eq!(ours.buckets(), want, "n={n} sigfig={sigfig}");
                assert_eq!(ours.len(), n as u64);
                for q in [0.0, 0.001, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
                    assert_eq!(
                        ours.quantile(q),
                        hdr.value_at_quantile(q) as f64 / VALUE_SCALE,
                        "n={n} sigfig={sigfig} q={q}"
                    );
                }
            }
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
