//! Enrichment at ingest: the user agent parsed into properties, and the
//! client's IP address kept by the project's policy.
//!
//! Enriched values are properties named with a `$` (`$browser`,
//! `$browser_version`, `$os`, `$os_version`, `$device_class`, `$ip`), the
//! convention of product-analytics tools, so every layer (Kafka, the raw
//! table, the lake, replay) carries them with no schema of their own and
//! `aggregator.dimensions` can name them. Ingest's values replace any a
//! client sent under those names.
//!
//! A Segment event's `context.userAgent` and `context.ip` are its end user's
//! (server-side SDKs forward them) and win over the request's; `context.ip`
//! itself is removed whatever the policy, so an address is only ever kept
//! as the policy's `$ip`.

use std::net::IpAddr;
use std::sync::LazyLock;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::config::IpPolicy;

/// Every property name enrichment writes.
pub const ENRICHED: [&str; 6] = [
    "$browser",
    "$browser_version",
    "$os",
    "$os_version",
    "$device_class",
    "$ip",
];

static PARSER: LazyLock<woothee::parser::Parser> = LazyLock::new(woothee::parser::Parser::new);

/// What a project's events are enriched with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichPolicy {
    pub user_agent: bool,
    pub ip: IpPolicy,
    /// Key of [`IpPolicy::Hash`].
    pub hash_key: Vec<u8>,
}

impl Default for EnrichPolicy {
    fn default() -> Self {
        Self {
            user_agent: true,
            ip: IpPolicy::Drop,
            hash_key: Vec::new(),
        }
    }
}

/// One request's enrichment: the policy and what the request itself says.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {
    policy: EnrichPolicy,
    /// The properties from the request's own user agent and address, as
    /// `"name":value` pairs joined by commas (what the fast path appends).
    request_fragment: String,
    request_user_agent: Option<String>,
    request_ip: Option<IpAddr>,
}

impl Enrichment {
    pub fn new(policy: EnrichPolicy, user_agent: Option<&str>, ip: Option<IpAddr>) -> Self {
        let request_user_agent = user_agent.filter(|_| policy.user_agent).map(str::to_owned);
        let mut props = Map::new();
        enrich_into(&mut props, &policy, request_user_agent.as_deref(), ip);
        let request_fragment = props
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            policy,
            request_fragment,
            request_user_agent,
            request_ip: ip,
        }
    }

    /// The request's properties as JSON members (`"$os":"Linux",...`),
    /// empty when there are none: valid for an event that has no
    /// `context` and no `$` property of its own.
    pub fn request_fragment(&self) -> &str {
        &self.request_fragment
    }

    /// Enrich one event's `properties` (its `context`, if any, taken into
    /// account), replacing any `$` property of these names it had.
    pub fn apply(&self, properties: &mut Map<String, Value>) {
        let context = properties.get_mut("context").and_then(Value::as_object_mut);
        let (context_ua, context_ip) = match context {
            Some(c) => {
                let ip = c.remove("ip");
                let ua = c
                    .get("userAgent")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                (
                    ua,
                    ip.and_then(|ip| ip.as_str()?.trim().parse::<IpAddr>().ok()),
                )
            }
            None => (None, None),
        };
        for name in ENRICHED {
            properties.remove(name);
        }
        let user_agent = if self.policy.user_agent {
            context_ua.or_else(|| self.request_user_agent.clone())
        } else {
            None
        };
        enrich_into(
            properties,
            &self.policy,
            user_agent.as_deref(),
            context_ip.or(self.request_ip),
        );
    }
}

fn enrich_into(
    props: &mut Map<String, Value>,
    policy: &EnrichPolicy,
    user_agent: Option<&str>,
    ip: Option<IpAddr>,
) {
    if let Some(ua) = user_agent.and_then(UserAgent::parse) {
        let mut put = |name: &str, value: String| {
            if !value.is_empty() {
                props.insert(name.to_owned(), Value::String(value));
            }
        };
        put("$browser", ua.browser);
        put("$browser_version", ua.browser_version);
        put("$os", ua.os);
        put("$os_version", ua.os_version);
        put("$device_class", ua.device_class.to_owned());
    }
    if let Some(kept) = ip.and_then(|ip| keep_ip(ip, policy)) {
        props.insert("$ip".to_owned(), Value::String(kept));
    }
}

/// The address as `policy` keeps it, `None` for [`IpPolicy::Drop`].
pub fn keep_ip(ip: IpAddr, policy: &EnrichPolicy) -> Option<String> {
    match policy.ip {
        IpPolicy::Drop => None,
        IpPolicy::Truncate => Some(match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                std::net::Ipv4Addr::new(a, b, c, 0).to_string()
            }
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[6..].fill(0);
                std::net::Ipv6Addr::from(octets).to_string()
            }
        }),
        IpPolicy::Hash => {
            let mut mac = Hmac::<Sha256>::new_from_slice(&policy.hash_key)
                .expect("HMAC takes a key of any length");
            // IPv4-mapped IPv6 and IPv4 are the same client.
            let canonical = ip.to_canonical().to_string();
            mac.update(canonical.as_bytes());
            Some(hex_16(&mac.finalize().into_bytes()))
        }
    }
}

