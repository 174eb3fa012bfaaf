//! One socket's outbound side: a queue bounded in bytes, and the writer task that owns the
//! write half of the WebSocket.
//!
//! Data frames count against the bound; control frames (ping, pong, close) do not, so a
//! close can always be queued. When the bound would be exceeded the queue is marked
//! overflowed: the writer drops what is still queued and closes the socket
//! `slow_consumer` as soon as its current write completes.
//!
//! Pongs are coalesced instead of counted: a socket has one pending-pong slot, and the
//! channel carries a marker only when the slot was empty. A client that floods pings and
//! never reads therefore costs one slot, not one queued pong per ping; the latest ping's
//! payload wins (RFC 6455 §5.5.3 allows answering only the most recent ping).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Close code and reason of a slow consumer.
pub const SLOW_CONSUMER: (u16, &str) = crate::protocol::codes::SLOW_CONSUMER.pair();

#[derive(Debug)]
pub enum OutFrame {
    Text(Bytes),
    Ping,
    /// Marker: write the pending pong (see [`Outbound::pong`]), if it is still pending.
    Pong,
    /// A close frame with code and reason; the writer stops after it.
    Close(u16, String),
    /// The echo of a client's close frame (raw payload); the writer stops after it.
    CloseEcho(Vec<u8>),
}

#[derive(Debug)]
struct OutState {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    /// Cancelled at the overflow, so the session ends at once even while the writer is
    /// still blocked on the slow client.
    overflow: CancellationToken,
    /// `broker_slow_consumer_closes_total`, counted once per socket at the overflow.
    slow_closes: Counter,
    /// This replica's total of queued bytes (`broker_outbound_queue_bytes`).
    gauge: Gauge,
    /// The payload of the pong owed to the client's latest ping; `Some` while a marker for
    /// it is in the channel, so a ping flood queues at most one pong.
    pending_pong: Mutex<Option<Vec<u8>>>,
    /// `broker_ws_pongs_coalesced_total`: pings answered by an already pending pong.
    pongs_coalesced: Counter,
}

/// The sending side of a socket's outbound queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<OutFrame>,
    state: Arc<OutState>,
}

impl Outbound {
    pub fn new(
        limit: usize,
        gauge: Gauge,
        slow_closes: Counter,
        pongs_coalesced: Counter,
    ) -> (Outbound, mpsc::UnboundedReceiver<OutFrame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(OutState {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            overflow: CancellationToken::new(),
            slow_closes,
            gauge,
            pending_pong: Mutex::new(None),
            pongs_coalesced,
        });
        (Outbound { tx, state }, rx)
    }

    /// Queues a text frame. Returns `false` when the frame was not queued because the queue
    /// overflowed (now or before) or the socket is gone.
    pub fn text(&self, frame: Bytes) -> bool {
        if self.state.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let len = frame.len();
        let before = self.state.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.state.limit {
            self.state.queued.fetch_sub(len, Ordering::Relaxed);
            if !self.state.overflowed.swap(true, Ordering::Relaxed) {
                self.state.slow_closes.inc();
                self.state.overflow.cancel();
                // Wake the writer even when it is idle, so the close goes out promptly.
                let _ = self.tx.send(OutFrame::Ping);
            }
            return false;
        }
        self.state.gauge.inc_by(len as i64);
        if self.tx.send(OutFrame::Text(frame)).is_err() {
            self.state.queued.fetch_sub(len, Ordering::Relaxed);
            self.state.gauge.dec_by(len as i64);
            return false;
        }
        true
    }

