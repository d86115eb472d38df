//! The TCP relay legs' bounded write queues, by connection id: the UDP
//! loop and the legs queue datagrams here without waiting; each leg's
//! writer drains its own queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use natter_proto::record::MAX_DATAGRAM_LEN;
use tokio::sync::mpsc;

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why a datagram could not be queued for a relay leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LegError {
    /// The leg's queue is full (counted).
    #[error("relay leg queue full")]
    Full,
    /// Longer than a DATAGRAM record may be (counted).
    #[error("datagram too long for a record")]
    TooLong,
    /// No such leg (it ended).
    #[error("relay leg gone")]
    Gone,
}

/// The TCP relay legs' bounded write queues, by connection id.
#[derive(Debug)]
pub(crate) struct Legs {
    queue: usize,
    senders: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
    opened: AtomicU64,
    dropped_full: AtomicU64,
    dropped_too_long: AtomicU64,
}

impl Legs {
    /// No legs; each will queue at most `queue` datagrams.
    pub fn new(queue: usize) -> Self {
        Self {
            queue: queue.max(1),
            senders: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_too_long: AtomicU64::new(0),
        }
    }

    fn senders(&self) -> MutexGuard<'_, HashMap<u64, mpsc::Sender<Vec<u8>>>> {
        self.senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the queue of leg `id`; its writer drains the receiver.
    pub fn open(&self, id: u64) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(self.queue);
        self.senders().insert(id, tx);
        bump(&self.opened);
        rx
    }

    /// Closes the queue of leg `id` (its writer ends once it is drained).
    pub fn close(&self, id: u64) {
        self.senders().remove(&id);
    }

    /// Open legs.
    pub fn count(&self) -> usize {
        self.senders().len()
    }

    /// Queues `datagram` for leg `id` without waiting.
    pub fn push(&self, id: u64, datagram: &[u8]) -> Result<(), LegError> {
        let senders = self.senders();
        let Some(tx) = senders.get(&id) else {
            return Err(LegError::Gone);
        };
        if datagram.len() > MAX_DATAGRAM_LEN {
            bump(&self.dropped_too_long);
            return Err(LegError::TooLong);
        }
        match tx.try_send(datagram.to_vec()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.dropped_full);
                Err(LegError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(LegError::Gone),
        }
    }

    /// Open legs, legs opened since start, datagrams dropped for a full
    /// queue, datagrams dropped for being too long.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            self.count() as u64,
            get(&self.opened),
            get(&self.dropped_full),
            get(&self.dropped_too_long),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_leg_queue_drops_and_counts_without_waiting() {
        let legs = Legs::new(2);
        assert_eq!(legs.push(1, &[0; 61]), Err(LegError::Gone));
        let mut rx = legs.open(1);
        assert_eq!(legs.count(), 1);
        assert_eq!(legs.push(1, &[1; 61]), Ok(()));
        assert_eq!(legs.push(1, &[2; 61]), Ok(()));
        assert_eq!(legs.push(1, &[3; 61]), Err(LegError::Full));
        assert_eq!(legs.dropped_full.load(Ordering::Relaxed), 1);
        assert_eq!(
            legs.push(1, &[4; MAX_DATAGRAM_LEN + 1]),
            Err(LegError::TooLong)
        );
        assert_eq!(legs.dropped_too_long.load(Ordering::Relaxed), 1);
        // The writer drains in order; room again.
        assert_eq!(rx.try_recv().unwrap(), vec![1; 61]);
        assert_eq!(legs.push(1, &[5; 61]), Ok(()));
        assert_eq!(rx.try_recv().unwrap(), vec![2; 61]);
        assert_eq!(rx.try_recv().unwrap(), vec![5; 61]);
        legs.close(1);
        assert_eq!(legs.count(), 0);
        assert_eq!(legs.push(1, &[6; 61]), Err(LegError::Gone));
        assert!(rx.try_recv().is_err(), "closed: the writer ends");
    }
}
