//! Object names in the lake: Hive-style folders by `received_at` hour, and a
//! file name made of topic, partition, first and last offset. The name is a
//! function of the records it holds, so re-archiving after a crash writes
//! the same object, and offsets are zero-padded so names sort by offset.
//!
//! A compacted file (many files of one partition and hour made one,
//! [`crate::compact`]) is named by its first and last offset and its row
//! count (`-c{rows}`): around an hour boundary a partition's records of two
//! hours interleave, so its offsets need not be contiguous. A file whose
//! offsets lie within a compacted file's of the same folder and partition
//! is one of its sources (or a copy of one) and is [`superseded`].
//!
//! An hour file (every partition's compacted file of a folder made one)
//! holds a span of offsets per partition; a name holding them all would
//! pass the 255 bytes a file name may have on disk (S3 servers and synced
//! copies store keys as files) at a few partitions. So its name carries a
//! digest of its spans and its rows (`events-h3f9c…-c176.parquet`), and the
//! spans themselves are in its Parquet footer (key-value metadata
//! [`SPANS_KEY`], `p{partition}.{first}.{last}` joined by `_`), where
//! listings read them ([`crate::named`]). It supersedes every file whose
//! spans lie within its own.
//!
//! A file rewritten without a deleted user's events ([`crate::erase`]) keeps
//! its offsets, states its rows and counts its rewrites (`-c{rows}-e{n}`,
//! [`erased_key`]): over the same offsets, the later rewrite supersedes.

use chrono::{DateTime, Duration, DurationRound, Utc};
use parquet::file::metadata::KeyValue;

/// The footer key-value entry holding an hour file's spans.
pub const SPANS_KEY: &str = "hourglass.spans";

/// `dt=YYYY-MM-DD/hour=HH/` of the hour holding `t`.
pub fn hour_folder(t: DateTime<Utc>) -> String {
    t.format("dt=%Y-%m-%d/hour=%H/").to_string()
}

/// Start of the hour holding `t`.
pub fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::hours(1))
        .expect("an hour divides time")
}

/// Name prefix of every file of `topic`/`partition` that starts at `first`.
pub fn file_prefix(topic: &str, partition: i32, first: i64) -> String {
    format!("{topic}-{partition:04}-{first:020}-")
}

/// `dt=.../hour=.../{topic}-{partition}-{first}-{last}.parquet`.
pub fn file_key(hour: DateTime<Utc>, topic: &str, partition: i32, first: i64, last: i64) -> String {
    FileName::of_partition(topic, Span::new(partition, first, last), None).key(&hour_folder(hour))
}

/// `{folder}{topic}-{partition}-{first}-{last}-c{rows}.parquet`: a
/// compacted file in `folder` (an [`hour_folder`]).
pub fn compacted_key(
    folder: &str,
    topic: &str,
    partition: i32,
    first: i64,
    last: i64,
    rows: i64,
) -> String {
    FileName::of_partition(topic, Span::new(partition, first, last), Some(rows)).key(folder)
}

/// `…-c{rows}-e{generation}.parquet`: a file's rewrite without erased
/// events, over the same offsets.
pub fn erased_key(folder: &str, of: &FileName, rows: i64) -> String {
    FileName {
        compacted_rows: Some(rows),
        erased: of.erased + 1,
        ..of.clone()
    }
    .key(folder)
}

/// A partition's offsets in a file, from `first` to `last` (a compacted
/// file's may have gaps: records of that range in another hour folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

impl Span {
    pub fn new(partition: i32, first: i64, last: i64) -> Self {
        Self {
            partition,
            first,
            last,
        }
    }

    /// Whether the record at `partition`/`offset` falls in the span.
    pub fn holds(&self, partition: i32, offset: i64) -> bool {
        self.partition == partition && (self.first..=self.last).contains(&offset)
    }

    fn within(&self, other: &Span) -> bool {
        self.partition == other.partition && other.first <= self.first && self.last <= other.last
    }

    fn overlaps(&self, other: &Span) -> bool {
        self.partition == other.partition && self.first <= other.last && other.first <= self.last
    }
}

