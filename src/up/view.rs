//! The live terminal view of `hourglass up`: redrawn in place once a second
//! (plain lines every few seconds when stdout is not a terminal).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clickhouse::Row;
use hourglass_core::Config;
use serde::Deserialize;

use super::demo::DemoCounters;

/// The values of every series of `name` in Prometheus text.
fn series<'t>(text: &'t str, name: &'t str) -> impl Iterator<Item = f64> + 't {
    text.lines()
        .filter(move |l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// Sum of every series of `name` (folded from +0.0: `Iterator::sum` of no
/// floats is -0.0, which printed as "-0").
fn metric(text: &str, name: &str) -> f64 {
    series(text, name).fold(0.0, |sum, v| sum + v)
}

/// Each consumer's gauge of records not yet read (from its own librdkafka
/// statistics, every 5 s): the view asks the broker nothing, so it adds no
/// load to a small local broker.
const LAG_GAUGES: [(&str, &str); 3] = [
    ("aggregator", "hourglass_aggregator_consumer_lag_messages"),
    ("loader", "hourglass_loader_consumer_lag_messages"),
    ("archiver", "hourglass_archiver_consumer_lag_messages"),
];

#[derive(Row, Deserialize)]
struct TopEvent {
    window_start: u32,
    event: String,
    events: u64,
    users: u64,
    p95: f64,
}

pub struct View {
    pub cfg: Config,
    pub stop: tokio_util::sync::CancellationToken,
    pub demo: Option<Arc<DemoCounters>>,
    pub log_file: String,
}

impl View {
    pub async fn run(self) {
        let client = hourglass_core::clickhouse::client(&self.cfg.clickhouse);
        let terminal = std::io::stdout().is_terminal();
        let handle = hourglass_core::telemetry::metrics_handle();
        let started = Instant::now();
        let mut last = (Instant::now(), 0.0);
        let mut printed = Instant::now() - Duration::from_secs(60);
        while !self.stop.is_cancelled() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let text = handle.render();
            let accepted = metric(&text, "hourglass_ingest_events_accepted_total");
            let rate = (accepted - last.1) / last.0.elapsed().as_secs_f64().max(1e-3);
            last = (Instant::now(), accepted);
            let top: Vec<TopEvent> = client
                .query(
                    "SELECT toUInt32(window_start) AS window_start, event, events, users, p95 FROM metrics_5m \
                     WHERE window_start = (SELECT max(window_start) FROM rollup_5m) ORDER BY events DESC LIMIT 5",
                )
                .fetch_all()
                .await
                .unwrap_or_default();
            let mut out = String::new();
            if terminal {
                out.push_str("\x1b[H\x1b[J");
            } else if printed.elapsed() < Duration::from_secs(5) {
                continue;
            }
            printed = Instant::now();
            out.push_str(&format!(
                "hourglass up: {:>5.0} s   logs: {}   (Ctrl-C stops; twice stops at once)\n\n",
                started.elapsed().as_secs_f64(),
                self.log_file
            ));
            out.push_str(&format!(
                "ingest     {rate:>10.0} events/s accepted   {accepted:>12.0} in all   {:>6.0} rejected\n",
                metric(&text, "hourglass_ingest_events_rejected_total")
            ));
            if let Some(d) = &self.demo {
                out.push_str(&format!(
                    "demo       {:>10} sent   {:>10} accepted   {} late on purpose   {} refused requests   request p99 {:.0} ms\n",
                    d.sent.load(Ordering::Relaxed),
                    d.accepted.load(Ordering::Relaxed),
                    d.late_on_purpose.load(Ordering::Relaxed),
                    d.refused_requests.load(Ordering::Relaxed),
                    d.latency_ms(0.99),
                ));
            }
            out.push_str("not read   ");
            for (component, gauge) in LAG_GAUGES {
                out.push_str(&format!("{component}: {:.0}   ", metric(&text, gauge)));
            }
            out.push_str(&format!(
                "(records)   aggregator watermark {:.0} s behind\n",
                max_metric(&text, "hourglass_aggregator_watermark_lag_seconds")
            ));
            out.push_str(&format!(
                "aggregator {:>10.0} open windows   {:>8.0} open keys   {:>8.0} late events\n",
                metric(&text, "hourglass_aggregator_open_windows"),
                metric(&text, "hourglass_aggregator_open_keys"),
                late_events(&text)
            ));
            out.push_str(&format!(
                "loader     {:>10.0} rows loaded      archiver {:>10.0} events in {:.0} files\n\n",
                metric(&text, "hourglass_loader_rows_total"),
                metric(&text, "hourglass_archiver_events_total"),
                metric(&text, "hourglass_archiver_files_total")
            ));
            match top.first() {
                Some(first) => {
                    let start = chrono::DateTime::from_timestamp(i64::from(first.window_start), 0)
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "last closed window {start}:\n  {:<14} {:>9} {:>9} {:>10}\n",
                        "event", "events", "users", "p95"
                    ));
                    for t in &top {
                        out.push_str(&format!(
                            "  {:<14} {:>9} {:>9} {:>10.1}\n",
                            t.event, t.events, t.users, t.p95
                        ));
                    }
                }
                None => out.push_str("no closed window yet\n"),
            }
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
        }
    }
}

/// Largest series of `name` in Prometheus text (0 when there is none).
fn max_metric(text: &str, name: &str) -> f64 {
    series(text, name).fold(0.0, f64::max)
}

/// Late events counted by the aggregator.
pub fn late_events(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("hourglass_aggregator_events_total{") && l.contains("outcome=\"late\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_exact_name() {
        let text = "# TYPE x counter\nhourglass_ingest_events_accepted_total{project=\"a\"} 5\n\
                    hourglass_ingest_events_accepted_total{project=\"b\"} 7\n\
                    hourglass_ingest_events_accepted_total_other 100\n\
                    hourglass_aggregator_events_total{outcome=\"late\"} 3\n\
                    hourglass_aggregator_events_total{outcome=\"added\"} 30\n";
        assert_eq!(metric(text, "hourglass_ingest_events_accepted_total"), 12.0);
        assert_eq!(late_events(text), 3.0);
        assert_eq!(metric(text, "hourglass_aggregator_events_total"), 33.0);
    }
}
