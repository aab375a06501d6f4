use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use ahash::AHashMap;
use chrono::Datelike;

use super::aggregate::{KeyAggregate, RollupRow};
use super::{OVERFLOW_KEY, WindowConfig, user_hash};

/// The fields of an event the core reads, borrowed from the decoded record.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub project_id: &'a str,
    pub event: &'a str,
    pub user: &'a str,
    pub timestamp_ms: i64,
    pub value: Option<f64>,
    /// The configured dimensions' values, in [`WindowConfig::dimensions`]
    /// order (missing ones count as empty): see [`super::dimension_values`].
    pub dimensions: &'a [Cow<'a, str>],
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    Added,
    /// Added, but under the overflow key: the window had too many keys.
    Overflow,
    /// Its window had already closed.
    Late,
    /// Dated more than `max_ahead` after the wall clock: set aside with the
    /// late records, never windowed.
    Ahead,
    /// Dated more than [`MAX_BEHIND_MS`] before the wall clock (older than
    /// even `/v1/import` accepts): set aside the same way.
    TooOld,
}

/// How far before the wall clock an event may be dated and still be
/// windowed: the most `contract.import_max_past_days` may be (2,900 days)
/// plus a day. A history import closes windows of many months at once; they
/// are written one month per flush ([`PartitionWindows::take_closed`]).
pub const MAX_BEHIND_MS: i64 = 2_901 * 86_400_000;

/// What a flush must write with its rows so a restart resumes exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Where to resume reading: every event of a still-open window is at or after it.
    pub resume_offset: i64,
    /// Event-time watermark; windows it closed are never reopened after a restart.
    pub watermark_ms: i64,
}

/// A record counted late, for the batch layer's reconciliation
/// (`late_events`): the speed layer left it out, the batch takes it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateRecord {
    /// Start of the event-time hour, Unix seconds.
    pub hour: i64,
    pub project_id: Box<str>,
    pub event: Box<str>,
    pub offset: i64,
}

/// Late records held before a flush writes them even without a closed
/// window (a history import into a quiet stream closes none).
pub const LATE_FLUSH_AT: usize = 10_000;

/// Longest a late record waits for a window's flush to carry it: on a
/// partition where no window closes (an import of history into a quiet
/// stream) the records go out alone, so reconciliation is not left
/// explaining hours with records nobody wrote down.
pub const LATE_MAX_WAIT_MS: i64 = 60_000;

/// Closed windows taken from a partition, ready to flush in one INSERT.
#[derive(Debug)]
pub struct ClosedWindows {
    pub rows: Vec<RollupRow>,
    /// Records counted late since the last flush: written before the rows,
    /// so the checkpoint never passes a late record left unwritten.
    pub late: Vec<LateRecord>,
    pub windows: usize,
    pub last_window_start_ms: i64,
    pub checkpoint: Checkpoint,
}

/// Keyed with aHash: a key is looked up per record, and std's SipHash was
/// a visible share of the loop; aHash is seeded per process, so hostile
/// dimension values cannot aim at collisions either.
#[derive(Debug, Default)]
struct Window {
    keys: AHashMap<Box<str>, KeyAggregate>,
    /// Keys each project holds here, its `__other__` aside: one project's
    /// cap is its own.
    project_keys: AHashMap<Box<str>, usize>,
    min_offset: i64,
}

/// Open windows and watermark of one source partition.
#[derive(Debug)]
pub struct PartitionWindows {
    cfg: Arc<WindowConfig>,
    watermark: i64,
    windows: BTreeMap<i64, Window>,
    closed: Vec<(i64, Window)>,
    late: Vec<LateRecord>,
    /// Wall clock at the first late record waiting in `late`.
    late_since_ms: i64,
    /// `late` has waited [`LATE_MAX_WAIT_MS`]: flush it without a window.
    late_due: bool,
    next_offset: i64,
    /// Resume offset of the last checkpoint known written (the start
    /// offset until a flush lands): where a restart would read from.
    written_resume_offset: i64,
    /// Watermark of the last checkpoint taken with rows (the restored one
    /// at first): each flush's is strictly larger, which is how a flush's
    /// rows are told apart in `rollup_5m`.
    last_checkpoint_watermark: i64,
    idle_since_ms: i64,
    caught_up: bool,
    idle_confirmed: bool,
    idle_doubted: bool,
    key_buf: String,
    dims_buf: Vec<u8>,
    pub late_events: u64,
    pub ahead_events: u64,
    pub too_old_events: u64,
    pub overflow_events: u64,
    pub clamped_values: u64,
}

