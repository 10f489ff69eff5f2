//! The fuzz targets' checks, one function per target (`fuzz_targets/*.rs`
//! call them under libFuzzer; `tests/fuzz_corpora.rs` replays the committed
//! corpora and regressions through them in `make test`): the shipped rate
//! cards, a ledger fed line by line, and the invariants every accepted
//! input must keep.

use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use usage_codec::{
    decode_json, decode_json_with_serde, decode_plain_with_apache_avro, DecodeError, Decoder, SchemaResolver,
    ValueFormat, PINNED_SCHEMA_ID,
};
use usage_ledger::{AccountCommand, AccountState, Applied, PartitionLedger, PricedUsage, ACCOUNT_TOTAL_MAX};
use usage_model::UsageEvent;
use usage_pricing::{build_book, parse_document, Document, Pricer, RateBook};

/// A target's check of one input: panics on a finding.
pub type Check = fn(&[u8]);

/// Every target: its name (of `fuzz_targets/<name>.rs` and `corpus/<name>/`)
/// and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("usage_json", usage_json),
    ("usage_avro", usage_avro),
    ("usage_confluent", usage_confluent),
    ("billing_commands", billing_commands),
    ("priced_feed", priced_feed),
    ("changelog_state", changelog_state),
    ("rate_card_files", rate_card_files),
];

/// A raw-topic message in JSON: the plain-shape reader and serde (the
/// reference) give the same verdict; what decodes is priced with the
/// shipped rate cards to a cost or a rejection, never a panic.
pub fn usage_json(data: &[u8]) {
    let fast = decode_json(data);
    assert_eq!(fast, decode_json_with_serde(data), "the reader and serde disagree");
    if let Ok(event) = fast {
        let mut pricer = Pricer::new(SHIPPED_BOOK.clone());
        if let Ok(priced) = pricer.price(event) {
            assert!(!priced.quote.cost.is_negative(), "a negative cost: {}", priced.quote.cost);
        }
    }
}

/// A raw-topic message in plain Avro (the shipped schema): the specialised
/// decoder and apache-avro (the reference) give the same verdict, and the
/// Confluent framing of the pinned schema id the very same one.
pub fn usage_avro(data: &[u8]) {
    let fast = Decoder::new(ValueFormat::Avro, SchemaResolver::pinned()).decode(data);
    let reference = decode_plain_with_apache_avro(data);
    match (&fast, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(DecodeError::Rejected(a)), Err(DecodeError::Rejected(b))) => {
            assert_eq!(a.reason, b.reason, "specialised: {a}; apache-avro: {b}")
        }
        _ => panic!("specialised {fast:?}, apache-avro {reference:?}"),
    }
    let mut framed = vec![0];
    framed.extend_from_slice(&PINNED_SCHEMA_ID.to_be_bytes());
    framed.extend_from_slice(data);
    let confluent = Decoder::new(ValueFormat::Confluent, SchemaResolver::pinned()).decode(&framed);
    assert_eq!(format!("{confluent:?}"), format!("{fast:?}"));
}

/// Any message on the raw topic, format detected as the pipeline does
/// (JSON, plain Avro, Confluent wire format with any schema id): a usage
/// event or a rejection with a reason, never a panic, never a lookup of an
/// unknown schema id that blocks (the pinned resolver answers at once).
pub fn usage_confluent(data: &[u8]) {
    match Decoder::new(ValueFormat::Auto, SchemaResolver::pinned()).decode(data) {
        Ok(_) => {}
        Err(DecodeError::Rejected(r)) => assert!(!r.detail.is_empty(), "a rejection without detail: {r:?}"),
        Err(DecodeError::Unavailable(why)) => assert!(!why.is_empty()),
    }
}

/// Billing commands (and expiry sweeps) fed to a partition's ledger: a
/// command is applied or refused with a reason before anything changes,
/// and every account reconciles after each one.
pub fn billing_commands(data: &[u8]) {
    feed_ledger(&mut PartitionLedger::default(), data);
}

/// Messages of the priced-usage feed (one record or an array), mixed with
/// billing commands: usage is applied or refused with a reason, once per
/// pricing origin, and every account reconciles after each message.
pub fn priced_feed(data: &[u8]) {
    // The whole input as one feed message, as the stage reads it...
    if let Ok(records) = PricedUsage::batch_from_json(data) {
        let mut ledger = PartitionLedger::default();
        for (offset, usage) in records.iter().enumerate() {
            ledger.apply_usage(offset as i64, usage);
        }
        ledger.accounts().for_each(check_account);
    }
    // ...and as lines of commands and feed messages.
    feed_ledger(&mut PartitionLedger::default(), data);
}

