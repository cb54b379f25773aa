//! librdkafka errors → [`ErrorClass`] and [`BusError`], so callers retry what is worth
//! retrying — and the crate's own error type, [`KafkaError`].
//!
//! The split follows the Kafka protocol's own classification: broker/leader movement,
//! coordinator churn, throttling, full local queues and connection loss resolve by
//! themselves ([`ErrorClass::Transient`], [`BusError::Transient`]); timeouts leave the
//! outcome unknown but are transient too ([`BusError::Timeout`]: the idempotent producer
//! makes a retry safe); unknown topics, authorization, invalid configuration, oversize or
//! malformed records, serialization and fatal producer states will fail the same way again
//! ([`ErrorClass::Permanent`]). [`classify`] holds the one table; [`to_bus_error`] and every
//! [`Classify`] impl of this crate derive from it.

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode as C};
use reprise_core::BusError;
use reprise_core::resilience::{Classify, ErrorClass};

use crate::config::ConfigError;

/// What a librdkafka error code means for the caller. Finer than [`ErrorClass`] so that
/// [`to_bus_error`] can keep [`BusError::Timeout`] and [`BusError::UnknownTopic`] apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// The outcome is unknown: the request may or may not have taken effect.
    Timeout,
    UnknownTopic,
    /// Broker transport, leadership, coordinator churn, throttling, local back-pressure.
    Transient,
    /// Authorization, invalid configuration or request, oversize or malformed records,
    /// serialization, fatal states — and every code not listed.
    Permanent,
}

impl Family {
    const fn class(self) -> ErrorClass {
        match self {
            Family::Timeout | Family::Transient => ErrorClass::Transient,
            Family::UnknownTopic | Family::Permanent => ErrorClass::Permanent,
        }
    }
}

/// The explicit code table. Codes not listed are permanent: retrying an error nobody
/// understood only delays the dead letter that will follow.
// The permanent codes are listed although the wildcard would catch them: the list is the
// documentation, and a code moved out of it must be moved deliberately.
#[allow(clippy::match_same_arms)]
fn family(code: C) -> Family {
    match code {
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            Family::Timeout
        }
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            Family::UnknownTopic
        }
        // Local back-pressure and broker transport.
        C::QueueFull
        | C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::NetworkException
        | C::BrokerNotAvailable
        // Leadership and replication moving.
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::ReplicaNotAvailable
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::OffsetNotAvailable
        | C::PreferredLeaderNotAvailable
        | C::NotController
        | C::KafkaStorageError
        // Coordinator and group churn.
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::WaitingForCoordinator
        | C::RebalanceInProgress
        | C::UnstableOffsetCommit
        // Throttling and "try again" answers.
        | C::ThrottlingQuotaExceeded
        | C::Retry
        | C::InProgress
        | C::PreviousInProgress => Family::Transient,
        // Authentication and authorization: the same credentials get the same answer.
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::DelegationTokenAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::SSL
        // Invalid configuration or request.
        | C::InvalidConfig
        | C::InvalidArgument
        | C::InvalidRequest
        | C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::InvalidRequiredAcks
        | C::PolicyViolation
        | C::UnsupportedVersion
        | C::UnsupportedFeature
        | C::UnsupportedCompressionType
        | C::NotConfigured
        // Records the broker will never accept.
        | C::MessageSizeTooLarge
        | C::MessageBatchTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidTimestamp
        | C::BadMessage
        // Serialization.
        | C::KeySerialization
        | C::ValueSerialization
        | C::KeyDeserialization
        | C::ValueDeserialization
        // Fatal producer states: the client must be recreated.
        | C::Fatal
        | C::Fenced
        | C::ProducerFenced
        | C::OutOfOrderSequenceNumber
        | C::InvalidProducerEpoch => Family::Permanent,
        _ => Family::Permanent,
    }
}

/// The code of an error, including admin operations' (which librdkafka's
/// `rdkafka_error_code` does not report).
fn code_of(error: &RdKafkaError) -> Option<C> {
    match error {
        RdKafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    }
}

fn family_of(error: &RdKafkaError) -> Family {
    match error {
        // A consumer error librdkafka calls fatal is fatal whatever its code.
        RdKafkaError::MessageConsumptionFatal(_) => Family::Permanent,
        // Nothing arrived within the poll's timeout.
        RdKafkaError::NoMessageReceived => Family::Timeout,
        // A transactional error knows whether it is worth retrying.
        RdKafkaError::Transaction(e) if e.is_retriable() => Family::Transient,
        other => code_of(other).map_or(Family::Permanent, family),
    }
}