/// What a file holds: its key says it, or for an hour file its key and its
/// footer (see [`crate::named`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub topic: String,
    /// Each partition's offsets the file holds, by partition: one for a
    /// file of one partition, one per partition for an hour file (empty for
    /// an hour file whose footer was not read: it holds nothing known).
    pub spans: Vec<Span>,
    /// An hour file's digest of its spans ([`spans_digest`]).
    pub hour: Option<String>,
    /// Rows of a compacted file (whose offsets may have gaps); None for a
    /// file as the archiver wrote it (every offset from first to last).
    pub compacted_rows: Option<i64>,
    /// How many times erasure rewrote the file (0: never).
    pub erased: u32,
}

impl FileName {
    /// A file of one partition.
    pub fn of_partition(topic: &str, span: Span, compacted_rows: Option<i64>) -> Self {
        Self {
            topic: topic.to_owned(),
            spans: vec![span],
            hour: None,
            compacted_rows,
            erased: 0,
        }
    }

    /// A compacted file of `rows` rows holding `spans` (any order, a
    /// partition at most once): an hour file when they are several.
    pub fn compacted(topic: &str, mut spans: Vec<Span>, rows: i64) -> Self {
        spans.sort();
        Self {
            topic: topic.to_owned(),
            hour: (spans.len() > 1).then(|| spans_digest(&spans)),
            spans,
            compacted_rows: Some(rows),
            erased: 0,
        }
    }

    /// The key of this file in `folder` (an [`hour_folder`]).
    pub fn key(&self, folder: &str) -> String {
        let mut key = format!("{folder}{}-", self.topic);
        match (&self.hour, self.spans.as_slice()) {
            (Some(digest), _) => key.push_str(&format!("h{digest}")),
            (None, [one]) => key.push_str(&format!(
                "{:04}-{:020}-{:020}",
                one.partition, one.first, one.last
            )),
            (None, spans) => unreachable!("a file of {} spans without a digest", spans.len()),
        }
        if let Some(rows) = self.compacted_rows {
            key.push_str(&format!("-c{rows}"));
        }
        if self.erased > 0 {
            key.push_str(&format!("-e{}", self.erased));
        }
        key.push_str(".parquet");
        key
    }

    /// The footer entries the file's Parquet carries (an hour file's spans).
    pub fn footer(&self) -> Vec<KeyValue> {
        match self.hour {
            Some(_) => vec![KeyValue::new(SPANS_KEY.to_owned(), spans_text(&self.spans))],
            None => Vec::new(),
        }
    }

    /// This hour file with the spans its footer's [`SPANS_KEY`] entry
    /// gives, if they are the ones its name's digest was made of.
    pub fn with_footer_spans(mut self, text: &str) -> Option<Self> {
        let spans = parse_spans(text)?;
        (self.hour.as_deref() == Some(spans_digest(&spans).as_str())).then(|| {
            self.spans = spans;
            self
        })
    }

    /// The one partition a file of one partition holds (None: an hour file).
    pub fn partition(&self) -> Option<i32> {
        match (&self.hour, self.spans.as_slice()) {
            (None, [one]) => Some(one.partition),
            _ => None,
        }
    }

    /// Its first span: the file's place in (partition, offset) order.
    pub fn first_span(&self) -> Span {
        self.spans
            .first()
            .copied()
            .unwrap_or(Span::new(i32::MIN, 0, 0))
    }

    /// Records the file holds.
    pub fn records(&self) -> i64 {
        self.compacted_rows
            .unwrap_or_else(|| self.spans.iter().map(|s| s.last - s.first + 1).sum())
    }

    /// Whether the record at `partition`/`offset` falls in one of its spans.
    pub fn holds(&self, partition: i32, offset: i64) -> bool {
        self.spans.iter().any(|s| s.holds(partition, offset))
    }

    fn span_of(&self, partition: i32) -> Option<&Span> {
        self.spans.iter().find(|s| s.partition == partition)
    }

