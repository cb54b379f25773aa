//! The links between nodes and what they depend on (the event store, the bus, each
//! external service), with partitions and outages.
//!
//! Every I/O a node makes goes through [`Network::request_blocked`] on the way out and
//! [`Network::response_blocked`] on the way back. A one-way partition is what makes the
//! nastiest outcome of distributed systems reachable: a request that *was applied* but
//! whose response never arrived, so the caller times out not knowing.
//!
//! Node-to-node links are not modelled: in an event-sourced system nodes talk through the
//! store and the bus, and cutting a node off from those is the partition that matters.

use crate::executor::NodeIndex;
use crate::plan::Direction;

/// What a node talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Link {
    Store,
    Bus,
    Dependency(u16),
}

#[derive(Clone, Copy, Debug)]
struct Partition {
    id: u64,
    node: NodeIndex,
    link: Link,
    direction: Direction,
}

#[derive(Clone, Copy, Debug)]
struct Outage {
    id: u64,
    dependency: u16,
}

/// Active partitions and outages. Small vectors: a handful are active at once, and a
/// linear scan beats any map at that size.
#[derive(Debug, Default)]
pub(crate) struct Network {
    partitions: Vec<Partition>,
    outages: Vec<Outage>,
    next_id: u64,
}

impl Network {
    /// Cuts `node` off from `link`. Returns the partition's id for healing it.
    pub(crate) fn partition(&mut self, node: NodeIndex, link: Link, direction: Direction) -> u64 {
        self.next_id += 1;
        self.partitions.push(Partition {
            id: self.next_id,
            node,
            link,
            direction,
        });
        self.next_id
    }

    pub(crate) fn heal(&mut self, id: u64) -> bool {
        let before = self.partitions.len();
        self.partitions.retain(|p| p.id != id);
        before != self.partitions.len()
    }

    pub(crate) fn outage(&mut self, dependency: u16) -> u64 {
        self.next_id += 1;
        self.outages.push(Outage {
            id: self.next_id,
            dependency,
        });
        self.next_id
    }

    pub(crate) fn end_outage(&mut self, id: u64) -> bool {
        let before = self.outages.len();
        self.outages.retain(|o| o.id != id);
        before != self.outages.len()
    }

    /// Heals every partition of `node`; returns how many.
    pub(crate) fn heal_node(&mut self, node: NodeIndex) -> usize {
        let before = self.partitions.len();
        self.partitions.retain(|p| p.node != node);
        before - self.partitions.len()
    }

    /// Heals every partition (outages stay); returns how many.
    pub(crate) fn heal_partitions(&mut self) -> usize {
        let n = self.partitions.len();
        self.partitions.clear();
        n
    }

    /// Ends every outage of `dependency`; returns how many.
    pub(crate) fn end_outages_of(&mut self, dependency: u16) -> usize {
        let before = self.outages.len();
        self.outages.retain(|o| o.dependency != dependency);
        before - self.outages.len()
    }

    /// Heals every partition and ends every outage.
    pub(crate) fn heal_all(&mut self) -> usize {
        let n = self.partitions.len() + self.outages.len();
        self.partitions.clear();
        self.outages.clear();
        n
    }

    /// Whether a request from `node` to `link` is lost.
    pub(crate) fn request_blocked(&self, node: NodeIndex, link: Link) -> bool {
        self.partitions
            .iter()
            .any(|p| p.node == node && p.link == link && p.direction != Direction::Inbound)
    }

    /// Whether a response from `link` to `node` is lost.
    pub(crate) fn response_blocked(&self, node: NodeIndex, link: Link) -> bool {
        self.partitions
            .iter()
            .any(|p| p.node == node && p.link == link && p.direction != Direction::Outbound)
    }

    /// Whether `node` and `link` cannot talk at all right now (either direction cut).
    pub(crate) fn cut(&self, node: NodeIndex, link: Link) -> bool {
        self.partitions
            .iter()
            .any(|p| p.node == node && p.link == link)
    }

    pub(crate) fn is_down(&self, dependency: u16) -> bool {
        self.outages.iter().any(|o| o.dependency == dependency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_way_partitions_block_one_direction() {
        let mut net = Network::default();
        let out = net.partition(0, Link::Store, Direction::Outbound);
        assert!(net.request_blocked(0, Link::Store));
        assert!(!net.response_blocked(0, Link::Store));
        assert!(
            !net.request_blocked(1, Link::Store),
            "other nodes are unaffected"
        );
        assert!(
            !net.request_blocked(0, Link::Bus),
            "other links are unaffected"
        );
        net.partition(0, Link::Bus, Direction::Inbound);
        assert!(net.response_blocked(0, Link::Bus) && !net.request_blocked(0, Link::Bus));
        assert!(net.heal(out));
        assert!(!net.heal(out), "healing twice is a no-op");
        assert!(!net.cut(0, Link::Store));
        let outage = net.outage(3);
        assert!(net.is_down(3));
        assert!(net.end_outage(outage));
        net.partition(2, Link::Dependency(1), Direction::Both);
        assert_eq!(net.heal_all(), 2);
        assert!(!net.cut(2, Link::Dependency(1)));
        net.partition(0, Link::Store, Direction::Both);
        net.partition(0, Link::Bus, Direction::Both);
        net.partition(1, Link::Bus, Direction::Both);
        net.outage(2);
        net.outage(2);
        net.outage(3);
        assert_eq!(net.heal_node(0), 2);
        assert!(net.cut(1, Link::Bus), "other nodes keep their partitions");
        assert_eq!(net.end_outages_of(2), 2);
        assert!(net.is_down(3), "other dependencies stay down");
        assert_eq!(net.heal_partitions(), 1);
        assert!(net.is_down(3), "healing partitions ends no outage");
    }
}