    /// Queues a text frame only if it fits the space left (`queued + len <= limit`);
    /// otherwise hands it back, and the queue is *not* marked overflowed. For a reply the
    /// requester is better told it cannot have than closed for: the caller answers an
    /// `error` instead. The reservation is one atomic update, so two callers cannot both
    /// take the last of the space. Also hands the frame back when the queue overflowed
    /// before or the socket is gone ([`Outbound::is_closed`] tells these apart).
    pub fn try_text(&self, frame: Bytes) -> Result<(), Bytes> {
        if self.state.overflowed.load(Ordering::Relaxed) {
            return Err(frame);
        }
        let len = frame.len();
        let limit = self.state.limit;
        let reserved =
            self.state
                .queued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                    queued.checked_add(len).filter(|&after| after <= limit)
                });
        if reserved.is_err() {
            return Err(frame);
        }
        self.state.gauge.inc_by(len as i64);
        // `Bytes` clones share the buffer: the copy is only handed back if the send fails.
        if self.tx.send(OutFrame::Text(frame.clone())).is_err() {
            self.state.queued.fetch_sub(len, Ordering::Relaxed);
            self.state.gauge.dec_by(len as i64);
            return Err(frame);
        }
        Ok(())
    }

    pub fn control(&self, frame: OutFrame) {
        let _ = self.tx.send(frame);
    }

    /// Owes the client a pong with `payload`. A pong already pending takes the new payload
    /// instead of queueing a second one.
    pub fn pong(&self, payload: &[u8]) {
        let mut slot = self.lock_pong();
        if let Some(pending) = slot.as_mut() {
            pending.clear();
            pending.extend_from_slice(payload);
            self.state.pongs_coalesced.inc();
            return;
        }
        *slot = Some(payload.to_vec());
        drop(slot);
        let _ = self.tx.send(OutFrame::Pong);
    }

    fn take_pong(&self) -> Option<Vec<u8>> {
        self.lock_pong().take()
    }

    fn lock_pong(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        // The slot holds plain bytes: a panic while it was held cannot leave it inconsistent.
        self.state
            .pending_pong
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn close(&self, code: u16, reason: &str) {
        self.control(OutFrame::Close(code, reason.to_string()));
    }

    pub fn overflowed(&self) -> bool {
        self.state.overflowed.load(Ordering::Relaxed)
    }

    /// Resolves when the queue overflows.
    pub async fn overflow(&self) {
        self.state.overflow.cancelled().await;
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn dequeued(&self, len: usize) {
        self.state.queued.fetch_sub(len, Ordering::Relaxed);
        self.state.gauge.dec_by(len as i64);
    }
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEnd {
    /// It wrote a close frame (ours or the echo of the client's).
    Closed,
    /// The queue overflowed and it closed the socket (`slow_consumer`).
    SlowConsumer,
    /// The socket failed, stalled past the stall timeout, or was killed.
    Broken,
}

/// Writes queued frames until a close, an overflow, a write failure or `kill`.
/// A single write that does not complete within `stall` ends the connection.
pub async fn write_loop<S>(
    mut ws: WebSocketWrite<S>,
    mut rx: mpsc::UnboundedReceiver<OutFrame>,
    out: Outbound,
    kill: CancellationToken,
    stall: Duration,
) -> WriterEnd
where
    S: AsyncWrite + Unpin,
{
    let end = loop {
        let item = tokio::select! {
            biased;
            _ = kill.cancelled() => break WriterEnd::Broken,
            item = rx.recv() => item,
        };
        let Some(item) = item else {
            break WriterEnd::Broken;
        };
        if let OutFrame::Text(ref b) = item {
            out.dequeued(b.len());
        }
        if out.overflowed() {
            break WriterEnd::SlowConsumer;
        }
        let pong = match item {
            OutFrame::Pong => match out.take_pong() {
                Some(p) => Some(p),
                None => continue,
            },
            _ => None,
        };
        let (frame, last) = match &item {
            OutFrame::Text(b) => (Frame::text(Payload::Borrowed(b)), false),
            OutFrame::Ping => (
                Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[])),
                false,
            ),
            OutFrame::Pong => (
                Frame::pong(Payload::Borrowed(pong.as_deref().unwrap_or_default())),
                false,
            ),
            OutFrame::Close(code, reason) => (Frame::close(*code, reason.as_bytes()), true),
            OutFrame::CloseEcho(raw) => (Frame::close_raw(Payload::Borrowed(raw)), true),
        };
        if !write(&mut ws, frame, &kill, stall).await {
            break WriterEnd::Broken;
        }
        if last {
            break WriterEnd::Closed;
        }
    };
    if end == WriterEnd::SlowConsumer {
        let (code, reason) = SLOW_CONSUMER;
        write(&mut ws, Frame::close(code, reason.as_bytes()), &kill, stall).await;
    }
    // Drop the accounting of whatever is left in the queue.
    rx.close();
    while let Ok(item) = rx.try_recv() {
        if let OutFrame::Text(b) = item {
            out.dequeued(b.len());
        }
    }
    end
}

async fn write<S: AsyncWrite + Unpin>(
    ws: &mut WebSocketWrite<S>,
    frame: Frame<'_>,
    kill: &CancellationToken,
    stall: Duration,
) -> bool {
    tokio::select! {
        biased;
        _ = kill.cancelled() => false,
        r = tokio::time::timeout(stall, ws.write_frame(frame)) => matches!(r, Ok(Ok(()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(limit: usize) -> (Outbound, mpsc::UnboundedReceiver<OutFrame>, Gauge, Counter) {
        let gauge = Gauge::default();
        let slow = Counter::default();
        let (out, rx) = Outbound::new(limit, gauge.clone(), slow.clone(), Counter::default());
        (out, rx, gauge, slow)
    }

    #[test]
    fn try_text_queues_what_fits_and_hands_back_the_rest_without_overflowing() {
        let (out, mut rx, gauge, slow) = outbound(100);
        assert!(out.text(Bytes::from(vec![b'a'; 60])));
        // Fits the bound (100) but not the 40 bytes left: handed back, queue intact.
        let big = Bytes::from(vec![b'b'; 41]);
        assert_eq!(out.try_text(big.clone()), Err(big));
        assert!(!out.overflowed());
        assert_eq!(slow.get(), 0);
        assert_eq!(gauge.get(), 60);
        // Exactly the space left is taken.
        assert_eq!(out.try_text(Bytes::from(vec![b'c'; 40])), Ok(()));
        assert_eq!(gauge.get(), 100);
        assert_eq!(
            out.try_text(Bytes::from_static(b"d")),
            Err(Bytes::from_static(b"d"))
        );
        assert!(!out.overflowed());
        // The queued frames are the first and the third, in order.
        let lens: Vec<usize> = std::iter::from_fn(|| match rx.try_recv() {
            Ok(OutFrame::Text(b)) => Some(b.len()),
            _ => None,
        })
        .collect();
        assert_eq!(lens, [60, 40]);
    }

    #[test]
    fn try_text_hands_back_after_an_overflow_or_a_closed_socket() {
        let (out, rx, gauge, slow) = outbound(10);
        assert!(!out.text(Bytes::from(vec![b'a'; 11])));
        assert!(out.overflowed());
        assert_eq!(slow.get(), 1);
        assert!(out.try_text(Bytes::from_static(b"x")).is_err());
        drop(rx);
        let (out, rx, ..) = outbound(10);
        drop(rx);
        assert!(out.try_text(Bytes::from_static(b"x")).is_err());
        assert!(out.is_closed());
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn concurrent_try_text_never_takes_more_than_the_space() {
        let (out, _rx, gauge, _) = outbound(1000);
        let taken: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let out = out.clone();
                    s.spawn(move || {
                        (0..100)
                            .filter(|_| out.try_text(Bytes::from(vec![b'x'; 7])).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(taken, 1000 / 7);
        assert_eq!(gauge.get(), (taken * 7) as i64);
        assert!(!out.overflowed());
    }
}
