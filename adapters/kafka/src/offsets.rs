//! Per-partition bookkeeping of what was delivered and what was handled, so only a
//! *contiguous* handled prefix is ever committed.
//!
//! Why not Kafka's "commit the last offset seen": handlers may finish out of order
//! (parallel handling, retries, a dead-lettered message). Committing offset 8 after 5 and 7
//! are handled but 6 is still running would lose 6 on a crash. So the commit position of a
//! partition is the first delivered-but-unhandled offset, or one past the last delivered
//! offset when everything delivered is handled (offsets name the *next* message to read, as
//! Kafka's committed offsets do).
//!
//! The position advances over offsets that were never delivered (transaction markers,
//! compacted records) because it walks the offsets actually delivered, not `offset + 1`.
//! Partitions are added on assignment and dropped on revocation: an acknowledgement for a
//! partition this member no longer owns is ignored — the new owner redelivers it.

use std::collections::BTreeMap;
use std::sync::Arc;

type TopicPartition = (Arc<str>, u32);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PartitionState {
    /// Delivered offsets not yet below the committed position → handled?
    pending: BTreeMap<u64, bool>,
    /// One past the highest delivered offset.
    next: Option<u64>,
    /// The first offset delivered since assignment: where the group's position was.
    start: Option<u64>,
    /// The last position committed by this member for this partition.
    committed: Option<u64>,
}

impl PartitionState {
    fn position(&self) -> Option<u64> {
        match self.pending.iter().find(|(_, handled)| !**handled) {
            Some((offset, _)) => Some(*offset),
            None => self.next,
        }
    }
}

/// Delivered/handled offsets of every partition assigned to one group member.
#[derive(Clone, Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<TopicPartition, PartitionState>,
}

impl OffsetTracker {
    /// Starts tracking a newly assigned partition (no-op if already tracked).
    pub fn assign(&mut self, topic: &str, partition: u32) {
        self.partitions
            .entry((Arc::from(topic), partition))
            .or_default();
    }

    /// Forgets a revoked partition: its unhandled messages go to the next owner.
    pub fn revoke(&mut self, topic: &str, partition: u32) {
        self.partitions.remove(&(Arc::from(topic), partition));
    }

    /// Whether `topic/partition` is assigned to this member.
    #[must_use]
    pub fn is_assigned(&self, topic: &str, partition: u32) -> bool {
        self.partitions.contains_key(&(Arc::from(topic), partition))
    }

    /// Records a delivery. Returns `false` (and records nothing) for a partition that is
    /// not assigned.
    pub fn delivered(&mut self, topic: &str, partition: u32, offset: u64) -> bool {
        let Some(state) = self.partitions.get_mut(&(Arc::from(topic), partition)) else {
            return false;
        };
        if state.committed.is_some_and(|c| offset < c) {
            // A redelivery below the committed position (a seek): nothing to track.
            return true;
        }
        state.pending.entry(offset).or_insert(false);
        state.start.get_or_insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        true
    }

    /// Marks a delivered message handled. Returns `false` if the partition is not assigned
    /// any more or the offset was never delivered to this member.
    pub fn handled(&mut self, topic: &str, partition: u32, offset: u64) -> bool {
        let Some(state) = self.partitions.get_mut(&(Arc::from(topic), partition)) else {
            return false;
        };
        match state.pending.get_mut(&offset) {
            Some(handled) => {
                *handled = true;
                true
            }
            None => false,
        }
    }

    /// Positions that can be committed now: for every partition whose contiguous handled
    /// prefix moved past its last commit, `(topic, partition, next offset to read)`.
    #[must_use]
    pub fn committable(&self) -> Vec<(Arc<str>, u32, u64)> {
        self.partitions
            .iter()
            .filter_map(|((topic, partition), state)| {
                let position = state.position()?;
                let known = state.committed.or(state.start)?;
                (position > known).then(|| (Arc::clone(topic), *partition, position))
            })
            .collect()
    }

