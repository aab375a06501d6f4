-- One definition of an event's tenant: the top-level property named by
-- `contract.tenant_property`, which ingest accepts only as a string. The
-- loader writes it here, so raw reads, sessions and deletions scope by a
-- column instead of searching the properties' JSON text (where the same key
-- nested deeper could pass for the tenant). Rows loaded before this
-- migration have no tenant: a tenant-scoped token does not see them (a
-- project-wide token does).
ALTER TABLE {db}.events ADD COLUMN tenant_id String DEFAULT '';

-- The tenant a deletion was made for: empty for a project-wide request (a
-- token without a tenant), else the requesting token's tenant, so a
-- tenant's admin never removes the same user id of another tenant.
ALTER TABLE {db}.deletions ADD COLUMN tenant_id String DEFAULT ''
