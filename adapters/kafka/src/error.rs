//! librdkafka errors → [`BusError`], so callers retry what is worth retrying.
//!
//! The split follows the Kafka protocol's own classification: broker/leader movement,
//! coordinator churn, throttling and connection loss resolve by themselves
//! ([`BusError::Transient`]); timeouts leave the outcome unknown ([`BusError::Timeout`]:
//! the idempotent producer makes a retry safe); authorization, oversize or malformed records
//! and fatal producer states will fail the same way again ([`BusError::Permanent`]).

use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
use reprise_core::BusError;

/// Maps a librdkafka error on `topic` (used for [`BusError::UnknownTopic`]).
pub(crate) fn to_bus_error(error: &KafkaError, topic: &str) -> BusError {
    if matches!(error, KafkaError::Canceled) {
        return BusError::Closed;
    }
    let Some(code) = error.rdkafka_error_code() else {
        return BusError::Permanent(error.to_string());
    };
    match code {
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            BusError::Timeout
        }
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            BusError::UnknownTopic(topic.to_owned())
        }
        C::QueueFull
        | C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::NetworkException
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::BrokerNotAvailable
        | C::ReplicaNotAvailable
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::WaitingForCoordinator
        | C::RebalanceInProgress
        | C::KafkaStorageError
        | C::ThrottlingQuotaExceeded
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::OffsetNotAvailable
        | C::PreferredLeaderNotAvailable
        | C::Retry
        | C::InProgress
        | C::PreviousInProgress
        | C::UnstableOffsetCommit => BusError::Transient(format!("{error}")),
        _ => BusError::Permanent(format!("{error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let produce = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            to_bus_error(&produce(C::MessageTimedOut), "t"),
            BusError::Timeout
        );
        assert_eq!(
            to_bus_error(&produce(C::UnknownTopicOrPartition), "t"),
            BusError::UnknownTopic("t".into())
        );
        assert!(to_bus_error(&produce(C::NotLeaderForPartition), "t").is_transient());
        assert!(to_bus_error(&produce(C::AllBrokersDown), "t").is_transient());
        assert!(matches!(
            to_bus_error(&produce(C::MessageSizeTooLarge), "t"),
            BusError::Permanent(_)
        ));
        assert!(matches!(
            to_bus_error(&produce(C::TopicAuthorizationFailed), "t"),
            BusError::Permanent(_)
        ));
        assert_eq!(to_bus_error(&KafkaError::Canceled, "t"), BusError::Closed);
        assert!(matches!(
            to_bus_error(&KafkaError::ConsumerCommit(C::IllegalGeneration), "t"),
            BusError::Permanent(_)
        ));
    }
}