    /// Like [`committable`](Self::committable), restricted to some partitions.
    #[must_use]
    pub fn committable_among(&self, partitions: &[(String, u32)]) -> Vec<(Arc<str>, u32, u64)> {
        self.committable()
            .into_iter()
            .filter(|(t, p, _)| partitions.iter().any(|(pt, pp)| **t == **pt && p == pp))
            .collect()
    }

    /// Records that `position` is committed on a partition and drops the bookkeeping below it.
    pub fn committed(&mut self, topic: &str, partition: u32, position: u64) {
        let Some(state) = self.partitions.get_mut(&(Arc::from(topic), partition)) else {
            return;
        };
        state.committed = Some(state.committed.map_or(position, |c| c.max(position)));
        state.pending = state.pending.split_off(&position);
    }

    /// Delivered messages not yet committed, over all partitions.
    #[must_use]
    pub fn uncommitted(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }

    /// The assigned partitions.
    #[must_use]
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.partitions
            .keys()
            .map(|(t, p)| (t.to_string(), *p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker_with(offsets: &[u64]) -> OffsetTracker {
        let mut t = OffsetTracker::default();
        t.assign("t", 0);
        for o in offsets {
            assert!(t.delivered("t", 0, *o));
        }
        t
    }

    #[test]
    fn commits_only_the_contiguous_handled_prefix() {
        let mut t = tracker_with(&[5, 6, 7]);
        assert!(t.handled("t", 0, 5));
        assert!(t.handled("t", 0, 7));
        assert_eq!(
            t.committable(),
            vec![(Arc::from("t"), 0, 6)],
            "6 is unhandled: the position stays at 6"
        );
        t.committed("t", 0, 6);
        assert!(t.committable().is_empty(), "nothing new to commit");
        assert!(t.handled("t", 0, 6));
        assert_eq!(t.committable(), vec![(Arc::from("t"), 0, 8)]);
        t.committed("t", 0, 8);
        assert_eq!(t.uncommitted(), 0);
    }

    #[test]
    fn nothing_handled_commits_nothing() {
        let mut t = tracker_with(&[3, 4]);
        assert!(
            t.committable().is_empty(),
            "the group's position is still 3"
        );
        assert!(t.handled("t", 0, 4));
        assert!(t.committable().is_empty(), "3 is unhandled");
        let empty = {
            let mut t = OffsetTracker::default();
            t.assign("t", 0);
            t
        };
        assert!(
            empty.committable().is_empty(),
            "a partition with no delivery has no position"
        );
    }

    #[test]
    fn gaps_in_offsets_do_not_stall_commits() {
        // Offsets 11 and 12 are a transaction marker / compacted away: never delivered.
        let mut t = tracker_with(&[10, 13]);
        assert!(t.handled("t", 0, 10));
        assert!(t.handled("t", 0, 13));
        assert_eq!(t.committable(), vec![(Arc::from("t"), 0, 14)]);
    }

    #[test]
    fn revoked_partitions_are_forgotten_and_their_acks_ignored() {
        let mut t = tracker_with(&[0, 1]);
        t.assign("t", 1);
        assert!(t.delivered("t", 1, 0));
        t.revoke("t", 0);
        assert!(!t.handled("t", 0, 0), "ack after revoke is ignored");
        assert!(!t.delivered("t", 0, 2));
        assert!(t.handled("t", 1, 0));
        assert_eq!(t.committable(), vec![(Arc::from("t"), 1, 1)]);
        assert_eq!(t.assignment(), vec![("t".to_owned(), 1)]);
    }

    #[test]
    fn acks_of_unknown_offsets_are_refused() {
        let mut t = tracker_with(&[0]);
        assert!(!t.handled("t", 0, 1), "never delivered");
        assert!(!t.handled("u", 0, 0), "not assigned");
    }

    #[test]
    fn committable_among_filters_partitions() {
        let mut t = tracker_with(&[0]);
        t.assign("t", 1);
        t.delivered("t", 1, 4);
        t.handled("t", 0, 0);
        t.handled("t", 1, 4);
        assert_eq!(
            t.committable_among(&[("t".into(), 1)]),
            vec![(Arc::from("t"), 1, 5)]
        );
    }
}