    /// Whether this file, of the same folder and topic, holds what `other`
    /// held and replaces it: a compacted file whose spans hold `other`'s and
    /// are wider or more, or over the same spans a later erasure's rewrite,
    /// or (two compactions of the same spans, no erasure between) one with
    /// more rows.
    pub fn supersedes(&self, other: &FileName) -> bool {
        let covers = !other.spans.is_empty()
            && other
                .spans
                .iter()
                .all(|o| self.span_of(o.partition).is_some_and(|mine| o.within(mine)));
        self.compacted_rows.is_some()
            && self.topic == other.topic
            && covers
            && (self.spans != other.spans
                || self.erased > other.erased
                || (self.erased == other.erased && self.records() > other.records()))
    }

    /// Whether both files can hold one record while neither replaces the
    /// other: two compactions that raced (a rebalance, or a straggler
    /// merged by one while the other read it). Readers would see the
    /// shared records twice, so the later writer backs off.
    pub fn conflicts(&self, other: &FileName) -> bool {
        self != other
            && self.topic == other.topic
            && self
                .spans
                .iter()
                .any(|s| other.spans.iter().any(|o| s.overlaps(o)))
            && !self.supersedes(other)
            && !other.supersedes(self)
    }
}

/// Parse a key made by [`FileName::key`] (topic names may hold `-`). An
/// hour file's spans are left empty: they are in its footer.
pub fn parse_key(key: &str) -> Option<FileName> {
    let name = key.rsplit('/').next()?.strip_suffix(".parquet")?;
    let (name, erased) = match name.rsplit_once('-') {
        Some((rest, generation)) if generation.starts_with('e') => {
            (rest, generation[1..].parse().ok()?)
        }
        _ => (name, 0),
    };
    let (name, compacted_rows) = match name.rsplit_once('-') {
        Some((rest, rows)) if rows.starts_with('c') => (rest, Some(rows[1..].parse().ok()?)),
        _ => (name, None),
    };
    if erased > 0 && compacted_rows.is_none() {
        return None;
    }
    let (topic, spans, hour) = match name.rsplit_once('-') {
        Some((topic, digest)) if digest.starts_with('h') => {
            let digest = &digest[1..];
            let hex = digest.len() == DIGEST_CHARS
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex || compacted_rows.is_none() {
                return None;
            }
            (topic.to_owned(), Vec::new(), Some(digest.to_owned()))
        }
        _ => {
            let mut parts = name.rsplitn(4, '-');
            let last = parts.next()?.parse().ok()?;
            let first = parts.next()?.parse().ok()?;
            let partition = parts.next()?.parse().ok()?;
            let topic = parts.next()?.to_owned();
            (topic, vec![Span::new(partition, first, last)], None)
        }
    };
    if topic.is_empty() {
        return None;
    }
    Some(FileName {
        topic,
        spans,
        hour,
        compacted_rows,
        erased,
    })
}

const DIGEST_CHARS: usize = 16;

/// An hour file's name part for `spans`: 64 bits of a UUIDv5 of their
/// text, so two merges of the same sources name the same object.
pub fn spans_digest(spans: &[Span]) -> String {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, spans_text(spans).as_bytes());
    id.simple().to_string()[..DIGEST_CHARS].to_owned()
}

/// `p{partition}.{first}.{last}` joined by `_`.
fn spans_text(spans: &[Span]) -> String {
    let spans: Vec<String> = spans
        .iter()
        .map(|s| format!("p{}.{}.{}", s.partition, s.first, s.last))
        .collect();
    spans.join("_")
}

/// [`spans_text`] read back: two or more, by partition, each partition
/// once.
fn parse_spans(text: &str) -> Option<Vec<Span>> {
    let spans = text
        .split('_')
        .map(|s| {
            let mut parts = s.strip_prefix('p')?.split('.');
            let span = Span::new(
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            );
            parts.next().is_none().then_some(span)
        })
        .collect::<Option<Vec<Span>>>()?;
    let ordered = spans.windows(2).all(|w| w[0].partition < w[1].partition);
    (spans.len() >= 2 && ordered).then_some(spans)
}

/// The [`SPANS_KEY`] entry of a Parquet file's footer, for a rewrite of it.
pub fn spans_footer(meta: &parquet::file::metadata::FileMetaData) -> Vec<KeyValue> {
    meta.key_value_metadata()
        .into_iter()
        .flatten()
        .filter(|kv| kv.key == SPANS_KEY)
        .cloned()
        .collect()
}