impl PartitionWindows {
    /// A partition starting at `start_offset`, restoring the watermark of the
    /// last flush when there was one.
    pub fn new(cfg: Arc<WindowConfig>, start_offset: i64, watermark_ms: Option<i64>) -> Self {
        Self {
            cfg,
            watermark: watermark_ms.unwrap_or(i64::MIN),
            windows: BTreeMap::new(),
            closed: Vec::new(),
            late: Vec::new(),
            late_since_ms: 0,
            late_due: false,
            next_offset: start_offset,
            written_resume_offset: start_offset,
            last_checkpoint_watermark: watermark_ms.unwrap_or(i64::MIN),
            idle_since_ms: i64::MIN,
            caught_up: false,
            idle_confirmed: false,
            idle_doubted: false,
            key_buf: String::new(),
            dims_buf: Vec::new(),
            late_events: 0,
            ahead_events: 0,
            too_old_events: 0,
            overflow_events: 0,
            clamped_values: 0,
        }
    }

    pub fn watermark_ms(&self) -> Option<i64> {
        (self.watermark != i64::MIN).then_some(self.watermark)
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The records a restart would read again: from the last checkpoint
    /// written to the current position.
    pub fn unwritten_offsets(&self) -> std::ops::Range<i64> {
        self.written_resume_offset..self.next_offset
    }

    /// A flush carrying `checkpoint` has landed.
    pub fn checkpoint_written(&mut self, checkpoint: Checkpoint) {
        self.written_resume_offset = self.written_resume_offset.max(checkpoint.resume_offset);
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    pub fn open_keys(&self) -> usize {
        self.windows.values().map(|w| w.keys.len()).sum()
    }

    /// Add one event read at `offset` (offsets only grow within a partition).
    pub fn ingest(&mut self, event: &EventRef<'_>, offset: i64, wall_ms: i64) -> Ingested {
        self.next_offset = offset + 1;
        self.caught_up = false;
        self.idle_confirmed = false;
        self.idle_doubted = false;
        self.idle_since_ms = wall_ms;
        let start = self.cfg.window_start(event.timestamp_ms);
        let outcome = if event.timestamp_ms > wall_ms.saturating_add(self.cfg.max_ahead_ms) {
            Some(Ingested::Ahead)
        } else if event.timestamp_ms < wall_ms.saturating_sub(MAX_BEHIND_MS) {
            Some(Ingested::TooOld)
        } else if self.cfg.is_closed(start, self.watermark) {
            Some(Ingested::Late)
        } else {
            None
        };
        if let Some(outcome) = outcome {
            match outcome {
                Ingested::Ahead => self.ahead_events += 1,
                Ingested::TooOld => self.too_old_events += 1,
                _ => self.late_events += 1,
            }
            if self.late.is_empty() {
                self.late_since_ms = wall_ms;
            }
            self.late.push(LateRecord {
                hour: event.timestamp_ms.div_euclid(3_600_000) * 3600,
                project_id: event.project_id.into(),
                event: event.event.into(),
                offset,
            });
            return outcome;
        }

        self.build_key(event);
        let cfg = Arc::clone(&self.cfg);
        let window = self.windows.entry(start).or_insert_with(|| Window {
            keys: AHashMap::new(),
            project_keys: AHashMap::new(),
            min_offset: offset,
        });
        let mut outcome = Ingested::Added;
        let aggregate = match window.keys.get_mut(self.key_buf.as_str()) {
            Some(a) => a,
            None => {
                // One lookup; the id is copied only for a project's first key.
                let cap = cfg.max_keys_for(event.project_id);
                let admitted = match window.project_keys.get_mut(event.project_id) {
                    Some(held) if *held < cap => {
                        *held += 1;
                        true
                    }
                    Some(_) => false,
                    None => {
                        window.project_keys.insert(event.project_id.into(), 1);
                        true
                    }
                };
                if !admitted {
                    outcome = Ingested::Overflow;
                    self.overflow_events += 1;
                    self.key_buf.clear();
                    self.key_buf.push_str(event.project_id);
                    self.key_buf.push('\u{1f}');
                    self.key_buf.push_str(OVERFLOW_KEY);
                    self.key_buf.push_str("\u{1f}{}");
                }
                window.keys.entry(self.key_buf.as_str().into()).or_default()
            }
        };
        if aggregate.add(
            user_hash(event.user),
            event.value,
            cfg.histogram_sigfig,
            cfg.histogram_max_value,
        ) {
            self.clamped_values += 1;
        }
        // An event a little ahead of the clock (within `max_ahead`) waits in
        // its window; the watermark goes no further than the clock.
        let watermark = event.timestamp_ms.min(wall_ms);
        if watermark > self.watermark {
            self.watermark = watermark;
            self.close_windows();
        }
        outcome
    }

    /// The consumer reached the end of the partition at `wall_ms`.
    pub fn mark_caught_up(&mut self, wall_ms: i64) {
        if !self.caught_up {
            self.caught_up = true;
            self.idle_since_ms = wall_ms;
        }
    }

    /// Whether [`tick`](Self::tick) at `wall_ms` would move the watermark on
    /// an idle state nobody has confirmed yet. An end-of-partition signal can
    /// come early (a broker answering a fetch for other partitions), so the
    /// consumer asks the broker for the partition's end first.
    pub fn needs_idle_check(&self, wall_ms: i64) -> bool {
        self.caught_up
            && !self.idle_confirmed
            && wall_ms.saturating_sub(self.idle_since_ms) >= self.cfg.idle_timeout_ms
            && wall_ms > self.watermark
    }

    /// The broker's answer to [`needs_idle_check`](Self::needs_idle_check)
    /// at `wall_ms`. When it says records are waiting, the idle jump is put
    /// off by nine more idle timeouts: records arriving meanwhile end the idle
    /// spell. A second doubt is not held against the partition (a broker may
    /// report an end past the last readable record), so it never stalls.
    pub fn confirm_idle(&mut self, idle: bool, wall_ms: i64) {
        if idle || self.idle_doubted {
            self.idle_confirmed = true;
        } else {
            self.idle_doubted = true;
            self.idle_since_ms = wall_ms.saturating_add(9 * self.cfg.idle_timeout_ms);
        }
    }

    /// Advance an idle, caught-up partition's watermark to the wall clock,
    /// and mark late records that have waited long enough as due.
    pub fn tick(&mut self, wall_ms: i64) {
        self.late_due =
            !self.late.is_empty() && wall_ms.saturating_sub(self.late_since_ms) >= LATE_MAX_WAIT_MS;
        if self.caught_up
            && wall_ms.saturating_sub(self.idle_since_ms) >= self.cfg.idle_timeout_ms
            && wall_ms > self.watermark
        {
            self.watermark = wall_ms;
            self.close_windows();
        }
    }

    fn close_windows(&mut self) {
        while let Some(entry) = self.windows.first_entry() {
            if !self.cfg.is_closed(*entry.key(), self.watermark) {
                break;
            }
            let (start, window) = entry.remove_entry();
            self.closed.push((start, window));
        }
    }

    /// Whether windows have closed since the last [`Self::take_closed`], or
    /// enough late records wait to be written.
    pub fn has_closed(&self) -> bool {
        !self.closed.is_empty() || self.late.len() >= LATE_FLUSH_AT || self.late_due
    }

    /// Take the closed windows of the oldest month among them, every late
    /// record, and the checkpoint to write alongside them.
    ///
    /// One month, because ClickHouse writes one part per monthly partition
    /// and can die between two of them: a flush of one month lands in
    /// `rollup_5m` whole or not at all, so whoever settles it later (the
    /// partition's next owner, from the rows alone) knows it is complete.
    /// The windows of later months stay closed here for the next flush, and
    /// this flush's checkpoint is the one a partition would have had with
    /// only this month closed: its watermark stops just short of closing
    /// the first window left, and its resume offset is at or before that
    /// window's first event, so a restart from it rebuilds what is left.
    pub fn take_closed(&mut self) -> Option<ClosedWindows> {
        self.take(true)
    }

    /// Every closed window at once, whatever the months (lake replay and
    /// benchmarks: nothing resumes from their checkpoints).
    pub fn take_all_closed(&mut self) -> Option<ClosedWindows> {
        self.take(false)
    }

    fn take(&mut self, one_month: bool) -> Option<ClosedWindows> {
        if !self.has_closed() {
            return None;
        }
        let (taken, watermark_ms): (Vec<_>, _) = match self.month_split().filter(|_| one_month) {
            Some((at, watermark)) => (self.closed.drain(..at).collect(), watermark),
            None => (std::mem::take(&mut self.closed), self.watermark),
        };
        let resume_offset = self
            .windows
            .values()
            .chain(self.closed.iter().map(|(_, w)| w))
            .map(|w| w.min_offset)
            .min()
            .unwrap_or(self.next_offset);
        self.late_due = false;
        let windows = taken.len();
        if windows > 0 {
            self.last_checkpoint_watermark = watermark_ms;
        }
        let last_window_start_ms = taken.last().map(|(s, _)| *s).unwrap_or_default();
        let mut rows = Vec::new();
        for (start, window) in taken {
            let mut keys: Vec<_> = window.keys.into_iter().collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            rows.extend(
                keys.into_iter()
                    .map(|(key, agg)| RollupRow::new(start, &key, agg)),
            );
        }
        Some(ClosedWindows {
            rows,
            late: std::mem::take(&mut self.late),
            windows,
            last_window_start_ms,
            checkpoint: Checkpoint {
                resume_offset,
                watermark_ms,
            },
        })
    }

    /// Where the closed windows pass from their oldest month to the next,
    /// and the watermark that closes the first part and not the second
    /// (None: one month, or no watermark fits between the last
    /// checkpoint's and the next month's first window).
    fn month_split(&self) -> Option<(usize, i64)> {
        let month = |start_ms: i64| {
            chrono::DateTime::from_timestamp_millis(start_ms)
                .map(|d| (d.year(), d.month()))
                .unwrap_or_default()
        };
        let first = month(self.closed.first()?.0);
        let at = self.closed.iter().position(|(s, _)| month(*s) != first)?;
        let next_start = self.closed[at].0;
        let watermark = next_start
            .saturating_add(self.cfg.window_ms)
            .saturating_add(self.cfg.grace_ms)
            - 1;
        (watermark > self.last_checkpoint_watermark).then_some((at, watermark))
    }

    /// `project \x1f event \x1f {"dim":"value",...}` into `key_buf`, without
    /// allocating once the buffers have grown.
    fn build_key(&mut self, event: &EventRef<'_>) {
        self.key_buf.clear();
        self.key_buf.push_str(event.project_id);
        self.key_buf.push('\u{1f}');
        self.key_buf.push_str(event.event);
        self.key_buf.push('\u{1f}');
        self.dims_buf.clear();
        hourglass_core::dimensions::write_key_json(
            &mut self.dims_buf,
            &self.cfg.dimensions,
            event.dimensions,
            self.cfg.max_dimension_len,
        );
        self.key_buf
            .push_str(std::str::from_utf8(&self.dims_buf).expect("serde_json writes UTF-8"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;
    use serde_json::{Map, Value};
    use std::collections::HashMap;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    /// The wall clock of tests that are not about it: a day after T0.
    const NOW: i64 = T0 + 24 * 60 * MIN;

    fn cfg(dimensions: &[&str], max_keys: usize) -> Arc<WindowConfig> {
        Arc::new(WindowConfig {
            window_ms: 5 * MIN,
            grace_ms: MIN,
            idle_timeout_ms: 10_000,
            max_ahead_ms: 10 * MIN,
            dimensions: dimensions.iter().map(|s| s.to_string()).collect(),
            max_keys_per_window: max_keys,
            project_max_keys: HashMap::new(),
            max_dimension_len: 16,
            histogram_sigfig: 3,
            histogram_max_value: 1000.0,
        })
    }

    fn ev(event: &str, user: &str, ts: i64, value: Option<f64>) -> EventRef<'static> {
        EventRef {
            project_id: "p",
            event: Box::leak(event.to_owned().into_boxed_str()),
            user: Box::leak(user.to_owned().into_boxed_str()),
            timestamp_ms: ts,
            value,
            dimensions: &[],
        }
    }

    fn rows(p: &mut PartitionWindows) -> Vec<RollupRow> {
        p.take_closed().map(|c| c.rows).unwrap_or_default()
    }

    #[test]
    fn out_of_order_events_inside_grace_are_counted() {
        let mut p = PartitionWindows::new(cfg(&[], 100), 0, None);
        assert_eq!(
            p.ingest(&ev("a", "u1", T0 + 4 * MIN, None), 0, NOW),
            Ingested::Added
        );
        // next window, watermark T0+5m30s: window 0 not closed until T0+6m
        assert_eq!(
            p.ingest(&ev("a", "u2", T0 + 5 * MIN + 30_000, None), 1, NOW),
            Ingested::Added
        );
        assert_eq!(
            p.ingest(&ev("a", "u3", T0 + MIN, None), 2, NOW),
            Ingested::Added,
            "out of order, within grace"
        );
        assert!(p.take_closed().is_none());
        p.ingest(&ev("a", "u1", T0 + 6 * MIN, None), 3, NOW);
        let closed = p.take_closed().unwrap();
        assert_eq!(closed.rows.len(), 1);
        assert_eq!(closed.rows[0].window_start_ms, T0);
        assert_eq!(closed.rows[0].events, 2);
        assert_eq!(closed.rows[0].users, 2);
        assert_eq!(
            closed.checkpoint,
            Checkpoint {
                resume_offset: 1,
                watermark_ms: T0 + 6 * MIN
            }
        );
        assert_eq!(p.late_events, 0);
    }

    #[test]
    fn late_events_after_grace_are_counted_not_added() {
        let mut p = PartitionWindows::new(cfg(&[], 100), 0, None);
        p.ingest(&ev("a", "u1", T0, None), 0, NOW);
        p.ingest(&ev("a", "u1", T0 + 6 * MIN, None), 1, NOW);
        let closed = rows(&mut p);
        assert_eq!(closed[0].events, 1);
        assert_eq!(
            p.ingest(&ev("a", "u9", T0 + 2 * MIN, None), 2, NOW),
            Ingested::Late
        );
        assert_eq!(p.late_events, 1);
        assert!(
            p.take_closed().is_none(),
            "a late event never reopens a window"
        );
        // It goes out with the next flush, for the batch layer's ledger.
        p.ingest(&ev("a", "u1", T0 + 12 * MIN, None), 3, NOW);
        let closed = p.take_closed().unwrap();
        assert_eq!(
            closed.late,
            vec![LateRecord {
                hour: T0.div_euclid(3_600_000) * 3600,
                project_id: "p".into(),
                event: "a".into(),
                offset: 2,
            }]
        );
    }

    #[test]
    fn many_late_records_flush_without_a_closed_window() {
        let mut p = PartitionWindows::new(cfg(&[], 100), 0, Some(T0 + 60 * MIN));
        for offset in 0..LATE_FLUSH_AT as i64 {
            assert!(!p.has_closed());
            p.ingest(&ev("a", "u1", T0, None), offset, NOW);
        }
        let closed = p.take_closed().expect("late records alone are flushed");
        assert_eq!((closed.rows.len(), closed.late.len()), (0, LATE_FLUSH_AT));
        assert!(p.take_closed().is_none());
    }

    /// Event times a hostile or broken client sends: far ahead, far behind,
    /// or past what a date holds. None may move the watermark past the clock
    /// or keep a window (and so the resume offset) open.
    #[test]
    fn events_dated_far_ahead_are_set_aside_and_never_move_the_watermark() {
        let wall = T0 + 7 * MIN;
        let mut p = PartitionWindows::new(cfg(&[], 100), 0, None);
        assert_eq!(p.ingest(&ev("a", "u1", T0, None), 0, wall), Ingested::Added);
        let y2099 = 4_070_908_800_000; // 2099-01-01
        let y9999 = 253_402_300_799_000; // 9999-12-31T23:59:59
        for (offset, ts) in [(1, y2099), (2, y9999), (3, i64::MAX)] {
            assert_eq!(
                p.ingest(&ev("a", "u2", ts, None), offset, wall),
                Ingested::Ahead
            );
        }
        assert_eq!(p.watermark_ms(), Some(T0), "the watermark did not move");
        assert_eq!(p.open_windows(), 1, "no window for the far future");
        assert_eq!(p.ahead_events, 3);
        // 1970 is older than anything the contract accepts: set aside too.
        assert_eq!(p.ingest(&ev("a", "u3", 0, None), 4, wall), Ingested::TooOld);
        assert_eq!(p.too_old_events, 1);
        // Windows keep closing as real time goes by.
        p.ingest(&ev("a", "u1", T0 + 6 * MIN, None), 5, wall);
        let closed = p.take_closed().expect("window 0 closes as it would have");
        assert_eq!(closed.rows.len(), 1);
        assert_eq!(closed.rows[0].events, 1);
        let late: Vec<(i64, i64)> = closed.late.iter().map(|l| (l.offset, l.hour)).collect();
        assert_eq!(
            late,
            vec![
                (1, y2099 / 1000),
                (2, y9999.div_euclid(3_600_000) * 3600),
                (3, i64::MAX.div_euclid(3_600_000) * 3600),
                (4, 0)
            ],
            "set-aside records go to the late ledger for the batch layer"
        );
        assert_eq!(
            closed.checkpoint.resume_offset, 5,
            "nothing far ahead pins the resume offset"
        );
        assert_eq!(closed.checkpoint.watermark_ms, T0 + 6 * MIN);
    }

    /// A history import back to the oldest date an import may bring, two
    /// events a month, read in order: its windows all close at once and go
    /// out one month per flush, each checkpoint's watermark above the last;
    /// a restart from any of those checkpoints writes exactly the rest.
    #[test]
    fn a_history_import_is_written_one_month_per_flush() {
        let wall = 1_796_428_800_000; // 2026-12-05
        let day = 86_400_000;
        let oldest = wall - 2_900 * day;
        let stream: Vec<i64> = (0..)
            .map(|i| oldest + i * 15 * day)
            .take_while(|t| *t < wall)
            .chain([wall + 5 * MIN])
            .collect();
        let month = |ms: i64| {
            let d = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            (d.year(), d.month())
        };
        let run = |from: Option<Checkpoint>, all_at_once: bool| {
            let mut p = PartitionWindows::new(
                cfg(&[], 100),
                from.map_or(0, |c| c.resume_offset),
                from.map(|c| c.watermark_ms),
            );
            let skip = from.map_or(0, |c| c.resume_offset as usize);
            for (off, ts) in stream.iter().enumerate().skip(skip) {
                assert_eq!(
                    p.ingest(&ev("a", "u1", *ts, None), off as i64, wall),
                    Ingested::Added
                );
            }
            let mut flushes = Vec::new();
            loop {
                let taken = if all_at_once {
                    p.take_all_closed()
                } else {
                    p.take_closed()
                };
                let Some(c) = taken else { break };
                flushes.push((c.rows, c.checkpoint));
            }
            flushes
        };
        let straight = run(None, false);
        let months: std::collections::BTreeSet<_> = stream[..stream.len() - 1]
            .iter()
            .map(|t| month(*t))
            .collect();
        assert!(months.len() >= 95, "{} months", months.len());
        assert_eq!(straight.len(), months.len(), "one flush per month");
        for (rows, _) in &straight {
            let first = month(rows[0].window_start_ms);
            assert!(rows.iter().all(|r| month(r.window_start_ms) == first));
        }
        assert!(
            straight
                .windows(2)
                .all(|w| w[0].1.watermark_ms < w[1].1.watermark_ms)
        );
        let all_rows: Vec<RollupRow> = straight.iter().flat_map(|f| f.0.clone()).collect();
        assert_eq!(all_rows.len(), stream.len() - 1);
        let at_once = run(None, true);
        assert_eq!(at_once.len(), 1);
        assert_eq!(at_once[0].0, all_rows);
        for k in [0, 1, straight.len() / 2, straight.len() - 2] {
            let rest: Vec<RollupRow> = run(Some(straight[k].1), false)
                .into_iter()
                .flat_map(|f| f.0)
                .collect();
            let expected: Vec<RollupRow> =
                straight[k + 1..].iter().flat_map(|f| f.0.clone()).collect();
            assert_eq!(rest, expected, "restart from flush {k}");
        }
    }

    /// A client clock a few minutes fast (inside `max_ahead`): its events
    /// wait in their own window; the current window stays open for everyone.
    #[test]
    fn a_fast_client_clock_does_not_close_the_current_window_early() {
        let wall = T0 + 2 * MIN;
        let mut p = PartitionWindows::new(cfg(&[], 100), 0, None);
        p.ingest(&ev("a", "u1", T0 + MIN, None), 0, wall);
        assert_eq!(
            p.ingest(&ev("a", "fast", T0 + 9 * MIN, None), 1, wall),
            Ingested::Added
        );
        assert_eq!(p.watermark_ms(), Some(wall), "held at the clock");
        assert_eq!(
            p.ingest(&ev("a", "u2", T0 + MIN + 1, None), 2, wall),
            Ingested::Added,
            "window 0 is still open"
        );
        assert!(p.take_closed().is_none());
        // Real time reaches the fast event's window: both close in order.
        p.ingest(&ev("a", "u3", T0 + 16 * MIN, None), 3, T0 + 16 * MIN);
        let closed = p.take_closed().expect("closed");
        let events: Vec<(i64, u64)> = closed
            .rows
            .iter()
            .map(|r| (r.window_start_ms, r.events))
            .collect();
        assert_eq!(events, vec![(T0, 2), (T0 + 5 * MIN, 1)]);
    }

    #[test]
    fn a_few_late_records_go_out_alone_after_a_minute() {
        let mut p = PartitionWindows::new(cfg(&[], 100), 0, Some(T0 + 60 * MIN));
        p.ingest(&ev("a", "u1", T0, None), 0, NOW + 1_000);
        p.ingest(&ev("a", "u2", T0, None), 1, NOW + 30_000);
        p.tick(NOW + 1_000 + LATE_MAX_WAIT_MS - 1);
        assert!(p.take_closed().is_none(), "not yet a minute");
        p.tick(NOW + 1_000 + LATE_MAX_WAIT_MS);
        let closed = p.take_closed().expect("due after a minute");
        assert_eq!((closed.rows.len(), closed.late.len()), (0, 2));
        p.tick(NOW + 10 * LATE_MAX_WAIT_MS);
        assert!(p.take_closed().is_none(), "nothing waits any more");
    }

    #[test]
    fn event_exactly_on_a_boundary_belongs_to_the_window_it_starts() {
        let c = cfg(&[], 100);
        assert_eq!(c.window_start(T0 + 5 * MIN), T0 + 5 * MIN);
        assert_eq!(c.window_start(T0 + 5 * MIN - 1), T0);
        assert_eq!(
            c.window_start(-1),
            -5 * MIN,
            "before the epoch still aligns"
        );
        let mut p = PartitionWindows::new(c, 0, None);
        p.ingest(&ev("a", "u1", T0 + 5 * MIN, None), 0, NOW);
        // closes exactly when watermark == end + grace
        p.ingest(&ev("a", "u1", T0 + 11 * MIN - 1, None), 1, NOW);
        assert!(p.take_closed().is_none());
        p.ingest(&ev("a", "u1", T0 + 11 * MIN, None), 2, NOW);
        let r = rows(&mut p);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].window_start_ms, T0 + 5 * MIN);
        assert_eq!(
            r[0].events, 1,
            "the event at end-1ms went to the next window"
        );
    }

    #[test]
    fn idle_partition_closes_its_windows_by_wall_clock() {
        let mut p = PartitionWindows::new(cfg(&[], 100), 0, None);
        let wall = T0 + 60 * MIN;
        p.ingest(&ev("a", "u1", T0, None), 0, wall);
        p.tick(wall + 60_000);
        assert!(p.take_closed().is_none(), "not idle until caught up");
        p.mark_caught_up(wall + 1000);
        p.tick(wall + 5_000);
        assert!(p.take_closed().is_none(), "idle for less than the timeout");
        p.tick(wall + 11_000);
        let closed = p.take_closed().unwrap();
        assert_eq!(closed.rows[0].events, 1);
        assert_eq!(
            closed.checkpoint.resume_offset, 1,
            "nothing open: resume after the last event"
        );
        assert_eq!(closed.checkpoint.watermark_ms, wall + 11_000);
    }

    #[test]
    fn an_early_end_of_partition_is_checked_before_the_watermark_jumps() {
        let mut p = PartitionWindows::new(cfg(&[], 100), 0, None);
        let wall = T0 + 60 * MIN;
        p.ingest(&ev("a", "u1", T0, None), 0, wall);
        p.mark_caught_up(wall);
        assert!(
            !p.needs_idle_check(wall + 5_000),
            "not idle for the timeout yet"
        );
        assert!(p.needs_idle_check(wall + 11_000));
        // The broker says records are waiting: the jump is put off.
        p.confirm_idle(false, wall + 11_000);
        assert!(!p.needs_idle_check(wall + 12_000));
        p.tick(wall + 12_000);
        assert!(p.take_closed().is_none(), "no jump to the wall clock yet");
        // A record arrives: the idle spell is over.
        p.ingest(&ev("a", "u2", T0 + 1, None), 1, wall + 13_000);
        p.mark_caught_up(wall + 13_000);
        assert!(!p.needs_idle_check(wall + 20_000));
        assert!(p.needs_idle_check(wall + 24_000));
        p.confirm_idle(true, wall + 24_000);
        assert!(
            !p.needs_idle_check(wall + 25_000),
            "confirmed once per idle spell"
        );
        p.tick(wall + 24_000);
        assert_eq!(p.take_closed().unwrap().rows[0].events, 2);

        // A broker that keeps reporting records past the last one cannot stall it.
        let mut q = PartitionWindows::new(cfg(&[], 100), 0, None);
        q.ingest(&ev("a", "u1", T0, None), 0, wall);
        q.mark_caught_up(wall);
        q.confirm_idle(false, wall + 11_000);
        assert!(
            !q.needs_idle_check(wall + 101_000),
            "put off by nine idle timeouts"
        );
        assert!(q.needs_idle_check(wall + 111_000));
        q.confirm_idle(false, wall + 111_000);
        q.tick(wall + 111_000);
        assert_eq!(q.take_closed().unwrap().rows[0].events, 1);
    }

    #[test]
    fn cardinality_overflow_goes_to_the_other_key() {
        let mut p = PartitionWindows::new(cfg(&[], 2), 0, None);
        for (i, name) in ["a", "b", "c", "d", "a"].iter().enumerate() {
            let expected = if i == 2 || i == 3 {
                Ingested::Overflow
            } else {
                Ingested::Added
            };
            assert_eq!(
                p.ingest(&ev(name, "u", T0, None), i as i64, NOW),
                expected,
                "{name}"
            );
        }
        p.ingest(&ev("z", "u", T0 + 10 * MIN, None), 5, NOW);
        let r = rows(&mut p);
        let names: Vec<(&str, u64)> = r.iter().map(|r| (r.event.as_str(), r.events)).collect();
        assert_eq!(names, vec![(OVERFLOW_KEY, 2), ("a", 2), ("b", 1)]);
        assert_eq!(p.overflow_events, 2);
    }

    #[test]
    fn each_project_overflows_into_its_own_other_key_at_its_own_cap() {
        let mut cfg = (*cfg(&[], 2)).clone();
        cfg.project_max_keys.insert("big".into(), 3);
        let mut p = PartitionWindows::new(Arc::new(cfg), 0, None);
        let at = |project: &'static str, name: &str| EventRef {
            project_id: project,
            ..ev(name, "u", T0, None)
        };
        // "flood" fills its cap of 2 and overflows; "calm" keeps all of its
        // keys, and "big" its 3, whatever "flood" sent before them.
        let mut overflowed = Vec::new();
        for (offset, (project, name)) in [
            ("flood", "a"),
            ("flood", "b"),
            ("flood", "c"),
            ("flood", "d"),
            ("calm", "a"),
            ("calm", "b"),
            ("big", "a"),
            ("big", "b"),
            ("big", "c"),
            ("big", "d"),
            ("flood", "a"),
        ]
        .into_iter()
        .enumerate()
        {
            if p.ingest(&at(project, name), offset as i64, NOW) == Ingested::Overflow {
                overflowed.push(format!("{project}/{name}"));
            }
        }
        assert_eq!(overflowed, ["flood/c", "flood/d", "big/d"]);
        p.ingest(&ev("z", "u", T0 + 10 * MIN, None), 11, NOW);
        let r = rows(&mut p);
        let got: Vec<(&str, &str, u64)> = r
            .iter()
            .map(|r| (r.project_id.as_str(), r.event.as_str(), r.events))
            .collect();
        assert_eq!(
            got,
            vec![
                ("big", OVERFLOW_KEY, 1),
                ("big", "a", 1),
                ("big", "b", 1),
                ("big", "c", 1),
                ("calm", "a", 1),
                ("calm", "b", 1),
                ("flood", OVERFLOW_KEY, 2),
                ("flood", "a", 2),
                ("flood", "b", 1),
            ]
        );
    }

    #[test]
    fn histogram_clamps_and_keeps_stats() {
        let mut p = PartitionWindows::new(cfg(&[], 10), 0, None);
        for (i, v) in [5.0, 10.0, 2000.0, -1.0].iter().enumerate() {
            p.ingest(&ev("api", "u", T0, Some(*v)), i as i64, NOW);
        }
        p.ingest(&ev("api", "u", T0 + 10 * MIN, None), 4, NOW);
        let r = &rows(&mut p)[0];
        assert_eq!(p.clamped_values, 2);
        assert_eq!(
            (r.value_count, r.value_min, r.value_max, r.value_sum),
            (4, -1.0, 2000.0, 2014.0)
        );
        assert_eq!(r.hist_counts.iter().sum::<u64>(), 4);
        assert!(
            (r.p99 - 1000.0).abs() < 1.0,
            "clamped to the range: {}",
            r.p99
        );
        assert!(
            (r.p50 - 5.0).abs() <= 0.005,
            "within 3 significant figures: {}",
            r.p50
        );
    }

    #[test]
    fn dimensions_split_keys_and_are_canonical_json() {
        let mut p = PartitionWindows::new(cfg(&["path", "country"], 10), 0, None);
        let props: Vec<Map<String, Value>> = [
            r#"{"path":"/a","country":"US"}"#,
            r#"{"country":"US","path":"/a","other":1}"#,
            r#"{"path":"/a-very-long-path-indeed"}"#,
            r#"{"path":7}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        for (i, prop) in props.iter().enumerate() {
            let mut e = ev("view", "u", T0, None);
            let dims = crate::window::dimension_values(&p.cfg.dimensions, Some(prop));
            e.dimensions = &dims;
            p.ingest(&e, i as i64, NOW);
        }
        p.ingest(&ev("x", "u", T0 + 10 * MIN, None), 9, NOW);
        let dims: Vec<(String, u64)> = rows(&mut p)
            .into_iter()
            .filter(|r| r.event == "view")
            .map(|r| (r.dimensions, r.events))
            .collect();
        assert_eq!(
            dims,
            vec![
                (r#"{"path":"/a","country":"US"}"#.to_string(), 2),
                (r#"{"path":"/a-very-long-pat","country":""}"#.to_string(), 1),
                (r#"{"path":"7","country":""}"#.to_string(), 1),
            ]
        );
    }

    #[test]
    fn resume_offset_is_the_oldest_open_event() {
        let mut p = PartitionWindows::new(cfg(&[], 10), 100, None);
        p.ingest(&ev("a", "u", T0, None), 100, NOW);
        p.ingest(&ev("a", "u", T0 + 5 * MIN, None), 101, NOW);
        p.ingest(&ev("a", "u", T0 + 2 * MIN, None), 102, NOW);
        p.ingest(&ev("a", "u", T0 + 10 * MIN, None), 103, NOW);
        p.ingest(&ev("a", "u", T0 + 6 * MIN, None), 104, NOW); // closes window 0
        let c = p.take_closed().unwrap();
        assert_eq!(c.rows[0].events, 2);
        assert_eq!(c.checkpoint.resume_offset, 101);
    }

    #[test]
    fn restart_from_checkpoint_gives_the_same_rows() {
        // The same stream, once straight through and once "crashing" after a flush:
        // the restarted run resumes at the checkpoint with its watermark.
        let stream: Vec<(i64, &str)> = (0..400)
            .map(|i| {
                let jitter = (i * 7919 % 13) * 20_000; // out of order by up to 4 minutes
                (T0 + i * 9_000 - jitter, if i % 3 == 0 { "a" } else { "b" })
            })
            .collect();
        let c = cfg(&[], 100);
        let run = |from: usize, start: Option<Checkpoint>, stop_after_flush: bool| {
            let mut p = PartitionWindows::new(
                c.clone(),
                start.map_or(0, |s| s.resume_offset),
                start.map(|s| s.watermark_ms),
            );
            let mut out = Vec::new();
            for (off, (ts, name)) in stream.iter().enumerate().skip(from) {
                p.ingest(
                    &ev(name, &format!("u{}", off % 17), *ts, None),
                    off as i64,
                    NOW,
                );
                if off % 10 == 0
                    && let Some(closed) = p.take_closed()
                {
                    out.extend(closed.rows);
                    if stop_after_flush && out.len() > 6 {
                        return (out, Some(closed.checkpoint));
                    }
                }
            }
            p.mark_caught_up(i64::MAX / 2);
            p.tick(i64::MAX / 2 + 1_000_000);
            out.extend(p.take_closed().map(|c| c.rows).unwrap_or_default());
            (out, None)
        };
        let (straight, _) = run(0, None, false);
        let (first, checkpoint) = run(0, None, true);
        let checkpoint = checkpoint.unwrap();
        let (rest, _) = run(checkpoint.resume_offset as usize, Some(checkpoint), false);
        let mut crashed = first;
        crashed.extend(rest);
        assert_eq!(crashed, straight);
    }
}
