//! `hourglass`: one binary, one subcommand per component.

mod stack;

/// glibc's allocator took a quarter of ingest's CPU under load (many small
/// JSON values per event); mimalloc takes a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

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
    Migrate,
    /// Print the effective configuration as TOML.
    Config,
    /// The local stack: Kafka-protocol broker, ClickHouse and S3 on 127.0.0.1.
    Stack {
        #[command(subcommand)]
        action: StackAction,
        /// Folder holding the stack's data, logs and PID files (also HOURGLASS_STACK_DIR).
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
    /// Run the speed layer: windows from Kafka into rollup_5m, exactly once.
    Aggregate,
    /// Run the loader: raw events from Kafka into ClickHouse `events`, exactly once.
    Load,
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
enum StackAction {
    /// Install what is missing, start what is stopped, wait until everything answers.
    Up,
    /// Stop the servers this stack started.
    Down,
    /// Show which servers answer.
    Status,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    hourglass_core::telemetry::init_tracing(&cfg.telemetry);
    match cli.command {
        Command::Config => print!("{}", cfg.to_toml()),
        Command::Migrate => {
            let report = hourglass_sql::migrate(&cfg.clickhouse)
                .await
                .context("hourglass migrate")?;
            println!(
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
                StackAction::Up => stack::up(&cfg, &dir).await?,
                StackAction::Down => stack::down(&cfg, &dir)?,
                StackAction::Status => {
                    if !stack::status(&cfg, &dir).await? {
                        std::process::exit(1);
                    }
                }
            }
        }
        Command::Ingest => hourglass_ingest::run(cfg).await?,
        Command::Keys { action } => match action {
            KeysAction::New { project } => {
                let (key, hash) = hourglass_ingest::keys::new_key();
                println!("write key (give it to the app; it is not stored anywhere): {key}");
                println!();
                println!("config entry:");
                println!("[[ingest.keys]]\nproject_id = {project:?}\nsha256 = \"{hash}\"");
            }
            KeysAction::Hash { key } => println!("{}", hourglass_ingest::keys::hash_key(&key)),
        },
        Command::Aggregate => hourglass_aggregator::run(cfg).await?,
        Command::Load => hourglass_loader::run(cfg).await?,
    }
    Ok(())
}
