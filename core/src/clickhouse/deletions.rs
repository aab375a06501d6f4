//! The `deletions` table (requests of `DELETE /v1/users/{user}`) as the
//! writers of `events` apply it: the loader, which must not load a deleted
//! user's events that were still in Kafka, and replay from the lake, which
//! must not bring them back.
//!
//! One rule, the one the delete itself applied: an event is covered when its
//! project matches, its `user_id` or `anonymous_id` is the user, it was
//! received no later than the request, and the request was project-wide
//! (empty tenant) or made for the event's tenant (`contract.tenant_property`).

use std::collections::HashMap;

use clickhouse::{Client, Row};
use serde::Deserialize;

use crate::contract::EventEnvelope;

#[derive(Row, Deserialize)]
struct DeletionRecord {
    project_id: String,
    tenant_id: String,
    user: String,
    until: u32,
}

/// Every deletion request, latest per (project, tenant, user).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeletedUsers {
    /// project → user → (tenant, latest request in Unix seconds); an empty
    /// tenant is a project-wide request.
    by_project: HashMap<String, HashMap<String, Vec<(String, u32)>>>,
}

/// What says whether `deletions` changed since it was read: its row count
/// and latest request.
pub type DeletionsVersion = (u64, u32);

impl DeletedUsers {
    pub async fn read(client: &Client) -> Result<Self, clickhouse::error::Error> {
        let rows: Vec<DeletionRecord> = client
            .query(
                "SELECT project_id, tenant_id, user, toUInt32(max(requested_at)) AS until \
                 FROM deletions GROUP BY project_id, tenant_id, user",
            )
            .fetch_all()
            .await?;
        let mut users = Self::default();
        for r in rows {
            users.add(r.project_id, r.tenant_id, r.user, r.until);
        }
        Ok(users)
    }

    /// Cheap to ask before every batch: read again only when it moved.
    pub async fn version(client: &Client) -> Result<DeletionsVersion, clickhouse::error::Error> {
        client
            .query("SELECT count(), toUInt32(max(requested_at)) FROM deletions")
            .fetch_one()
            .await
    }

    pub fn add(&mut self, project: String, tenant: String, user: String, until: u32) {
        self.by_project
            .entry(project)
            .or_default()
            .entry(user)
            .or_default()
            .push((tenant, until));
    }

    pub fn is_empty(&self) -> bool {
        self.by_project.is_empty()
    }

    /// Whether any request names this user in `project`, whatever its
    /// tenant and time: a cheap first look before [`DeletedUsers::covers`].
    pub fn names(&self, project: &str, user_id: &str, anonymous_id: &str) -> bool {
        self.by_project.get(project).is_some_and(|users| {
            [user_id, anonymous_id]
                .into_iter()
                .any(|u| !u.is_empty() && users.contains_key(u))
        })
    }

    /// Whether a request covers an event of `project` and `tenant`, sent by
    /// `user_id` / `anonymous_id` (empty for none), received at
    /// `received_at` (Unix seconds). Looks up by reference: no allocation.
    pub fn covers(
        &self,
        project: &str,
        tenant: &str,
        user_id: &str,
        anonymous_id: &str,
        received_at: i64,
    ) -> bool {
        let Some(users) = self.by_project.get(project) else {
            return false;
        };
        [user_id, anonymous_id]
            .into_iter()
            .filter(|u| !u.is_empty())
            .filter_map(|u| users.get(u))
            .flatten()
            .any(|(t, until)| (t.is_empty() || t == tenant) && received_at <= i64::from(*until))
    }
}

impl DeletedUsers {
    /// Whether a request covers `e` (`tenant_property`: the contract's
    /// `tenant_property`). The cheap look first: the tenant is read from
    /// the properties only for a user some request names.
    pub fn covers_event(&self, e: &EventEnvelope, tenant_property: &str) -> bool {
        let (user_id, anonymous_id) = (
            e.user_id.as_deref().unwrap_or_default(),
            e.anonymous_id.as_deref().unwrap_or_default(),
        );
        self.names(&e.project_id, user_id, anonymous_id)
            && self.covers(
                &e.project_id,
                e.tenant(tenant_property),
                user_id,
                anonymous_id,
                e.received_at.timestamp(),
            )
    }
}

/// `deletions` as a long-running writer follows it: read again whenever
/// its version moved.
pub struct DeletionsWatch {
    /// None: requests given, not read (tools and tests without ClickHouse).
    client: Option<Client>,
    /// Without a client: the sets the next refreshes take, in turn.
    given: std::collections::VecDeque<DeletedUsers>,
    users: DeletedUsers,
    seen: Option<DeletionsVersion>,
}

impl DeletionsWatch {
    pub fn new(client: Client) -> Self {
        Self {
            client: Some(client),
            given: Default::default(),
            users: DeletedUsers::default(),
            seen: None,
        }
    }

    /// These requests, never read again.
    pub fn fixed(users: DeletedUsers) -> Self {
        Self::given([users])
    }

    /// Requests that change: each refresh takes the next set (and says it
    /// changed) until the last, which then stays.
    pub fn given(sets: impl IntoIterator<Item = DeletedUsers>) -> Self {
        Self {
            client: None,
            given: sets.into_iter().collect(),
            users: DeletedUsers::default(),
            seen: None,
        }
    }

    /// The requests as last read.
    pub fn users(&self) -> &DeletedUsers {
        &self.users
    }

    /// Read the requests again if they changed since the last refresh;
    /// true when they did (the first refresh always reads).
    pub async fn refresh(&mut self) -> Result<bool, clickhouse::error::Error> {
        let Some(client) = &self.client else {
            let next = self.given.pop_front();
            let changed = next.is_some();
            if let Some(users) = next {
                self.users = users;
            }
            return Ok(changed);
        };
        let seen = DeletedUsers::version(client).await?;
        if self.seen == Some(seen) {
            return Ok(false);
        }
        self.users = DeletedUsers::read(client).await?;
        self.seen = Some(seen);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_request_covers_only_its_tenant_and_a_project_request_all() {
        let mut d = DeletedUsers::default();
        d.add("p".into(), "acme".into(), "u1".into(), 100);
        d.add("p".into(), String::new(), "u2".into(), 100);
        // u1 deleted for acme only.
        assert!(d.covers("p", "acme", "u1", "", 100));
        assert!(d.covers("p", "acme", "", "u1", 50));
        assert!(!d.covers("p", "globex", "u1", "", 50));
        assert!(!d.covers("p", "", "u1", "", 50));
        // Received after the request: kept.
        assert!(!d.covers("p", "acme", "u1", "", 101));
        // u2 deleted project-wide: every tenant.
        assert!(d.covers("p", "globex", "u2", "", 100));
        assert!(d.covers("p", "", "u2", "", 100));
        // Other projects and users untouched.
        assert!(!d.covers("q", "acme", "u1", "", 1));
        assert!(!d.covers("p", "acme", "u3", "", 1));
        assert!(!d.covers("p", "acme", "", "", 1));
    }
}
