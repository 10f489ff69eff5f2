//! The ledger's rules on single accounts, and its invariants under random
//! input (proptest): balance = granted − used − expired, exactly; a replay
//! changes nothing; each threshold event fires once.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use std::collections::HashSet;
use usage_ledger::{
    AccountCommand, AccountSettings, Applied, AutoReload, AutoReloadFailed, BillingMode, CreditGrant, EventKind,
    GrantKind, LedgerEvent, PartitionLedger, PricedUsage, TokenAllowance, UsageLine,
};
use usage_model::Amount;

fn d(s: &str) -> Amount {
    s.parse().unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn settings(mode: BillingMode, from: &str) -> AccountSettings {
    AccountSettings {
        account_id: "acct".into(),
        effective_from: t(from),
        billing_mode: mode,
        currency: "USD".into(),
        rate_card: None,
        monthly_budget: None,
        alert_thresholds: vec![50, 80, 100],
        monthly_allowance: None,
        monthly_token_allowances: Default::default(),
        time_zone: "UTC".into(),
        auto_reload: None,
        low_runway_hours: 72,
    }
}

fn grant(id: &str, amount: &str, at: &str, expires: Option<&str>, priority: u32) -> CreditGrant {
    CreditGrant {
        account_id: "acct".into(),
        grant_id: id.into(),
        kind: GrantKind::Purchase,
        amount: d(amount),
        currency: "USD".into(),
        granted_at: t(at),
        expires_at: expires.map(t),
        priority,
        reload_key: None,
    }
}

fn usage(id: &str, cost: &str, at: &str, origin_offset: i64) -> PricedUsage {
    PricedUsage {
        event_id: id.into(),
        account_id: "acct".into(),
        occurred_at: t(at),
        currency: "USD".into(),
        cost: d(cost),
        origin_topic: "usage.raw".into(),
        origin_partition: 0,
        origin_offset,
        lines: Vec::new(),
        origin_appended_ms: None,
    }
}

/// Feeds inputs with increasing offsets; returns every event emitted.
struct Feed {
    ledger: PartitionLedger,
    priced_offset: i64,
    commands_offset: i64,
    events: Vec<LedgerEvent>,
}

impl Feed {
    fn new() -> Self {
        Self { ledger: PartitionLedger::default(), priced_offset: 0, commands_offset: 0, events: Vec::new() }
    }

    fn command(&mut self, c: AccountCommand) -> &mut Self {
        self.commands_offset += 1;
        match self.ledger.apply_command(self.commands_offset, &c) {
            Applied::Done(e) => self.events.extend(e.events),
            Applied::Skipped => {}
            Applied::Refused(e) => panic!("refused: {e}"),
        }
        self
    }

    fn usage(&mut self, u: PricedUsage) -> &mut Self {
        self.priced_offset += 1;
        match self.ledger.apply_usage(self.priced_offset, &u) {
            Applied::Done(e) => self.events.extend(e.events),
            Applied::Skipped => {}
            Applied::Refused(e) => panic!("refused: {e}"),
        }
        self
    }

    fn kinds(&self) -> Vec<(EventKind, String)> {
        self.events.iter().map(|e| (e.kind, e.event_id.clone())).collect()
    }

    fn balance(&self) -> Amount {
        self.ledger.account("acct").unwrap().balance().unwrap()
    }
}

#[test]
fn prepaid_burns_by_priority_then_expiry_and_runs_into_overage_once() {
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z")))
        .command(AccountCommand::CreditGrant(grant(
            "late",
            "10",
            "2026-01-01T00:00:00Z",
            Some("2026-12-01T00:00:00Z"),
            1,
        )))
        .command(AccountCommand::CreditGrant(grant(
            "soon",
            "5",
            "2026-01-01T00:00:00Z",
            Some("2026-06-01T00:00:00Z"),
            1,
        )))
        .command(AccountCommand::CreditGrant(grant("promo", "2", "2026-01-01T00:00:00Z", None, 0)))
        .usage(usage("u1", "3", "2026-02-01T10:00:00Z", 1));
    let a = f.ledger.account("acct").unwrap();
    // Priority 0 first (promo: 2), then the earlier expiry (soon: 1 of 5).
    let remaining: Vec<_> = a.grants.iter().map(|g| (&*g.grant_id, g.remaining)).collect();
    assert_eq!(remaining, vec![("soon", d("4")), ("late", d("10"))]);
    f.usage(usage("u2", "15.5", "2026-02-01T11:00:00Z", 2)).usage(usage("u3", "0.25", "2026-02-01T11:00:01Z", 3));
    assert_eq!(f.balance(), d("-1.75"));
    let depleted: Vec<_> = f.events.iter().filter(|e| e.kind == EventKind::BalanceDepleted).collect();
    assert_eq!(depleted.len(), 1, "{:?}", f.kinds());
    assert_eq!(depleted[0].event_id, "acct/balance.depleted/1");
    assert_eq!(depleted[0].overage, Some(d("1.5")));
    assert_eq!(depleted[0].triggering_event_id.as_deref(), Some("u2"));
    // A grant pays the overage first, and restores the account.
    f.command(AccountCommand::CreditGrant(grant("top-up", "10", "2026-02-02T00:00:00Z", None, 0)));
    assert_eq!(f.balance(), d("8.25"));
    let restored = f.events.last().unwrap();
    assert_eq!((restored.kind, restored.event_id.as_str()), (EventKind::BalanceRestored, "acct/balance.restored/1"));
    let a = f.ledger.account("acct").unwrap();
    assert_eq!(a.granted.scaled() - a.used.scaled() - a.expired.scaled(), a.balance().unwrap().scaled());
}

#[test]
fn grants_expire_at_their_instant_and_are_reported() {
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z")))
        .command(AccountCommand::CreditGrant(grant("a", "10", "2026-01-01T00:00:00Z", Some("2026-03-01T00:00:00Z"), 0)))
        .command(AccountCommand::CreditGrant(grant("b", "5", "2026-01-01T00:00:00Z", Some("2027-01-01T00:00:00Z"), 0)))
        .usage(usage("u1", "4", "2026-02-01T00:00:00Z", 1));
    // Idle account: the wall-clock sweep expires grant a's 6 left.
    let effects = f.ledger.expire_due(t("2026-03-01T00:00:00Z"));
    assert_eq!(effects.events.len(), 1);
    let e = &effects.events[0];
    assert_eq!(
        (e.kind, e.event_id.as_str(), e.amount, e.balance),
        (EventKind::CreditsExpired, "acct/credits.expired/a", Some(d("6")), Some(d("5")))
    );
    assert_eq!(e.at, t("2026-03-01T00:00:00Z"));
    assert!(f.ledger.expire_due(t("2026-12-31T00:00:00Z")).is_empty());
    let a = f.ledger.account("acct").unwrap();
    assert_eq!((a.granted, a.used, a.expired, a.balance().unwrap()), (d("15"), d("4"), d("6"), d("5")));
    // Usage after b's expiry expires it first: that depletes the account.
    f.usage(usage("u2", "1", "2027-01-02T00:00:00Z", 2));
    let kinds: Vec<_> = f.events.iter().map(|e| e.kind).filter(|k| *k != EventKind::BalanceLowRunway).collect();
    assert_eq!(kinds, vec![EventKind::CreditsExpired, EventKind::BalanceDepleted]);
    assert_eq!(f.balance(), d("-1"));
}

#[test]
fn events_and_entries_wait_apart_until_each_is_acknowledged() {
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z")))
        .command(AccountCommand::CreditGrant(grant("a", "10", "2026-01-01T00:00:00Z", None, 0)));
    let grant_entries = f.ledger.n_unsent_entries();
    assert_eq!((grant_entries, f.ledger.unsent_entries().len()), (1, 1));
    f.ledger.events_sent();
    assert!(!f.ledger.has_unsent_events());
    // 6 of 10 used: a threshold event and a usage entry.
    f.usage(usage("u1", "6", "2026-02-01T00:00:00Z", 1));
    assert!(f.ledger.has_unsent_events());
    assert_eq!(f.ledger.unsent_events().len(), 1);
    assert_eq!(f.ledger.n_unsent_entries(), grant_entries + 1);
    // Events acknowledged: the entries still wait.
    f.ledger.events_sent();
    assert!(!f.ledger.has_unsent_events() && f.ledger.unsent_events().is_empty());
    assert_eq!(f.ledger.n_unsent_entries(), grant_entries + 1);
    // The account's first entry (the grant's) written, as a write taken
    // earlier reports it: the usage's still waits.
    f.ledger.entries_written_upto(&[("acct".to_owned(), 1)], |_| false);
    assert_eq!(f.ledger.n_unsent_entries(), 1);
    assert_eq!(f.ledger.unsent_entries()[0].entry_id, "usage:u1");
    // A restore of this state holds the same.
    let restored = PartitionLedger::restore(f.ledger.accounts().cloned().collect::<Vec<_>>());
    assert_eq!((restored.n_unsent_entries(), restored.has_unsent_events()), (1, false));
    // Entries ClickHouse cannot take stay pending, never dropped.
    f.ledger.entries_written(|e| e.entry_id.starts_with("usage:"));
    assert_eq!((f.ledger.n_unsent_entries(), f.ledger.unsent_entries().len()), (1, 1));
    f.ledger.entries_written(|_| false);
    assert_eq!(f.ledger.n_unsent_entries(), 0);
    assert!(f.ledger.unsent_entries().is_empty() && f.ledger.unsent_entries_by_account().next().is_none());
}

#[test]
fn postpaid_thresholds_fire_once_each_even_when_one_event_crosses_several() {
    let mut s = settings(BillingMode::Postpaid, "2026-01-01T00:00:00Z");
    s.monthly_budget = Some(d("100"));
    s.time_zone = "America/New_York".into();
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(s))
        .usage(usage("u1", "49.99", "2026-03-10T00:00:00Z", 1))
        .usage(usage("u2", "40", "2026-03-10T01:00:00Z", 2))
        .usage(usage("u3", "1", "2026-03-10T02:00:00Z", 3));
    let ids: Vec<_> = f.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, vec!["acct/budget.threshold_crossed/2026-03/50", "acct/budget.threshold_crossed/2026-03/80"]);
    // 2026-04-01T03:00Z is still March in New York.
    f.usage(usage("u4", "20", "2026-04-01T03:00:00Z", 4));
    let last = f.events.last().unwrap();
    assert_eq!((last.event_id.as_str(), last.spend), ("acct/budget.threshold_crossed/2026-03/100", Some(d("110.99"))));
    f.usage(usage("u5", "100", "2026-04-01T05:00:00Z", 5));
    let april: Vec<_> = f
        .events
        .iter()
        .filter(|e| e.period.as_deref() == Some("2026-04"))
        .map(|e| e.threshold_percent.unwrap())
        .collect();
    assert_eq!(april, vec![50, 80, 100]);
    assert!(f.events.iter().all(|e| e.kind == EventKind::BudgetThresholdCrossed));
}