/// A changelog record (an account's whole state) restored into a partition,
/// then fed usage, commands and sweeps: a damaged state may be refused or
/// produce refusals, never a panic.
pub fn changelog_state(data: &[u8]) {
    let (state, inputs) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(state) = serde_json::from_slice::<AccountState>(state) else { return };
    let mut ledger = PartitionLedger::restore([state]);
    check_outputs(&ledger);
    for account in ledger.accounts() {
        let _ = account.balance();
        let _ = account.next_expiry();
    }
    feed_ledger_unchecked(&mut ledger, inputs);
}

/// A rate-card or contract file (as a file of `rate-cards/` or a message of
/// the rate-card topic): parsed or refused with a reason; what parses joins
/// the shipped cards in a book (or is refused by the book's checks), and
/// that book prices a few events to a cost or a rejection, never a panic.
pub fn rate_card_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = Path::new("fuzzed.toml");
    let document = match parse_document(file, text) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let mut documents: Vec<(PathBuf, Document)> = SHIPPED_DOCUMENTS.clone();
    documents.push((file.to_path_buf(), document));
    let Ok(book) = build_book(Path::new("rate-cards"), documents, None) else { return };
    let mut pricer = Pricer::new(Arc::new(book));
    for event in probe_events() {
        if let Ok(priced) = pricer.price(event) {
            assert!(!priced.quote.cost.is_negative(), "a negative cost: {}", priced.quote.cost);
        }
    }
}

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rate-cards")
}

/// The rate cards the repository ships (`rate-cards/`), loaded once.
pub static SHIPPED_BOOK: LazyLock<Arc<RateBook>> =
    LazyLock::new(|| Arc::new(usage_pricing::load_dir(&shipped_dir(), None).expect("the shipped rate cards load")));

/// The shipped rate-card files, parsed once.
pub static SHIPPED_DOCUMENTS: LazyLock<Vec<(PathBuf, Document)>> =
    LazyLock::new(|| usage_pricing::read_dir_documents(&shipped_dir()).expect("the shipped rate cards parse"));

/// Usage of several models, units and accounts (`acct-0042` is the one the
/// seed contracts name), priced against fuzzed rate cards.
pub fn probe_events() -> impl Iterator<Item = UsageEvent> {
    [
        r#"{"event_id":"p1","account_id":"acct-0042","occurred_at":"2026-06-01T12:00:00Z","provider":"openai","model":"gpt-4o","usage":{"input_tokens":1200,"output_tokens":350,"cache_read_tokens":100}}"#,
        r#"{"event_id":"p2","account_id":"acct-0042","occurred_at":"2026-06-01T12:00:00Z","provider":"anthropic","model":"claude-sonnet-4","usage":{"input_tokens":10000000000,"output_tokens":1,"cache_write_tokens":5}}"#,
        r#"{"event_id":"p3","account_id":"acct-7","occurred_at":"2025-02-01T00:00:00Z","provider":"google","model":"gemini-2.5-pro","service_tier":"flex","usage":{"input_tokens":300000,"output_tokens":18446744073709551615}}"#,
        r#"{"event_id":"p4","account_id":"acct-7","occurred_at":"2099-12-31T23:59:59Z","provider":"openai","model":"gpt-4o-mini","usage":{"requests":1,"input_audio_tokens":7}}"#,
    ]
    .into_iter()
    .filter_map(|json| decode_json(json.as_bytes()).ok())
}

/// One ledger input, as the ledger stage reads them off its topics.
pub enum Input<'a> {
    Command(&'a [u8]),
    Usage(&'a [u8]),
    /// The expiry sweep, at this many seconds past 2026-01-01.
    Sweep(u32),
}

/// Splits fuzz input into ledger inputs: one per line, the first byte of a
/// line choosing its kind (so a corpus line is a command or a feed message).
pub fn inputs(data: &[u8]) -> impl Iterator<Item = Input<'_>> {
    data.split(|b| *b == b'\n').filter_map(|line| {
        let (&kind, rest) = line.split_first()?;
        Some(match kind {
            b'c' => Input::Command(rest),
            b'u' => Input::Usage(rest),
            _ => Input::Sweep(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?)),
        })
    })
}

/// Feeds the inputs to a ledger as the ledger stage does, checking after
/// each one that a refusal has a reason and changed nothing but the
/// account's read positions, and that every account still reconciles.
pub fn feed_ledger(ledger: &mut PartitionLedger, data: &[u8]) {
    feed(ledger, data, true)
}

