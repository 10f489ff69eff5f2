//! Re-pricing stored usage: read the usage of a month, build that month
//! again in staging tables (rows outside the range copied as they are, rows
//! inside re-priced, rollups kept by the same materialized views), then
//! swap the month in with `ALTER TABLE ... REPLACE PARTITION`, table by
//! table. Analysts never see a row twice: a month's rows are replaced, not
//! added to.

use crate::rollups::ROLLUPS;
use crate::row::PricedRow;
use crate::sink::{ClickHouseSink, SinkError};
use usage_model::Amount;

/// One stored row's usage, as needed to price it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredUsage {
    pub event_id: String,
    pub account_id: String,
    pub api_key_id: String,
    pub project_id: String,
    pub provider: String,
    pub model: String,
    pub service_tier: String,
    pub occurred_at: u32,
    pub attributes: Vec<(String, String)>,
    /// Every reported count when stored (`usage.*`); for rows stored before
    /// migration 5, the priced units' counts and the token columns.
    pub counts: Vec<(String, u64)>,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub rate_card_version: u32,
    pub cost: Amount,
}

/// Stored usage, a chunk at a time: a month of any size is re-priced in
/// bounded memory.
pub struct UsageReader {
    rows: crate::sink::TsvRows,
}

impl UsageReader {
    /// The next rows (at most `rows_max`); `None` once all are read.
    pub async fn next_chunk(&mut self, rows_max: usize) -> Result<Option<Vec<StoredUsage>>, SinkError> {
        let Some(rows) = self.rows.next_chunk(rows_max).await? else { return Ok(None) };
        rows.iter().map(|r| stored_usage(r)).collect::<Result<Vec<_>, _>>().map(Some)
    }
}

fn stored_usage(r: &[String]) -> Result<StoredUsage, SinkError> {
    if r.len() != 23 {
        return Err(SinkError::Unexpected(format!("read_usage: {} columns", r.len())));
    }
    let strings = |i: usize| parse_hex_list(&r[i]);
    let numbers = |i: usize| -> Result<Vec<u64>, SinkError> {
        split_list(&r[i])
            .iter()
            .map(|q| q.parse().map_err(|e| SinkError::Unexpected(format!("quantity {q:?}: {e}"))))
            .collect()
    };
    let num = |i: usize| -> Result<i64, SinkError> {
        r[i].parse().map_err(|e| SinkError::Unexpected(format!("column {i} {:?}: {e}", r[i])))
    };
    let mut counts: Vec<(String, u64)> = strings(10)?.into_iter().zip(numbers(11)?).collect();
    if counts.is_empty() {
        // Stored before migration 5: what the row itself shows.
        counts = strings(12)?.into_iter().zip(numbers(13)?).collect();
        for (i, unit) in
            [(14, "input_tokens"), (15, "cache_read_tokens"), (16, "cache_write_tokens"), (17, "output_tokens")]
        {
            let q = num(i)? as u64;
            if q > 0 && !counts.iter().any(|(u, _)| u == unit) {
                counts.push((unit.to_owned(), q));
            }
        }
    }
    Ok(StoredUsage {
        event_id: r[0].clone(),
        account_id: r[1].clone(),
        api_key_id: r[2].clone(),
        project_id: r[3].clone(),
        provider: r[4].clone(),
        model: r[5].clone(),
        service_tier: r[6].clone(),
        occurred_at: num(7)? as u32,
        attributes: strings(8)?.into_iter().zip(strings(9)?).collect(),
        counts,
        kafka_topic: r[18].clone(),
        kafka_partition: num(19)? as i32,
        kafka_offset: num(20)?,
        rate_card_version: num(21)? as u32,
        cost: r[22].parse().map_err(|e| SinkError::Unexpected(format!("cost {:?}: {e}", r[22])))?,
    })
}

/// Rows per staging INSERT, and per chunk that `backfill` reads, prices
/// and inserts (its memory bound: a few hundred bytes a row).
pub const STAGING_INSERT_ROWS_MAX: usize = 20_000;

impl ClickHouseSink {
    /// Rows of `priced_events` in `month` (`YYYYMM`).
    pub async fn count_month(&self, month: u32) -> Result<u64, SinkError> {
        let sql = format!("SELECT count() FROM {} WHERE toYYYYMM(occurred_at) = {month}", self.table("priced_events"));
        self.count(&sql).await
    }

    /// The usage stored in `month` with `from <= occurred_at < until`
    /// (seconds since the epoch), read as it arrives (see [`UsageReader`]).
    pub fn read_usage(&self, month: u32, from: u32, until: u32) -> Result<UsageReader, SinkError> {
        let sql = format!(
            "SELECT event_id, account_id, api_key_id, project_id, provider, model, service_tier, toUInt32(occurred_at), \
             {}, {}, {}, {}, {}, {}, \
             input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, \
             kafka_topic, kafka_partition, kafka_offset, rate_card_version, toString(cost) \
             FROM {} WHERE toYYYYMM(occurred_at) = {month} AND occurred_at >= toDateTime({from}) \
             AND occurred_at < toDateTime({until})",
            hex_list("attributes.key"),
            hex_list("attributes.value"),
            hex_list("usage.unit"),
            number_list("usage.quantity"),
            hex_list("lines.unit"),
            number_list("lines.quantity"),
            self.table("priced_events")
        );
        Ok(UsageReader { rows: self.query_tsv_rows(&sql)? })
    }