/// Records the named files hold, by their names (a file named twice, or
/// overlapping another, counts twice: how tests see duplicates).
pub fn records_named<'a>(keys: impl IntoIterator<Item = &'a str>) -> i64 {
    keys.into_iter()
        .filter_map(parse_key)
        .map(|f| f.records())
        .sum()
}

/// The folder part of a key (`dt=…/hour=…/`).
pub fn folder_of(key: &str) -> &str {
    key.rfind('/').map_or("", |i| &key[..=i])
}

/// Keys among `files` (key and what it holds: parsed, hour files' spans
/// read, [`crate::named`]) that a compacted file of the same folder and
/// topic already holds ([`FileName::supersedes`]): its sources, left behind
/// by a compaction stopped between writing it and removing them, or a copy
/// a re-read wrote. Files of a partition are written in offset order, so no
/// later file of the hour falls inside a compacted file's span. Readers
/// skip these; compaction removes them.
pub fn superseded<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a FileName)>,
) -> std::collections::HashSet<&'a str> {
    let files: Vec<(&str, &FileName)> = files.into_iter().collect();
    // Each file is compared with the compacted files of its own folder and
    // topic only: replay lists a whole range at once.
    let group = |key: &'a str, f: &FileName| (folder_of(key), f.topic.clone());
    let mut compacted: std::collections::HashMap<_, Vec<&FileName>> =
        std::collections::HashMap::new();
    for (key, f) in files.iter().filter(|(_, f)| f.compacted_rows.is_some()) {
        compacted.entry(group(key, f)).or_default().push(f);
    }
    files
        .iter()
        .filter(|(key, f)| {
            compacted
                .get(&group(key, f))
                .is_some_and(|cs| cs.iter().any(|c| c.supersedes(f)))
        })
        .map(|(key, _)| *key)
        .collect()
}

