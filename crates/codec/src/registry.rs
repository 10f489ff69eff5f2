//! Schema ids of the Confluent wire format, resolved through a
//! Confluent-compatible Schema Registry when one is configured, else through
//! ids pinned to the schemas shipped in `schemas/avro/`.

use apache_avro::Schema;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long one registry lookup may take. Lookups happen once per schema id
/// (answers are cached for the life of the process: ids are immutable).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Distinct schema ids cached. Real topics use a handful.
const CACHED_SCHEMAS_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SchemaResolverError {
    /// The id does not exist: the message is bad, dead-letter it.
    #[error("{0}")]
    UnknownId(String),
    /// The registry could not be asked: retry later, do not dead-letter.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

pub struct SchemaResolver {
    registry_url: Option<String>,
    cache: Mutex<HashMap<u32, Writer>>,
}

/// A writer schema, and whether it is the shipped one (same Parsing
/// Canonical Form: its datums are read by the specialised decoder).
#[derive(Clone)]
pub struct Writer {
    pub schema: Arc<Schema>,
    pub is_shipped: bool,
    /// Why its datums can never be usage events (checked once per id).
    pub incompatible: Option<Arc<str>>,
}

impl Writer {
    fn of(schema: Arc<Schema>) -> Self {
        let is_shipped = schema.canonical_form() == crate::usage_event_schema().canonical_form();
        let incompatible = if is_shipped { None } else { crate::avro::writer_incompatibility(&schema).map(Arc::from) };
        Self { schema, is_shipped, incompatible }
    }
}

impl SchemaResolver {
    /// Only the shipped schemas, by their pinned ids.
    pub fn pinned() -> Self {
        Self { registry_url: None, cache: Mutex::new(HashMap::new()) }
    }

    /// Ids resolved from these schemas only (besides the pinned one): for
    /// tests, and for deployments that pin writer schemas without a registry.
    pub fn from_schemas(schemas: impl IntoIterator<Item = (u32, Schema)>) -> Self {
        let resolver = Self::pinned();
        for (id, schema) in schemas {
            let writer = Writer::of(Arc::new(schema));
            resolver.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(id, writer);
        }
        resolver
    }

    /// Ids resolved by the registry at `url` (e.g. `http://registry:8081`).
    pub fn registry(url: impl Into<String>) -> Self {
        Self { registry_url: Some(url.into().trim_end_matches('/').to_owned()), cache: Mutex::new(HashMap::new()) }
    }

    pub fn resolve(&self, id: u32) -> Result<Writer, SchemaResolverError> {
        if let Some(writer) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(writer.clone());
        }
        let schema = Arc::new(match &self.registry_url {
            None if id == crate::PINNED_SCHEMA_ID => crate::usage_event_schema().clone(),
            None => {
                return Err(SchemaResolverError::UnknownId(format!(
                    "schema id {id} is not pinned (pinned: {}); set SCHEMA_REGISTRY_URL to resolve ids",
                    crate::PINNED_SCHEMA_ID
                )))
            }
            Some(url) => fetch(url, id)?,
        });
        let writer = Writer::of(schema);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHED_SCHEMAS_MAX {
            cache.clear();
        }
        cache.insert(id, writer.clone());
        Ok(writer)
    }
}

fn fetch(url: &str, id: u32) -> Result<Schema, SchemaResolverError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        schema: String,
        #[serde(rename = "schemaType")]
        schema_type: Option<String>,
    }
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(REGISTRY_TIMEOUT)).http_status_as_error(false).build().into();
    let address = format!("{url}/schemas/ids/{id}");
    let mut response =
        agent.get(&address).call().map_err(|e| SchemaResolverError::Unavailable(format!("{address}: {e}")))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| SchemaResolverError::Unavailable(format!("{address}: {e}")))?;
    match status {
        200 => {}
        404 => return Err(SchemaResolverError::UnknownId(format!("schema id {id} is not in the registry"))),
        _ => return Err(SchemaResolverError::Unavailable(format!("{address}: HTTP {status}: {body}"))),
    }
    let answer: Answer = serde_json::from_str(&body)
        .map_err(|e| SchemaResolverError::Unavailable(format!("{address}: unexpected answer: {e}")))?;
    if answer.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
        return Err(SchemaResolverError::UnknownId(format!("schema id {id} is not an Avro schema")));
    }
    Schema::parse_str(&answer.schema)
        .map_err(|e| SchemaResolverError::UnknownId(format!("schema id {id} does not parse: {e}")))
}
