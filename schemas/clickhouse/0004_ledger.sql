-- Ledger entries: money in and out of prepaid balances, written by the
-- ledger stage (grants +, prepaid usage −, expired credit −). One entry per
-- entry_id (grant:<id>, usage:<event id>, expiry:<grant id>).
--
-- The ledger writes entries at least once (a restart may write an entry
-- again, identical); ReplacingMergeTree folds repeats when parts merge, and
-- the `balances` view counts each entry_id once before merges too, so
-- analysts never see a repeat. Entries are few next to priced_events (only
-- prepaid usage and grants), so the view's GROUP BY entry_id stays cheap.
CREATE TABLE IF NOT EXISTS {database}.ledger_entries
(
    entry_id String,
    account_id String,
    kind String,
    amount Decimal(38, 24),
    currency String,
    at DateTime('UTC'),
    reference String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (account_id, entry_id);

-- Per account and currency: granted − used − expired = balance, exactly.
CREATE VIEW IF NOT EXISTS {database}.balances
AS SELECT
    account_id,
    currency,
    sumIf(amount, kind = 'grant') AS granted,
    -sumIf(amount, kind = 'usage') AS used,
    -sumIf(amount, kind = 'expiry') AS expired,
    sum(amount) AS balance,
    max(at) AS last_entry_at
FROM
(
    SELECT account_id, entry_id, any(kind) AS kind, any(amount) AS amount, any(currency) AS currency, any(at) AS at
    FROM {database}.ledger_entries
    GROUP BY account_id, entry_id
)
GROUP BY account_id, currency;
