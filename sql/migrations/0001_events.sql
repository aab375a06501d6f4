-- Raw events: one row per event, as the loader writes them from Kafka.
-- ReplacingMergeTree keyed by event_id (last in the sorting key) collapses
-- duplicates that a retried load may write; read with FINAL for exact counts
-- before merges have run.
CREATE TABLE IF NOT EXISTS {db}.events
(
    project_id {lc_string},
    event {lc_string},
    event_id String,
    user_id String,
    anonymous_id String,
    session_id String,
    timestamp DateTime{codec_time},
    timestamp_ms Int64{codec_time},
    received_at DateTime{codec_time},
    value Nullable(Float64),
    properties String{codec_zstd},
    schema_version UInt16,
    kafka_partition UInt16,
    kafka_offset Int64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project_id, event, timestamp, event_id)
{events_ttl}
{events_settings};
