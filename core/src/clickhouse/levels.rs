//! The hourly and daily rollups (`rollup_1h`, `rollup_1d`): mergeable states
//! that materialized views compute from each INSERT into `rollup_5m`. Code
//! that fills them itself (a replay's partly covered buckets, an
//! aggregator's repair of a flush the views missed) uses the same SELECT, so
//! their rows merge exactly with the views'. The views' text lives in the
//! migrations; a test in `hourglass-sql` holds it to [`level_select`].

/// One rollup level fed from `rollup_5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub table: &'static str,
    /// The ClickHouse function from `window_start` to the level's bucket.
    pub bucket: &'static str,
}

pub const HOURLY: Level = Level {
    table: "rollup_1h",
    bucket: "toStartOfHour",
};

pub const DAILY: Level = Level {
    table: "rollup_1d",
    bucket: "toStartOfDay",
};

pub const LEVELS: [Level; 2] = [HOURLY, DAILY];

/// The columns [`level_select`] fills, in its order.
pub const LEVEL_COLUMNS: &str = "bucket_start, project_id, event, dimensions, events_state, \
     users_state, value_count_state, value_sum_state, value_min_state, value_max_state, \
     hist_state, source_events_state";

/// The key of a source (topic and partition) in `source_events_state`.
pub const SOURCE_KEY: &str = "cityHash64(source_topic, source_partition)";

/// The SELECT list from `rollup_5m` rows to the level's states; the caller
/// adds `FROM rollup_5m WHERE … GROUP BY bucket_start, project_id, event,
/// dimensions`.
pub fn level_select(level: Level) -> String {
    format!(
        "{bucket}(window_start) AS bucket_start, project_id, event, dimensions, \
         sumState(events) AS events_state, uniqExactArrayState(user_hashes) AS users_state, \
         sumState(value_count) AS value_count_state, sumState(value_sum) AS value_sum_state, \
         minIfState(value_min, value_count > 0) AS value_min_state, \
         maxIfState(value_max, value_count > 0) AS value_max_state, \
         sumMapState(hist_values, hist_counts) AS hist_state, \
         sumMapState([{SOURCE_KEY}], [events]) AS source_events_state",
        bucket = level.bucket
    )
}

/// `INSERT INTO <level> SELECT … FROM rollup_5m WHERE {filter} GROUP BY …`.
pub fn fill_from_rollup_5m(level: Level, filter: &str) -> String {
    format!(
        "INSERT INTO {table} ({LEVEL_COLUMNS}) SELECT {select} FROM rollup_5m WHERE {filter} \
         GROUP BY bucket_start, project_id, event, dimensions",
        table = level.table,
        select = level_select(level),
    )
}
