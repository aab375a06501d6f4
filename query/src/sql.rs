//! Queries built with bound parameters only: SQL text is written here from
//! fixed pieces and allow-listed names, every value goes through
//! [`Sql::bind`] (escaped by the `clickhouse` client as a literal).

use clickhouse::Client;
use clickhouse::query::Query;
use serde::Serialize;

use crate::auth::Scope;

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

/// The tracing target of every statement the query API sends.
pub const STATEMENT_LOG: &str = "hourglass_query::sql";

#[derive(Debug, Default)]
pub struct Sql {
    text: String,
    binds: Vec<Value>,
}

impl Sql {
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            binds: Vec::new(),
        }
    }

    /// Append fixed SQL (never user input).
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Append `text`, whose `?`s take `values` in order.
    pub fn push_bound(&mut self, text: &str, values: impl IntoIterator<Item = Value>) -> &mut Self {
        self.text.push_str(text);
        self.binds.extend(values);
        debug_assert_eq!(
            self.text.matches('?').count(),
            self.binds.len(),
            "one value per placeholder: {}",
            self.text
        );
        self
    }

    /// Append another piece, its values after this one's.
    pub fn append(&mut self, other: Sql) -> &mut Self {
        self.text.push_str(&other.text);
        self.binds.extend(other.binds);
        self
    }

    /// The query to run. Each statement is logged at debug level (target
    /// `hourglass_query::sql`) with its values substituted, as the server
    /// receives it: what an operator needs to rerun a slow or failing read,
    /// and how the modern-ClickHouse check collects the API's statements.
    pub fn query(&self, client: &Client) -> Query {
        let mut q = client.query(&self.text);
        for v in &self.binds {
            q = match v {
                Value::Str(s) => q.bind(s.as_str()),
                Value::Int(n) => q.bind(*n),
            };
        }
        tracing::debug!(target: STATEMENT_LOG, statement = %q.sql_display(), "clickhouse statement");
        q
    }

    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `WHERE`-clause terms that confine a query of `events` to the token's
/// project, and to its tenant when it has one (`events.tenant_id`, the
/// top-level property `contract.tenant_property` as the loader wrote it).
pub fn events_scope(sql: &mut Sql, scope: &Scope) {
    sql.push_bound(" project_id = ?", [scope.project_id.as_str().into()]);
    if let Some(tenant) = &scope.tenant_id {
        sql.push_bound(" AND tenant_id = ?", [tenant.as_str().into()]);
    }
}

/// `AND` the events of `user` (as `user_id` or `anonymous_id`, the two ways
/// an event names who sent it).
pub fn user_filter(sql: &mut Sql, user: &str) {
    sql.push_bound(
        " AND (user_id = ? OR anonymous_id = ?)",
        [user.into(), user.into()],
    );
}
