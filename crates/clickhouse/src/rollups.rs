//! The rollups, described once: their materialized views (migration 6
//! holds the same text, checked by a test), backfill's staging views, and
//! the repair of a rollup whose view missed an INSERT.
//!
//! Why a repair: ClickHouse writes an INSERT into `priced_events` first,
//! then into each view's table, one after the other, and nothing makes the
//! whole atomic. When the server dies in between, or a view's INSERT fails
//! (too many parts, memory), the rows are stored but a rollup lacks them;
//! the retry then finds the rows stored and, rightly, does not insert them
//! again. Every rollup keeps the Kafka topic and partition its rows came
//! from in its key, so the owner of a partition (the only writer of those
//! rows) can compare, for the keys a unit touched, what `priced_events`
//! holds with what the rollup holds, and insert the difference.

use crate::reports::quote;
use crate::row::PricedRow;
use crate::sink::{ClickHouseSink, SinkError};

/// One rollup table and the view that keeps it.
pub struct Rollup {
    pub table: &'static str,
    /// `(column, expression over priced_events)`, in key order. The time
    /// key is the one whose expression reads `occurred_at`.
    pub keys: &'static [(&'static str, &'static str)],
    /// `(column, aggregate over priced_events)`: summed by the table.
    pub sums: &'static [(&'static str, &'static str)],
}

const SOURCE_KEYS: [(&str, &str); 2] = [("kafka_topic", "kafka_topic"), ("kafka_partition", "kafka_partition")];

pub const ROLLUPS: &[Rollup] = &[
    Rollup {
        table: "cost_by_account_model_hour",
        keys: &[
            ("account_id", "account_id"),
            ("hour", "toStartOfHour(occurred_at)"),
            ("provider", "provider"),
            ("matched_model", "matched_model"),
            ("currency", "currency"),
            SOURCE_KEYS[0],
            SOURCE_KEYS[1],
        ],
        sums: &[
            ("events", "count()"),
            ("input_tokens", "sum(input_tokens)"),
            ("cache_read_tokens", "sum(cache_read_tokens)"),
            ("cache_write_tokens", "sum(cache_write_tokens)"),
            ("output_tokens", "sum(output_tokens)"),
            ("cost", "sum(cost)"),
        ],
    },
    Rollup {
        table: "cost_by_account_day",
        keys: &[
            ("account_id", "account_id"),
            ("day", "toDate(occurred_at)"),
            ("currency", "currency"),
            SOURCE_KEYS[0],
            SOURCE_KEYS[1],
        ],
        sums: &[("events", "count()"), ("cost", "sum(cost)")],
    },
    Rollup {
        table: "cost_by_api_key_day",
        keys: &[
            ("account_id", "account_id"),
            ("api_key_id", "api_key_id"),
            ("day", "toDate(occurred_at)"),
            ("currency", "currency"),
            SOURCE_KEYS[0],
            SOURCE_KEYS[1],
        ],
        sums: &[("events", "count()"), ("cost", "sum(cost)")],
    },
    Rollup {
        table: "cost_by_project_day",
        keys: &[
            ("account_id", "account_id"),
            ("project_id", "project_id"),
            ("day", "toDate(occurred_at)"),
            ("currency", "currency"),
            SOURCE_KEYS[0],
            SOURCE_KEYS[1],
        ],
        sums: &[("events", "count()"), ("cost", "sum(cost)")],
    },
];

/// Bytes of quoted account ids per repair scope: the first look names them
/// twice per rollup (eight times), and a query must stay under ClickHouse's
/// default `max_query_size` (256 KiB).
const REPAIR_ACCOUNT_BYTES_MAX: usize = 24 * 1024;

fn item((column, expr): &(&str, &str)) -> String {
    if column == expr {
        column.to_string()
    } else {
        format!("{expr} AS {column}")
    }
}

