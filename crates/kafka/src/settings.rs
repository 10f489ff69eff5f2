//! Connection settings shared by every Kafka client of the pipeline.

use rdkafka::ClientConfig;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `host:port,host:port`.
    pub brokers: String,
    /// Prefix of `client.id`, so the broker's logs tell the clients apart.
    pub client_id: String,
    /// Any librdkafka property (`security.protocol`, `sasl.mechanisms`...),
    /// applied last so that it wins.
    pub overrides: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self { brokers: "127.0.0.1:9092".into(), client_id: "usage-pipeline".into(), overrides: BTreeMap::new() }
    }
}

impl KafkaSettings {
    pub(crate) fn client_config(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id))
            // A broker that is down must not hang a command forever.
            .set("socket.timeout.ms", "30000")
            .set("log_level", "4");
        for (k, v) in &self.overrides {
            config.set(k, v);
        }
        config
    }
}
