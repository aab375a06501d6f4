-- The event ids a batch run found more than one copy of (as cityHash64 of
-- the id), one partition per run (`version`). A run deduplicates only the
-- events these name and reads every other event as it is, so the costly
-- per-event_id grouping covers the few copies instead of the whole hour.
-- A hash shared by two different ids only sends both through the exact
-- path. The run drops its partition when done; a run killed before that
-- leaves one that the next pass truncates.
CREATE TABLE IF NOT EXISTS {db}.batch_dup_ids
(
    version UInt64,
    id_hash UInt64
)
ENGINE = MergeTree()
PARTITION BY version
ORDER BY id_hash;
