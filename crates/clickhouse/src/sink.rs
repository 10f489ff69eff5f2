//! Talking to ClickHouse: migrations, inserts, read-backs.

use crate::migrations::{added_column, statements, MIGRATIONS};
use crate::row::{DeadLetterRow, LedgerEntryRow, PricedRow, PRICED_COLUMNS};
use clickhouse::Client;
use std::time::Duration;

#[derive(Clone)]
pub struct ClickHouseSettings {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Upper bound on one INSERT, sending and waiting for the answer.
    pub insert_timeout: Duration,
    /// LZ4 on INSERTs: less to send over a network, more CPU on both
    /// ends (a loss when ClickHouse runs on the same host).
    pub compress_inserts: bool,
    /// PEM certificates trusted for `https://` URLs besides the Mozilla
    /// roots (a private CA, a self-signed server).
    pub ca_file: Option<std::path::PathBuf>,
}

/// The password never shows, whoever prints the settings.
impl std::fmt::Debug for ClickHouseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSettings")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("insert_timeout", &self.insert_timeout)
            .field("compress_inserts", &self.compress_inserts)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "usage".into(),
            user: None,
            password: None,
            insert_timeout: Duration::from_secs(60),
            compress_inserts: true,
            ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("database name {0:?} must be letters, digits and underscores")]
    BadDatabaseName(String),
    #[error("ClickHouse: {context}: {source}")]
    ClickHouse {
        context: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("ClickHouse: {0}")]
    Unexpected(String),
    #[error("ClickHouse CA file {path}: {detail}")]
    CaFile { path: String, detail: String },
}

