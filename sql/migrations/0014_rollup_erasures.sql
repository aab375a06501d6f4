-- Deletion requests (`deletions`) the rollups have applied: an erasure pass
-- took the user's hash out of the project's rollup_5m user sets of windows
-- before the request and rebuilt the hourly and daily buckets from them.
-- applicable = 0: a tenant's request the rollups cannot tell apart (the
-- tenant property is not an aggregator dimension).
CREATE TABLE IF NOT EXISTS {db}.rollup_erasures
(
    project_id String,
    tenant_id String,
    user String,
    requested_at DateTime,
    erased_at DateTime,
    rows_updated UInt64,
    applicable UInt8
)
ENGINE = MergeTree()
ORDER BY (project_id, user, requested_at);
