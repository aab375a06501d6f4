//! Which enrichment each project's events get (`ingest.user_agent`,
//! `ingest.ip_policy`, overridden per project), and the client's address
//! and user agent as a request gives them.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::http::{HeaderMap, header};
use hourglass_core::Config;
use hourglass_core::contract::{EnrichPolicy, Enrichment};

#[derive(Debug, Clone, Default)]
pub struct EnrichPolicies {
    default: EnrichPolicy,
    by_project: HashMap<String, EnrichPolicy>,
    client_ip_header: Option<String>,
}

impl EnrichPolicies {
    pub fn from_config(cfg: &Config) -> Self {
        let i = &cfg.ingest;
        let default = EnrichPolicy {
            user_agent: i.user_agent,
            ip: i.ip_policy,
            hash_key: i.ip_hash_key.as_bytes().to_vec(),
        };
        let by_project = cfg
            .projects
            .iter()
            .map(|(id, p)| {
                let policy = EnrichPolicy {
                    user_agent: p.user_agent.unwrap_or(default.user_agent),
                    ip: p.ip_policy.unwrap_or(default.ip),
                    hash_key: default.hash_key.clone(),
                };
                (id.clone(), policy)
            })
            .collect();
        Self {
            default,
            by_project,
            client_ip_header: Some(i.client_ip_header.to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
        }
    }

    /// The enrichment of one request of `project`.
    pub fn for_request(
        &self,
        project: &str,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Enrichment {
        let policy = self.by_project.get(project).unwrap_or(&self.default);
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .filter(|_| policy.user_agent);
        let ip = match &self.client_ip_header {
            // The first address: the client, as the proxy saw it.
            Some(name) => headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok()),
            None => peer,
        };
        Enrichment::new(policy.clone(), user_agent, ip)
    }
}

#[cfg(test)]
mod tests {
    use hourglass_core::config::{IpPolicy, ProjectConfig};

    use super::*;

    #[test]
    fn a_project_overrides_the_default_and_the_proxy_header_names_the_client() {
        let mut cfg = Config::default();
        cfg.ingest.client_ip_header = "X-Forwarded-For".into();
        cfg.projects.insert(
            "web".into(),
            ProjectConfig {
                ip_policy: Some(IpPolicy::Truncate),
                ..Default::default()
            },
        );
        let policies = EnrichPolicies::from_config(&cfg);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "198.51.100.7, 10.0.0.1".parse().unwrap());
        headers.insert(header::USER_AGENT, "curl/8.5.0".parse().unwrap());
        let peer = Some("10.0.0.2".parse().unwrap());
        let web = policies.for_request("web", &headers, peer);
        assert!(
            web.request_fragment().contains(r#""$ip":"198.51.100.0""#),
            "{}",
            web.request_fragment()
        );
        // Other projects: the default, which drops the address.
        let other = policies.for_request("app", &headers, peer);
        assert!(!other.request_fragment().contains("$ip"));
    }
}