impl SinkError {
    /// ClickHouse's error code, when the server answered with one
    /// ("Code: 60. DB::Exception: ...").
    pub fn server_code(&self) -> Option<u32> {
        let Self::ClickHouse { source: clickhouse::error::Error::BadResponse(text), .. } = self else { return None };
        let rest = &text[text.find("Code: ")? + "Code: ".len()..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        rest[..digits].parse().ok()
    }
}

/// ClickHouse error codes that retrying cannot fix: the schema or the
/// permissions are not what this version of the pipeline needs (a
/// migration not run, a table dropped, a user without grants), or what it
/// sends is refused. From ClickHouse's `src/Common/ErrorCodes.cpp`.
const PERMANENT_CODES: &[(u32, &str)] = &[
    (8, "THERE_IS_NO_COLUMN"),
    (10, "NOT_FOUND_COLUMN_IN_BLOCK"),
    (16, "NO_SUCH_COLUMN_IN_TABLE"),
    (20, "NUMBER_OF_COLUMNS_DOESNT_MATCH"),
    (27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED"),
    (33, "CANNOT_READ_ALL_DATA"),
    (46, "UNKNOWN_FUNCTION"),
    (47, "UNKNOWN_IDENTIFIER"),
    (53, "TYPE_MISMATCH"),
    (60, "UNKNOWN_TABLE"),
    (62, "SYNTAX_ERROR"),
    (81, "UNKNOWN_DATABASE"),
    (164, "READONLY"),
    (192, "UNKNOWN_USER"),
    (193, "WRONG_PASSWORD"),
    (194, "REQUIRED_PASSWORD"),
    (195, "IP_ADDRESS_NOT_ALLOWED"),
    (291, "DATABASE_ACCESS_DENIED"),
    (392, "QUERY_IS_PROHIBITED"),
    (497, "ACCESS_DENIED"),
    (516, "AUTHENTICATION_FAILED"),
];

impl usage_runtime::Classify for SinkError {
    /// Permanent: the codes above, a row format the server's table does not
    /// match, an answer not understood, a bad setting. Everything else
    /// (network, timeouts, a server restarting, too many parts, memory
    /// limits) passes with time.
    fn class(&self) -> usage_runtime::ErrorClass {
        use clickhouse::error::Error as E;
        use usage_runtime::ErrorClass::{Permanent, Retriable};
        match self {
            Self::BadDatabaseName(_) | Self::CaFile { .. } | Self::Unexpected(_) => Permanent,
            Self::ClickHouse { source, .. } => match source {
                E::BadResponse(_) => match self.server_code() {
                    Some(code) if PERMANENT_CODES.iter().any(|(c, _)| *c == code) => Permanent,
                    _ => Retriable,
                },
                E::SchemaMismatch(_) | E::InvalidParams(_) | E::Unsupported(_) | E::InvalidColumnsHeader(_) => {
                    Permanent
                }
                _ => Retriable,
            },
        }
    }
}

/// The client of every ClickHouse call: `https://` URLs are checked
/// against the Mozilla roots and the certificates of `ca_file` (PEM).
/// Built here rather than by the `clickhouse` crate, whose TLS features
/// panic when the system has no roots and take no CA file.
fn base_client(ca_file: Option<&std::path::Path>) -> Result<Client, SinkError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let error = |detail: String| SinkError::CaFile { path: path.display().to_string(), detail };
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))? {
            roots.add(cert.map_err(|e| error(e.to_string()))?).map_err(|e| error(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(error("no PEM certificate in it".into()));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Unexpected(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    // As the crate's own client: keepalive, and idle connections dropped
    // before ClickHouse's 3 s keep-alive timeout closes them.
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::with_http_client(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build(connector),
    ))
}

fn ch(context: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> SinkError {
    let context = context.into();
    move |source| SinkError::ClickHouse { context, source }
}

#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    /// The same, bound to the database: `Client::insert` escapes the table
    /// name as one identifier, so it cannot be `db.table`.
    database_client: Client,
    settings: ClickHouseSettings,
}

impl ClickHouseSink {
    pub fn new(settings: ClickHouseSettings) -> Result<Self, SinkError> {
        let db = &settings.database;
        if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(SinkError::BadDatabaseName(db.clone()));
        }
        let compression =
            if settings.compress_inserts { clickhouse::Compression::Lz4 } else { clickhouse::Compression::None };
        let mut client = base_client(settings.ca_file.as_deref())?
            .with_url(&settings.url)
            .with_validation(false)
            .with_compression(compression);
        if let Some(user) = &settings.user {
            client = client.with_user(user);
        }
        if let Some(password) = &settings.password {
            client = client.with_password(password);
        }
        let database_client = client.clone().with_database(db);
        Ok(Self { client, database_client, settings })
    }

    pub fn database(&self) -> &str {
        &self.settings.database
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// `db.table`, for SQL.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.settings.database)
    }

    /// The server's version string, e.g. `18.16.1`.
    pub async fn version(&self) -> Result<String, SinkError> {
        Ok(self.query_tsv("SELECT version()").await?.concat().concat())
    }

    /// Applies the migrations not yet recorded. Safe to run repeatedly:
    /// every statement is idempotent. Safe to run concurrently, except
    /// migration 6, which rebuilds the rollups (stop the pipelines first).
    pub async fn migrate(&self) -> Result<Vec<u32>, SinkError> {
        self.migrate_up_to(u32::MAX).await
    }

    /// The migrations this version knows and the database has not
    /// recorded (all of them for a database not created yet).
    pub async fn pending_migrations(&self) -> Result<Vec<(u32, &'static str)>, SinkError> {
        let applied = match self.applied_migrations().await {
            Ok(applied) => applied,
            Err(e) if matches!(e.server_code(), Some(60 | 81)) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(MIGRATIONS.iter().filter(|(v, _, _)| !applied.contains(v)).map(|(v, name, _)| (*v, *name)).collect())
    }

    /// The versions recorded in `schema_migrations`.
    async fn applied_migrations(&self) -> Result<Vec<u32>, SinkError> {
        let sql = format!("SELECT DISTINCT version FROM {}.schema_migrations", self.settings.database);
        Ok(self.query_tsv(&sql).await?.iter().filter_map(|r| r.first()?.parse().ok()).collect())
    }

    /// Applies the migrations not yet recorded, up to `last` (tests of an
    /// upgrade start from an older schema).
    pub async fn migrate_up_to(&self, last: u32) -> Result<Vec<u32>, SinkError> {
        let db = &self.settings.database;
        let pending = |applied: &[u32]| MIGRATIONS.iter().any(|(v, _, _)| !applied.contains(v) && *v <= last);
        // Up to date: nothing but a SELECT, so that a pipeline whose user may
        // not change the schema (least privilege) starts on a migrated database.
        match self.applied_migrations().await {
            Ok(applied) if !pending(&applied) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e) if matches!(e.server_code(), Some(60 | 81)) => {} // not created yet
            Err(e) => return Err(e),
        }
        self.execute(&format!("CREATE DATABASE IF NOT EXISTS {db}")).await?;
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime) \
             ENGINE = TinyLog"
        ))
        .await?;
        let applied = self.applied_migrations().await?;
        let mut newly = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) || *version > last {
                continue;
            }
            for stmt in statements(sql, db) {
                if let Some((table, column)) = added_column(&stmt) {
                    // 18.16 has no ADD COLUMN IF NOT EXISTS: look first (a
                    // concurrent start may have added it).
                    let sql = format!(
                        "SELECT count() FROM system.columns WHERE database = {} AND table = {} AND (name = {} OR name LIKE {})",
                        crate::quote(db),
                        crate::quote(table),
                        crate::quote(column),
                        crate::quote(&format!("{column}.%"))
                    );
                    if self.query_tsv(&sql).await?.concat().concat() != "0" {
                        continue;
                    }
                }
                self.execute(&stmt).await?;
            }
            self.execute(&format!(
                "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES ({version}, '{name}', now())"
            ))
            .await?;
            tracing::info!(version, name, database = %db, "applied ClickHouse migration");
            newly.push(*version);
        }
        Ok(newly)
    }

    /// Runs a statement that returns nothing.
    pub async fn execute(&self, sql: &str) -> Result<(), SinkError> {
        self.client.query(sql).execute().await.map_err(ch(first_line(sql)))
    }

    /// Runs a query whose answer is one number (`SELECT count() ...`).
    pub(crate) async fn count(&self, sql: &str) -> Result<u64, SinkError> {
        let n = self.query_tsv(sql).await?.concat().concat();
        n.parse().map_err(|e| SinkError::Unexpected(format!("count {n:?}: {e}")))
    }

    /// Runs a query whose answer is read as it arrives, a chunk of rows at
    /// a time (see [`TsvRows`]): memory bounded by the chunk, not the answer.
    pub fn query_tsv_rows(&self, sql: &str) -> Result<TsvRows, SinkError> {
        let cursor = self.client.query(sql).fetch_bytes("TabSeparated").map_err(ch(first_line(sql)))?;
        Ok(TsvRows { cursor, pending: Vec::new(), done: false, context: first_line(sql) })
    }

    /// Runs a query and returns its rows as tab-separated fields (escapes
    /// undone for `\t`, `\n` and `\\`).
    pub async fn query_tsv(&self, sql: &str) -> Result<Vec<Vec<String>>, SinkError> {
        let bytes = self
            .client
            .query(sql)
            .fetch_bytes("TabSeparated")
            .map_err(ch(first_line(sql)))?
            .collect()
            .await
            .map_err(ch(first_line(sql)))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| SinkError::Unexpected(e.to_string()))?;
        Ok(text.lines().map(|line| line.split('\t').map(unescape_tsv).collect()).collect())
    }
}

