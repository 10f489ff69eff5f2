//! Schema migrations, shipped in `schemas/clickhouse/` and embedded here.
//! Each is a list of statements separated by `;` at the end of a line;
//! `{database}` stands for the configured database.

/// `(version, name, sql)`, in the order they apply. Never edit a released
/// migration: add a new one.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "priced_events", include_str!("../../../schemas/clickhouse/0001_priced_events.sql")),
    (2, "rollups", include_str!("../../../schemas/clickhouse/0002_rollups.sql")),
    (3, "offsets", include_str!("../../../schemas/clickhouse/0003_offsets.sql")),
    (4, "ledger", include_str!("../../../schemas/clickhouse/0004_ledger.sql")),
    (5, "usage_counts", include_str!("../../../schemas/clickhouse/0005_usage_counts.sql")),
    (6, "rollups_by_source", include_str!("../../../schemas/clickhouse/0006_rollups_by_source.sql")),
    (7, "dead_letters", include_str!("../../../schemas/clickhouse/0007_dead_letters.sql")),
];

/// The statements of a migration, with the database filled in.
pub(crate) fn statements(sql: &str, database: &str) -> Vec<String> {
    sql.split(";\n")
        .map(|s| s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n"))
        .map(|s| s.trim().trim_end_matches(';').to_owned())
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{database}", database))
        .collect()
}

/// `(table, column)` of `ALTER TABLE db.table ADD COLUMN column ...`: the
/// runner applies it only when the column is missing.
pub(crate) fn added_column(stmt: &str) -> Option<(&str, &str)> {
    let words: Vec<&str> = stmt.split_whitespace().collect();
    match words.as_slice() {
        ["ALTER", "TABLE", target, "ADD", "COLUMN", column, ..] => Some((target.split_once('.')?.1, column)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_statements_split() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        let stmts = statements(MIGRATIONS[0].2, "usage");
        assert_eq!(stmts.len(), 1);
        assert_eq!(statements(MIGRATIONS[1].2, "usage").len(), 2 * crate::rollups::ROLLUPS.len());
        assert!(stmts[0].starts_with("CREATE TABLE IF NOT EXISTS usage.priced_events"));
        assert!(!stmts[0].contains("--"));
    }
}