#[test]
fn auto_reload_is_requested_once_per_cycle_and_closed_by_its_grant_or_failure() {
    let mut s = settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z");
    s.auto_reload =
        Some(Box::new(AutoReload { enabled: true, threshold: d("10"), amount: Some(d("25")), target_balance: None }));
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(s)).command(AccountCommand::CreditGrant(grant(
        "g",
        "20",
        "2026-01-01T00:00:00Z",
        None,
        0,
    )));
    for i in 1..=5 {
        f.usage(usage(&format!("u{i}"), "3", "2026-01-02T00:00:00Z", i));
    }
    let requests: Vec<_> = f.events.iter().filter(|e| e.kind == EventKind::AutoReloadRequested).collect();
    assert_eq!(requests.len(), 1, "one request per cycle, not one per event");
    assert_eq!(requests[0].reload_key.as_deref(), Some("acct/reload/1"));
    assert_eq!(requests[0].amount, Some(d("25")));
    let mut paid = grant("reload-1", "25", "2026-01-02T00:10:00Z", None, 0);
    paid.reload_key = Some("acct/reload/1".into());
    f.command(AccountCommand::CreditGrant(paid));
    assert_eq!(f.balance(), d("30"));
    // Below 10 again: a second cycle, sized to cover the shortfall.
    f.usage(usage("u6", "35", "2026-01-03T00:00:00Z", 6));
    let second = f.events.iter().filter(|e| e.kind == EventKind::AutoReloadRequested).nth(1).unwrap();
    assert_eq!((second.reload_key.as_deref(), second.amount), (Some("acct/reload/2"), Some(d("25"))));
    f.command(AccountCommand::AutoReloadFailed(AutoReloadFailed {
        account_id: "acct".into(),
        reload_key: "acct/reload/2".into(),
        at: t("2026-01-03T00:01:00Z"),
        reason: Some("card declined".into()),
    }));
    f.usage(usage("u7", "1", "2026-01-03T01:00:00Z", 7));
    assert_eq!(
        f.events.iter().filter(|e| e.kind == EventKind::AutoReloadRequested).count(),
        2,
        "no retry storm after a failure"
    );
}

