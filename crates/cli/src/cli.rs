//! Command-line interface.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "usage-pipeline", version, about = "Prices AI API usage events from Kafka into ClickHouse")]
pub struct Cli {
    /// Configuration file (TOML). Also USAGE_PIPELINE_CONFIG. Environment
    /// variables override it; flags override both.
    #[arg(long, global = true, env = "USAGE_PIPELINE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the pipeline: consume, price, insert into ClickHouse, dead-letter, commit.
    Run(RunArgs),
    /// Publish usage events to the raw topic: NDJSON from a file or stdin, or synthetic ones.
    Produce(ProduceArgs),
    /// Price NDJSON usage events offline, with the same engine as the stream.
    Price(PriceArgs),
    /// Create the topics and apply the ClickHouse migrations, then exit.
    Setup(RatesArg),
    /// Show how far the consumer group is behind the raw topic.
    Status(StatusArgs),
    /// Rate-card tools: import public catalogs.
    #[command(subcommand)]
    RateCards(RateCardsCommand),
    /// Re-price the stored usage of a time range (closed months) with the rate cards in force now.
    Backfill(BackfillArgs),
    /// Rollup tools: compare the rollups with priced_events, and repair them.
    #[command(subcommand)]
    Rollups(RollupsCommand),
    /// Run the ledger: balances, grants, budgets; emits threshold events.
    Ledger(LedgerArgs),
    /// Print an account's balance, grants, month-to-date spend and runway, from the ledger's state.
    Balance(BalanceArgs),
    /// Print the ledger's threshold events (the last ones, oldest first), one JSON object per line.
    Events(EventsArgs),
    /// Billing commands (account settings, credit grants, reload failures) to the commands topic.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Check the brokers, topics, ClickHouse, migrations and rate cards; say how to fix what is wrong.
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
}

#[derive(Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub rates: RatesArg,
    /// One JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Subcommand)]
pub enum RollupsCommand {
    /// Compare every rollup's totals with priced_events, per Kafka topic
    /// partition; exit 1 if any differ.
    Check(RollupsCheckArgs),
}

#[derive(Args)]
pub struct RollupsCheckArgs {
    /// Start of the range (RFC 3339, a UTC midnight), inclusive.
    #[arg(long)]
    pub from: String,
    /// End of the range (RFC 3339, a UTC midnight), exclusive.
    #[arg(long)]
    pub to: String,
    /// Add to the rollups what they lack. Stop the pipelines first (or
    /// choose days no usage reaches any more): a repair compares and adds,
    /// and must not race an INSERT of the same partition.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub rates: RatesArg,
    /// Start of the range (RFC 3339), inclusive.
    #[arg(long)]
    pub from: String,
    /// End of the range (RFC 3339), exclusive.
    #[arg(long)]
    pub to: String,
    /// Price and stage, report what would change, swap nothing in.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct LedgerArgs {
    /// Stop once every assigned partition is consumed to its end.
    #[arg(long)]
    pub until_caught_up: bool,
    /// With --until-caught-up: how long nothing must arrive before stopping.
    #[arg(long, default_value_t = 2000)]
    pub idle_ms: u64,
    /// Serve /healthz and /readyz here (overrides USAGE_METRICS_ADDR).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

#[derive(Args)]
pub struct BalanceArgs {
    pub account: String,
    /// Print the account's whole state as JSON instead.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EventsArgs {
    /// Only this account's events.
    #[arg(long)]
    pub account: Option<String>,
    /// At most this many (the most recent).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Send NDJSON billing commands (`{"type": "credit_grant", ...}`) from a file (validated whole first) or stdin (chunk by chunk).
    Send(SendArgs),
}

#[derive(Args)]
pub struct SendArgs {
    /// NDJSON file (`-` or omitted: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum RateCardsCommand {
    /// Convert a public price catalog into a rate-card file and an import report.
    Import(ImportArgs),
    /// Publish the versions of a directory to the rate-card topic: running
    /// pipelines pick them up without a restart.
    Publish(PublishArgs),
}

#[derive(Args)]
pub struct PublishArgs {
    /// Directory of rate-card files.
    pub dir: PathBuf,
    /// Publish versions whose effective_from is already past (then backfill that range).
    #[arg(long)]
    pub allow_past: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CatalogKind {
    /// pydantic genai-prices v2 data (genai-prices-data.json).
    GenaiPrices,
    /// LiteLLM's model price map (model_prices_and_context_window.json).
    Litellm,
}

#[derive(Args)]
pub struct ImportArgs {
    #[arg(long = "from", value_enum)]
    pub from: CatalogKind,
    /// The catalog file.
    pub file: PathBuf,
    /// Directory to write `<rate-card>-v<version>.toml` and its import report into.
    #[arg(long)]
    pub out: PathBuf,
    /// Name of the rate card (default: genai-prices or litellm).
    #[arg(long)]
    pub rate_card: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub version: u32,
    /// When the imported prices come into force (RFC 3339; default: the beginning of time).
    #[arg(long)]
    pub effective_from: Option<String>,
}

#[derive(Args)]
pub struct RatesArg {
    /// Directory of rate-card files (default: `rate-cards`, or the config file's `pipeline.rate_cards`).
    #[arg(long)]
    pub rate_cards: Option<PathBuf>,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub rates: RatesArg,
    /// Stop once every assigned partition is consumed to its end (batch mode).
    #[arg(long)]
    pub until_caught_up: bool,
    /// With --until-caught-up: how long nothing must arrive before stopping.
    #[arg(long, default_value_t = 2000)]
    pub idle_ms: u64,
    /// Serve /healthz and /readyz here (overrides USAGE_METRICS_ADDR).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// The summary at exit as one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum EncodingArg {
    Json,
    Avro,
    Confluent,
    Mixed,
}

#[derive(Args)]
pub struct ProduceArgs {
    /// NDJSON file of usage events (`-` or omitted: stdin). Ignored with --synthetic.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Generate this many synthetic events instead of reading input.
    #[arg(long)]
    pub synthetic: Option<u64>,
    /// Seed of the synthetic stream: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One synthetic event in this many is deliberately bad (0: none).
    #[arg(long, default_value_t = 500)]
    pub bad_every: u32,
    /// Number of synthetic accounts.
    #[arg(long, default_value_t = 300)]
    pub accounts: u32,
    /// Wire encoding of synthetic events.
    #[arg(long, value_enum, default_value_t = EncodingArg::Json)]
    pub encoding: EncodingArg,
    /// Prefix of synthetic event ids (default: `synthetic-<seed>`).
    #[arg(long)]
    pub id_prefix: Option<String>,
}

#[derive(Args)]
pub struct PriceArgs {
    #[command(flatten)]
    pub rates: RatesArg,
    /// NDJSON usage events (`-` or omitted: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where to write NDJSON priced rows (`-` or omitted: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The clock used to refuse events from the future (RFC 3339; default:
    /// now). Pin it for reproducible output on events near "now".
    #[arg(long)]
    pub now: Option<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Wait up to this many seconds for the group to catch up; exit 1 if it does not.
    #[arg(long)]
    pub wait: Option<u64>,
    /// One JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}
