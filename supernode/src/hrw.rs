//! Rendezvous (highest-random-weight) placement of user records.
//!
//! The weight of node `n` for name `u` is `SHA-256(u || n)` compared as a
//! big-endian number; the `k` nodes of highest weight hold `u`'s record, and
//! lookups ask them in that order. When a node leaves, only the names it held
//! move (each to the next node in its ranking); when one joins, it takes over
//! only the names for which it now ranks in the top `k`.

use sha2::{Digest, Sha256};

use crate::NodeId;

/// The weight of `node` for `name`.
pub fn weight(name: &str, node: &NodeId) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(node);
    hasher.finalize().into()
}

/// All `nodes` ordered by decreasing weight for `name` (ties, which need a
/// SHA-256 collision, are broken by node id). Duplicates are removed.
pub fn rank(name: &str, nodes: &[NodeId]) -> Vec<NodeId> {
    let mut weighted: Vec<([u8; 32], NodeId)> =
        nodes.iter().map(|n| (weight(name, n), *n)).collect();
    weighted.sort_unstable_by(|a, b| b.cmp(a));
    weighted.dedup_by(|a, b| a.1 == b.1);
    weighted.into_iter().map(|(_, n)| n).collect()
}

/// The `k` nodes that hold `name`'s record, best first.
pub fn replicas(name: &str, nodes: &[NodeId], k: usize) -> Vec<NodeId> {
    let mut ranked = rank(name, nodes);
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn nodes(n: u8) -> Vec<NodeId> {
        (0..n)
            .map(|i| [i.wrapping_mul(37).wrapping_add(1); 16])
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user{i}")).collect()
    }

    #[test]
    fn placement_is_stable_and_order_independent() {
        let mut set = nodes(6);
        let a = replicas("alice", &set, 3);
        set.reverse();
        let b = replicas("alice", &set, 3);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_eq!(replicas("alice", &set, 3), a, "deterministic");
        // k larger than the set: everyone, no duplicates.
        let mut dup = set.clone();
        dup.extend(set.clone());
        assert_eq!(replicas("alice", &dup, 10).len(), 6);
    }

    #[test]
    fn placement_is_balanced() {
        let set = nodes(5);
        let mut primary: HashMap<NodeId, usize> = HashMap::new();
        for name in names(5000) {
            *primary.entry(replicas(&name, &set, 1)[0]).or_default() += 1;
        }
        assert_eq!(primary.len(), 5);
        for (_, count) in primary {
            // 1000 expected; SHA-256 is uniform, allow a wide margin.
            assert!((800..=1200).contains(&count), "unbalanced: {count}");
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_names() {
        let set = nodes(6);
        let gone = set[2];
        let rest: Vec<NodeId> = set.iter().copied().filter(|n| *n != gone).collect();
        let mut moved = 0;
        for name in names(2000) {
            let before = replicas(&name, &set, 3);
            let after = replicas(&name, &rest, 3);
            if before.contains(&gone) {
                moved += 1;
                // The survivors keep their place; exactly one node is added.
                let kept: Vec<NodeId> = before.iter().copied().filter(|n| *n != gone).collect();
                assert_eq!(&after[..2], &kept[..]);
                assert!(!before.contains(&after[2]));
            } else {
                assert_eq!(before, after, "{name} moved although its nodes stayed");
            }
        }
        // About k/n = half the names involved the node that left.
        assert!((800..=1200).contains(&moved), "moved {moved}");
    }

    #[test]
    fn a_joining_node_takes_only_what_it_ranks_for() {
        let set = nodes(5);
        let mut bigger = set.clone();
        let newcomer = [0xee; 16];
        bigger.push(newcomer);
        for name in names(1000) {
            let before = replicas(&name, &set, 2);
            let after = replicas(&name, &bigger, 2);
            if !after.contains(&newcomer) {
                assert_eq!(before, after);
            }
        }
    }
}
