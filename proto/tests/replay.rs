//! Index reconstruction and the replay window, against a reference model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use natter_proto::replay::{ReplayError, ReplayWindow, WINDOW};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Packets arrive reordered (each delayed by up to half the window) and
    /// duplicated; the receiver rebuilds every true index and accepts each
    /// exactly once, duplicates never.
    #[test]
    fn reordered_and_duplicated_streams_are_rebuilt_exactly(
        // Senders start below 2^15 (media::MAX_START).
        start in 0u64..32768,
        delays in proptest::collection::vec(0u64..(WINDOW / 2), 1..600),
        dups in proptest::collection::vec(0usize..600, 0..50),
    ) {
        let count = delays.len();
        let mut order: Vec<u64> = (0..count as u64).map(|i| start + i).collect();
        order.sort_by_key(|&index| index - start + delays[(index - start) as usize]);
        for d in dups {
            let d = d % count;
            order.insert((d + 3).min(order.len()), order[d]);
        }
        let mut window = ReplayWindow::new();
        let mut accepted = HashSet::new();
        let mut refused = 0;
        for &true_index in &order {
            let index = window.estimate(true_index as u16);
            prop_assert_eq!(index, Ok(true_index));
            match window.check(true_index) {
                Ok(()) => {
                    prop_assert!(accepted.insert(true_index), "accepted {} twice", true_index);
                    window.accept(true_index);
                }
                Err(ReplayError::Replayed { index }) => {
                    prop_assert!(accepted.contains(&index));
                    refused += 1;
                }
                Err(e) => prop_assert!(false, "unexpected {:?}", e),
            }
        }
        prop_assert_eq!(accepted.len(), count);
        prop_assert_eq!(refused, order.len() - count);
    }

    #[test]
    fn estimates_follow_rollover(highest in 0u64..(1 << 40), delta in -30000i64..30000) {
        let truth = highest as i64 + delta;
        prop_assume!(truth >= 0);
        let mut window = ReplayWindow::new();
        window.accept(highest);
        prop_assert_eq!(window.estimate(truth as u16), Ok(truth as u64));
    }
}

#[test]
fn the_first_packet_sets_the_window_and_the_same_id_is_a_replay() {
    let mut window = ReplayWindow::new();
    let index = window.estimate(65_000).unwrap();
    assert_eq!(index, 65_000);
    window.check(index).unwrap();
    window.accept(index);
    assert_eq!(
        window.check(window.estimate(65_000).unwrap()),
        Err(ReplayError::Replayed { index: 65_000 })
    );
    // Across the 16-bit rollover: id 3 after 65000 is index 65539.
    assert_eq!(window.estimate(3), Ok(65_539));
}

#[test]
fn an_index_behind_the_window_is_too_old() {
    let mut window = ReplayWindow::new();
    window.accept(1000);
    window.accept(1000 + WINDOW);
    assert_eq!(
        window.check(1000),
        Err(ReplayError::TooOld {
            index: 1000,
            highest: 1000 + WINDOW
        })
    );
    // Just inside the window and unseen: fine.
    assert_eq!(window.check(1001), Ok(()));
}

#[test]
fn before_the_start_is_too_old_not_a_wrap() {
    let mut window = ReplayWindow::new();
    window.accept(10);
    // id 40000 with highest 10 would be from before index 0.
    assert!(matches!(
        window.estimate(40_000),
        Err(ReplayError::TooOld { .. })
    ));
}