#[test]
fn switching_to_postpaid_stops_burning_and_lifts_the_depletion() {
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z")))
        .command(AccountCommand::CreditGrant(grant("g", "1", "2026-01-01T00:00:00Z", None, 0)))
        .usage(usage("u1", "2", "2026-01-05T00:00:00Z", 1))
        .command(AccountCommand::AccountSettings(settings(BillingMode::Postpaid, "2026-01-10T00:00:00Z")))
        .usage(usage("u2", "50", "2026-01-11T00:00:00Z", 2));
    let kinds: Vec<_> = f.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::BalanceDepleted, EventKind::BalanceRestored]);
    let a = f.ledger.account("acct").unwrap();
    assert_eq!((a.used, a.balance().unwrap(), a.spend_in(202601)), (d("2"), d("-1"), d("52")));
}

#[test]
fn low_runway_fires_once_per_cycle_at_the_recent_rate() {
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z")))
        .command(AccountCommand::CreditGrant(grant("g", "100", "2026-01-01T00:00:00Z", None, 0)));
    // 1 per 10 minutes = 6 per hour: 100 lasts ~16 h < 72 h.
    for i in 0..6 {
        f.usage(usage(&format!("u{i}"), "1", &format!("2026-01-02T10:{:02}:00Z", i * 10 + 5), i + 1));
    }
    let low: Vec<_> = f.events.iter().filter(|e| e.kind == EventKind::BalanceLowRunway).collect();
    assert_eq!(low.len(), 1);
    let projected = low[0].projected_depletion_at.unwrap();
    assert!(projected > low[0].at && projected - low[0].at < Duration::hours(72), "{projected}");
}

