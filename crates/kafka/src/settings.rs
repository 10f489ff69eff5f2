//! Connection settings shared by every Kafka client of the pipeline.

use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;

#[derive(Clone)]
pub struct KafkaSettings {
    /// `host:port,host:port`.
    pub brokers: String,
    /// Prefix of `client.id`, so the broker's logs tell the clients apart.
    pub client_id: String,
    /// Static group membership (KIP-345: `group.instance.id`) for the group
    /// consumers: an instance restarted with the same id gets its partitions
    /// back at once instead of after the dead member's session timeout. One
    /// per instance, stable across its restarts (a StatefulSet pod's name);
    /// two live instances with one id fence each other.
    pub group_instance_id: Option<String>,
    /// How long the broker may hold a fetch of the group consumers that
    /// found nothing new (`fetch.wait.max.ms`). Apache Kafka answers as soon
    /// as data arrives, so there it only paces an idle consumer's empty
    /// fetches. Some brokers hold every fetch for its whole wait (tansu 0.6
    /// sleeps out the rest of it even after finding data), and then each hop
    /// of the alert path (raw → pipeline → ledger → billing events) takes up
    /// to this long: lower it there for latency, at the price of more empty
    /// fetches when idle. Measured on tansu: a hop's median 143 ms at 100 ms,
    /// 17 ms at 10 ms; an idle consumer cost tansu 5% of a core at 100 ms,
    /// 35% at 10 ms.
    pub fetch_wait_max_ms: u32,
    /// Any librdkafka property (`security.protocol`, `sasl.mechanisms`...),
    /// applied last so that it wins.
    pub overrides: BTreeMap<String, String>,
}

/// See [`KafkaSettings::fetch_wait_max_ms`].
pub const FETCH_WAIT_MAX_MS_DEFAULT: u32 = 100;

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "usage-pipeline".into(),
            group_instance_id: None,
            fetch_wait_max_ms: FETCH_WAIT_MAX_MS_DEFAULT,
            overrides: BTreeMap::new(),
        }
    }
}

/// librdkafka properties that hold secrets (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`...): never printed.
fn is_secret(property: &str) -> bool {
    ["password", "secret", "sasl.jaas.config", "ssl.key.pem", "ssl_key"].iter().any(|s| property.contains(s))
}

/// A client configuration error without the value of a secret property:
/// librdkafka's error repeats the value it refused.
pub(crate) fn without_secrets(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, key, value) if is_secret(&key) && !value.is_empty() => {
            KafkaError::ClientConfig(code, description.replace(&value, "<redacted>"), key, "<redacted>".into())
        }
        other => other,
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let overrides: std::collections::BTreeMap<&str, &str> = self
            .overrides
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("group_instance_id", &self.group_instance_id)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field("overrides", &overrides)
            .finish()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut settings = KafkaSettings::default();
        for (k, v) in [
            ("sasl.password", "hunter2-a"),
            ("ssl.key.password", "hunter2-b"),
            ("sasl.oauthbearer.client.secret", "hunter2-c"),
            ("sasl.username", "alice"),
        ] {
            settings.overrides.insert(k.into(), v.into());
        }
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("alice") && printed.contains("sasl.password"), "{printed}");
    }

    #[test]
    fn a_refused_secret_property_is_named_without_its_value() {
        let mut settings = KafkaSettings::default();
        settings.overrides.insert("sasl.oauthbearer.client.secret".into(), "hunter2-d".into());
        settings.overrides.insert("ssl.key.password".into(), "hunter2-e".into());
        settings.overrides.insert("no.such.secret.property".into(), "hunter2-f".into());
        let error = settings.client_config("test").create::<rdkafka::producer::BaseProducer>().map_err(without_secrets);
        let printed = error.err().expect("a property librdkafka refuses").to_string();
        assert!(!printed.contains("hunter2") && printed.contains("<redacted>"), "{printed}");
    }
}
