//! Per-project quotas (`[projects.<id>]`): events per second and events per
//! UTC day. Each ingest replica enforces its share, the quota divided by
//! `ingest.replicas`, so the replicas together never admit more than the
//! quota without talking to each other.
//!
//! The map of projects is fixed at start (projects come from the config), so
//! it needs no lock; each project's state is a token bucket (governor) and a
//! day counter behind its own small mutex.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota as Bucket};
use hourglass_core::Config;

/// Which quota refused a request: its config key, as the 429 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    EventsPerSec,
    EventsPerDay,
}

impl Quota {
    pub fn key(self) -> &'static str {
        match self {
            Quota::EventsPerSec => "events_per_sec",
            Quota::EventsPerDay => "events_per_day",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "project {project:?} is over its {} quota of {limit} events{}; retry in {} s",
    quota.key(),
    match quota { Quota::EventsPerSec => "/s", Quota::EventsPerDay => " per UTC day" },
    wait.as_millis().div_ceil(1000).max(1)
)]
pub struct QuotaExceeded {
    pub project: String,
    pub quota: Quota,
    /// The quota as configured (over every replica).
    pub limit: u64,
    /// When the request could pass.
    pub wait: Duration,
}

#[derive(Debug, Default)]
pub struct ProjectQuotas {
    by_project: HashMap<String, ProjectQuota>,
}

#[derive(Debug)]
struct ProjectQuota {
    rate: Option<(DefaultDirectRateLimiter, u32)>,
    day: Option<DayBudget>,
}

impl ProjectQuotas {
    /// Each replica's share of every project's quotas. A replica's bucket
    /// holds at least one full batch: a smaller one could never pass it.
    pub fn from_config(cfg: &Config) -> Self {
        let replicas = cfg.ingest.replicas.max(1);
        let min_burst = u32::try_from(cfg.contract.max_batch_events).unwrap_or(u32::MAX);
        let by_project = cfg
            .projects
            .iter()
            .filter(|(_, p)| p.events_per_sec > 0 || p.events_per_day > 0)
            .map(|(id, p)| {
                let rate = NonZeroU32::new(p.events_per_sec.div_ceil(replicas)).map(|rate| {
                    let burst = if p.events_burst == 0 {
                        p.events_per_sec
                    } else {
                        p.events_burst
                    };
                    let burst = (burst / replicas).max(rate.get()).max(min_burst);
                    let bucket = Bucket::per_second(rate)
                        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                    (DefaultDirectRateLimiter::direct(bucket), p.events_per_sec)
                });
                let day = (p.events_per_day > 0).then(|| DayBudget {
                    limit: p.events_per_day,
                    share: p.events_per_day.div_ceil(u64::from(replicas)),
                    used: Mutex::new((i64::MIN, 0)),
                });
                (id.clone(), ProjectQuota { rate, day })
            })
            .collect();
        Self { by_project }
    }

    pub fn is_empty(&self) -> bool {
        self.by_project.is_empty()
    }

    /// Take `events` from the project's per-second bucket.
    pub fn take_rate(&self, project: &str, events: usize) -> Result<(), QuotaExceeded> {
        let Some((bucket, limit)) = self.by_project.get(project).and_then(|q| q.rate.as_ref())
        else {
            return Ok(());
        };
        let n = NonZeroU32::new(u32::try_from(events.max(1)).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        let exceeded = |wait| QuotaExceeded {
            project: project.to_owned(),
            quota: Quota::EventsPerSec,
            limit: u64::from(*limit),
            wait,
        };
        match bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(exceeded(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // Larger than the bucket: cannot happen for a batch within
            // contract.max_batch_events; a second is the honest wait.
            Err(_) => Err(exceeded(Duration::from_secs(1))),
        }
    }

    /// Reserve `events` of the project's day; what the request does not
    /// [`keep`](DayReservation::keep) goes back when the reservation drops.
    pub fn reserve_day(
        &self,
        project: &str,
        events: usize,
        now: DateTime<Utc>,
    ) -> Result<DayReservation<'_>, QuotaExceeded> {
        let Some(day) = self.by_project.get(project).and_then(|q| q.day.as_ref()) else {
            return Ok(DayReservation::none());
        };
        let n = events as u64;
        let today = now.timestamp().div_euclid(86_400);
        let mut used = day.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.0 != today {
            *used = (today, 0);
        }
        if used.1 + n > day.share {
            let midnight = (today + 1) * 86_400;
            let wait = Duration::from_millis(
                u64::try_from(midnight * 1000 - now.timestamp_millis()).unwrap_or(0),
            );
            return Err(QuotaExceeded {
                project: project.to_owned(),
                quota: Quota::EventsPerDay,
                limit: day.limit,
                wait,
            });
        }
        used.1 += n;
        Ok(DayReservation {
            day: Some((day, today)),
            reserved: n,
        })
    }

    /// Events of `project`'s day used on this replica (for tests and logs).
    pub fn day_used(&self, project: &str) -> u64 {
        self.by_project
            .get(project)
            .and_then(|q| q.day.as_ref())
            .map_or(0, |d| d.used.lock().unwrap_or_else(|e| e.into_inner()).1)
    }
}

#[derive(Debug)]
struct DayBudget {
    limit: u64,
    /// This replica's share of `limit`.
    share: u64,
    /// (UTC day number, events counted that day).
    used: Mutex<(i64, u64)>,
}

/// Events of a day taken for one request, until it knows how many it kept.
#[derive(Debug)]
pub struct DayReservation<'a> {
    day: Option<(&'a DayBudget, i64)>,
    reserved: u64,
}

impl DayReservation<'_> {
    fn none() -> Self {
        Self {
            day: None,
            reserved: 0,
        }
    }