/// Origins are told apart by topic name as well as partition, with more
/// topics than the ledger shares one copy of, and after a restore (whose
/// states bring their own copies of the names).
#[test]
fn pricing_retries_are_skipped_per_origin_topic_with_many_topics_and_after_a_restore() {
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(settings(BillingMode::Postpaid, "2026-01-01T00:00:00Z")));
    let from = |topic: usize, offset: i64| PricedUsage {
        origin_topic: format!("usage.raw.{topic}"),
        ..usage(&format!("u{topic}-{offset}"), "1", "2026-01-02T00:00:00Z", offset)
    };
    const TOPICS: usize = 40;
    for topic in 0..TOPICS {
        f.usage(from(topic, 5));
    }
    let a = f.ledger.account("acct").unwrap();
    assert_eq!((a.origins.len(), a.periods[0].spend), (TOPICS, d("40")));
    let mut restored = PartitionLedger::restore([a.clone()]);
    for (n, ledger) in [&mut f.ledger, &mut restored].into_iter().enumerate() {
        for topic in 0..TOPICS {
            let offset = 1_000 + topic as i64;
            assert_eq!(ledger.apply_usage(offset, &from(topic, 5)), Applied::Skipped, "ledger {n}, topic {topic}");
            assert!(
                matches!(ledger.apply_usage(offset, &from(topic, 6)), Applied::Done(_)),
                "ledger {n}, topic {topic}"
            );
        }
        // A topic never seen before is a new origin, at any offset.
        assert!(matches!(ledger.apply_usage(2_000, &from(TOPICS, 1)), Applied::Done(_)));
        assert_eq!(ledger.account("acct").unwrap().periods[0].spend, d("81"));
    }
}

