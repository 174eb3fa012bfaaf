//! The bounded, in-order hand-off of frames from a socket's reader task to its session task.
//!
//! A tokio `mpsc` channel allocates a block of 32 slots and a cache-padded channel up front
//! (about 1.8 KB, every connection, idle or not); this queue starts empty, holds at most
//! `cap` frames, and gives back its memory once drained. One producer, one consumer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

struct State<T> {
    items: VecDeque<T>,
    sender: bool,
    receiver: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    cap: usize,
    /// Signalled when an item was queued or the sender left.
    readable: Notify,
    /// Signalled when an item was taken or the receiver left.
    writable: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Plain data: a panic while it was held cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reader's end.
pub(super) struct Sender<T>(Arc<Shared<T>>);

/// The session's end.
pub(super) struct Receiver<T>(Arc<Shared<T>>);

/// A hand-off of at most `cap` queued items.
pub(super) fn handoff<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            sender: true,
            receiver: true,
        }),
        cap: cap.max(1),
        readable: Notify::new(),
        writable: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// Items retained by an empty queue after a burst.
const KEEP: usize = 4;

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full; hands it back when the receiver is
    /// gone.
    pub async fn send(&self, item: T) -> Result<(), T> {
        loop {
            let writable = self.0.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            {
                let mut st = self.0.lock();
                if !st.receiver {
                    return Err(item);
                }
                if st.items.len() < self.0.cap {
                    st.items.push_back(item);
                    drop(st);
                    self.0.readable.notify_one();
                    return Ok(());
                }
            }
            writable.await;
        }
    }
}

impl<T> Receiver<T> {
    /// The next item in order; `None` once the queue is empty and the sender gone.
    /// Cancel-safe: an item is taken only by the poll that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let readable = self.0.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            {
                let mut st = self.0.lock();
                if let Some(item) = st.items.pop_front() {
                    if st.items.is_empty() && st.items.capacity() > KEEP {
                        st.items.shrink_to(KEEP);
                    }
                    drop(st);
                    self.0.writable.notify_one();
                    return Some(item);
                }
                if !st.sender {
                    return None;
                }
            }
            readable.await;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.lock().sender = false;
        self.0.readable.notify_one();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut st = self.0.lock();
            st.receiver = false;
            std::mem::take(&mut st.items)
        };
        drop(items);
        self.0.writable.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_arrive_in_order_and_the_sender_waits_at_the_bound() {
        let (tx, mut rx) = handoff::<u32>(2);
        tx.send(1).await.expect("room");
        tx.send(2).await.expect("room");
        // Full: the third waits until the receiver takes one.
        let third = tokio::spawn(async move {
            tx.send(3).await.expect("room after a recv");
            tx
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        assert_eq!(rx.recv().await, Some(1));
        let tx = third.await.expect("sender task");
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_recv_cancelled_by_select_loses_nothing() {
        let (tx, mut rx) = handoff::<u32>(16);
        for _ in 0..3 {
            tokio::select! {
                biased;
                _ = std::future::ready(()) => {}
                _ = rx.recv() => panic!("nothing was sent"),
            }
        }
        tx.send(7).await.expect("room");
        assert_eq!(rx.recv().await, Some(7));
        // Waiting, then woken by a send from another task.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(8).await.expect("room");
        });
        assert_eq!(rx.recv().await, Some(8));
        sender.await.expect("sender task");
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_send_fails_once_the_receiver_is_gone_even_while_waiting() {
        let (tx, rx) = handoff::<u32>(1);
        tx.send(1).await.expect("room");
        let waiting = tokio::spawn(async move { tx.send(2).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(rx);
        assert_eq!(waiting.await.expect("sender task"), Err(2));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = handoff::<[u8; 64]>(16);
        for _ in 0..16 {
            tx.send([0; 64]).await.expect("room");
        }
        assert!(rx.0.lock().items.capacity() >= 16);
        for _ in 0..16 {
            assert!(rx.recv().await.is_some());
        }
        assert!(rx.0.lock().items.capacity() <= KEEP);
    }
}
