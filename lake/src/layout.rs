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
//! A file rewritten without a deleted user's events ([`crate::erase`]) keeps
//! its offsets, states its rows and counts its rewrites (`-c{rows}-e{n}`,
//! [`erased_key`]): over the same offsets, the later rewrite supersedes.

use chrono::{DateTime, Duration, DurationRound, Utc};

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
    format!(
        "{}{}{last:020}.parquet",
        hour_folder(hour),
        file_prefix(topic, partition, first)
    )
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
    format!(
        "{folder}{}{last:020}-c{rows}.parquet",
        file_prefix(topic, partition, first)
    )
}

/// `{folder}{topic}-{partition}-{first}-{last}-c{rows}-e{generation}`: a
/// file's rewrite without erased events, over the same offsets.
pub fn erased_key(folder: &str, of: &FileName, rows: i64) -> String {
    format!(
        "{folder}{}{:020}-c{rows}-e{}.parquet",
        file_prefix(&of.topic, of.partition, of.first),
        of.last,
        of.erased + 1
    )
}

/// What a file's key says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// Rows of a compacted file (whose offsets may have gaps); None for a
    /// file as the archiver wrote it (every offset from first to last).
    pub compacted_rows: Option<i64>,
    /// How many times erasure rewrote the file (0: never).
    pub erased: u32,
}

impl FileName {
    /// Records the file holds.
    pub fn records(&self) -> i64 {
        self.compacted_rows.unwrap_or(self.last - self.first + 1)
    }

    /// Whether this file, of the same folder, topic and partition, holds
    /// what `other` held and replaces it: a compacted file whose range holds
    /// `other`'s and is wider, or over the same range a later erasure's
    /// rewrite, or (two compactions of one range, no erasure between) one
    /// with more rows.
    pub fn supersedes(&self, other: &FileName) -> bool {
        self.compacted_rows.is_some()
            && self.first <= other.first
            && other.last <= self.last
            && (self.first < other.first
                || other.last < self.last
                || self.erased > other.erased
                || (self.erased == other.erased && self.records() > other.records()))
    }
}

/// Parse a key made by [`file_key`] or [`compacted_key`] (topic names may
/// hold `-`).
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
    let mut parts = name.rsplitn(4, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_owned();
    if erased > 0 && compacted_rows.is_none() {
        return None;
    }
    Some(FileName {
        topic,
        partition,
        first,
        last,
        compacted_rows,
        erased,
    })
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

/// Keys among `keys` that a compacted file of the same folder, topic and
/// partition already holds: its offset range covers theirs (its sources,
/// left behind by a compaction stopped between writing it and removing
/// them, or a copy a re-read wrote). Files of a partition are written in
/// offset order, so no later file of the hour falls inside that range.
/// Readers skip these; compaction removes them.
pub fn superseded<'a>(
    keys: impl IntoIterator<Item = &'a str>,
) -> std::collections::HashSet<&'a str> {
    let files: Vec<(&str, FileName)> = keys
        .into_iter()
        .filter_map(|k| Some((k, parse_key(k)?)))
        .collect();
    // Each file is compared with the compacted files of its own folder,
    // topic and partition only: replay lists a whole range at once.
    let group = |key: &'a str, f: &FileName| (folder_of(key), f.topic.clone(), f.partition);
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
                partition: 3,
                first: 42,
                last: 1_041,
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
        assert_eq!((name.first, name.last, name.records()), (42, 1_041, 900));
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
        let mut gone: Vec<&str> = superseded(keys).into_iter().collect();
        gone.sort();
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
            (name.first, name.last, name.records(), name.erased),
            (42, 500, 400, 1)
        );
        let second = erased_key(folder, &name, 399);
        assert!(second.ends_with("-c399-e2.parquet"), "{second}");
        let compacted = compacted_key(folder, "events", 3, 42, 900, 800);
        let compacted_erased = erased_key(folder, &parse_key(&compacted).unwrap(), 700);
        let later = file_key(hour, "events", 3, 901, 950);
        let mut gone: Vec<&str> = superseded([
            original.as_str(),
            &first,
            &second,
            &compacted,
            &compacted_erased,
            &later,
        ])
        .into_iter()
        .collect();
        gone.sort();
        // The compacted file's rewrite covers the rest: a wider range, or the
        // same one erased later.
        let mut want = vec![original.as_str(), &first, &second, &compacted];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(parse_key("dt=x/hour=y/e-0001-0005-0009-e1.parquet"), None);
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