#[test]
fn replays_and_pricing_retries_change_nothing() {
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z")))
        .command(AccountCommand::CreditGrant(grant("g", "5", "2026-01-01T00:00:00Z", None, 0)))
        .usage(usage("u1", "2", "2026-01-02T00:00:00Z", 10));
    let before = f.ledger.account("acct").unwrap().clone();
    // Same ledger offset again (a restart re-reads it): skipped.
    assert_eq!(f.ledger.apply_usage(f.priced_offset, &usage("u1", "2", "2026-01-02T00:00:00Z", 10)), Applied::Skipped);
    // A new ledger offset but an origin already applied (pricing retried).
    assert_eq!(
        f.ledger.apply_usage(f.priced_offset + 1, &usage("u1", "2", "2026-01-02T00:00:00Z", 10)),
        Applied::Skipped
    );
    // The same grant sent twice.
    f.command(AccountCommand::CreditGrant(grant("g", "5", "2026-01-01T00:00:00Z", None, 0)));
    let after = f.ledger.account("acct").unwrap();
    assert_eq!(
        (after.balance().unwrap(), after.granted, after.used),
        (before.balance().unwrap(), before.granted, before.used)
    );
}

#[test]
fn a_usage_in_another_currency_is_refused_not_converted() {
    let mut ledger = PartitionLedger::default();
    let s = AccountCommand::AccountSettings(settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z"));
    assert!(matches!(ledger.apply_command(1, &s), Applied::Done(_)));
    let mut u = usage("u1", "1", "2026-01-02T00:00:00Z", 1);
    u.currency = "EUR".into();
    let Applied::Refused(e) = ledger.apply_usage(1, &u) else { panic!("refused") };
    assert_eq!(e.code(), "currency_mismatch");
    assert_eq!(ledger.account("acct").unwrap().balance(), Ok(Amount::ZERO));
}

#[test]
fn a_monthly_allowance_is_free_before_anything_is_charged_or_counted() {
    let mut s = settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z");
    s.monthly_allowance = Some(d("5"));
    s.monthly_budget = Some(d("10"));
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(s))
        .command(AccountCommand::CreditGrant(grant("g", "10", "2026-01-01T00:00:00Z", None, 0)))
        .usage(usage("u1", "3", "2026-01-10T00:00:00Z", 1)) // free
        .usage(usage("u2", "4", "2026-01-11T00:00:00Z", 2)) // 2 free, 2 charged
        .usage(usage("u3", "1", "2026-02-01T00:00:00Z", 3)); // a new month: free again
    let a = f.ledger.account("acct").unwrap();
    assert_eq!((a.used, a.allowance_applied, a.balance().unwrap()), (d("2"), d("6"), d("8")));
    assert_eq!((a.spend_in(202601), a.spend_in(202602)), (d("2"), d("0")));
    assert_eq!(a.granted.scaled() - a.used.scaled() - a.expired.scaled(), a.balance().unwrap().scaled());
    assert!(f.events.iter().all(|e| e.kind != EventKind::BudgetThresholdCrossed), "charged spend is under 50%");
    assert!(matches!(f.ledger.apply_usage(99, &usage("u4", "4", "2026-02-02T00:00:00Z", 4)), Applied::Done(_)));
    // 4 free of February's remaining 4: the balance entry is zero.
    let entry = f.ledger.unsent_entries().into_iter().find(|e| e.reference == "u4").expect("u4's entry pending");
    assert_eq!(entry.amount, Amount::ZERO);
}

fn line(unit: &str, quantity: u64, unit_price: &str) -> UsageLine {
    UsageLine { unit: unit.into(), quantity, unit_price: d(unit_price) }
}