/// The same, on a ledger whose state may be damaged (restored from a fuzzed
/// changelog record): only that nothing panics.
pub fn feed_ledger_unchecked(ledger: &mut PartitionLedger, data: &[u8]) {
    feed(ledger, data, false)
}

fn feed(ledger: &mut PartitionLedger, data: &[u8], check: bool) {
    for (offset, input) in inputs(data).enumerate() {
        let offset = offset as i64;
        let applied = match input {
            Input::Command(json) => match AccountCommand::from_json(json) {
                Ok(command) => {
                    let before = ledger.account(command.account_id()).cloned();
                    let applied = ledger.apply_command(offset, &command);
                    if check {
                        check_refusal(ledger, command.account_id(), before, &applied);
                    }
                    applied
                }
                Err(e) => {
                    assert!(!e.code().is_empty() && !e.to_string().is_empty());
                    continue;
                }
            },
            Input::Usage(json) => match PricedUsage::batch_from_json(json) {
                Ok(records) => {
                    for usage in &records {
                        let before = ledger.account(&usage.account_id).cloned();
                        let applied = ledger.apply_usage(offset, usage);
                        if check {
                            check_refusal(ledger, &usage.account_id, before, &applied);
                        }
                    }
                    Applied::Skipped
                }
                Err(e) => {
                    assert!(!e.code().is_empty() && !e.to_string().is_empty());
                    continue;
                }
            },
            Input::Sweep(seconds) => {
                let at = DateTime::<Utc>::from_timestamp(1_767_225_600 + i64::from(seconds), 0).expect("in range");
                ledger.expire_due(at);
                Applied::Skipped
            }
        };
        drop(applied);
        if check {
            ledger.accounts().for_each(check_account);
        }
        check_outputs(ledger);
        // What the stage does after a batch: events out, the changelog,
        // and now and then entries written (some of them, or all).
        let _ = ledger.unsent_events();
        ledger.events_sent();
        let _ = ledger.take_dirty();
        match offset % 4 {
            1 => {
                let written: Vec<(String, usize)> = ledger
                    .unsent_entries_by_account()
                    .map(|(account, entries)| (account.to_owned(), entries.len().div_ceil(2)))
                    .collect();
                ledger.entries_written_upto(&written, |_| false);
            }
            3 => ledger.entries_written(|_| false),
            _ => {}
        }
        check_outputs(ledger);
    }
}

/// The partition's count of unsent entries and its list of accounts with
/// unsent events agree with the accounts themselves.
fn check_outputs(ledger: &PartitionLedger) {
    let entries: usize = ledger.accounts().map(|a| a.pending_entries.len()).sum();
    assert_eq!(ledger.n_unsent_entries(), entries, "entries counted as held");
    assert_eq!(ledger.unsent_entries().len(), entries, "every account with entries listed");
    let events: usize = ledger.accounts().map(|a| a.outbox.len()).sum();
    assert_eq!(ledger.unsent_events().len(), events, "every account with events listed");
    assert_eq!(ledger.has_unsent_events(), events > 0);
}

fn check_refusal(ledger: &PartitionLedger, account: &str, before: Option<AccountState>, applied: &Applied) {
    if let Applied::Refused(e) = applied {
        assert!(!e.code().is_empty() && !e.to_string().is_empty());
        if let (Some(before), Some(after)) = (before, ledger.account(account)) {
            let mut after = after.clone();
            after.priced_offset = before.priced_offset;
            after.commands_offset = before.commands_offset;
            after.origins = before.origins.clone();
            assert_eq!(after, before, "a refusal changed the account: {e}");
        }
    }
}

/// What holds of every account after any accepted input.
pub fn check_account(a: &AccountState) {
    let balance = a.balance().expect("an accepted input keeps the balance computable");
    assert_eq!(a.granted.scaled() - a.used.scaled() - a.expired.scaled(), balance.scaled(), "balance reconciles");
    for total in [a.granted, a.used, a.expired, a.allowance_applied, a.overage] {
        assert!(!total.is_negative() && total <= ACCOUNT_TOTAL_MAX, "total {total} within bounds");
    }
    for entry in &a.pending_entries {
        let seconds = entry.at.timestamp();
        assert!(
            (0..=i64::from(u32::MAX)).contains(&seconds),
            "entry {} at {} fits ClickHouse",
            entry.entry_id,
            entry.at
        );
    }
}
