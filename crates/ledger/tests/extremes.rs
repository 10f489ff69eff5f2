//! The ledger under extreme and hostile input (issue 10): billing commands
//! and priced usage with amounts at and past every bound, instants far in
//! the past and future, token lines that overflow. Nothing panics; what is
//! refused is refused with a code and a reason, before anything changes;
//! what is accepted keeps the account reconciled and within its bounds, and
//! every ledger entry fits ClickHouse.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use usage_ledger::{AccountCommand, AccountState, Applied, PartitionLedger, PricedUsage, ACCOUNT_TOTAL_MAX};

fn amount() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("0.000000000000000000000001".to_owned()),
        Just("1".to_owned()),
        Just("1000000000000".to_owned()),
        Just("1000000000000.000000000000000000000001".to_owned()),
        Just("98000000000000".to_owned()),
        Just("99999999999999.999999999999999999999999".to_owned()),
        Just("-99999999999999.999999999999999999999999".to_owned()),
        Just("100000000000000".to_owned()),
        Just("0.0000000000000000000000001".to_owned()),
        Just("1e5".to_owned()),
        (0u64..10_000_000).prop_map(|c| format!("{}.{:02}", c / 100, c % 100)),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

fn instant() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0i64..86_400 * 60).prop_map(|s| {
            (DateTime::<Utc>::from_timestamp(1_767_225_600 + s, 0).unwrap()).to_rfc3339()
        }),
        1 => Just("1970-01-01T00:00:00Z".to_owned()),
        1 => Just("1999-12-31T23:59:59Z".to_owned()),
        1 => Just("2099-12-31T23:59:59Z".to_owned()),
        1 => Just("2100-01-01T00:00:00Z".to_owned()),
        1 => Just("9999-12-31T23:59:59Z".to_owned()),
    ]
}

#[derive(Clone, Debug)]
enum Input {
    Command(String),
    Usage(String),
    Sweep(String),
}

fn input() -> impl Strategy<Value = Input> {
    let settings = (any::<bool>(), prop::option::of(amount()), prop::option::of(amount()), instant(), prop::option::of((amount(), any::<bool>(), amount())))
        .prop_map(|(prepaid, budget, allowance, from, reload)| {
            let mut extra = String::new();
            if let Some(b) = budget {
                extra += &format!(r#","monthly_budget":"{b}""#);
            }
            if let Some(a) = allowance {
                extra += &format!(r#","monthly_allowance":"{a}""#);
            }
            if let Some((threshold, by_amount, value)) = reload {
                let key = if by_amount { "amount" } else { "target_balance" };
                extra += &format!(r#","auto_reload":{{"threshold":"{threshold}","{key}":"{value}"}}"#);
            }
            extra += r#","monthly_token_allowances":[{"unit":"input_tokens","quantity":18446744073709551615}]"#;
            let mode = if prepaid { "prepaid" } else { "postpaid" };
            Input::Command(format!(
                r#"{{"type":"account_settings","account_id":"a","effective_from":"{from}","billing_mode":"{mode}","currency":"USD"{extra}}}"#
            ))
        });
    let grant = (0u32..4, amount(), instant(), prop::option::of(instant())).prop_map(|(id, amount, at, expires)| {
        let expires = expires.map(|e| format!(r#","expires_at":"{e}""#)).unwrap_or_default();
        Input::Command(format!(
            r#"{{"type":"credit_grant","account_id":"a","grant_id":"g{id}","kind":"purchase","amount":"{amount}","currency":"USD","granted_at":"{at}"{expires}}}"#
        ))
    });
    let usage = (0u32..1000, amount(), instant(), any::<u64>(), amount()).prop_map(|(id, cost, at, quantity, price)| {
        Input::Usage(format!(
            r#"{{"event_id":"u{id}","account_id":"a","occurred_at":"{at}","currency":"USD","cost":"{cost}","origin_topic":"raw","origin_partition":0,"origin_offset":{id},"lines":[{{"unit":"input_tokens","quantity":{quantity},"unit_price":"{price}"}}]}}"#
        ))
    });
    prop_oneof![3 => settings, 4 => grant, 8 => usage, 1 => instant().prop_map(Input::Sweep)]
}

/// What must hold of an account after any input.
fn check(a: &AccountState) -> Result<(), TestCaseError> {
    let balance = a.balance().map_err(|e| TestCaseError::fail(format!("balance: {e}")))?;
    prop_assert_eq!(a.granted.scaled() - a.used.scaled() - a.expired.scaled(), balance.scaled());
    for total in [a.granted, a.used, a.expired, a.allowance_applied, a.overage] {
        prop_assert!(!total.is_negative() && total <= ACCOUNT_TOTAL_MAX, "total {total}");
    }
    for entry in &a.pending_entries {
        let seconds = entry.at.timestamp();
        prop_assert!((0..=i64::from(u32::MAX)).contains(&seconds), "entry {} at {}", entry.entry_id, entry.at);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn extreme_input_never_panics_and_refusals_carry_a_reason(inputs in prop::collection::vec(input(), 1..40)) {
        let mut ledger = PartitionLedger::default();
        for (offset, input) in inputs.iter().enumerate() {
            let offset = offset as i64;
            let before = ledger.account("a").cloned();
            let applied = match input {
                Input::Command(json) => match AccountCommand::from_json(json.as_bytes()) {
                    Ok(c) => ledger.apply_command(offset, &c),
                    Err(e) => {
                        prop_assert!(!e.code().is_empty() && !e.to_string().is_empty());
                        continue;
                    }
                },
                Input::Usage(json) => match PricedUsage::from_json(json.as_bytes()) {
                    Ok(u) => ledger.apply_usage(offset, &u),
                    Err(e) => {
                        prop_assert!(!e.code().is_empty() && !e.to_string().is_empty());
                        continue;
                    }
                },
                Input::Sweep(at) => {
                    ledger.expire_due(at.parse().unwrap());
                    Applied::Skipped
                }
            };
            if let Applied::Refused(e) = &applied {
                prop_assert!(!e.code().is_empty() && !e.to_string().is_empty());
                // Refused before anything changed, but the offset it was read at.
                let mut after = ledger.account("a").cloned().unwrap();
                if let Some(before) = &before {
                    after.priced_offset = before.priced_offset;
                    after.commands_offset = before.commands_offset;
                    after.origins = before.origins.clone();
                    prop_assert_eq!(&after, before, "a refusal changed the account: {}", e);
                }
            }
            if let Some(a) = ledger.account("a") {
                check(a)?;
            }
        }
    }
}
