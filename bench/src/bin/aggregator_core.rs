//! In-process windowing core on pre-decoded events: events/s on one core, and
//! peak RSS with the events doubled and the keys unchanged (it must stay flat:
//! memory follows keys and open windows, not events).
//!
//! `cargo run --release -p hourglass-bench --bin aggregator_core -- --events 5000000`

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use hourglass_aggregator::window::{EventRef, PartitionWindows, WindowConfig};
use rand::{Rng, SeedableRng, rngs::SmallRng};

// The allocator and memory settings of the hourglass binary, whose core this is.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Events in the first run (the second run doubles them).
    #[arg(long, default_value_t = 5_000_000)]
    events: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Measure peak RSS while streaming `--events` through (run with N and 2N).
    #[arg(long)]
    memory: bool,
}

struct Decoded {
    event: &'static str,
    user: String,
    ts: i64,
    value: Option<f64>,
    dimensions: Vec<Cow<'static, str>>,
}

impl Decoded {
    fn as_event(&self) -> EventRef<'_> {
        EventRef {
            project_id: "proj",
            event: self.event,
            user: &self.user,
            timestamp_ms: self.ts,
            value: self.value,
            dimensions: &self.dimensions,
        }
    }
}

fn make(n: usize, users: usize) -> Vec<Decoded> {
    let names = ["page_view", "click", "signup", "api_call", "purchase"];
    let mut rng = SmallRng::seed_from_u64(1);
    let t0 = 1_767_225_600_000i64;
    // The same 12 windows however many events: keys stay the same.
    let span = 12 * 300_000i64;
    (0..n)
        .map(|i| {
            let event = names[rng.random_range(0..names.len())];
            let path = Cow::Owned(format!("/p/{}", rng.random_range(0..50)));
            Decoded {
                event,
                user: format!("user-{}", rng.random_range(0..users)),
                ts: t0 + (i as i64 * span) / n as i64 - rng.random_range(0..30_000),
                value: (event == "api_call").then(|| rng.random::<f64>().powi(3) * 2000.0),
                dimensions: vec![path],
            }
        })
        .collect()
}

/// Feed everything through one partition's windows; returns events/s and
/// the rows the closed windows made.
fn run(events: &[Decoded], dims: bool) -> (f64, usize) {
    let cfg = Arc::new(WindowConfig {
        dimensions: if dims { vec!["path".into()] } else { vec![] },
        ..WindowConfig::default()
    });
    let mut p = PartitionWindows::new(cfg, 0, None);
    let now = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut rows = 0;
    for (i, e) in events.iter().enumerate() {
        p.ingest(&e.as_event(), i as i64, now);
        if i % 100_000 == 0
            && let Some(c) = p.take_all_closed()
        {
            rows += c.rows.len();
        }
    }
    p.mark_caught_up(i64::MAX / 4);
    p.tick(i64::MAX / 2);
    rows += p.take_all_closed().map_or(0, |c| c.rows.len());
    let secs = started.elapsed().as_secs_f64();
    (events.len() as f64 / secs, rows)
}

fn main() {
    hourglass_core::process::disable_transparent_huge_pages();
    let args = Args::parse();
    if args.memory {
        // Stream events through without holding them: peak RSS is the core's.
        let cfg = Arc::new(WindowConfig {
            dimensions: vec!["path".into()],
            ..WindowConfig::default()
        });
        let mut p = PartitionWindows::new(cfg, 0, None);
        let now = chrono::Utc::now().timestamp_millis();
        let chunk = 100_000;
        let mut rows = 0;
        for c in 0..args.events.div_ceil(chunk) {
            // Same 12 windows whatever the total: each chunk spans a slice of them.
            let mut events = make(chunk, args.users);
            let offset = c as f64 / args.events.div_ceil(chunk) as f64;
            let shift = (offset * 12.0 * 300_000.0) as i64;
            for e in &mut events {
                e.ts = 1_767_225_600_000
                    + shift
                    + (e.ts - 1_767_225_600_000) / args.events.div_ceil(chunk) as i64;
            }
            for (i, e) in events.iter().enumerate() {
                p.ingest(&e.as_event(), (c * chunk + i) as i64, now);
            }
            rows += p.take_all_closed().map_or(0, |c| c.rows.len());
        }
        println!(
            "memory: {} events, {} users, {} rows flushed so far, {} open windows, {} open keys, peak RSS {} MiB",
            args.events,
            args.users,
            rows,
            p.open_windows(),
            p.open_keys(),
            hourglass_bench::proc_status_kib(std::process::id(), "VmHWM:") / 1024
        );
        return;
    }
    println!(
        "aggregator core, one thread, pre-decoded events, 12 windows, {} users",
        args.users
    );
    for dims in [false, true] {
        let events = make(args.events, args.users);
        let (rate, rows) = run(&events, dims);
        println!(
            "  dimensions={:<5} {:>10} events: {:>12.0} events/s, {rows} rows",
            dims,
            events.len(),
            rate
        );
    }
}