/// Hour folders whose files can hold events with event time in `[from, to)`:
/// files are foldered by arrival, so look `before` earlier (clients whose
/// clocks run ahead) and `after` later (events that arrive late).
pub fn hour_folders(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    before: Duration,
    after: Duration,
) -> Vec<String> {
    let mut t = hour_of(from - before);
    let end = to + after;
    let mut out = Vec::new();
    while t < end {
        out.push(hour_folder(t));
        t += Duration::hours(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// The superseded among `keys` (sorted), hour files' spans from `hours`.
    fn superseded_of<'a>(keys: &[&'a str], hours: &[(&str, &FileName)]) -> Vec<&'a str> {
        let names: Vec<(&str, FileName)> = keys
            .iter()
            .map(|&k| {
                let resolved = hours
                    .iter()
                    .find(|(h, _)| *h == k)
                    .map(|(_, f)| (*f).clone());
                (k, resolved.unwrap_or_else(|| parse_key(k).unwrap()))
            })
            .collect();
        let gone = superseded(names.iter().map(|(k, f)| (*k, f)));
        let mut gone: Vec<&'a str> = keys.iter().copied().filter(|k| gone.contains(k)).collect();
        gone.sort();
        gone
    }

    #[test]
    fn keys_round_trip_and_sort_by_offset() {
        let k = file_key(t("2026-01-01T13:59:59Z"), "events-eu", 3, 42, 1_041);
        assert_eq!(
            k,
            "dt=2026-01-01/hour=13/events-eu-0003-00000000000000000042-00000000000000001041.parquet"
        );
        assert_eq!(
            parse_key(&k),
            Some(FileName {
                topic: "events-eu".into(),
                spans: vec![Span::new(3, 42, 1_041)],
                hour: None,
                compacted_rows: None,
                erased: 0,
            })
        );
        assert!(
            file_key(hour_of(t("2026-01-01T13:00:00Z")), "e", 0, 9, 9)
                < file_key(hour_of(t("2026-01-01T13:00:00Z")), "e", 0, 10, 10)
        );
        assert!(k.contains(&file_prefix("events-eu", 3, 42)));
        assert_eq!(
            records_named([k.as_str(), "dt=x/hour=y/not-a-file.txt", k.as_str()]),
            2_000
        );
    }

    #[test]
    fn compacted_names_carry_their_rows_and_cover_their_sources() {
        let folder = "dt=2026-01-01/hour=13/";
        let c = compacted_key(folder, "events-eu", 3, 42, 1_041, 900);
        assert_eq!(
            c,
            "dt=2026-01-01/hour=13/events-eu-0003-00000000000000000042-00000000000000001041-c900.parquet"
        );
        let name = parse_key(&c).unwrap();
        assert_eq!(
            (name.first_span(), name.records()),
            (Span::new(3, 42, 1_041), 900)
        );
        assert_eq!(name.topic, "events-eu");
        assert_eq!(parse_key("dt=x/hour=y/e-0001-0005-0009-cx.parquet"), None);

        let hour = hour_of(t("2026-01-01T13:00:00Z"));
        let source = file_key(hour, "events-eu", 3, 42, 500);
        let inside_copy = file_key(hour, "events-eu", 3, 600, 700);
        let later = file_key(hour, "events-eu", 3, 1_042, 1_100);
        let other_partition = file_key(hour, "events-eu", 4, 42, 500);
        let other_hour = file_key(hour + Duration::hours(1), "events-eu", 3, 501, 599);
        let smaller_compaction = compacted_key(folder, "events-eu", 3, 42, 1_041, 899);
        let keys = [
            c.as_str(),
            &source,
            &inside_copy,
            &later,
            &other_partition,
            &other_hour,
            &smaller_compaction,
        ];
        let gone = superseded_of(&keys, &[]);
        let mut want = vec![
            source.as_str(),
            inside_copy.as_str(),
            smaller_compaction.as_str(),
        ];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(records_named([c.as_str(), later.as_str()]), 900 + 59);
        assert_eq!(folder_of(&c), folder);
    }

    #[test]
    fn an_erased_rewrite_supersedes_the_file_it_rewrote() {
        let folder = "dt=2026-01-01/hour=13/";
        let hour = hour_of(t("2026-01-01T13:00:00Z"));
        let original = file_key(hour, "events", 3, 42, 500);
        let first = erased_key(folder, &parse_key(&original).unwrap(), 400);
        assert_eq!(
            first,
            "dt=2026-01-01/hour=13/events-0003-00000000000000000042-00000000000000000500-c400-e1.parquet"
        );
        let name = parse_key(&first).unwrap();
        assert_eq!(
            (name.first_span(), name.records(), name.erased),
            (Span::new(3, 42, 500), 400, 1)
        );
        let second = erased_key(folder, &name, 399);
        assert!(second.ends_with("-c399-e2.parquet"), "{second}");
        let compacted = compacted_key(folder, "events", 3, 42, 900, 800);
        let compacted_erased = erased_key(folder, &parse_key(&compacted).unwrap(), 700);
        let later = file_key(hour, "events", 3, 901, 950);
        let gone = superseded_of(
            &[
                original.as_str(),
                &first,
                &second,
                &compacted,
                &compacted_erased,
                &later,
            ],
            &[],
        );
        // The compacted file's rewrite covers the rest: a wider range, or the
        // same one erased later.
        let mut want = vec![original.as_str(), &first, &second, &compacted];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(parse_key("dt=x/hour=y/e-0001-0005-0009-e1.parquet"), None);
    }

    #[test]
    fn an_hour_file_names_a_digest_of_its_spans_and_supersedes_what_it_holds() {
        let folder = "dt=2026-01-01/hour=13/";
        let hour = hour_of(t("2026-01-01T13:00:00Z"));
        let spans = vec![Span::new(1, 0, 80), Span::new(0, 0, 95)];
        let merged = FileName::compacted("events-eu", spans, 170);
        let key = merged.key(folder);
        let digest = spans_digest(&[Span::new(0, 0, 95), Span::new(1, 0, 80)]);
        assert_eq!(
            key,
            format!("dt=2026-01-01/hour=13/events-eu-h{digest}-c170.parquet")
        );
        assert_eq!(digest.len(), 16);
        // The key alone holds no spans; the footer's entry gives them back,
        // and only the spans the digest was made of.
        let parsed = parse_key(&key).unwrap();
        assert!(parsed.spans.is_empty() && !parsed.supersedes(&merged));
        let footer = merged.footer();
        assert_eq!(footer[0].key, SPANS_KEY);
        assert_eq!(footer[0].value.as_deref(), Some("p0.0.95_p1.0.80"));
        assert_eq!(
            parsed.clone().with_footer_spans("p0.0.95_p1.0.80"),
            Some(merged.clone())
        );
        assert_eq!(parsed.clone().with_footer_spans("p0.0.95_p1.0.81"), None);
        for bad in [
            "p0.0.95",         // one span
            "p1.0.9_p0.0.9",   // not by partition
            "p0.0.9_p0.10.19", // a partition twice
            "p0.0.95_p1.0",    // a span cut short
        ] {
            assert_eq!(parse_spans(bad), None, "{bad}");
        }
        assert_eq!(merged.partition(), None);
        assert!(merged.holds(1, 80) && !merged.holds(1, 81) && !merged.holds(2, 0));
        let erased = erased_key(folder, &merged, 160);
        assert_eq!(
            erased,
            format!("dt=2026-01-01/hour=13/events-eu-h{digest}-c160-e1.parquet")
        );
        for bad in [
            format!("events-h{digest}.parquet"),              // rows missing
            format!("events-h{}-c9.parquet", &digest[1..]),   // digest cut short
            "events-hxyzxyzxyzxyzxyzx-c9.parquet".to_owned(), // not hex
            format!("-h{digest}-c9.parquet"),                 // no topic
        ] {
            assert_eq!(parse_key(&format!("{folder}{bad}")), None, "{bad}");
        }

        let p0 = compacted_key(folder, "events-eu", 0, 0, 95, 90);
        let p1_source = file_key(hour, "events-eu", 1, 40, 80);
        let p1_straggler = file_key(hour, "events-eu", 1, 120, 130);
        let other_topic = file_key(hour, "events", 1, 40, 80);
        let erased_name = FileName {
            compacted_rows: Some(160),
            erased: 1,
            ..merged.clone()
        };
        let keys = [
            key.as_str(),
            &erased,
            &p0,
            &p1_source,
            &p1_straggler,
            &other_topic,
        ];
        let gone = superseded_of(&keys, &[(&key, &merged), (&erased, &erased_name)]);
        let mut want = vec![key.as_str(), &p0, &p1_source];
        want.sort();
        assert_eq!(gone, want, "the rewrite holds the rest");

        // With the straggler merged in, the wider file replaces the first.
        let wider = FileName::compacted(
            "events-eu",
            vec![Span::new(0, 0, 95), Span::new(1, 0, 130)],
            181,
        );
        assert_ne!(wider.key(folder), key);
        assert!(wider.supersedes(&merged) && !merged.supersedes(&wider));
        assert!(wider.supersedes(&parse_key(&p1_straggler).unwrap()));
        assert!(!parse_key(&p0).unwrap().supersedes(&merged));
        assert!(!wider.conflicts(&merged) && !merged.conflicts(&parse_key(&p0).unwrap()));
        // A partition's file merged with the straggler while an hour file
        // was made of the partition's earlier file: the two share records
        // and neither holds the other's.
        let raced = FileName::compacted("events-eu", vec![Span::new(1, 0, 130)], 91);
        assert!(raced.conflicts(&merged) && merged.conflicts(&raced));
        assert!(!raced.conflicts(&parse_key(&other_topic).unwrap()));
        assert!(
            !raced.conflicts(&parse_key(&p0).unwrap()),
            "other partition"
        );
    }

    #[test]
    fn range_lists_only_hours_that_can_hold_it() {
        let hours = hour_folders(
            t("2026-01-01T10:30:00Z"),
            t("2026-01-01T12:00:00Z"),
            Duration::zero(),
            Duration::zero(),
        );
        assert_eq!(
            hours,
            vec!["dt=2026-01-01/hour=10/", "dt=2026-01-01/hour=11/"]
        );
        let hours = hour_folders(
            t("2026-01-01T23:00:00Z"),
            t("2026-01-02T00:00:00Z"),
            Duration::hours(1),
            Duration::minutes(30),
        );
        assert_eq!(
            hours,
            vec![
                "dt=2026-01-01/hour=22/",
                "dt=2026-01-01/hour=23/",
                "dt=2026-01-02/hour=00/"
            ]
        );
    }
}