/// The class of a librdkafka error (see the module docs for the table). Errors without a
/// code — client creation, configuration, cancellation — are permanent.
#[must_use]
pub fn classify(error: &RdKafkaError) -> ErrorClass {
    family_of(error).class()
}

/// Maps a librdkafka error on `topic` (used for [`BusError::UnknownTopic`]).
pub(crate) fn to_bus_error(error: &RdKafkaError, topic: &str) -> BusError {
    if matches!(error, RdKafkaError::Canceled) {
        return BusError::Closed;
    }
    match family_of(error) {
        Family::Timeout => BusError::Timeout,
        Family::UnknownTopic => BusError::UnknownTopic(topic.to_owned()),
        Family::Transient => BusError::Transient(error.to_string()),
        Family::Permanent => BusError::Permanent(error.to_string()),
    }
}

/// Errors of this crate's operations outside the [`EventBus`](reprise_core::EventBus)
/// contract, such as
/// [`KafkaDeadLetterQueue::connect`](crate::dead_letter::KafkaDeadLetterQueue::connect).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KafkaError {
    /// The configuration was refused before anything reached a broker.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A broker operation failed; the class is the [`BusError`]'s.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A topic name Kafka would refuse (checked before asking the broker).
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: String },
}

impl Classify for KafkaError {
    fn class(&self) -> ErrorClass {
        match self {
            KafkaError::Bus(e) => e.class(),
            KafkaError::Config(_) | KafkaError::InvalidTopic { .. } => ErrorClass::Permanent,
        }
    }
}

