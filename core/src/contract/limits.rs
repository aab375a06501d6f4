use serde::{Deserialize, Serialize};

/// Bounds on what one batch and one event may hold. Anything past them is
/// rejected with a reason naming the limit, never truncated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ContractLimits {
    /// Most events one batch may carry.
    pub max_batch_events: usize,
    /// Most bytes one event's JSON may take, as sent.
    pub max_event_bytes: usize,
    /// Deepest nesting of objects and arrays inside `properties`.
    pub max_property_depth: usize,
    /// Longest event name, in bytes.
    pub max_event_name_len: usize,
    /// Longest `user_id`, `anonymous_id` or `session_id`, in bytes.
    pub max_id_len: usize,
    /// Longest string value or key anywhere inside `properties`, in bytes.
    pub max_string_len: usize,
    /// Latest event time accepted, in seconds after the time received (after
    /// the clock-skew correction): a client clock this far ahead is wrong,
    /// and a time in the future would move the speed layer's watermark.
    /// Refused as `timestamp_out_of_range`.
    pub max_future_secs: u32,
    /// Earliest event time accepted on the live endpoints, in days before
    /// the time received (an app offline this long is rare; history goes
    /// through `/v1/import`).
    pub max_past_days: u32,
    /// Earliest event time `/v1/import` accepts, in days before the time
    /// received. At most 2900, so no INSERT spans more than 100 monthly
    /// partitions.
    pub import_max_past_days: u32,
    /// The top-level key of `properties` naming an event's tenant: the one
    /// definition every layer uses (ingest checks it, the loader writes it
    /// to `events.tenant_id`, rollups keep it when it is one of
    /// `aggregator.dimensions`, and the query API and deletions scope by
    /// it). Its value is a string of at most `max_id_len` bytes without
    /// control characters (else `invalid_tenant`), or absent or null for no
    /// tenant. The same key nested deeper is plain data.
    pub tenant_property: String,
}

impl Default for ContractLimits {
    fn default() -> Self {
        Self {
            max_batch_events: 1_000,
            max_event_bytes: 32 * 1024,
            max_property_depth: 8,
            max_event_name_len: 200,
            max_id_len: 256,
            max_string_len: 8 * 1024,
            max_future_secs: 600,
            max_past_days: 31,
            import_max_past_days: 5 * 366,
            tenant_property: "tenant_id".into(),
        }
    }
}

impl ContractLimits {
    /// The limits of `/v1/import`: history as far back as
    /// `import_max_past_days`.
    pub fn for_import(&self) -> Self {
        Self {
            max_past_days: self.import_max_past_days,
            ..self.clone()
        }
    }
}