    /// `events` of the reservation were accepted: they stay counted.
    pub fn keep(&mut self, events: usize) {
        self.reserved = self.reserved.saturating_sub(events as u64);
    }
}

impl Drop for DayReservation<'_> {
    fn drop(&mut self) {
        if let Some((day, reserved_on)) = self.day
            && self.reserved > 0
        {
            let mut used = day.used.lock().unwrap_or_else(|e| e.into_inner());
            // After midnight the old day's count is gone already.
            if used.0 == reserved_on {
                used.1 = used.1.saturating_sub(self.reserved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use hourglass_core::config::ProjectConfig;

    use super::*;

    fn quotas(replicas: u32, project: ProjectConfig) -> ProjectQuotas {
        let mut cfg = Config::default();
        cfg.ingest.replicas = replicas;
        cfg.contract.max_batch_events = 10;
        cfg.projects.insert("flood".into(), project);
        ProjectQuotas::from_config(&cfg)
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, h, m, s).unwrap()
    }

    #[test]
    fn a_day_quota_is_split_by_replicas_and_refunds_what_was_not_kept() {
        let q = quotas(
            2,
            ProjectConfig {
                events_per_day: 101,
                ..Default::default()
            },
        );
        // 101 over two replicas: 51 here.
        let mut r = q.reserve_day("flood", 40, at(10, 0, 0)).unwrap();
        r.keep(30);
        drop(r);
        assert_eq!(q.day_used("flood"), 30);
        let kept = q.reserve_day("flood", 21, at(11, 0, 0)).unwrap();
        let refused = q.reserve_day("flood", 1, at(23, 59, 30)).unwrap_err();
        assert_eq!(refused.quota, Quota::EventsPerDay);
        assert_eq!(refused.limit, 101);
        assert_eq!(refused.wait, Duration::from_secs(30));
        assert!(refused.to_string().contains("events_per_day"), "{refused}");
        drop(kept);
        // A new UTC day starts from nothing; a reservation of the old day
        // dropped after midnight does not take from it.
        let old = q.reserve_day("flood", 0, at(23, 59, 59)).unwrap();
        let tomorrow = at(0, 0, 0) + chrono::Duration::days(1);
        let mut new = q.reserve_day("flood", 51, tomorrow).unwrap();
        new.keep(51);
        drop(old);
        drop(new);
        assert_eq!(q.day_used("flood"), 51);
        // Other projects have no quota.
        assert!(q.reserve_day("other", 1_000_000, tomorrow).is_ok());
    }

    #[test]
    fn the_rate_bucket_holds_a_replica_share_but_at_least_one_batch() {
        let q = quotas(
            4,
            ProjectConfig {
                events_per_sec: 20,
                ..Default::default()
            },
        );
        // 20/s over 4 replicas is 5/s here, bucket raised to one batch (10).
        q.take_rate("flood", 10).unwrap();
        let refused = q.take_rate("flood", 5).unwrap_err();
        assert_eq!(refused.quota, Quota::EventsPerSec);
        assert_eq!(refused.limit, 20);
        assert!(refused.wait > Duration::from_millis(500), "{refused:?}");
        assert!(q.take_rate("other", 1_000).is_ok());
        assert!(
            ProjectQuotas::from_config(&Config::default()).is_empty(),
            "no projects, no quotas"
        );
    }
}
