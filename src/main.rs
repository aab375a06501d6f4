//! `hourglass`: one binary, one subcommand per component.

mod stack;

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
    /// Run the speed layer: windows from Kafka into rollup_5m, exactly once.
    Aggregate,
    /// Run the loader: raw events from Kafka into ClickHouse `events`, exactly once.
    Load,
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
        Command::Aggregate => hourglass_aggregator::run(cfg).await?,
        Command::Load => hourglass_loader::run(cfg).await?,
    }
    Ok(())
}