fn hex_16(bytes: &[u8]) -> String {
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A user agent as analytics reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAgent {
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
    /// `desktop`, `mobile`, `tablet`, `bot` or `appliance`; empty when
    /// unknown.
    pub device_class: &'static str,
}

impl UserAgent {
    /// `None` for a user agent nothing is known about.
    pub fn parse(ua: &str) -> Option<Self> {
        let r = PARSER.parse(ua)?;
        let known = |s: &str| {
            if s == "UNKNOWN" {
                String::new()
            } else {
                s.to_owned()
            }
        };
        let tablet = r.os == "iPad" || (r.os == "Android" && !ua.contains("Mobile"));
        let device_class = match r.category {
            "pc" => "desktop",
            "smartphone" if tablet => "tablet",
            "smartphone" | "mobilephone" => "mobile",
            "crawler" => "bot",
            "appliance" => "appliance",
            _ => "",
        };
        let parsed = Self {
            browser: known(r.name),
            browser_version: known(r.version),
            os: known(r.os),
            os_version: known(&r.os_version),
            device_class,
        };
        (!parsed.browser.is_empty() || !parsed.os.is_empty() || !device_class.is_empty())
            .then_some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ua(s: &str) -> (String, String, String, &'static str) {
        let u = UserAgent::parse(s).unwrap_or_else(|| panic!("not parsed: {s}"));
        (u.browser, u.os, u.os_version, u.device_class)
    }

    /// User agents of current browsers and crawlers, as they send them.
    #[test]
    fn current_browsers_and_bots() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                ("Chrome", "Windows 10", "NT 10.0", "desktop"),
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                ("Edge", "Windows 10", "NT 10.0", "desktop"),
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:133.0) Gecko/20100101 Firefox/133.0",
                ("Firefox", "Mac OSX", "10.15", "desktop"),
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
                ("Safari", "Mac OSX", "10.15.7", "desktop"),
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                ("Chrome", "Linux", "UNKNOWN", "desktop"),
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                ("Safari", "iPhone", "18.1", "mobile"),
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                ("Safari", "iPad", "18.1", "tablet"),
            ),
            (
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
                ("Chrome", "Android", "10", "mobile"),
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
                ("SamsungBrowser", "Android", "14", "mobile"),
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                ("Chrome", "Android", "14", "tablet"),
            ),
            (
                "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; +http://www.google.com/bot.html) Chrome/131.0.6778.69 Safari/537.36",
                ("Googlebot", "", "", "bot"),
            ),
            (
                "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
                ("bingbot", "", "", "bot"),
            ),
        ];
        let mut wrong = Vec::new();
        for (agent, (browser, os, os_version, class)) in cases {
            let got = ua(agent);
            let want = (
                browser.to_owned(),
                os.to_owned(),
                if os_version == "UNKNOWN" {
                    String::new()
                } else {
                    os_version.to_owned()
                },
                class,
            );
            if got != want {
                wrong.push(format!("{agent}\n  got  {got:?}\n  want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert_eq!(UserAgent::parse("totally/unknown"), None);
    }

    #[test]
    fn ip_policies() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        let v6: IpAddr = "2001:db8:85a3:1234:8a2e:370:7334:1".parse().unwrap();
        let mut p = EnrichPolicy::default();
        assert_eq!(keep_ip(v4, &p), None);
        p.ip = IpPolicy::Truncate;
        assert_eq!(keep_ip(v4, &p).unwrap(), "203.0.113.0");
        assert_eq!(keep_ip(v6, &p).unwrap(), "2001:db8:85a3::");
        p.ip = IpPolicy::Hash;
        p.hash_key = b"k1".to_vec();
        let h = keep_ip(v4, &p).unwrap();
        assert_eq!(h.len(), 32);
        let mapped: IpAddr = "::ffff:203.0.113.77".parse().unwrap();
        assert_eq!(keep_ip(mapped, &p).unwrap(), h, "the same client");
        p.hash_key = b"k2".to_vec();
        assert_ne!(keep_ip(v4, &p).unwrap(), h, "keyed");
    }

    #[test]
    fn a_segment_context_wins_and_its_ip_is_removed() {
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
        let policy = EnrichPolicy {
            ip: IpPolicy::Truncate,
            ..Default::default()
        };
        let e = Enrichment::new(
            policy,
            Some("analytics-python/2.3.3"),
            Some("10.1.2.3".parse().unwrap()),
        );
        let mut props = serde_json::json!({
            "$browser": "forged",
            "context": {"userAgent": chrome, "ip": "198.51.100.9", "library": {"name": "x"}}
        })
        .as_object()
        .unwrap()
        .clone();
        e.apply(&mut props);
        assert_eq!(props["$browser"], "Chrome");
        assert_eq!(props["$device_class"], "desktop");
        assert_eq!(props["$ip"], "198.51.100.0");
        assert_eq!(
            props["context"],
            serde_json::json!({"userAgent": chrome, "library": {"name": "x"}})
        );
        // Dropped: no `$ip`, and no `context.ip` either.
        let e = Enrichment::new(
            EnrichPolicy::default(),
            None,
            Some("10.1.2.3".parse().unwrap()),
        );
        let mut props = serde_json::json!({"context": {"ip": "198.51.100.9"}})
            .as_object()
            .unwrap()
            .clone();
        e.apply(&mut props);
        assert_eq!(
            serde_json::Value::Object(props),
            serde_json::json!({"context": {}})
        );
        assert_eq!(e.request_fragment(), "");
    }
}