/// A refused configuration is refused again until someone changes it.
impl Classify for ConfigError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// Kafka's rule for topic names: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn check_topic_name(topic: &str) -> Result<(), KafkaError> {
    let invalid = |reason: &str| KafkaError::InvalidTopic {
        topic: topic.to_owned(),
        reason: reason.to_owned(),
    };
    if topic.is_empty() || topic.len() > 249 {
        return Err(invalid("must be 1 to 249 characters long"));
    }
    if topic == "." || topic == ".." {
        return Err(invalid("`.` and `..` are reserved"));
    }
    if !topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "only ASCII letters, digits, `.`, `_` and `-` are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(code: C) -> RdKafkaError {
        RdKafkaError::MessageProduction(code)
    }

    fn assert_class(codes: &[C], want: ErrorClass) {
        for &code in codes {
            for error in [
                produce(code),
                RdKafkaError::MessageConsumption(code),
                RdKafkaError::MetadataFetch(code),
                RdKafkaError::AdminOp(code),
            ] {
                assert_eq!(classify(&error), want, "{error:?}");
            }
        }
    }

    #[test]
    fn broker_transport_and_local_queue_full_are_transient() {
        assert_class(
            &[
                C::BrokerTransportFailure,
                C::AllBrokersDown,
                C::Resolve,
                C::NetworkException,
                C::BrokerNotAvailable,
                C::QueueFull,
            ],
            ErrorClass::Transient,
        );
        assert!(to_bus_error(&produce(C::AllBrokersDown), "t").is_transient());
        assert!(to_bus_error(&produce(C::QueueFull), "t").is_transient());
    }

    #[test]
    fn timeouts_are_transient_and_map_to_bus_timeout() {
        let codes = [
            C::MessageTimedOut,
            C::RequestTimedOut,
            C::OperationTimedOut,
            C::TimedOutQueue,
        ];
        assert_class(&codes, ErrorClass::Transient);
        for code in codes {
            assert_eq!(to_bus_error(&produce(code), "t"), BusError::Timeout);
        }
        assert_eq!(
            classify(&RdKafkaError::NoMessageReceived),
            ErrorClass::Transient
        );
    }

    #[test]
    fn leadership_and_coordinator_movement_is_transient() {
        assert_class(
            &[
                C::NotLeaderForPartition,
                C::LeaderNotAvailable,
                C::ReplicaNotAvailable,
                C::NotEnoughReplicas,
                C::NotEnoughReplicasAfterAppend,
                C::FencedLeaderEpoch,
                C::NotController,
                C::CoordinatorLoadInProgress,
                C::CoordinatorNotAvailable,
                C::NotCoordinator,
                C::RebalanceInProgress,
                C::ThrottlingQuotaExceeded,
            ],
            ErrorClass::Transient,
        );
        assert!(to_bus_error(&produce(C::NotLeaderForPartition), "t").is_transient());
    }

    #[test]
    fn unknown_topics_are_permanent_and_name_the_topic() {
        let codes = [
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::UnknownPartition,
            C::UnknownTopicId,
        ];
        assert_class(&codes, ErrorClass::Permanent);
        for code in codes {
            assert_eq!(
                to_bus_error(&produce(code), "orders"),
                BusError::UnknownTopic("orders".into())
            );
        }
    }

    #[test]
    fn authorization_and_authentication_are_permanent() {
        assert_class(
            &[
                C::TopicAuthorizationFailed,
                C::GroupAuthorizationFailed,
                C::ClusterAuthorizationFailed,
                C::TransactionalIdAuthorizationFailed,
                C::SaslAuthenticationFailed,
                C::Authentication,
                C::SSL,
            ],
            ErrorClass::Permanent,
        );
        assert!(matches!(
            to_bus_error(&produce(C::TopicAuthorizationFailed), "t"),
            BusError::Permanent(_)
        ));
    }

    #[test]
    fn invalid_configuration_and_requests_are_permanent() {
        assert_class(
            &[
                C::InvalidConfig,
                C::InvalidArgument,
                C::InvalidRequest,
                C::InvalidTopic,
                C::InvalidPartitions,
                C::InvalidReplicationFactor,
                C::PolicyViolation,
                C::UnsupportedVersion,
            ],
            ErrorClass::Permanent,
        );
        assert_eq!(
            classify(&RdKafkaError::ClientCreation("bad".into())),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn oversize_and_malformed_records_are_permanent() {
        assert_class(
            &[
                C::MessageSizeTooLarge,
                C::MessageBatchTooLarge,
                C::InvalidMessageSize,
                C::InvalidRecord,
                C::InvalidMessage,
            ],
            ErrorClass::Permanent,
        );
        assert!(matches!(
            to_bus_error(&produce(C::MessageSizeTooLarge), "t"),
            BusError::Permanent(_)
        ));
    }

    #[test]
    fn serialization_is_permanent() {
        assert_class(
            &[
                C::KeySerialization,
                C::ValueSerialization,
                C::KeyDeserialization,
                C::ValueDeserialization,
            ],
            ErrorClass::Permanent,
        );
    }

    #[test]
    fn fatal_states_and_unlisted_codes_are_permanent() {
        assert_class(
            &[
                C::Fatal,
                C::ProducerFenced,
                C::OutOfOrderSequenceNumber,
                C::IllegalGeneration,
            ],
            ErrorClass::Permanent,
        );
        // Fatal consumption is fatal even with a code that is transient elsewhere.
        assert_eq!(
            classify(&RdKafkaError::MessageConsumptionFatal(C::AllBrokersDown)),
            ErrorClass::Permanent
        );
        assert_eq!(to_bus_error(&RdKafkaError::Canceled, "t"), BusError::Closed);
        assert!(matches!(
            to_bus_error(&RdKafkaError::ConsumerCommit(C::IllegalGeneration), "t"),
            BusError::Permanent(_)
        ));
    }

    #[test]
    fn admin_operation_codes_are_classified_too() {
        // librdkafka's `rdkafka_error_code` reports no code for AdminOp.
        assert!(to_bus_error(&RdKafkaError::AdminOp(C::NotController), "t").is_transient());
        assert_eq!(
            to_bus_error(&RdKafkaError::AdminOp(C::UnknownTopicOrPartition), "t"),
            BusError::UnknownTopic("t".into())
        );
    }

    #[test]
    fn the_crate_error_classifies_by_its_cause() {
        assert_eq!(
            KafkaError::Bus(BusError::Timeout).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            KafkaError::Bus(BusError::UnknownTopic("t".into())).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            KafkaError::Bus(to_bus_error(&produce(C::BrokerTransportFailure), "t")).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            KafkaError::Config(ConfigError::Rejected("x".into())).class(),
            ErrorClass::Permanent
        );
        let invalid = check_topic_name("no spaces").unwrap_err();
        assert!(matches!(invalid, KafkaError::InvalidTopic { .. }));
        assert_eq!(invalid.class(), ErrorClass::Permanent);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(check_topic_name("orders.dlq").is_ok());
        assert!(check_topic_name("a_b-C.9").is_ok());
        for bad in ["", ".", "..", "a/b", "ünï", &"x".repeat(250)] {
            assert!(check_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic_name(&"x".repeat(249)).is_ok());
    }
}
