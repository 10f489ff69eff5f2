//! `rate-cards import` (a public catalog → a rate-card file + import report)
//! and `rate-cards publish` (a directory → the rate-card topic).

use crate::cli::{CatalogKind, ImportArgs, PublishArgs};
use crate::config::Settings;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::process::ExitCode;
use usage_catalogs::ImportOptions;

pub fn import(args: ImportArgs) -> Result<ExitCode> {
    let json = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let default_name = match args.from {
        CatalogKind::GenaiPrices => "genai-prices",
        CatalogKind::Litellm => "litellm",
    };
    let effective_from = match &args.effective_from {
        Some(t) => DateTime::parse_from_rfc3339(t).context("--effective-from must be RFC 3339")?.with_timezone(&Utc),
        None => DateTime::<Utc>::UNIX_EPOCH,
    };
    let options = ImportOptions {
        rate_card: args.rate_card.clone().unwrap_or_else(|| default_name.to_owned()),
        version: args.version,
        effective_from,
    };
    let (version, report) = match args.from {
        CatalogKind::GenaiPrices => usage_catalogs::genai_prices::import(&json, &options)?,
        CatalogKind::Litellm => usage_catalogs::litellm::import(&json, &options)?,
    };
    let text = version.to_toml();
    // What we write must load: check it with the loader the pipeline uses.
    let name = format!("{}-v{}", options.rate_card, options.version);
    let path = args.out.join(format!("{name}.toml"));
    usage_pricing::parse_version_file(&path, &text).context("the imported rate card does not load")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let report_path = args.out.join(format!("{name}.import-report.txt"));
    std::fs::write(&report_path, report.to_string()).with_context(|| format!("writing {}", report_path.display()))?;
    print!("{report}");
    println!("wrote {} and {}", path.display(), report_path.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn publish(settings: Settings, args: PublishArgs) -> Result<ExitCode> {
    let topic = &settings.stream.rate_cards_topic;
    let report = usage_pricing_stage::publish(
        &settings.kafka,
        topic,
        &args.dir,
        args.allow_past,
        Utc::now(),
        std::time::Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("publishing {} to {topic}", args.dir.display()))?;
    for key in &report.already_published {
        println!("already published   {key}");
    }
    for key in &report.published {
        let late =
            if report.published_late.contains(key) { "  (effective_from is past: backfill that range)" } else { "" };
        println!("published           {key}{late}");
    }
    println!("{} new version(s) on {topic} at {}", report.published.len(), settings.kafka.brokers);
    Ok(ExitCode::SUCCESS)
}