impl Rollup {
    fn columns(&self) -> Vec<&'static str> {
        self.keys.iter().chain(self.sums).map(|(c, _)| *c).collect()
    }

    fn key_columns(&self) -> String {
        self.keys.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
    }

    /// The time key: `(column, expression over occurred_at)`.
    fn time_key(&self) -> (&'static str, &'static str) {
        *self.keys.iter().find(|(_, e)| e.contains("occurred_at")).expect("every rollup has a time key")
    }

    /// The view's query over `source` (`priced_events` or a staging copy).
    pub fn view_select(&self, database: &str, source: &str) -> String {
        format!(
            "SELECT {} FROM {database}.{source} GROUP BY {}",
            self.keys.iter().chain(self.sums).map(item).collect::<Vec<_>>().join(", "),
            self.key_columns()
        )
    }

    /// The statement creating the view `name` into `target` from `source`.
    pub fn create_view(&self, database: &str, name: &str, target: &str, source: &str) -> String {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{name} TO {database}.{target} AS {}",
            self.view_select(database, source)
        )
    }

    /// Per key in scope, what `priced_events` holds (`e_<sum>`) and what
    /// the rollup holds (`a_<sum>`, 0 where it has no row). `from_rollup`
    /// turns the join around: every rollup key, 0 where no row backs it.
    fn compare_sql(&self, database: &str, scope: &RepairScope, from_rollup: bool) -> String {
        let keys = self.key_columns();
        let expected = format!(
            "(SELECT {}, {} FROM {database}.priced_events WHERE {} GROUP BY {keys})",
            self.keys.iter().map(item).collect::<Vec<_>>().join(", "),
            self.sums.iter().map(|(c, e)| format!("{e} AS e_{c}")).collect::<Vec<_>>().join(", "),
            self.scope_sql(scope, true),
        );
        let actual = format!(
            "(SELECT {keys}, {} FROM {database}.{} WHERE {} GROUP BY {keys})",
            self.sums.iter().map(|(c, _)| format!("sum({c}) AS a_{c}")).collect::<Vec<_>>().join(", "),
            self.table,
            self.scope_sql(scope, false),
        );
        let (left, right) = if from_rollup { (actual, expected) } else { (expected, actual) };
        format!("{left} ANY LEFT JOIN {right} USING ({keys})")
    }

    /// `sums` as `template` with `{}` the column, joined by `separator`.
    fn each_sum(&self, template: &str, separator: &str) -> String {
        self.sums.iter().map(|(c, _)| template.replace("{}", c)).collect::<Vec<_>>().join(separator)
    }

    /// For the keys of rows from the scope's topic partition, accounts and
    /// `occurred_at` span, what `priced_events` holds and the rollup lacks,
    /// as rows to add to the rollup. Keys where the rollup holds more are
    /// left out (see [`Self::excess_sql`]).
    fn deficit_sql(&self, database: &str, scope: &RepairScope) -> String {
        format!(
            "SELECT {}, {} FROM {} WHERE ({}) AND ({})",
            self.key_columns(),
            self.each_sum("e_{} - a_{}", ", "),
            self.compare_sql(database, scope, false),
            self.each_sum("e_{} >= a_{}", " AND "),
            self.each_sum("e_{} != a_{}", " OR "),
        )
    }

    /// `events/cost` in scope, as one string: from `priced_events`
    /// (`source`) or from the rollup. A rollup never holds more than its
    /// rows, so equal totals mean no key lacks anything.
    fn totals_sql(&self, database: &str, scope: &RepairScope, source: bool) -> String {
        let (table, events) = if source { ("priced_events", "count()") } else { (self.table, "sum(events)") };
        format!(
            "(SELECT concat(toString({events}), '/', toString(sum(cost))) FROM {database}.{table} WHERE {})",
            self.scope_sql(scope, source)
        )
    }

    fn repair_sql(&self, database: &str, scope: &RepairScope) -> String {
        format!(
            "INSERT INTO {database}.{} ({}) {}",
            self.table,
            self.columns().join(", "),
            self.deficit_sql(database, scope)
        )
    }

    /// Counts the keys in scope where the rollup holds more than
    /// `priced_events`: never expected, reported when found.
    fn excess_sql(&self, database: &str, scope: &RepairScope) -> String {
        format!(
            "SELECT count() FROM {} WHERE {}",
            self.compare_sql(database, scope, true),
            self.each_sum("a_{} > e_{}", " OR ")
        )
    }

    /// The scope as a condition on `priced_events` (`source`) or on the
    /// rollup: same topic and partition, same accounts, the time keys
    /// spanned by `[from, until]`.
    fn scope_sql(&self, scope: &RepairScope, source: bool) -> String {
        let (time_column, time_expr) = self.time_key();
        let at = |seconds: u32| time_expr.replace("occurred_at", &format!("toDateTime({seconds}, 'UTC')"));
        let time = if source { time_expr.to_owned() } else { time_column.to_owned() };
        let accounts = match &scope.accounts {
            Some(accounts) => {
                format!(" AND account_id IN ({})", accounts.iter().map(|a| quote(a)).collect::<Vec<_>>().join(", "))
            }
            None => String::new(),
        };
        format!(
            "kafka_topic = {} AND kafka_partition = {}{accounts} AND {time} >= {} AND {time} <= {}",
            quote(&scope.topic),
            scope.partition,
            at(scope.from),
            at(scope.until)
        )
    }
}

/// Which rollup keys a repair looks at: one topic partition's rows, of
/// some accounts (or all), with `occurred_at` in `[from, until]` (seconds,
/// both included; whole hours or days of the rollup's time key).
struct RepairScope {
    topic: String,
    partition: i32,
    accounts: Option<Vec<String>>,
    from: u32,
    until: u32,
}

