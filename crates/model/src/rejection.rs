//! Why an event was refused. The reason code is stable: it is written in
//! dead-letter headers and counted in summaries and metrics.

use std::fmt;

/// The stable, machine-readable class of a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not JSON, not Avro, or cut short.
    MalformedPayload,
    /// An Avro schema id that neither the registry nor the pinned schemas know.
    UnknownSchema,
    /// A writer schema (from the registry) that cannot be read as a usage
    /// event: a required field absent, or of a type no usage event has.
    IncompatibleSchema,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an invalid value.
    InvalidField,
    /// A usage unit the registry does not know.
    UnknownUnit,
    /// A negative or implausibly large count.
    CountOutOfRange,
    /// `occurred_at` unparsable, too far in the future or the past.
    TimestampOutOfRange,
    /// No rate card version in force at `occurred_at`.
    NoRateCardVersion,
    /// The rate card has no price for this provider and model.
    UnknownModel,
    /// The usage reports parts larger than their whole (cache reads above input).
    InconsistentUsage,
    /// Exact arithmetic would overflow.
    CostOverflow,
}

impl RejectReason {
    pub const ALL: [RejectReason; 12] = [
        Self::MalformedPayload,
        Self::UnknownSchema,
        Self::IncompatibleSchema,
        Self::MissingField,
        Self::InvalidField,
        Self::UnknownUnit,
        Self::CountOutOfRange,
        Self::TimestampOutOfRange,
        Self::NoRateCardVersion,
        Self::UnknownModel,
        Self::InconsistentUsage,
        Self::CostOverflow,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::MalformedPayload => "malformed_payload",
            Self::UnknownSchema => "unknown_schema",
            Self::IncompatibleSchema => "incompatible_schema",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::UnknownUnit => "unknown_unit",
            Self::CountOutOfRange => "count_out_of_range",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::NoRateCardVersion => "no_rate_card_version",
            Self::UnknownModel => "unknown_model",
            Self::InconsistentUsage => "inconsistent_usage",
            Self::CostOverflow => "cost_overflow",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether the event could be priced later without being changed: the
    /// rate card may gain the model or a version. Such events can be replayed
    /// from the dead-letter topic once prices exist.
    pub fn is_repriceable(self) -> bool {
        matches!(self, Self::NoRateCardVersion | Self::UnknownModel)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused event's reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_code(r.code()), Some(r));
        }
    }
}
