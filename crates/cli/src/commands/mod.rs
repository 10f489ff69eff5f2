//! One module per command.

mod backfill;
mod doctor;
mod import;
mod ledger;
mod price;
mod produce;
mod rollups;
mod run;
mod status;

use crate::cli::{AccountsCommand, Cli, Command, RateCardsCommand, RatesArg, RollupsCommand};
use crate::config::Settings;
use anyhow::{Context, Result};
use std::process::ExitCode;
use std::sync::Arc;
use usage_pricing::RateBook;

pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run(args) => run::run(settings, args).await,
        Command::Produce(args) => produce::produce(settings, args).await,
        Command::Price(args) => price::price(settings, args),
        Command::Setup(args) => run::setup(settings, args).await,
        Command::Status(args) => status::status(settings, args).await,
        Command::RateCards(RateCardsCommand::Import(args)) => import::import(args),
        Command::RateCards(RateCardsCommand::Publish(args)) => import::publish(settings, args).await,
        Command::Backfill(args) => backfill::backfill(settings, args).await,
        Command::Rollups(RollupsCommand::Check(args)) => rollups::check(settings, args).await,
        Command::Ledger(args) => ledger::ledger(settings, args).await,
        Command::Balance(args) => ledger::balance(settings, args).await,
        Command::Events(args) => ledger::events(settings, args).await,
        Command::Accounts(AccountsCommand::Send(args)) => ledger::send_commands(settings, args).await,
        Command::Doctor(args) => doctor::doctor(settings, args).await,
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(args.shell, &mut Cli::command(), "usage-pipeline", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the rate cards named by `--rate-cards` or the settings.
pub fn load_rate_book(settings: &Settings, rates: &RatesArg) -> Result<Arc<RateBook>> {
    let dir = rates.rate_cards.as_ref().unwrap_or(&settings.rate_cards);
    let book = usage_pricing::load_dir(dir, settings.default_rate_card.as_deref())
        .with_context(|| format!("loading rate cards from {}", dir.display()))?;
    for card in book.cards().values() {
        tracing::info!(
            rate_card = %card.id,
            currency = %card.currency,
            versions = card.versions.len(),
            models = card.versions.last().map_or(0, |v| v.models.len()),
            "rate card loaded"
        );
    }
    Ok(Arc::new(book))
}

/// Serves `/healthz`, `/readyz` and `/metrics` (`registry`, with the
/// health's own metrics added) on `--metrics-addr`, else on the configured
/// address, if any; returns the health the stage reports to.
async fn serve_probes_if_asked(
    settings: &Settings,
    flag: Option<&str>,
    mut registry: prometheus_client::registry::Registry,
) -> Result<usage_runtime::Health> {
    let health = usage_runtime::Health::new(settings.unready_after);
    let addr = match flag {
        Some(text) => Some(crate::config::parse_addr(text).context("--metrics-addr")?),
        None => settings.metrics_addr,
    };
    if let Some(addr) = addr {
        health.register(&mut registry);
        let bound = usage_runtime::serve_probes(addr, health.clone(), Arc::new(registry))
            .await
            .with_context(|| format!("serving the probes on {addr}"))?;
        eprintln!("probes and metrics: http://{bound}/healthz, /readyz, /metrics");
    }
    Ok(health)
}

/// The registry of every metric, named `usage_*`.
fn registry() -> prometheus_client::registry::Registry {
    prometheus_client::registry::Registry::with_prefix("usage")
}