    /// Staging copies of `priced_events` and every rollup, named
    /// `<table>_<suffix>`, with the rollups' materialized views on the
    /// staging rows. Replaces leftovers of an interrupted run.
    pub async fn create_staging(&self, suffix: &str) -> Result<(), SinkError> {
        self.drop_staging(suffix).await?;
        let db = self.database();
        self.execute(&format!("CREATE TABLE {db}.priced_events_{suffix} AS {db}.priced_events")).await?;
        for rollup in ROLLUPS {
            let table = rollup.table;
            self.execute(&format!("CREATE TABLE {db}.{table}_{suffix} AS {db}.{table}")).await?;
            let view = rollup.create_view(
                db,
                &format!("{table}_mv_{suffix}"),
                &format!("{table}_{suffix}"),
                &format!("priced_events_{suffix}"),
            );
            self.execute(&view).await?;
        }
        Ok(())
    }

    pub async fn drop_staging(&self, suffix: &str) -> Result<(), SinkError> {
        let db = self.database();
        for rollup in ROLLUPS.iter().map(|r| r.table) {
            self.execute(&format!("DROP TABLE IF EXISTS {db}.{rollup}_mv_{suffix}")).await?;
            self.execute(&format!("DROP TABLE IF EXISTS {db}.{rollup}_{suffix}")).await?;
        }
        self.execute(&format!("DROP TABLE IF EXISTS {db}.priced_events_{suffix}")).await
    }

    /// Copies into staging, unchanged, the month's rows outside the range
    /// and the listed rows inside it (those that cannot be priced again).
    pub async fn copy_unchanged(
        &self,
        suffix: &str,
        month: u32,
        from: u32,
        until: u32,
        keep: &[(String, String)],
    ) -> Result<(), SinkError> {
        let db = self.database();
        self.execute(&format!(
            "INSERT INTO {db}.priced_events_{suffix} SELECT * FROM {db}.priced_events WHERE toYYYYMM(occurred_at) = {month} \
             AND NOT (occurred_at >= toDateTime({from}) AND occurred_at < toDateTime({until}))"
        ))
        .await?;
        for chunk in keep.chunks(1_000) {
            let list = chunk
                .iter()
                .map(|(a, e)| format!("({}, {})", crate::quote(a), crate::quote(e)))
                .collect::<Vec<_>>()
                .join(",");
            self.execute(&format!(
                "INSERT INTO {db}.priced_events_{suffix} SELECT * FROM {db}.priced_events WHERE toYYYYMM(occurred_at) = {month} \
                 AND occurred_at >= toDateTime({from}) AND occurred_at < toDateTime({until}) \
                 AND (account_id, event_id) IN ({list})"
            ))
            .await?;
        }
        Ok(())
    }

    /// Inserts re-priced rows into the staging copy of `priced_events`.
    pub async fn insert_staging(&self, suffix: &str, rows: &[PricedRow]) -> Result<(), SinkError> {
        let table = format!("priced_events_{suffix}");
        for chunk in rows.chunks(STAGING_INSERT_ROWS_MAX) {
            let refs: Vec<&PricedRow> = chunk.iter().collect();
            self.insert_rows(&table, &refs).await?;
        }
        Ok(())
    }

    /// Swaps the staged month into `priced_events` and every rollup.
    pub async fn replace_month(&self, suffix: &str, month: u32) -> Result<(), SinkError> {
        let db = self.database();
        for table in std::iter::once("priced_events").chain(ROLLUPS.iter().map(|r| r.table)) {
            self.execute(&format!("ALTER TABLE {db}.{table} REPLACE PARTITION {month} FROM {db}.{table}_{suffix}"))
                .await?;
        }
        Ok(())
    }

    /// Rows of the staged month.
    pub async fn staged_count(&self, suffix: &str, month: u32) -> Result<u64, SinkError> {
        let sql = format!(
            "SELECT count() FROM {} WHERE toYYYYMM(occurred_at) = {month}",
            self.table(&format!("priced_events_{suffix}"))
        );
        self.count(&sql).await
    }

    /// Sum of `cost` over the month's rows, exact.
    pub async fn month_cost(&self, table_suffix: Option<&str>, month: u32) -> Result<Amount, SinkError> {
        let table = match table_suffix {
            Some(s) => format!("priced_events_{s}"),
            None => "priced_events".to_owned(),
        };
        let sql =
            format!("SELECT toString(sum(cost)) FROM {} WHERE toYYYYMM(occurred_at) = {month}", self.table(&table));
        let text = self.query_tsv(&sql).await?.concat().concat();
        text.parse().map_err(|e| SinkError::Unexpected(format!("sum {text:?}: {e}")))
    }
}

/// An array column as comma-separated hex strings: no escaping to undo.
fn hex_list(column: &str) -> String {
    format!("arrayStringConcat(arrayMap(x -> hex(x), {column}), ',')")
}

fn number_list(column: &str) -> String {
    format!("arrayStringConcat(arrayMap(x -> toString(x), {column}), ',')")
}

fn split_list(text: &str) -> Vec<String> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split(',').map(str::to_owned).collect()
    }
}

fn parse_hex_list(text: &str) -> Result<Vec<String>, SinkError> {
    let bad = || SinkError::Unexpected(format!("hex list {text:?}"));
    split_list(text)
        .iter()
        .map(|h| {
            let bytes = (0..h.len())
                .step_by(2)
                .map(|i| h.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()).ok_or_else(bad))
                .collect::<Result<Vec<u8>, _>>()?;
            String::from_utf8(bytes).map_err(|_| bad())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lists_parse() {
        assert_eq!(parse_hex_list("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_hex_list("612C623D276327,7A").unwrap(), vec!["a,b='c'", "z"]);
        assert!(parse_hex_list("6").is_err());
        assert_eq!(split_list("1,22"), vec!["1", "22"]);
    }
}