/// A query's answer, read as it arrives.
pub struct TsvRows {
    cursor: clickhouse::query::BytesCursor,
    /// Bytes received and not yet split into rows (at most one partial row
    /// after a chunk is taken).
    pending: Vec<u8>,
    done: bool,
    context: String,
}

impl TsvRows {
    /// The next rows (at most `rows_max`) as tab-separated fields, escapes
    /// undone; `None` once the answer is read.
    pub async fn next_chunk(&mut self, rows_max: usize) -> Result<Option<Vec<Vec<String>>>, SinkError> {
        let mut rows = Vec::new();
        let mut start = 0;
        loop {
            while rows.len() < rows_max {
                let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') else { break };
                rows.push(split_tsv_line(&self.pending[start..start + end])?);
                start += end + 1;
            }
            if rows.len() >= rows_max || self.done {
                break;
            }
            match self.cursor.next().await.map_err(ch(self.context.clone()))? {
                Some(bytes) => {
                    self.pending.drain(..start);
                    start = 0;
                    self.pending.extend_from_slice(&bytes);
                }
                None => {
                    self.done = true;
                    if start < self.pending.len() {
                        // A last row without its newline.
                        self.pending.push(b'\n');
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok((!rows.is_empty()).then_some(rows))
    }
}

fn split_tsv_line(line: &[u8]) -> Result<Vec<String>, SinkError> {
    let text = std::str::from_utf8(line).map_err(|e| SinkError::Unexpected(e.to_string()))?;
    Ok(text.split('\t').map(unescape_tsv).collect())
}

fn first_line(sql: &str) -> String {
    sql.lines().next().unwrap_or_default().chars().take(120).collect()
}

fn unescape_tsv(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some('\'') => out.push('\''),
                Some(other) => {
                    out.push('\\');
                    out.push(other)
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(account_id, event_id)` → `(kafka_topic, kafka_partition, kafka_offset)`
/// of stored rows.
pub type StoredPositions = std::collections::HashMap<(String, String), (String, i32, i64)>;

/// Bytes of RowBinary sent to ClickHouse at a time: the clickhouse crate's
/// own chunk size for buffered inserts.
const INSERT_CHUNK_BYTES: usize = 256 * 1024;
/// Room past a chunk's size for the row that crosses it (rows take a few
/// hundred bytes): without it, that row regrew and copied the whole chunk.
const INSERT_CHUNK_SLACK: usize = 64 * 1024;

/// How often to look for a previous owner's INSERT still running.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(200);

impl ClickHouseSink {
    /// Inserts one unit of rows with a deterministic `query_id`: ClickHouse
    /// refuses a second query with the id of one still running, so a retry
    /// (or a new owner of the partition) cannot overlap an INSERT in flight.
    pub async fn insert_with_id(&self, rows: &[&PricedRow], query_id: &str) -> Result<(), SinkError> {
        let client = self.database_client.clone().with_setting("query_id", query_id);
        self.insert_priced(&client, "priced_events", rows, &format!("INSERT {query_id}")).await
    }

    /// Rows into `table` (shaped like `priced_events`) in RowBinary, sent
    /// in chunks of about [`INSERT_CHUNK_BYTES`] as they are written;
    /// `what` names the INSERT in errors.
    async fn insert_priced(
        &self,
        client: &Client,
        table: &str,
        rows: &[&PricedRow],
        what: &str,
    ) -> Result<(), SinkError> {
        let timeout = Some(self.settings.insert_timeout);
        // A table of ours, quoted as `Client::insert` quotes one.
        let table_sql = format!("`{}`", table.replace('\\', "\\\\").replace('`', "\\`"));
        let sql = format!("INSERT INTO {table_sql} ({PRICED_COLUMNS}) FORMAT RowBinary");
        let mut insert = client.insert_formatted_with(sql).with_timeouts(timeout, timeout);
        let mut chunk = Vec::with_capacity(INSERT_CHUNK_BYTES + INSERT_CHUNK_SLACK);
        for row in rows {
            row.write_row_binary(&mut chunk);
            if chunk.len() >= INSERT_CHUNK_BYTES {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(INSERT_CHUNK_BYTES + INSERT_CHUNK_SLACK));
                insert.send(full.into()).await.map_err(ch(format!("writing {what}")))?;
            }
        }
        if !chunk.is_empty() {
            insert.send(chunk.into()).await.map_err(ch(format!("writing {what}")))?;
        }
        insert.end().await.map_err(ch(format!("{what} of {} rows", rows.len())))
    }

    /// Runs a statement under a deterministic `query_id` (see
    /// [`Self::wait_for_queries`]).
    pub async fn execute_with_id(&self, sql: &str, query_id: &str) -> Result<(), SinkError> {
        let client = self.client.clone().with_setting("query_id", query_id);
        client.query(sql).execute().await.map_err(ch(format!("{query_id}: {}", first_line(sql))))
    }

    /// Inserts dead letters of one source partition under a deterministic
    /// query id (one part: all or none).
    pub async fn insert_dead_letters(&self, rows: &[DeadLetterRow<'_>], query_id: &str) -> Result<(), SinkError> {
        let client = self.database_client.clone().with_setting("query_id", query_id);
        let timeout = Some(self.settings.insert_timeout);
        let mut insert = client
            .insert::<DeadLetterRow<'_>>("dead_letters")
            .await
            .map_err(ch("starting INSERT into dead_letters"))?
            .with_timeouts(timeout, timeout);
        for row in rows {
            insert.write(row).await.map_err(ch("writing INSERT"))?;
        }
        insert.end().await.map_err(ch(format!("INSERT {query_id} of {} dead letters", rows.len())))
    }

    /// Source offsets within `first..=last` of a partition whose dead
    /// letters are stored: one range of the table's sort key.
    pub async fn stored_dead_letters(
        &self,
        topic: &str,
        partition: i32,
        first: i64,
        last: i64,
    ) -> Result<Vec<i64>, SinkError> {
        let sql = format!(
            "SELECT source_offset FROM {} WHERE source_topic = {} AND source_partition = {partition} \
             AND source_offset >= {first} AND source_offset <= {last}",
            self.table("dead_letters"),
            crate::quote(topic)
        );
        let rows = self.query_tsv(&sql).await?;
        Ok(rows.iter().filter_map(|r| r.first()?.parse().ok()).collect())
    }

    /// Records, per topic partition, the last offset whose rows are stored
    /// and whose rollups are known complete: where the pipeline resumes.
    /// Idempotent (the table keeps the largest offset).
    pub async fn record_offsets(&self, offsets: &[(&str, i32, i64)]) -> Result<(), SinkError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let values = offsets
            .iter()
            .map(|(topic, partition, offset)| format!("({}, {partition}, {offset})", crate::quote(topic)))
            .collect::<Vec<_>>()
            .join(", ");
        self.execute(&format!(
            "INSERT INTO {} (kafka_topic, kafka_partition, last_offset) VALUES {values}",
            self.table("pipeline_offsets")
        ))
        .await
    }

    /// Inserts rows into a table shaped like `priced_events` (staging).
    pub(crate) async fn insert_rows(&self, table: &str, rows: &[&PricedRow]) -> Result<(), SinkError> {
        self.insert_priced(&self.database_client, table, rows, &format!("INSERT into {table}")).await
    }

    /// Inserts ledger entries (at least once: the `balances` view counts an
    /// entry id once).
    pub async fn insert_ledger_entries(&self, rows: &[LedgerEntryRow]) -> Result<(), SinkError> {
        if rows.is_empty() {
            return Ok(());
        }
        let timeout = Some(self.settings.insert_timeout);
        let mut insert = self
            .database_client
            .insert::<LedgerEntryRow>("ledger_entries")
            .await
            .map_err(ch("starting INSERT of ledger entries"))?
            .with_timeouts(timeout, timeout);
        for row in rows {
            insert.write(row).await.map_err(ch("writing INSERT of ledger entries"))?;
        }
        insert.end().await.map_err(ch(format!("INSERT of {} ledger entries", rows.len())))
    }

    /// Waits until no query whose id starts with `prefix` is running, for at
    /// most `timeout`. Returns whether none is.
    pub async fn wait_for_queries(&self, prefix: &str, timeout: Duration) -> Result<bool, SinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let sql = format!(
            "SELECT count() FROM system.processes WHERE substring(query_id, 1, {}) = {}",
            prefix.len(),
            crate::quote(prefix)
        );
        loop {
            let running: u64 = self.query_tsv(&sql).await?.concat().concat().parse().unwrap_or(0);
            if running == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(IN_FLIGHT_POLL).await;
        }
    }

    /// The last offset stored for a topic partition, `None` if none is.
    pub async fn last_stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, SinkError> {
        let sql = format!(
            "SELECT count(), max(last_offset) FROM {} WHERE kafka_topic = {} AND kafka_partition = {partition}",
            self.table("pipeline_offsets"),
            crate::quote(topic)
        );
        let rows = self.query_tsv(&sql).await?;
        match rows.first().map(|r| r.as_slice()) {
            Some([n, max]) if n != "0" => {
                Ok(Some(max.parse().map_err(|e| SinkError::Unexpected(format!("offset {max:?}: {e}")))?))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let settings = ClickHouseSettings { password: Some("hunter2".into()), ..ClickHouseSettings::default() };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2") && printed.contains("<redacted>"), "{printed}");
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;
    use usage_runtime::{Classify, ErrorClass};

    fn answered(text: &str) -> SinkError {
        SinkError::ClickHouse { context: "insert".into(), source: clickhouse::error::Error::BadResponse(text.into()) }
    }

    #[test]
    fn schema_and_permission_errors_are_permanent_the_rest_retriable() {
        let missing =
            answered("Code: 60. DB::Exception: Table usage.pipeline_offsets doesn't exist., e.what() = DB::Exception");
        assert_eq!((missing.server_code(), missing.class()), (Some(60), ErrorClass::Permanent));
        assert_eq!(answered("Code: 516. DB::Exception: default: Authentication failed").class(), ErrorClass::Permanent);
        assert_eq!(
            answered("Code: 164. DB::Exception: Cannot execute query in readonly mode").class(),
            ErrorClass::Permanent
        );
        let parts = answered("Code: 252. DB::Exception: Too many parts (300)");
        assert_eq!((parts.server_code(), parts.class()), (Some(252), ErrorClass::Retriable));
        assert_eq!(answered("502 Bad Gateway").class(), ErrorClass::Retriable);
        let timeout = SinkError::ClickHouse { context: "insert".into(), source: clickhouse::error::Error::TimedOut };
        assert_eq!(timeout.class(), ErrorClass::Retriable);
        assert_eq!(SinkError::Unexpected("3 columns".into()).class(), ErrorClass::Permanent);
    }
}
