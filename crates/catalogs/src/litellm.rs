//! LiteLLM's model price map → a rate-card version.

use crate::output::VersionOut;
use crate::{ImportError, ImportOptions, ImportReport};

pub fn import(_json: &str, _options: &ImportOptions) -> Result<(VersionOut, ImportReport), ImportError> {
    Err(ImportError::Invalid("the LiteLLM importer is not written yet".into()))
}
