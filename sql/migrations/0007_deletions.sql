-- Requests to delete a user's data (`DELETE /v1/users/{user}` of the query
-- API). The user's rows are removed from `events` when the request is made;
-- this table keeps the request so that a replay from the lake, which still
-- holds the raw events, skips every event of the user received up to
-- `requested_at` instead of bringing them back.
CREATE TABLE IF NOT EXISTS {db}.deletions
(
    project_id String,
    user String,
    requested_at DateTime,
    requested_by String,
    events_removed UInt64
)
ENGINE = MergeTree()
ORDER BY (project_id, user, requested_at);
