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
    let metadata = admin.inner().fetch_metadata(None, timeout)?;
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
