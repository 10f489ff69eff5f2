//! Read-backs of priced rows for summaries and checks.

use crate::sink::{ClickHouseSink, SinkError};

/// Rows delivered from a set of Kafka offset ranges: `(topic, partition,
/// first offset, one past the last)`.
pub struct OffsetRanges<'a>(pub &'a [(String, i32, i64, i64)]);

impl OffsetRanges<'_> {
    /// A SQL condition selecting the rows read from these ranges.
    pub fn sql_condition(&self) -> String {
        if self.0.is_empty() {
            return "0".to_owned();
        }
        self.0
            .iter()
            .map(|(topic, partition, first, next)| {
                format!(
                    "(kafka_topic = {} AND kafka_partition = {partition} AND kafka_offset >= {first} AND kafka_offset < {next})",
                    quote(topic)
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// A SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `count()` and `sum(cost)` (as ClickHouse prints it, exact).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub rows: u64,
    pub cost: String,
}

/// One line of a "cost by ..." breakdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostBy {
    pub key: String,
    pub currency: String,
    pub rows: u64,
    pub cost: String,
}

impl ClickHouseSink {
    pub async fn totals(&self, condition: &str) -> Result<Totals, SinkError> {
        let sql = format!("SELECT count(), toString(sum(cost)) FROM {} WHERE {condition}", self.table("priced_events"));
        let rows = self.query_tsv(&sql).await?;
        let row = rows.first().ok_or_else(|| SinkError::Unexpected("no answer to a count".into()))?;
        Ok(Totals {
            rows: row[0].parse().map_err(|e| SinkError::Unexpected(format!("count {:?}: {e}", row[0])))?,
            cost: row[1].clone(),
        })
    }

    /// Cost by `column` (a column name of `priced_events`) and currency,
    /// largest first.
    pub async fn cost_by(&self, column: &str, condition: &str, limit: usize) -> Result<Vec<CostBy>, SinkError> {
        if !column.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(SinkError::Unexpected(format!("bad column name {column:?}")));
        }
        let sql = format!(
            "SELECT {column}, currency, count(), toString(sum(cost)) AS total FROM {} WHERE {condition} \
             GROUP BY {column}, currency ORDER BY sum(cost) DESC, {column} LIMIT {limit}",
            self.table("priced_events")
        );
        self.query_tsv(&sql)
            .await?
            .into_iter()
            .map(|r| {
                Ok(CostBy {
                    key: r[0].clone(),
                    currency: r[1].clone(),
                    rows: r[2].parse().map_err(|e| SinkError::Unexpected(format!("count {:?}: {e}", r[2])))?,
                    cost: r[3].clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_quote_topics() {
        let ranges = [("a'b".to_owned(), 1, 10, 20)];
        assert_eq!(
            OffsetRanges(&ranges).sql_condition(),
            "(kafka_topic = 'a\\'b' AND kafka_partition = 1 AND kafka_offset >= 10 AND kafka_offset < 20)"
        );
        assert_eq!(OffsetRanges(&[]).sql_condition(), "0");
    }
}
