//! What ingest knows of its broker, from a metadata probe every second: it
//! answers, it answers slowly, or it cannot be reached.
//!
//! A broker that is busy (a durable store on small hardware, a rebalance, a
//! restart that is replaying its log) still acknowledges events, only later:
//! refusing requests then would turn a slow second into an outage for every
//! client. So a probe that times out is followed by a TCP connect to the
//! bootstrap servers. A broker that accepts connections is *slow*: ingest
//! stays ready and keeps publishing (the delivery timeout still bounds each
//! request). Only a broker nobody can connect to, or one that has accepted
//! connections without answering for `broker_patience_secs`, is
//! *unreachable*: then ingest is not ready and answers 503 at once.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hourglass_core::telemetry::Readiness;

/// The broker as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Metadata answered within the probe's timeout.
    Answering,
    /// Metadata did not answer in time, but the broker accepts connections.
    Slow { since: Instant, error: String },
    /// Nothing to publish to; the reason is shown to clients.
    Unreachable { reason: String },
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Answered,
    /// No metadata answer; `connects` says whether a bootstrap server accepted
    /// a TCP connection.
    NoAnswer {
        connects: bool,
        error: String,
    },
}

/// The state after `probe`, given the state before it.
pub fn next(before: &Health, probe: Probe, now: Instant, patience: Duration) -> Health {
    match probe {
        Probe::Answered => Health::Answering,
        Probe::NoAnswer {
            connects: false,
            error,
        } => Health::Unreachable {
            reason: format!("no broker accepts connections ({error})"),
        },
        Probe::NoAnswer {
            connects: true,
            error,
        } => {
            let since = match before {
                Health::Slow { since, .. } => *since,
                _ => now,
            };
            if now.duration_since(since) >= patience {
                Health::Unreachable {
                    reason: format!(
                        "the broker accepts connections but has not answered metadata requests for {} s ({error})",
                        now.duration_since(since).as_secs()
                    ),
                }
            } else {
                Health::Slow { since, error }
            }
        }
    }
}

/// The shared state: the probe writes it, requests and `/health/ready` read it.
pub struct BrokerHealth {
    state: RwLock<Health>,
    readiness: Readiness,
    patience: Duration,
    draining: AtomicBool,
}

impl BrokerHealth {
    /// Starts unreachable ("not probed yet") and not ready.
    pub fn new(readiness: Readiness, patience: Duration) -> Self {
        readiness.set(false);
        Self {
            state: RwLock::new(Health::Unreachable {
                reason: "the broker has not been probed yet".into(),
            }),
            readiness,
            patience,
            draining: AtomicBool::new(false),
        }
    }

    pub fn get(&self) -> Health {
        self.state.read().expect("broker health lock").clone()
    }

    /// Record a probe's result; returns the new state when it changed kind
    /// (answering, slow, unreachable), for the log.
    pub fn observe(&self, probe: Probe, now: Instant) -> Option<Health> {
        let mut state = self.state.write().expect("broker health lock");
        let after = next(&state, probe, now, self.patience);
        let changed = std::mem::discriminant(&after) != std::mem::discriminant(&*state);
        self.readiness.set(
            !matches!(after, Health::Unreachable { .. }) && !self.draining.load(Ordering::Relaxed),
        );
        crate::metrics::broker_state(&after);
        *state = after.clone();
        changed.then_some(after)
    }

    /// Keep answering 503 while draining, whatever the broker does.
    pub fn set_not_ready(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.readiness.set(false);
    }
}

/// Whether any of the comma-separated `host:port` bootstrap servers accepts a
/// TCP connection within `timeout`; the error names what was tried.
pub fn connects(brokers: &str, timeout: Duration) -> Result<(), String> {
    let mut tried = Vec::new();
    for server in brokers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addresses = match server.to_socket_addrs() {
            Ok(a) => a,
            Err(e) => {
                tried.push(format!("{server}: {e}"));
                continue;
            }
        };
        for address in addresses {
            match TcpStream::connect_timeout(&address, timeout) {
                Ok(_) => return Ok(()),
                Err(e) => tried.push(format!("{server}: {e}")),
            }
        }
    }
    Err(tried.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(30);

    fn slow() -> Probe {
        Probe::NoAnswer {
            connects: true,
            error: "timed out".into(),
        }
    }

    #[test]
    fn a_broker_that_connects_but_answers_late_is_slow_not_unreachable() {
        let t0 = Instant::now();
        let s = next(&Health::Answering, slow(), t0, PATIENCE);
        assert!(matches!(s, Health::Slow { since, .. } if since == t0));
        // Still slow, counted from the first slow probe.
        let s = next(&s, slow(), t0 + Duration::from_secs(29), PATIENCE);
        assert!(matches!(s, Health::Slow { since, .. } if since == t0));
        // An answer ends it.
        assert_eq!(
            next(&s, Probe::Answered, t0 + Duration::from_secs(29), PATIENCE),
            Health::Answering
        );
    }

    #[test]
    fn silence_past_the_patience_or_refused_connections_are_unreachable() {
        let t0 = Instant::now();
        let s = next(&Health::Answering, slow(), t0, PATIENCE);
        let s = next(&s, slow(), t0 + PATIENCE, PATIENCE);
        assert!(
            matches!(&s, Health::Unreachable { reason } if reason.contains("has not answered metadata requests for 30 s")),
            "{s:?}"
        );
        let refused = Probe::NoAnswer {
            connects: false,
            error: "127.0.0.1:9: Connection refused".into(),
        };
        let s = next(&Health::Answering, refused, t0, PATIENCE);
        assert!(
            matches!(&s, Health::Unreachable { reason } if reason.contains("no broker accepts connections") && reason.contains("refused")),
            "{s:?}"
        );
        // A restarting broker that accepts connections again is slow afresh.
        let s = next(&s, slow(), t0 + Duration::from_secs(60), PATIENCE);
        assert!(matches!(s, Health::Slow { .. }));
    }

    #[test]
    fn connects_names_every_server_it_tried() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let timeout = Duration::from_millis(500);
        assert!(connects(&format!("{closed},{open}"), timeout).is_ok());
        let e = connects(&closed, timeout).unwrap_err();
        assert!(e.contains(&closed), "{e}");
    }
}
