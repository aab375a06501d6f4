-- Deletion requests (`deletions`) the lake has applied: an erasure pass
-- (`hourglass batch`, `hourglass erase`) rewrote every lake file that held
-- an event the request covers. A request without a row here is pending.
-- files_rewritten and events_removed are the pass's, which may have applied
-- several requests at once.
CREATE TABLE IF NOT EXISTS {db}.lake_erasures
(
    project_id String,
    tenant_id String,
    user String,
    requested_at DateTime,
    erased_at DateTime,
    files_rewritten UInt64,
    files_removed UInt64,
    events_removed UInt64
)
ENGINE = MergeTree()
ORDER BY (project_id, user, requested_at);
