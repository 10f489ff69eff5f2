//! Rate cards while the stream runs: versions published to a compacted
//! topic reach every pipeline instance, which picks them up without a
//! restart.
//!
//! The topic holds one message per version, keyed `<rate card>/<version>`
//! (or `account:<account>/<version>` for a contract), whose value is the
//! version's TOML file. A version is immutable: a
//! message that changes a known version is refused (logged, ignored), and
//! `publish` refuses to send one. [`RateFeed`] reads the whole topic at
//! start (together with local files, if any), then follows it from a
//! thread; each accepted version produces a new [`RateBook`] on a `watch`
//! channel that the pipeline checks between batches.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;
use usage_kafka::{ensure_topics, FollowError, KafkaSettings, Outgoing, Producer, TopicFollower, TopicSpec};
use usage_pricing::{build_book, parse_document, Document, LoadError, RateBook};

/// How long the follower waits for a message before checking for stop.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum RateCardsError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Follow(#[from] FollowError),
    #[error("Kafka: {0}")]
    Kafka(#[from] usage_kafka::KafkaError),
    #[error(transparent)]
    Send(#[from] usage_kafka::SendBatchError),
    #[error(transparent)]
    Producer(#[from] usage_kafka::ProducerError),
    #[error("{0}")]
    Refused(String),
}

/// The compacted topic of rate-card versions.
pub fn rate_cards_topic_spec(topic: &str) -> TopicSpec {
    let mut spec = TopicSpec::new(topic, 1);
    spec.config.push(("cleanup.policy".into(), "compact".into()));
    spec
}

/// Known versions (of rate cards and contracts): key → (file text, parsed
/// document, where it came from).
#[derive(Default)]
struct Versions(BTreeMap<String, (String, Document, PathBuf)>);

impl Versions {
    /// Adds a version; `Ok(false)` if it is already known with the same text.
    fn add(&mut self, origin: PathBuf, text: String) -> Result<bool, RateCardsError> {
        let document = parse_document(&origin, &text)?;
        let key = document.key();
        match self.0.get(&key) {
            Some((known, _, _)) if *known == text => Ok(false),
            Some((_, _, known_origin)) => Err(RateCardsError::Refused(format!(
                "{key} from {} differs from the one from {}: published versions are immutable; publish a new version",
                origin.display(),
                known_origin.display()
            ))),
            None => {
                self.0.insert(key, (text, document, origin));
                Ok(true)
            }
        }
    }

    fn book(&self, default_card: Option<&str>, source: &Path) -> Result<RateBook, RateCardsError> {
        let versions = self.0.values().map(|(_, d, origin)| (origin.clone(), d.clone())).collect();
        Ok(build_book(source, versions, default_card)?)
    }
}

fn topic_origin(topic: &str, key: &Option<Vec<u8>>) -> PathBuf {
    PathBuf::from(format!("kafka:{topic}/{}", key.as_deref().map(String::from_utf8_lossy).unwrap_or_default()))
}

/// Reads `*.toml` files of `dir` with their text.
pub fn read_dir_texts(dir: &Path) -> Result<Vec<(PathBuf, String)>, RateCardsError> {
    let mut out = Vec::new();
    for (path, _) in usage_pricing::read_dir_documents(dir)? {
        let text =
            std::fs::read_to_string(&path).map_err(|e| LoadError { file: path.clone(), message: e.to_string() })?;
        out.push((path, text));
    }
    Ok(out)
}

/// The live rate book: local files plus the topic, kept up to date.
pub struct RateFeed {
    book: watch::Receiver<Arc<RateBook>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RateFeed {
    /// Reads local versions and the whole topic, builds the book, then
    /// follows the topic in a thread.
    pub fn start(
        kafka: &KafkaSettings,
        topic: &str,
        local: Vec<(PathBuf, String)>,
        default_card: Option<String>,
        timeout: Duration,
    ) -> Result<Self, RateCardsError> {
        let mut versions = Versions::default();
        for (path, text) in local {
            versions.add(path, text)?;
        }
        let follower = TopicFollower::new(kafka, topic, timeout)?;
        for (key, value) in follower.catch_up(timeout)? {
            let Some(value) = value else { continue };
            let origin = topic_origin(topic, &key);
            match String::from_utf8(value).map_err(|e| RateCardsError::Refused(e.to_string())) {
                Ok(text) => {
                    versions.add(origin, text)?;
                }
                Err(e) => return Err(e),
            }
        }
        let source = PathBuf::from(format!("kafka:{topic}"));
        let book = Arc::new(versions.book(default_card.as_deref(), &source)?);
        log_book("rate cards loaded", &book);
        let (tx, rx) = watch::channel(book);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let topic = topic.to_owned();
        let thread = std::thread::Builder::new()
            .name("rate-card-feed".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    let Some((key, Some(value))) = follower.next(FOLLOW_POLL) else { continue };
                    let origin = topic_origin(&topic, &key);
                    let text = match String::from_utf8(value) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!(origin = %origin.display(), error = %e, "rate-card message is not UTF-8; ignored");
                            continue;
                        }
                    };
                    match versions.add(origin.clone(), text) {
                        Ok(false) => {}
                        Ok(true) => match versions.book(default_card.as_deref(), &source) {
                            Ok(book) => {
                                let book = Arc::new(book);
                                log_book("rate cards updated", &book);
                                let _ = tx.send(book);
                            }
                            Err(e) => tracing::error!(error = %e, "new rate-card version makes an invalid book; ignored"),
                        },
                        Err(e) => tracing::error!(error = %e, "rate-card version refused"),
                    }
                }
            })
            .expect("spawning a thread");
        Ok(Self { book: rx, stop, thread: Some(thread) })
    }

    /// A receiver of the current book and of every update.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RateBook>> {
        self.book.clone()
    }

    pub fn current(&self) -> Arc<RateBook> {
        Arc::clone(&self.book.borrow())
    }
}