#[test]
fn token_allowances_make_units_free_at_the_usage_prices_then_the_money_allowance_applies() {
    let mut s = settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z");
    s.monthly_token_allowances = vec![TokenAllowance { unit: "input_tokens".into(), quantity: 1_000 }].into();
    s.monthly_allowance = Some(d("0.1"));
    let priced = |id: &str, at: &str, offset: i64, lines: Vec<UsageLine>| {
        let mut u = usage(id, "0", at, offset);
        u.cost =
            Amount::checked_sum(lines.iter().map(|l| l.unit_price.checked_mul_count(l.quantity).unwrap())).unwrap();
        u.lines = lines;
        u
    };
    let mut f = Feed::new();
    f.command(AccountCommand::AccountSettings(s))
        .command(AccountCommand::CreditGrant(grant("g", "10", "2026-01-01T00:00:00Z", None, 0)))
        // 600 input tokens free (0.6); of the output's 0.4, 0.1 is the money allowance.
        .usage(priced(
            "u1",
            "2026-01-10T00:00:00Z",
            1,
            vec![line("input_tokens", 600, "0.001"), line("output_tokens", 100, "0.004")],
        ))
        // The last 400 free tokens, at this event's price (0.002 each).
        .usage(priced("u2", "2026-01-11T00:00:00Z", 2, vec![line("input_tokens", 600, "0.002")]))
        // A new month: 1,000 free again.
        .usage(priced("u3", "2026-02-01T00:00:00Z", 3, vec![line("input_tokens", 500, "0.001")]));
    let a = f.ledger.account("acct").unwrap();
    // u1: 1.0 = 0.6 tokens + 0.1 money + 0.3 charged; u2: 1.2 = 0.8 + 0.4; u3: 0.5 free.
    assert_eq!((a.allowance_applied, a.used), (d("2.0"), d("0.7")));
    assert_eq!(a.used.checked_add(a.allowance_applied).unwrap(), d("2.7"), "every cost is charged or free, exactly");
    assert_eq!((a.spend_in(202601), a.spend_in(202602)), (d("0.7"), d("0")));
    assert_eq!(a.balance().unwrap(), d("9.3"));
    // The month's use of the allowance survives a restart (the changelog is JSON).
    let restored: usage_ledger::AccountState = serde_json::from_slice(&serde_json::to_vec(a).unwrap()).unwrap();
    assert_eq!(&restored, a);
    // Settings naming unknown units, or none of them, are refused.
    let bad = br#"{"type":"account_settings","account_id":"a","effective_from":"2026-01-01T00:00:00Z",
        "billing_mode":"postpaid","currency":"USD","monthly_token_allowances":[{"unit":"tokenz","quantity":5}]}"#;
    assert!(AccountCommand::from_json(bad).unwrap_err().to_string().contains("tokenz"));
}

/// A usage cost with 24 places, like priced ones: `cents` cents and a tail.
fn cost_of(cents: u32) -> Amount {
    Amount::from_scaled(i128::from(cents) * 1_234_567_891_234 + i128::from(cents) * 10i128.pow(22)).unwrap()
}

#[derive(Clone, Debug)]
enum Step {
    Usage { cents: u32, minute: i64 },
    Grant { cents: u32, minute: i64, expires_after_minutes: i64, priority: u32 },
    Sweep { minute: i64 },
    Switch { prepaid: bool, minute: i64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u32..5_000, 0i64..50_000).prop_map(|(cents, minute)| Step::Usage { cents, minute }),
        2 => (1u32..20_000, 0i64..50_000, 1i64..40_000, 0u32..3)
            .prop_map(|(cents, minute, e, priority)| Step::Grant { cents, minute, expires_after_minutes: e, priority }),
        1 => (0i64..100_000).prop_map(|minute| Step::Sweep { minute }),
        1 => (any::<bool>(), 0i64..50_000).prop_map(|(prepaid, minute)| Step::Switch { prepaid, minute }),
    ]
}

