//! Query-string parsing shared by the endpoints: strict (an unknown or
//! repeated parameter is an error, not silently ignored), times as RFC 3339
//! or Unix seconds, ranges checked against the configured limits.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

use crate::error::ApiError;

/// The parameters of one request, in order, from the raw query string.
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parse `raw`, refusing names outside `allowed` (`where` may repeat;
    /// nothing else may).
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad(format!(
                    "unknown parameter `{name}`; this endpoint takes {}",
                    allowed.join(", ")
                )));
            }
            if name != "where" && pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::bad(format!("parameter `{name}` given twice")));
            }
        }
        Ok(Self { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::bad(format!("parameter `{name}` is required")))
    }

    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.get(name).map(|v| parse_time(name, v)).transpose()
    }

    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => Err(ApiError::bad(format!(
                "`{name}` must be true or false, not {v:?}"
            ))),
        }
    }

    /// A page size in 1..=max (`default` when absent).
    pub fn limit(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        match self.get("limit") {
            None => Ok(default.min(max)),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=u64::from(max)).contains(&n) => Ok(n as u32),
                _ => Err(ApiError::bad(format!(
                    "`limit` must be a whole number from 1 to {max}, not {v:?}"
                ))),
            },
        }
    }
}

/// RFC 3339 (`2026-01-01T00:00:00Z`) or Unix seconds.
pub fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(secs) = value.parse::<i64>() {
        return Utc
            .timestamp_opt(secs, 0)
            .single()
            .filter(|t| t.timestamp() >= 0 && t.timestamp() < i64::from(u32::MAX))
            .ok_or_else(|| ApiError::bad(format!("`{name}` {value} is out of range")));
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .filter(|t| t.timestamp() >= 0 && t.timestamp() < i64::from(u32::MAX))
        .ok_or_else(|| {
            ApiError::bad(format!(
                "`{name}` must be RFC 3339 (2026-01-01T00:00:00Z) or Unix seconds, not {value:?}"
            ))
        })
}

pub fn show(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A range of raw events or sessions: `to` defaults to now, `from` to a day
/// before `to`; at most `max_days` long.
pub fn raw_range(p: &Params, max_days: u32) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let to = p.time("to")?.unwrap_or_else(Utc::now);
    let from = p.time("from")?.unwrap_or(to - chrono::Duration::days(1));
    if to <= from {
        return Err(ApiError::bad(format!(
            "`to` ({}) must be after `from` ({})",
            show(to),
            show(from)
        )));
    }
    if to - from > chrono::Duration::days(i64::from(max_days)) {
        return Err(ApiError::bad(format!(
            "the range {} .. {} is longer than {max_days} days, the most one query may read",
            show(from),
            show(to)
        )));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        assert!(Params::parse(Some("a=1&b=2"), &["a"]).is_err());
        assert!(Params::parse(Some("a=1&a=2"), &["a"]).is_err());
        let p = Params::parse(Some("where=a:1&where=b:2"), &["where"]).unwrap();
        assert_eq!(p.all("where").count(), 2);
    }

    #[test]
    fn times_and_limits() {
        assert_eq!(
            parse_time("from", "1767225600").unwrap(),
            parse_time("from", "2026-01-01T00:00:00Z").unwrap()
        );
        assert!(parse_time("from", "yesterday").is_err());
        assert!(parse_time("from", "-5").is_err());
        let p = Params::parse(Some("limit=1000000000"), &["limit"]).unwrap();
        assert!(p.limit(100, 1000).is_err());
        let p = Params::parse(Some("limit=0"), &["limit"]).unwrap();
        assert!(p.limit(100, 1000).is_err());
        let p = Params::parse(None, &["limit"]).unwrap();
        assert_eq!(p.limit(100, 1000).unwrap(), 100);
    }

    #[test]
    fn raw_ranges_are_bounded() {
        let p = Params::parse(
            Some("from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z"),
            &["from", "to"],
        )
        .unwrap();
        assert!(
            raw_range(&p, 31)
                .unwrap_err()
                .to_string()
                .contains("longer than 31 days")
        );
        let p = Params::parse(
            Some("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"),
            &["from", "to"],
        )
        .unwrap();
        assert!(
            raw_range(&p, 31)
                .unwrap_err()
                .to_string()
                .contains("must be after")
        );
    }
}