impl Drop for RateFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn log_book(message: &str, book: &RateBook) {
    for card in book.cards().values() {
        let latest = card.versions.last().map(|v| (v.version, v.effective_from));
        tracing::info!(
            rate_card = %card.id,
            versions = card.versions.len(),
            latest_version = latest.map(|l| l.0),
            latest_from = %latest.map(|l| l.1.to_rfc3339()).unwrap_or_default(),
            "{message}"
        );
    }
}

/// What `publish` did with each version.
#[derive(Debug, Default)]
pub struct PublishReport {
    pub published: Vec<String>,
    pub already_published: Vec<String>,
    /// Published although their `effective_from` was already past.
    pub published_late: Vec<String>,
}

/// Publishes every version of `dir` that the topic does not have yet.
/// Refuses, before sending anything: a version that changes a published
/// one; a set that does not make a valid book; a version in force before
/// `now` unless `allow_past` (events already priced would have needed it).
pub async fn publish(
    kafka: &KafkaSettings,
    topic: &str,
    dir: &Path,
    allow_past: bool,
    now: DateTime<Utc>,
    timeout: Duration,
) -> Result<PublishReport, RateCardsError> {
    ensure_topics(kafka, &[rate_cards_topic_spec(topic)], timeout).await?;
    let mut versions = Versions::default();
    let follower = TopicFollower::new(kafka, topic, timeout)?;
    for (key, value) in follower.catch_up(timeout)? {
        if let Some(value) = value {
            versions.add(topic_origin(topic, &key), String::from_utf8_lossy(&value).into_owned())?;
        }
    }
    drop(follower);
    let mut report = PublishReport::default();
    let mut to_send = Vec::new();
    for (path, text) in read_dir_texts(dir)? {
        let parsed = parse_document(&path, &text)?;
        let key = parsed.key();
        if !versions.add(path.clone(), text.clone())? {
            report.already_published.push(key);
            continue;
        }
        if parsed.effective_from() < now {
            if !allow_past {
                return Err(RateCardsError::Refused(format!(
                    "{key} ({}) takes effect at {}, which is past: events since then may already be priced by the \
                     previous version. Publish with --allow-past to do it anyway, then backfill that range.",
                    path.display(),
                    parsed.effective_from().to_rfc3339()
                )));
            }
            tracing::warn!(version = %key, effective_from = %parsed.effective_from(), "publishing a version whose effective_from is past");
            report.published_late.push(key.clone());
        }
        to_send.push((key, text));
    }
    // The whole set must make a valid book (versions of one card in order...).
    let mut cards: Vec<&str> = versions
        .0
        .values()
        .filter_map(|(_, d, _)| match d {
            Document::Card(v) => Some(v.rate_card.as_str()),
            Document::Contract(_) => None,
        })
        .collect();
    cards.dedup();
    versions.book(cards.first().copied(), Path::new(topic))?;
    let producer = Producer::new(kafka, "rate-card-publisher")?;
    producer
        .send_all(
            to_send
                .iter()
                .map(|(key, text)| Outgoing {
                    topic,
                    key: Some(key.as_bytes()),
                    payload: text.as_bytes(),
                    headers: None,
                    partition: None,
                })
                .collect(),
        )
        .await?;
    report.published = to_send.into_iter().map(|(k, _)| k).collect();
    Ok(report)
}
