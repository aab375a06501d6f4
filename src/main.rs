//! `hourglass`: one binary, one subcommand per component.

mod out;
mod stack;
mod up;

/// glibc's allocator took a quarter of ingest's CPU under load (many small
/// JSON values per event); mimalloc takes a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use out::{out, outln};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hourglass_core::Config;

#[derive(Parser)]
#[command(
    name = "hourglass",
    version,
    about = "Self-hosted analytics event pipeline"
)]
struct Cli {
    /// TOML configuration file (also HOURGLASS_CONFIG); HOURGLASS_<SECTION>__<KEY> variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the ClickHouse migrations in sql/ (safe to run again, or concurrently).
    Migrate {
        /// Also create the Kafka topics (kafka.topic with kafka.partitions, and
        /// kafka.dlq_topic) where they do not exist yet.
        #[arg(long)]
        create_topics: bool,
    },
    /// Print the effective configuration as TOML (secrets shown as <redacted>).
    Config {
        /// Only check it: every value the pipeline cannot run with is named,
        /// and the exit status is 1 if there is any.
        #[arg(long, conflicts_with_all = ["reference", "schema"])]
        check: bool,
        /// Print the reference of every key (defaults and meanings, from the
        /// code) as the Markdown of docs/configuration.md.
        #[arg(long, conflicts_with = "schema")]
        reference: bool,
        /// Print the JSON schema of the configuration file.
        #[arg(long)]
        schema: bool,
    },
    /// The local stack: Kafka-protocol broker, ClickHouse and S3 on 127.0.0.1.
    Stack {
        #[command(subcommand)]
        action: StackAction,
        /// Folder holding the stack's data, logs and PID files (also HOURGLASS_STACK_DIR).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The whole pipeline on this machine: local stack, migrations, ingest,
    /// aggregator, loader and archiver in one process, with a live view.
    Up {
        #[command(flatten)]
        args: up::UpArgs,
        /// Folder of the local stack's state, logs and the local write key (also HOURGLASS_STACK_DIR).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Serve the HTTP ingest API: batches validated and published to Kafka.
    Ingest,
    /// Write keys for ingest.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Run the archiver: every event into the Parquet lake (S3 or a local folder), exactly once.
    Archive,
    /// Rebuild a time range from the lake into ClickHouse, the rollups, or Kafka.
    Replay(ReplayArgs),
    /// One compaction pass over the lake: each settled hour's files of a
    /// partition made one file, then (lake.compact_across_partitions) those
    /// made one hour file; a dry run reports hour files only for folders
    /// whose partitions are one file each already (the archiver runs passes
    /// on its own every lake.compact_interval_secs).
    Compact {
        /// First hour folder (RFC 3339, arrival time); default: the
        /// configured lookback before the newest settled hour.
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// End (exclusive); default: after the newest settled hour.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Show what would be merged, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the speed layer: windows from Kafka into rollup_5m, exactly once.
    Aggregate,
    /// The aggregator's checkpoints (resume offset and event-time watermark
    /// per partition of kafka.topic): show them, or reset one.
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Run the loader: raw events from Kafka into ClickHouse `events`, exactly once.
    Load,
    /// Serve the read API: JWT-scoped rollups, raw events and sessions.
    Query,
    /// Run the batch layer: settled hours recomputed from the raw record,
    /// replacing the speed layer's numbers (`--once` for one pass).
    Batch(BatchArgs),
    /// Delete what each project's retention has expired (raw events, each
    /// rollup level) and lake folders past retention.lake_days, and the batch
    /// layer's superseded versions; `hourglass batch` runs the same pass
    /// every retention.interval_secs.
    Retention {
        /// Show what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Apply the deletion requests the lake has not applied yet: rewrite
    /// every lake file holding a deleted user's events without them;
    /// `hourglass batch` runs the same pass with its retention passes.
    Erase {
        /// Show what would be removed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Speed against batch per hour and event: duplicates, late events and
    /// deletions that explain the difference, and any that they do not.
    Reconcile {
        /// Start, RFC 3339 (inclusive; aligned down to the hour).
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// End, RFC 3339 (exclusive).
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
    },
}

#[derive(clap::Args)]
struct BatchArgs {
    /// One pass, then exit (instead of a pass every batch.interval_secs).
    #[arg(long)]
    once: bool,
    /// With --once: recompute every hour with events from here (RFC 3339,
    /// inclusive), changed or not.
    #[arg(long, requires = "once")]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// With --once: up to here (exclusive; settled hours only).
    #[arg(long, requires = "once")]
    to: Option<chrono::DateTime<chrono::Utc>>,
    /// Where the raw record is read: `clickhouse` (`events`) or `lake` (the
    /// Parquet archive, for ranges ClickHouse no longer holds; needs --once,
    /// --from and --to).
    #[arg(long, value_enum, default_value_t = BatchSource::Clickhouse)]
    source: BatchSource,
    /// With --source lake: hours after its event time an event may have
    /// arrived (the lake is laid out by arrival hour).
    #[arg(long, default_value_t = 24 * 31)]
    lateness_hours: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BatchSource {
    Clickhouse,
    Lake,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Start of the range, event time, RFC 3339 (inclusive).
    #[arg(long)]
    from: chrono::DateTime<chrono::Utc>,
    /// End of the range, event time, RFC 3339 (exclusive).
    #[arg(long)]
    to: chrono::DateTime<chrono::Utc>,
    /// Only this project's events.
    #[arg(long)]
    project: Option<String>,
    /// Where the events go.
    #[arg(long, value_enum)]
    into: ReplayInto,
    /// Topic for `--into kafka` (default: kafka.topic).
    #[arg(long)]
    topic: Option<String>,
    /// Read and count, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Files read at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Hours after its event time an event may have arrived (hour folders read past --to).
    #[arg(long, default_value_t = 24)]
    lateness_hours: i64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReplayInto {
    /// Raw events into `events` (only those missing: running it twice changes nothing).
    Clickhouse,
    /// Recompute `rollup_5m` and the hourly/daily buckets of the range.
    Rollups,
    /// Re-publish to a Kafka topic.
    Kafka,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Print a new random write key and the config entry holding its hash.
    New {
        /// Project the key writes to.
        #[arg(long, default_value = "default")]
        project: String,
    },
    /// Print the SHA-256 of an existing key (for the config).
    Hash { key: String },
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// Every partition's checkpoint; a watermark ahead of the clock is flagged.
    Show,
    /// Replace one partition's checkpoint. Stop the aggregator first: it
    /// reads checkpoints when partitions are assigned to it.
    Reset {
        #[arg(long)]
        partition: i32,
        /// New watermark: an RFC 3339 time, or `now`.
        #[arg(long)]
        watermark: String,
        /// New resume offset (default: keep the current one). Moving it back
        /// counts the records in between again; forward skips them.
        #[arg(long)]
        offset: Option<i64>,
    },
}

#[derive(Subcommand)]
enum StackAction {
    /// Install what is missing, start what is stopped, wait until everything answers.
    Up {
        /// Also the cluster profile: ZooKeeper and 2 shards × 2 replicas of
        /// ClickHouse (HTTP on 18201–18204, cluster `hourglass`); it stays
        /// part of this stack folder.
        #[arg(long)]
        cluster: bool,
    },
    /// Stop the servers this stack started.
    Down,
    /// Show which servers answer.
    Status,
    /// Stop the broker, delete its data, start it empty (between test suites).
    ResetKafka,
}

/// Cancelled on SIGINT/SIGTERM: what a component run alone stops on.
fn on_signal() -> tokio_util::sync::CancellationToken {
    hourglass_core::telemetry::shutdown_on_signal()
}

#[tokio::main]
async fn main() -> Result<()> {
    hourglass_core::process::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    // Every command but `config` (which shows or checks it) refuses a
    // configuration the pipeline cannot run with, naming every problem.
    if !matches!(cli.command, Command::Config { .. }) {
        cfg.validate()?;
    }
    if let Command::Up { args, dir } = cli.command {
        // Logs go to a file: the terminal shows the live view.
        let dir = dir.unwrap_or_else(stack::default_dir);
        return up::run(cfg, &dir, args).await;
    }
    hourglass_core::telemetry::init_tracing(&cfg.telemetry);
    match cli.command {
        Command::Up { .. } => unreachable!("handled above"),
        Command::Config {
            check,
            reference,
            schema,
        } => {
            if reference {
                out!(
                    "{}",
                    hourglass_core::config::reference::reference_markdown()
                        .map_err(anyhow::Error::msg)?
                );
            } else if schema {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&hourglass_core::config::reference::schema())?
                );
            } else if check {
                cfg.validate()?;
                outln!("configuration valid");
            } else {
                out!("{}", cfg.to_toml_redacted());
            }
        }
        Command::Migrate { create_topics } => {
            if create_topics {
                hourglass_core::kafka::ensure_pipeline_topics(&cfg.kafka)
                    .await
                    .with_context(|| format!("creating topics on {}", cfg.kafka.brokers))?;
                outln!(
                    "topics {} ({} partitions) and {} exist",
                    cfg.kafka.topic,
                    cfg.kafka.partitions,
                    cfg.kafka.dlq_topic
                );
            }
            let report = hourglass_sql::migrate(&cfg.clickhouse)
                .await
                .context("hourglass migrate")?;
            outln!(
                "database {}: ClickHouse {} ({:?}); applied {:?}, already applied {:?}",
                cfg.clickhouse.database,
                report.server_version,
                report.features,
                report.applied,
                report.already_applied
            );
        }
        Command::Stack { action, dir } => {
            let dir = dir.unwrap_or_else(stack::default_dir);
            match action {
                StackAction::Up { cluster } => stack::up(&cfg, &dir, cluster).await?,
                StackAction::Down => stack::down(&cfg, &dir)?,
                StackAction::ResetKafka => stack::reset_kafka(&cfg, &dir).await?,
                StackAction::Status => {
                    if !stack::status(&cfg, &dir).await? {
                        std::process::exit(1);
                    }
                }
            }
        }
        Command::Ingest => hourglass_ingest::run(cfg, on_signal()).await?,
        Command::Keys { action } => match action {
            KeysAction::New { project } => {
                let (key, hash) = hourglass_ingest::keys::new_key();
                outln!("write key (give it to the app; it is not stored anywhere): {key}");
                outln!();
                outln!("config entry:");
                outln!("[[ingest.keys]]\nproject_id = {project:?}\nsha256 = \"{hash}\"");
            }
            KeysAction::Hash { key } => outln!("{}", hourglass_ingest::keys::hash_key(&key)),
        },
        Command::Archive => hourglass_lake::run_archiver(cfg, on_signal()).await?,
        Command::Replay(args) => replay(&cfg, args).await?,
        Command::Compact { from, to, dry_run } => compact(&cfg, from, to, dry_run).await?,
        Command::Aggregate => hourglass_aggregator::run(cfg, on_signal()).await?,
        Command::Checkpoint { action } => checkpoint(&cfg, action).await?,
        Command::Load => hourglass_loader::run(cfg, on_signal()).await?,
        Command::Query => hourglass_query::run(cfg, on_signal()).await?,
        Command::Batch(args) => batch(&cfg, args).await?,
        Command::Retention { dry_run } => {
            let report = hourglass_batch::retention::pass(&cfg, chrono::Utc::now(), dry_run)
                .await
                .context("hourglass retention")?;
            out!("{}", hourglass_batch::retention::table(&report, dry_run));
            let pruned = hourglass_batch::prune::pass(&cfg, dry_run)
                .await
                .context("hourglass retention: pruning superseded batch versions")?;
            out!("{}", hourglass_batch::prune::table(&pruned, dry_run));
        }
        Command::Erase { dry_run } => {
            let report = hourglass_batch::erasure::pass(&cfg, chrono::Utc::now(), dry_run)
                .await
                .context("hourglass erase")?;
            out!("{}", hourglass_batch::erasure::table(&report, dry_run));
        }
        Command::Reconcile { from, to } => {
            let client = hourglass_core::clickhouse::client(&cfg.clickhouse);
            let rows = hourglass_batch::reconcile::range(&client, from.timestamp(), to.timestamp())
                .await
                .context("hourglass reconcile")?;
            out!("{}", hourglass_batch::reconcile::table(&rows));
            let errors = rows.iter().filter(|r| r.unexplained != 0).count();
            outln!(
                "{} hours, {} rows; {errors} with a difference that late events, duplicates and deletions do not explain",
                rows.iter()
                    .map(|r| r.hour)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                rows.len()
            );
            if errors > 0 {
                std::process::exit(2);
            }
        }
    }
    Ok(())
}

async fn batch(cfg: &Config, args: BatchArgs) -> Result<()> {
    if args.source == BatchSource::Lake {
        let (Some(from), Some(to)) = (args.from, args.to) else {
            anyhow::bail!("--source lake needs --once, --from and --to");
        };
        let r = hourglass_batch::lake_source::run_once_from_lake(
            cfg,
            from.timestamp(),
            to.timestamp(),
            args.lateness_hours,
        )
        .await
        .context("hourglass batch --source lake")?;
        outln!(
            "batched {} hours ({} events) and {} days from the lake",
            r.hours.len(),
            r.events,
            r.days.len()
        );
        return Ok(());
    }
    if !args.once {
        return Ok(hourglass_batch::run(cfg.clone(), on_signal()).await?);
    }
    let range = hourglass_batch::Range {
        from: args.from.map(|t| t.timestamp()),
        to: args.to.map(|t| t.timestamp()),
        force: args.from.is_some() || args.to.is_some(),
    };
    let r = hourglass_batch::run_once(cfg, range)
        .await
        .context("hourglass batch --once")?;
    outln!(
        "batched {} hours ({} events) and {} days{}",
        r.hours.len(),
        r.events,
        r.days.len(),
        if r.left_over > 0 {
            format!(
                "; {} hours left for the next pass (batch.max_hours_per_pass)",
                r.left_over
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

async fn compact(
    cfg: &Config,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    dry_run: bool,
) -> Result<()> {
    let settled = hourglass_lake::compact::CompactOptions::settled(cfg, chrono::Utc::now());
    let opts = hourglass_lake::compact::CompactOptions {
        from: from.unwrap_or(settled.from),
        to: to.unwrap_or(settled.to),
        dry_run,
        ..settled
    };
    let store = hourglass_lake::store::open(cfg)
        .await
        .context("opening the lake")?;
    let started = std::time::Instant::now();
    let mut deletions = hourglass_core::clickhouse::deletions::DeletionsWatch::new(
        hourglass_core::clickhouse::client(&cfg.clickhouse),
    );
    let s = hourglass_lake::compact::compact(store.as_ref(), &opts, &|_| true, &mut deletions)
        .await
        .with_context(|| format!("compacting {}", store.describe()))?;
    outln!(
        "compact {} .. {} in {}{}: {} hour folders; {} files ({:.1} MB) {} into {} ({} of them hour files; {:.1} MB, {} rows, {} events of deleted users left out); {} left by a stopped pass removed; {} merges backed off (another pass changed their folder; retried next pass); {:.1} s",
        opts.from,
        opts.to,
        store.describe(),
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        },
        s.folders,
        s.files_in,
        s.bytes_in as f64 / 1e6,
        if dry_run { "would merge" } else { "merged" },
        s.files_out,
        s.hour_files,
        s.bytes_out as f64 / 1e6,
        s.rows,
        s.events_removed,
        s.superseded_removed,
        s.backed_off,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn replay(cfg: &Config, args: ReplayArgs) -> Result<()> {
    use hourglass_lake::replay::{ReplayOptions, Target};
    let target = match args.into {
        ReplayInto::Clickhouse => Target::ClickHouse,
        ReplayInto::Rollups => Target::Rollups,
        ReplayInto::Kafka => Target::Kafka,
    };
    let opts = ReplayOptions {
        from: args.from,
        to: args.to,
        project: args.project,
        target,
        kafka_topic: args.topic.unwrap_or_else(|| cfg.kafka.topic.clone()),
        dry_run: args.dry_run,
        parallel: args.parallel,
        lateness: chrono::Duration::hours(args.lateness_hours),
        lead: chrono::Duration::hours(1),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let store = hourglass_lake::store::open(cfg)
        .await
        .context("opening the lake")?;
    let where_ = store.describe();
    let s = hourglass_lake::replay::replay(cfg, std::sync::Arc::from(store), &opts)
        .await
        .with_context(|| format!("replay from {where_}"))?;
    let what = match target {
        Target::ClickHouse => "raw events inserted",
        Target::Rollups => "rollup_5m rows written",
        Target::Kafka => "records produced",
    };
    outln!(
        "replay {} .. {} from {where_}{}: {} files ({:.1} MB), {} events read, {} in range, {} {what}{}, {:.1} s ({:.0} events/s)",
        opts.from,
        opts.to,
        if opts.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        },
        s.files,
        s.bytes as f64 / 1e6,
        s.events_read,
        s.events_in_range,
        s.written,
        if s.already_present > 0 {
            format!(", {} already present", s.already_present)
        } else {
            String::new()
        } + &if s.deleted_skipped > 0 {
            format!(", {} of deleted users skipped", s.deleted_skipped)
        } else {
            String::new()
        },
        s.seconds,
        s.events_read as f64 / s.seconds.max(1e-3)
    );
    Ok(())
}

async fn checkpoint(cfg: &Config, action: CheckpointAction) -> Result<()> {
    use hourglass_aggregator::sink::RollupSink;
    use hourglass_aggregator::window::Checkpoint;
    let sink = RollupSink::new(
        hourglass_core::clickhouse::client(&cfg.clickhouse),
        cfg.kafka.topic.clone(),
    );
    let show = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).map_or_else(
            || format!("{ms} ms"),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let allowance_ms = i64::from(cfg.aggregator.max_ahead_secs) * 1000;
    match action {
        CheckpointAction::Show => {
            let mut rows = sink.checkpoints().await?;
            rows.sort_by_key(|(p, _)| *p);
            outln!("topic {}", cfg.kafka.topic);
            outln!("{:>9}  {:>14}  watermark", "partition", "resume offset");
            for (p, cp) in rows {
                let flag = if cp.watermark_ms > now_ms + allowance_ms {
                    "  <- ahead of the clock: reset it (`hourglass checkpoint reset`)"
                } else {
                    ""
                };
                outln!(
                    "{p:>9}  {:>14}  {}{flag}",
                    cp.resume_offset,
                    show(cp.watermark_ms)
                );
            }
        }
        CheckpointAction::Reset {
            partition,
            watermark,
            offset,
        } => {
            let watermark_ms = if watermark == "now" {
                now_ms
            } else {
                chrono::DateTime::parse_from_rfc3339(&watermark)
                    .with_context(|| {
                        format!("--watermark {watermark:?}: an RFC 3339 time or `now`")
                    })?
                    .timestamp_millis()
            };
            if watermark_ms > now_ms + allowance_ms {
                anyhow::bail!(
                    "--watermark {} is ahead of the clock by more than aggregator.max_ahead_secs",
                    show(watermark_ms)
                );
            }
            let current = sink
                .checkpoints()
                .await?
                .into_iter()
                .find(|(p, _)| *p == partition)
                .map(|(_, cp)| cp);
            let resume_offset = match (offset, &current) {
                (Some(o), _) => o,
                (None, Some(cp)) => cp.resume_offset,
                (None, None) => {
                    anyhow::bail!("partition {partition} has no checkpoint yet: give --offset")
                }
            };
            let to = Checkpoint {
                resume_offset,
                watermark_ms,
            };
            sink.reset_checkpoint(&cfg.clickhouse, partition, to)
                .await?;
            match current {
                Some(cp) => outln!(
                    "partition {partition}: resume offset {} -> {resume_offset}, watermark {} -> {}",
                    cp.resume_offset,
                    show(cp.watermark_ms),
                    show(watermark_ms)
                ),
                None => outln!(
                    "partition {partition}: resume offset {resume_offset}, watermark {}",
                    show(watermark_ms)
                ),
            }
        }
    }
    Ok(())
}
