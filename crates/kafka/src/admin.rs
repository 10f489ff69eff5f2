//! Creating the topics the pipeline needs.

use crate::settings::without_secrets;
use crate::settings::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::Duration;

/// A topic and how to create it when missing. Existing topics are left as
/// they are (their partition count is an operator's decision).
#[derive(Clone, Debug)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Topic configs, e.g. `("cleanup.policy", "compact")`.
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self { name: name.into(), partitions, replication: 1, config: Vec::new() }
    }
}

/// Creates the topics that do not exist yet. Returns the names it created.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = settings.client_config("admin").create().map_err(without_secrets)?;
    let metadata = match admin.inner().fetch_metadata(None, timeout) {
        Ok(metadata) => metadata,
        Err(e) => {
            report_broker_trouble(settings);
            return Err(e);
        }
    };
    let missing: Vec<&TopicSpec> = topics
        .iter()
        .filter(|t| !metadata.topics().iter().any(|m| m.name() == t.name && !m.partitions().is_empty()))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|t| {
            t.config
                .iter()
                .fold(NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication)), |nt, (k, v)| {
                    nt.set(k, v)
                })
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, "created topic");
                created.push(name);
            }
            // Another instance created it in the meantime: fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = %name, error = %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(created)
}

/// The configs of `topics` as the broker reports them (`cleanup.policy`,
/// `max.message.bytes`...), a map per topic, in order; `Err` per topic the
/// broker would not describe.
pub async fn topic_configs(
    settings: &KafkaSettings,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<Result<std::collections::BTreeMap<String, String>, String>>, KafkaError> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> = settings.client_config("admin").create().map_err(without_secrets)?;
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let specifiers: Vec<ResourceSpecifier> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let results = admin.describe_configs(&specifiers, &options).await?;
    Ok(results
        .into_iter()
        .map(|r| match r {
            Ok(resource) => Ok(resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect()),
            Err(code) => Err(code.to_string()),
        })
        .collect())
}

/// What librdkafka says when it cannot use the brokers: authentication
/// refused, a TLS handshake that failed, a name that does not resolve. An
/// admin call only answers "broker transport failure" (its client's events
/// are never polled), so on such a failure a short-lived client that is
/// polled tells why, as an error in the log. Only on a failure path.
pub fn report_broker_trouble(settings: &KafkaSettings) {
    use rdkafka::client::ClientContext;
    use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Listener {
        said: Mutex<Vec<String>>,
    }
    impl ClientContext for Listener {
        fn log(&self, level: rdkafka::config::RDKafkaLogLevel, _facility: &str, message: &str) {
            use rdkafka::config::RDKafkaLogLevel as L;
            if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) {
                self.said.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(message.to_owned());
            }
        }
        fn error(&self, error: KafkaError, reason: &str) {
            self.said.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(format!("{error}: {reason}"));
        }
    }
    impl ProducerContext for Listener {
        type DeliveryOpaque = ();
        fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
    }

    let Ok(probe) =
        settings.client_config("diagnosis").create_with_context::<_, BaseProducer<Listener>>(Listener::default())
    else {
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        probe.poll(Duration::from_millis(100));
        let said = probe.context().said.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(first) = said.first() {
            tracing::error!(brokers = %settings.brokers, "cannot use the Kafka brokers: {first}");
            return;
        }
    }
    let _ = probe.flush(Duration::ZERO);
}