/// Sweeps follow the wall clock, not the inputs: a replay (`sweeps` false)
/// re-reads the inputs only.
fn run(steps: &[Step], ledger: &mut PartitionLedger, events: &mut Vec<LedgerEvent>, sweeps: bool) {
    let base = t("2026-01-01T00:00:00Z");
    let mut s = settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z");
    s.monthly_budget = Some(d("50"));
    s.monthly_allowance = Some(d("3"));
    s.monthly_token_allowances = vec![TokenAllowance { unit: "input_tokens".into(), quantity: 5_000 }].into();
    s.auto_reload =
        Some(Box::new(AutoReload { enabled: true, threshold: d("5"), amount: None, target_balance: Some(d("20")) }));
    let mut record = |a: Applied| {
        if let Applied::Done(e) = a {
            events.extend(e.events)
        }
    };
    record(ledger.apply_command(0, &AccountCommand::AccountSettings(s.clone())));
    for (i, st) in steps.iter().enumerate() {
        let offset = i as i64 + 1;
        let at = |m: i64| base + Duration::minutes(m);
        match st {
            Step::Usage { cents, minute } => {
                let mut u = usage(&format!("u{i}"), "0", "2026-01-01T00:00:00Z", offset);
                // Costs carry up to 24 places, like priced ones; the input
                // tokens' line is the part in cents.
                u.cost = cost_of(*cents);
                u.lines = vec![line("input_tokens", u64::from(*cents) * 10, "0.001")];
                u.occurred_at = at(*minute);
                record(ledger.apply_usage(offset, &u));
            }
            Step::Grant { cents, minute, expires_after_minutes, priority } => {
                let mut g = grant(&format!("g{i}"), "1", "2026-01-01T00:00:00Z", None, *priority);
                g.amount = Amount::from_scaled(i128::from(*cents) * 10i128.pow(22)).unwrap();
                g.granted_at = at(*minute);
                g.expires_at = Some(at(minute + expires_after_minutes));
                record(ledger.apply_command(offset, &AccountCommand::CreditGrant(g)));
            }
            Step::Sweep { minute } if sweeps => record(Applied::Done(ledger.expire_due(at(*minute)))),
            Step::Sweep { .. } => {}
            Step::Switch { prepaid, minute } => {
                let mode = if *prepaid { BillingMode::Prepaid } else { BillingMode::Postpaid };
                let mut s2 = s.clone();
                s2.billing_mode = mode;
                s2.effective_from = at(*minute);
                record(ledger.apply_command(offset, &AccountCommand::AccountSettings(s2)));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn balance_reconciles_exactly_and_replays_change_nothing(steps in prop::collection::vec(step(), 1..60)) {
        let mut ledger = PartitionLedger::default();
        let mut events = Vec::new();
        run(&steps, &mut ledger, &mut events, true);
        let a = ledger.account("acct").unwrap().clone();
        prop_assert_eq!(a.granted.scaled() - a.used.scaled() - a.expired.scaled(), a.balance().unwrap().scaled());
        prop_assert!(a.grants.iter().all(|g| g.remaining > Amount::ZERO && g.remaining <= g.amount));
        prop_assert!(a.overage >= Amount::ZERO);
        prop_assert!(a.overage.is_zero() || a.grants.is_empty(), "overage only once every grant is used up");
        // Every cost is charged (in its month's spend) or free, exactly.
        let costs: i128 = steps.iter().map(|st| match st {
            Step::Usage { cents, .. } => cost_of(*cents).scaled(),
            _ => 0,
        }).sum();
        let spent: i128 = [202601, 202602].iter().map(|p| a.spend_in(*p).scaled()).sum();
        prop_assert_eq!(spent + a.allowance_applied.scaled(), costs);
        let ids: HashSet<_> = events.iter().map(|e| e.event_id.clone()).collect();
        prop_assert_eq!(ids.len(), events.len(), "every event id is unique");
        // Depletions and restorations alternate.
        let mut depleted = false;
        for e in &events {
            match e.kind {
                EventKind::BalanceDepleted => { prop_assert!(!depleted); depleted = true; }
                EventKind::BalanceRestored => { prop_assert!(depleted); depleted = false; }
                _ => {}
            }
        }
        // A restart from the saved state, then the same inputs again.
        let mut restored = PartitionLedger::restore([a.clone()]);
        let mut again = Vec::new();
        run(&steps, &mut restored, &mut again, false);
        let b = restored.account("acct").unwrap();
        prop_assert_eq!((b.balance().unwrap(), b.granted, b.used), (a.balance().unwrap(), a.granted, a.used));
        prop_assert!(again.iter().all(|e| e.kind == EventKind::CreditsExpired || ids.contains(&e.event_id)));
    }
}

#[test]
fn a_long_message_applied_together_is_its_records_applied_one_by_one() {
    // Longer than the lookup pipeline and its ring (records in flight), over
    // accounts held and new, each seen several times, some records replayed.
    let message: Vec<PricedUsage> = (0..300)
        .map(|n: i64| PricedUsage {
            account_id: format!("acct-{}", ((n % 290) * 7) % 37),
            ..usage(&format!("u{}", n % 290), "0.5", "2026-01-02T00:00:00Z", n % 290)
        })
        .collect();
    let prepared = || {
        let mut f = Feed::new();
        for a in 0..20 {
            let mut s = settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z");
            s.account_id = format!("acct-{a}");
            f.command(AccountCommand::AccountSettings(s));
        }
        f.ledger
    };
    let (mut together, mut one_by_one) = (prepared(), prepared());
    let applied = together.apply_usages(9, &message);
    let expected: Vec<Applied> = message.iter().map(|r| one_by_one.apply_usage(9, r)).collect();
    assert_eq!(applied, expected);
    assert_eq!(applied.iter().filter(|a| **a == Applied::Skipped).count(), 10);
    let states = |l: &PartitionLedger| {
        let mut s: Vec<String> = l.accounts().map(|a| format!("{a:?}")).collect();
        s.sort();
        s
    };
    assert_eq!(together.len(), 37);
    assert_eq!(states(&together), states(&one_by_one));
}

#[test]
fn a_message_applied_together_is_its_records_applied_one_by_one() {
    let of = |account: &str, id: &str, cost: &str, origin: i64| PricedUsage {
        account_id: account.into(),
        ..usage(id, cost, "2026-01-02T00:00:00Z", origin)
    };
    let mut euros = of("c", "u6", "1", 6);
    euros.currency = "EUR".into();
    // Accounts held before and new to the message, several records of one
    // account, a record replayed within the message, one refused.
    let message = vec![
        of("acct", "u1", "2", 1),
        of("new", "u2", "1", 2),
        of("acct", "u3", "4", 3),
        of("new", "u4", "1", 4),
        of("acct", "u3", "4", 3),
        of("c", "u5", "1", 5),
        euros,
    ];
    let prepared = || {
        let mut f = Feed::new();
        f.command(AccountCommand::AccountSettings(settings(BillingMode::Prepaid, "2026-01-01T00:00:00Z")))
            .command(AccountCommand::CreditGrant(grant("g", "5", "2026-01-01T00:00:00Z", None, 0)));
        f.ledger
    };
    let (mut together, mut one_by_one) = (prepared(), prepared());
    let applied = together.apply_usages(7, &message);
    let expected: Vec<Applied> = message.iter().map(|r| one_by_one.apply_usage(7, r)).collect();
    assert_eq!(applied, expected);
    assert!(matches!(applied[4], Applied::Skipped) && matches!(applied[6], Applied::Refused(_)));
    assert!(matches!(applied[0], Applied::Done(_)) && matches!(applied[1], Applied::Done(_)));
    let states = |l: &PartitionLedger| {
        let mut s: Vec<String> = l.accounts().map(|a| format!("{a:?}")).collect();
        s.sort();
        s
    };
    assert_eq!(states(&together), states(&one_by_one));
    assert_eq!(together.len(), 3);
    // Applied again (a restart re-reads the message): nothing changes.
    assert!(together
        .apply_usages(7, &message)
        .iter()
        .all(|a| *a == Applied::Skipped || matches!(a, Applied::Refused(_))));
    assert_eq!(states(&together), states(&one_by_one));
}
