//! Which Kafka errors retrying can fix (see [`ErrorClass`]).

use crate::health::{Classify, ErrorClass};
use usage_kafka::{KafkaError, ProducerError, SendBatchError};

impl Classify for KafkaError {
    fn class(&self) -> ErrorClass {
        use rdkafka::types::RDKafkaErrorCode as C;
        match self {
            KafkaError::MessageConsumptionFatal(_) => return ErrorClass::Fatal,
            KafkaError::Transaction(e) if e.is_fatal() => return ErrorClass::Fatal,
            _ => {}
        }
        match self.rdkafka_error_code() {
            // The client is done: librdkafka raises nothing but this error
            // from then on.
            Some(C::Fatal | C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch | C::FencedInstanceId) => {
                ErrorClass::Fatal
            }
            // Fixed by an operator (an ACL, a topic, a limit), then the same
            // client succeeds.
            Some(
                C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::InvalidTopic
                | C::MessageSizeTooLarge
                | C::MessageBatchTooLarge,
            ) => ErrorClass::Permanent,
            _ => ErrorClass::Retriable,
        }
    }
}

impl Classify for ProducerError {
    fn class(&self) -> ErrorClass {
        match self {
            ProducerError::Create(_) => ErrorClass::Permanent,
            ProducerError::NotDelivered { error, .. } => error.class(),
        }
    }
}

impl Classify for SendBatchError {
    /// The worst of its failures.
    fn class(&self) -> ErrorClass {
        let rank = |c: ErrorClass| match c {
            ErrorClass::Retriable => 0,
            ErrorClass::Permanent => 1,
            ErrorClass::Fatal => 2,
        };
        self.failed.iter().map(Classify::class).max_by_key(|c| rank(*c)).unwrap_or(ErrorClass::Retriable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn fenced_and_fatal_clients_stop_authorisation_waits_for_an_operator_the_rest_retries() {
        let sent = |code| ProducerError::NotDelivered {
            index: 0,
            topic: "t".into(),
            error: KafkaError::MessageProduction(code),
        };
        assert_eq!(sent(C::ProducerFenced).class(), ErrorClass::Fatal);
        assert_eq!(sent(C::Fatal).class(), ErrorClass::Fatal);
        assert_eq!(sent(C::TopicAuthorizationFailed).class(), ErrorClass::Permanent);
        assert_eq!(sent(C::MessageTimedOut).class(), ErrorClass::Retriable);
        assert_eq!(sent(C::BrokerTransportFailure).class(), ErrorClass::Retriable);
        let batch = SendBatchError { total: 3, failed: vec![sent(C::MessageTimedOut), sent(C::ProducerFenced)] };
        assert_eq!(batch.class(), ErrorClass::Fatal);
        assert_eq!(KafkaError::MessageConsumptionFatal(C::Fatal).class(), ErrorClass::Fatal);
    }
}
