//! What the kill suites share: their parameters read strictly from the
//! environment, scenarios that fail in CI instead of skipping, and kill
//! instants drawn from a printed seed that can be replayed.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// A count from the environment (`HG_AGG_EVENTS` …): unset gives `default`;
/// anything but a positive integer fails the suite instead of quietly
/// running something else.
pub fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => default,
        Ok(v) => match v.trim().replace('_', "").parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name}={v:?}: expected a positive number of events"),
        },
        Err(e) => panic!("{name}: {e}"),
    }
}

/// The scenarios to run from `var` (comma separated; unset: all of
/// `known`). An unknown name or an empty list fails the suite: a typo must
/// not turn into a green run that tested nothing.
pub fn env_scenarios(var: &str, known: &[&str]) -> Vec<String> {
    let Ok(v) = std::env::var(var) else {
        return known.iter().map(|s| (*s).to_owned()).collect();
    };
    let chosen: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(
        !chosen.is_empty(),
        "{var}={v:?} names no scenario (known: {known:?})"
    );
    for s in &chosen {
        assert!(
            known.contains(&s.as_str()),
            "{var}: unknown scenario {s:?} (known: {known:?})"
        );
    }
    chosen
}

/// The PID of a server this test stack started, for a scenario that kills
/// it. Under CI (`CI` set, as `.ci/run` is run) a missing one fails the
/// suite; elsewhere the scenario is skipped, said on stderr.
pub fn stack_pid_for(key: &str, scenario: &str) -> Option<i32> {
    let pid = super::stack_pid(key);
    if pid.is_none() {
        let why =
            format!("{scenario}: {key} was not started by this stack, so it cannot be killed");
        assert!(
            std::env::var_os("CI").is_none(),
            "{why} (CI runs every scenario)"
        );
        eprintln!("SKIPPED {why}");
    }
    pid
}

/// Kill instants from a seed: fresh each run unless `HG_KILL_SEED` replays
/// one. The seed is printed first, so a failure names how to rerun it.
pub struct KillPlan {
    rng: SmallRng,
}

impl KillPlan {
    pub fn new(suite: &str) -> Self {
        let seed = match std::env::var("HG_KILL_SEED") {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("HG_KILL_SEED={v:?} is not a number")),
            Err(_) => rand::rng().random(),
        };
        eprintln!("{suite}: kill seed {seed} (rerun this sequence with HG_KILL_SEED={seed})");
        Self {
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// A moment uniformly in `[0, span)`.
    pub fn instant(&mut self, span: Duration) -> Duration {
        Duration::from_millis(self.rng.random_range(0..span.as_millis().max(1) as u64))
    }
}

/// Settings for consumers in kill scenarios: a short group session, so a
/// SIGKILLed member leaves its group in seconds, and short watchdog bounds,
/// so the replacement (started at once, as a supervisor would) rejoins as
/// soon as the group owes it partitions, and a partition that a racing
/// rebalance left with a dead member is handed out again after 20 s.
pub fn fast_group_env() -> Vec<(&'static str, String)> {
    vec![
        ("HOURGLASS_KAFKA__SESSION_TIMEOUT_MS", "10000".into()),
        ("HOURGLASS_CONSUMERS__STUCK_ASSIGNMENT_SECS", "3".into()),
        ("HOURGLASS_CONSUMERS__ORPHAN_PARTITION_SECS", "20".into()),
    ]
}

/// `lives` runs of a consumer, each SIGKILLed at a moment drawn uniformly
/// from `[0, span)` after its start (so kills land in group joins,
/// checkpoint reads, reads and INSERTs alike), each replacement started at
/// once, as a supervisor would. Returns the last one, running; `progress`
/// (work done, out of `n`) is printed at each kill, and at least one kill
/// must land with work left, or the suite proved nothing.
pub async fn kill_lives<S, P, Fut>(
    plan: &mut KillPlan,
    lives: usize,
    span: Duration,
    spawn: S,
    progress: P,
    n: u64,
) -> std::process::Child
where
    S: Fn() -> std::process::Child,
    P: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    let started = std::time::Instant::now();
    let mut with_work_left = 0;
    let mut child = spawn();
    for life in 1..=lives {
        let at = plan.instant(span);
        tokio::time::sleep(at).await;
        let before = progress().await;
        super::sigkill(&mut child);
        with_work_left += usize::from(before < n);
        eprintln!(
            "kill {life} of {lives}: {:.1} s into its life ({:.0?} into the run), {before} of {n} done",
            at.as_secs_f64(),
            started.elapsed()
        );
        child = spawn();
    }
    assert!(
        with_work_left > 0,
        "none of {lives} kills landed before the work was done"
    );
    child
}

/// SIGKILL the stack's ClickHouse (`pid`) the moment an INSERT into
/// `table` is running on it (looked for during `within`; killed anyway
/// after). Returns whether one was running: a kill mid-INSERT is what
/// leaves a write whose outcome the writer cannot know.
pub async fn kill_clickhouse_mid_insert(
    client: &clickhouse::Client,
    pid: i32,
    table: &str,
    within: Duration,
) -> bool {
    let look = format!(
        "SELECT count() FROM system.processes \
         WHERE query LIKE 'INSERT INTO%{table}%' AND query NOT LIKE '%system.processes%'"
    );
    let deadline = std::time::Instant::now() + within;
    let mut mid_insert = false;
    while std::time::Instant::now() < deadline {
        if client.query(&look).fetch_one::<u64>().await.unwrap_or(0) > 0 {
            mid_insert = true;
            break;
        }
    }
    kill_server(pid);
    mid_insert
}

/// SIGKILL a server of the stack and wait until it is gone (a child of
/// `stack up` that died stays a zombie until reaped; not ours to reap).
pub fn kill_server(pid: i32) {
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL a server");
    while nix::sys::signal::kill(pid, None).is_ok() {
        if std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A ClickHouse outage two consumers of one group live through: `spawn`
/// starts the first, which runs until ClickHouse is SIGKILLed in the middle
/// of an INSERT into `table` (at a moment drawn from `[0, within)` after its
/// first progress) and rides the outage out (its writes fail, it pauses,
/// retries, then resumes and re-seeks); the second is started 2 s into the
/// outage (it joins the group and waits for its start positions). ClickHouse
/// comes back 10 s later. Returns both, running.
#[allow(clippy::too_many_arguments)]
pub async fn clickhouse_outage<S, P, Fut>(
    plan: &mut KillPlan,
    pid: i32,
    client: &clickhouse::Client,
    table: &str,
    within: Duration,
    spawn: S,
    progress: P,
    n: u64,
) -> (std::process::Child, std::process::Child)
where
    S: Fn() -> std::process::Child,
    P: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    let mut first = spawn();
    super::wait_until(Duration::from_secs(120), "first progress", || async {
        progress().await > 0
    })
    .await;
    tokio::time::sleep(plan.instant(within)).await;
    let before = progress().await;
    let mid_insert = kill_clickhouse_mid_insert(client, pid, table, Duration::from_secs(30)).await;
    assert!(
        mid_insert,
        "no INSERT into {table} was seen running to kill ClickHouse in"
    );
    assert!(before < n, "the outage came after the run had finished");
    eprintln!("outage: ClickHouse SIGKILLed mid-INSERT with {before} of {n} done");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut second = spawn();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        first.try_wait().unwrap().is_none(),
        "a consumer rides a ClickHouse outage out"
    );
    assert!(
        second.try_wait().unwrap().is_none(),
        "a consumer started while ClickHouse is down waits for it"
    );
    super::stack_up();
    (first, second)
}