/// A rollup whose totals differ from `priced_events` for a topic partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollupMismatch {
    pub table: &'static str,
    pub topic: String,
    pub partition: i32,
    /// `events/cost` from `priced_events`, and from the rollup.
    pub expected: String,
    pub found: String,
}

/// What a repair found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Rollup rows inserted to make up for a view that missed rows.
    pub keys_repaired: u64,
    /// Keys where a rollup holds more than `priced_events` (left alone).
    pub keys_in_excess: u64,
}

impl ClickHouseSink {
    /// Makes every rollup agree with `priced_events` for the keys `rows`
    /// touch, counting only rows from the same Kafka topic and partition.
    /// All `rows` must come from one topic partition, and only its owner
    /// may call this (no one else writes rows of that partition meanwhile).
    /// Queries run under `query_id_prefix` so that a new owner waits for
    /// them. Idempotent.
    pub async fn repair_rollups(&self, rows: &[&PricedRow], query_id_prefix: &str) -> Result<RepairReport, SinkError> {
        let mut report = RepairReport::default();
        let Some(first) = rows.first() else { return Ok(report) };
        let mut accounts: Vec<(&str, u32)> = rows.iter().map(|r| (r.account_id.as_str(), r.occurred_at)).collect();
        accounts.sort_unstable();
        let mut by_account: Vec<(&str, u32, u32)> = Vec::new();
        for (account, at) in accounts {
            match by_account.last_mut() {
                Some((a, _, until)) if *a == account => *until = at,
                _ => by_account.push((account, at, at)),
            }
        }
        let mut chunks: Vec<&[(&str, u32, u32)]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, (account, _, _)) in by_account.iter().enumerate() {
            let size = quote(account).len() + 2;
            if bytes > 0 && bytes + size > REPAIR_ACCOUNT_BYTES_MAX {
                chunks.push(&by_account[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        chunks.push(&by_account[start..]);
        for chunk in chunks {
            let scope = RepairScope {
                topic: first.kafka_topic.to_string(),
                partition: first.kafka_partition,
                accounts: Some(chunk.iter().map(|(a, _, _)| a.to_string()).collect()),
                from: chunk.iter().map(|c| c.1).min().expect("non-empty chunk"),
                until: chunk.iter().map(|c| c.2).max().expect("non-empty chunk"),
            };
            let found = self.repair_scope(&scope, query_id_prefix).await?;
            report.keys_repaired += found.keys_repaired;
            report.keys_in_excess += found.keys_in_excess;
        }
        Ok(report)
    }

    /// Repairs every rollup for one scope (see [`Self::repair_rollups`]).
    async fn repair_scope(&self, scope: &RepairScope, query_id_prefix: &str) -> Result<RepairReport, SinkError> {
        let db = self.database();
        let mut report = RepairReport::default();
        // First a cheap look at totals; keys only where they differ.
        let totals = ROLLUPS
            .iter()
            .flat_map(|r| [r.totals_sql(db, scope, true), r.totals_sql(db, scope, false)])
            .collect::<Vec<_>>()
            .join(", ");
        let row = self.query_tsv(&format!("SELECT {totals}")).await?.into_iter().next().unwrap_or_default();
        if row.len() != 2 * ROLLUPS.len() {
            return Err(SinkError::Unexpected(format!("rollup totals: {} columns", row.len())));
        }
        for (rollup, pair) in ROLLUPS.iter().zip(row.chunks(2)) {
            if pair[0] == pair[1] {
                continue;
            }
            let missing = self.count(&format!("SELECT count() FROM ({})", rollup.deficit_sql(db, scope))).await?;
            if missing > 0 {
                // One id per partition and table: ClickHouse refuses a second
                // repair (a previous owner's) while one runs; each computes
                // the difference when it runs, so in turn they never double.
                let id = format!("{query_id_prefix}repair-{}", rollup.table);
                self.execute_with_id(&rollup.repair_sql(db, scope), &id).await?;
                tracing::warn!(
                    table = rollup.table,
                    topic = %scope.topic,
                    partition = scope.partition,
                    keys = missing,
                    "a rollup missed rows stored in priced_events (its view's INSERT did not happen); repaired"
                );
            }
            report.keys_repaired += missing;
            let excess = self.count(&rollup.excess_sql(db, scope)).await?;
            if excess > 0 {
                tracing::error!(
                    table = rollup.table,
                    topic = %scope.topic,
                    partition = scope.partition,
                    keys = excess,
                    "a rollup holds more than priced_events for these keys; left alone"
                );
            }
            report.keys_in_excess += excess;
        }
        Ok(report)
    }

    /// Rollups whose totals differ from `priced_events`, per Kafka topic
    /// partition, for `occurred_at` in `[from, until)` (seconds; whole UTC
    /// days, so that every rollup's time keys fall inside or outside).
    pub async fn check_rollups(&self, from: u32, until: u32) -> Result<Vec<RollupMismatch>, SinkError> {
        let db = self.database();
        let mut mismatches = Vec::new();
        for rollup in ROLLUPS {
            let (time_column, time_expr) = rollup.time_key();
            let at = |seconds: u32| time_expr.replace("occurred_at", &format!("toDateTime({seconds}, 'UTC')"));
            let range = |time: &str| format!("{time} >= {} AND {time} <= {}", at(from), at(until - 1));
            let totals = |table: &str, events: &str, time: &str| {
                format!(
                    "SELECT kafka_topic, kafka_partition, concat(toString({events}), '/', toString(sum(cost))) \
                     FROM {db}.{table} WHERE {} GROUP BY kafka_topic, kafka_partition",
                    range(time)
                )
            };
            let read = |rows: Vec<Vec<String>>| -> std::collections::BTreeMap<(String, String), String> {
                rows.into_iter()
                    .filter(|r| r.len() == 3)
                    .map(|r| ((r[0].clone(), r[1].clone()), r[2].clone()))
                    .collect()
            };
            let expected = read(self.query_tsv(&totals("priced_events", "count()", time_expr)).await?);
            let found = read(self.query_tsv(&totals(rollup.table, "sum(events)", time_column)).await?);
            let sources: std::collections::BTreeSet<&(String, String)> = expected.keys().chain(found.keys()).collect();
            for key in sources {
                let (e, f) = (expected.get(key), found.get(key));
                if e != f {
                    mismatches.push(RollupMismatch {
                        table: rollup.table,
                        topic: key.0.clone(),
                        partition: key
                            .1
                            .parse()
                            .map_err(|e| SinkError::Unexpected(format!("partition {:?}: {e}", key.1)))?,
                        expected: e.cloned().unwrap_or_else(|| "0/0".into()),
                        found: f.cloned().unwrap_or_else(|| "0/0".into()),
                    });
                }
            }
        }
        Ok(mismatches)
    }

    /// Adds to every rollup what it lacks for one topic partition's rows
    /// with `occurred_at` in `[from, until)` (whole UTC days). Only safe
    /// while nothing writes that partition's rows (pipelines stopped, or a
    /// month no late usage reaches).
    pub async fn repair_rollups_between(
        &self,
        topic: &str,
        partition: i32,
        from: u32,
        until: u32,
    ) -> Result<RepairReport, SinkError> {
        let scope = RepairScope { topic: topic.to_owned(), partition, accounts: None, from, until: until - 1 };
        self.repair_scope(&scope, &format!("usage-rollups-check:{}:{topic}:{partition}:", self.database())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::MIGRATIONS;

    fn normalized(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn the_latest_migration_of_each_rollup_creates_the_view_and_rebuilds_with_the_same_query() {
        let (_, _, sql) = MIGRATIONS.iter().rev().find(|m| m.2.contains("cost_by_project_day_mv")).unwrap();
        let sql = normalized(&crate::migrations::statements(sql, "db").join(";\n"));
        for rollup in ROLLUPS {
            let select = rollup.view_select("db", "priced_events");
            let view = rollup.create_view("db", &format!("{}_mv", rollup.table), rollup.table, "priced_events");
            assert!(sql.contains(&normalized(&view)), "{} view:\n{view}", rollup.table);
            let rebuild = format!("INSERT INTO db.{} ({}) {select}", rollup.table, rollup.columns().join(", "));
            assert!(sql.contains(&normalized(&rebuild)), "{} rebuild:\n{rebuild}", rollup.table);
            let order_by = format!("MODIFY ORDER BY ({})", rollup.key_columns());
            assert!(sql.contains(&order_by), "{} key:\n{order_by}", rollup.table);
        }
    }

    #[test]
    fn repair_scopes_the_source_and_the_rollup_alike() {
        let scope = RepairScope {
            topic: "usage.raw".into(),
            partition: 3,
            accounts: Some(vec!["a'1".into(), "b".into()]),
            from: 1_767_225_599,
            until: 1_767_225_600,
        };
        let sql = ROLLUPS[0].repair_sql("db", &scope);
        assert!(sql.contains("toStartOfHour(occurred_at) >= toStartOfHour(toDateTime(1767225599, 'UTC'))"), "{sql}");
        assert!(sql.contains("hour <= toStartOfHour(toDateTime(1767225600, 'UTC'))"), "{sql}");
        assert!(sql.contains("account_id IN ('a\\'1', 'b')"), "{sql}");
        assert_eq!(sql.matches("kafka_topic = 'usage.raw' AND kafka_partition = 3").count(), 2, "{sql}");
    }
}
