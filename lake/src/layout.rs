//! Object names in the lake: Hive-style folders by `received_at` hour, and a
//! file name made of topic, partition, first and last offset. The name is a
//! function of the records it holds, so re-archiving after a crash writes
//! the same object, and offsets are zero-padded so names sort by offset.

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

/// What a file's key says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// Parse a key made by [`file_key`] (topic names may hold `-`).
pub fn parse_key(key: &str) -> Option<FileName> {
    let name = key.rsplit('/').next()?.strip_suffix(".parquet")?;
    let mut parts = name.rsplitn(4, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_owned();
    Some(FileName {
        topic,
        partition,
        first,
        last,
    })
}

/// Records the named files hold, by their names' offset ranges (a file
/// named twice, or overlapping another, counts twice: how tests see duplicates).
pub fn records_named<'a>(keys: impl IntoIterator<Item = &'a str>) -> i64 {
    keys.into_iter()
        .filter_map(parse_key)
        .map(|f| f.last - f.first + 1)
        .sum()
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
                last: 1_041
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
