//! One socket's outbound side: a queue bounded in bytes, and the writer task that owns the
//! write half of the WebSocket.
//!
//! Data frames count against the bound; control frames (ping, pong, close) do not, so a
//! close can always be queued. When the bound would be exceeded the queue is marked
//! overflowed: the writer drops what is still queued and closes the socket
//! `slow_consumer` as soon as its current write completes.
//!
//! The queue is a `VecDeque` behind a mutex plus a `Notify`, not a channel: an idle socket
//! holds no queue buffer (the writer takes the whole buffer at each wake-up and frees it
//! once written), where a tokio channel keeps a 32-slot block for the socket's life.
//!
//! Pongs are coalesced instead of counted: a socket has one pending-pong slot, and the
//! queue carries a marker only when the slot was empty. A client that floods pings and
//! never reads therefore costs one slot, not one queued pong per ping; the latest ping's
//! payload wins (RFC 6455 §5.5.3 allows answering only the most recent ping).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
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
    /// The frames, the pong slot and whether the writer is gone.
    queue: Mutex<Queue>,
    /// Wakes the writer (one waiter: a permit is kept when it is not waiting).
    ready: Notify,
    /// `broker_ws_pongs_coalesced_total`: pings answered by an already pending pong.
    pongs_coalesced: Counter,
}

#[derive(Debug, Default)]
struct Queue {
    /// Empty and unallocated while the socket is idle: the writer takes the buffer.
    frames: VecDeque<OutFrame>,
    /// The payload of the pong owed to the client's latest ping; `Some` while a marker for
    /// it is queued, so a ping flood queues at most one pong.
    pong: Option<Vec<u8>>,
    /// The writer is gone (its [`OutRx`] dropped): nothing more is queued.
    closed: bool,
}

/// The writer's side of a socket's outbound queue. Dropping it closes the queue
/// ([`Outbound::is_closed`]) and uncounts what is still queued.
#[derive(Debug)]
pub struct OutRx {
    state: Arc<OutState>,
    /// Taken from the queue at a wake-up, drained in order across batches.
    taken: VecDeque<OutFrame>,
}

impl OutRx {
    /// The next frame without waiting: what was taken before, else the queue's buffer.
    pub fn try_recv(&mut self) -> Option<OutFrame> {
        if let Some(f) = self.taken.pop_front() {
            return Some(f);
        }
        // Free the drained buffer before taking the next one: idle, nothing is held.
        self.taken = std::mem::take(&mut lock(&self.state.queue).frames);
        let f = self.taken.pop_front();
        if self.taken.is_empty() {
            self.taken = VecDeque::new();
        }
        f
    }

    /// The next frame, waiting for one.
    pub async fn recv(&mut self) -> OutFrame {
        loop {
            if let Some(f) = self.try_recv() {
                return f;
            }
            self.state.ready.notified().await;
        }
    }

    fn uncount(&self, frames: VecDeque<OutFrame>) {
        for f in frames {
            if let OutFrame::Text(b) = f {
                self.state.queued.fetch_sub(b.len(), Ordering::Relaxed);
                self.state.gauge.dec_by(b.len() as i64);
            }
        }
    }
}

impl Drop for OutRx {
    fn drop(&mut self) {
        let rest = {
            let mut q = lock(&self.state.queue);
            q.closed = true;
            q.pong = None;
            std::mem::take(&mut q.frames)
        };
        let taken = std::mem::take(&mut self.taken);
        self.uncount(taken);
        self.uncount(rest);
    }
}

/// The queue holds plain data: a panic while it was held cannot leave it inconsistent.
fn lock(m: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sending side of a socket's outbound queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    state: Arc<OutState>,
}

impl Outbound {
    pub fn new(
        limit: usize,
        gauge: Gauge,
        slow_closes: Counter,
        pongs_coalesced: Counter,
    ) -> (Outbound, OutRx) {
        let state = Arc::new(OutState {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            overflow: CancellationToken::new(),
            slow_closes,
            gauge,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            pongs_coalesced,
        });
        let rx = OutRx {
            state: state.clone(),
            taken: VecDeque::new(),
        };
        (Outbound { state }, rx)
    }

    /// Queues `frame` and wakes the writer; hands it back when the writer is gone.
    fn send(&self, frame: OutFrame) -> Result<(), OutFrame> {
        {
            let mut q = lock(&self.state.queue);
            if q.closed {
                return Err(frame);
            }
            q.frames.push_back(frame);
        }
        self.state.ready.notify_one();
        Ok(())
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
                let _ = self.send(OutFrame::Ping);
            }
            return false;
        }
        self.state.gauge.inc_by(len as i64);
        if self.send(OutFrame::Text(frame)).is_err() {
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
        if self.send(OutFrame::Text(frame.clone())).is_err() {
            self.state.queued.fetch_sub(len, Ordering::Relaxed);
            self.state.gauge.dec_by(len as i64);
            return Err(frame);
        }
        Ok(())
    }

    pub fn control(&self, frame: OutFrame) {
        let _ = self.send(frame);
    }

    /// Owes the client a pong with `payload`. A pong already pending takes the new payload
    /// instead of queueing a second one.
    pub fn pong(&self, payload: &[u8]) {
        {
            let mut q = lock(&self.state.queue);
            if q.closed {
                return;
            }
            if let Some(pending) = q.pong.as_mut() {
                pending.clear();
                pending.extend_from_slice(payload);
                self.state.pongs_coalesced.inc();
                return;
            }
            q.pong = Some(payload.to_vec());
            q.frames.push_back(OutFrame::Pong);
        }
        self.state.ready.notify_one();
    }

    fn take_pong(&self) -> Option<Vec<u8>> {
        lock(&self.state.queue).pong.take()
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

    /// The writer is gone: nothing queued now would be written.
    pub fn is_closed(&self) -> bool {
        lock(&self.state.queue).closed
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

/// The most bytes one batch gathers before it is written; a single larger frame is written
/// on its own. Not a limit on anything a client can do: it bounds one `write` call.
pub const BATCH_BYTES: usize = 64 * 1024;

/// WebSocket opcodes of the frames the broker writes (RFC 6455 §5.2).
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Appends one unmasked, unfragmented server frame (RFC 6455 §5.2): FIN and the opcode, the
/// 7-, 16- or 64-bit payload length, the payload.
pub fn encode_frame(buf: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    buf.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        buf.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        buf.push(126);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason`.
fn encode_close(buf: &mut Vec<u8>, code: u16, reason: &[u8]) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    encode_frame(buf, OP_CLOSE, &payload);
}

/// What gathering one batch ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gathered {
    /// Write the batch and go on.
    More,
    /// Write the batch: it ends with a close frame, the writer stops after it.
    Last,
    /// The queue overflowed: drop the batch and close `slow_consumer`.
    Overflowed,
}

/// Encodes `first` and then whatever else is already queued (no waiting) into `batch`,
/// until the queue is empty, a close frame, the overflow or [`BATCH_BYTES`].
fn gather(first: OutFrame, rx: &mut OutRx, out: &Outbound, batch: &mut Vec<u8>) -> Gathered {
    let mut item = first;
    loop {
        if let OutFrame::Text(ref b) = item {
            out.dequeued(b.len());
        }
        if out.overflowed() {
            return Gathered::Overflowed;
        }
        match item {
            OutFrame::Text(b) => encode_frame(batch, OP_TEXT, &b),
            OutFrame::Ping => encode_frame(batch, OP_PING, &[]),
            OutFrame::Pong => {
                if let Some(p) = out.take_pong() {
                    encode_frame(batch, OP_PONG, &p);
                }
            }
            OutFrame::Close(code, reason) => {
                encode_close(batch, code, reason.as_bytes());
                return Gathered::Last;
            }
            OutFrame::CloseEcho(raw) => {
                encode_frame(batch, OP_CLOSE, &raw);
                return Gathered::Last;
            }
        }
        if batch.len() >= BATCH_BYTES {
            return Gathered::More;
        }
        match rx.try_recv() {
            Some(next) => item = next,
            None => return Gathered::More,
        }
    }
}

/// Writes queued frames until a close, an overflow, a write failure or `kill`.
///
/// Everything queued when the writer wakes is encoded into one buffer and written with one
/// `write_all` under one stall deadline: a batch that does not complete within `stall`
/// ends the connection. `io` is the socket's raw write half (server frames are unmasked,
/// so the writer encodes them itself).
pub async fn write_loop<W>(
    mut io: W,
    mut rx: OutRx,
    out: Outbound,
    kill: CancellationToken,
    stall: Duration,
) -> WriterEnd
where
    W: AsyncWrite + Unpin,
{
    // One registration for the writer's life: polled once per wake-up, not once per frame.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    let end = loop {
        let item = tokio::select! {
            biased;
            _ = &mut killed => break WriterEnd::Broken,
            item = rx.recv() => item,
        };
        // A fresh buffer per batch: an idle socket holds none.
        let mut batch = Vec::with_capacity(1024);
        let gathered = gather(item, &mut rx, &out, &mut batch);
        if gathered == Gathered::Overflowed {
            break WriterEnd::SlowConsumer;
        }
        if !batch.is_empty() && !write(&mut io, &batch, killed.as_mut(), stall).await {
            break WriterEnd::Broken;
        }
        if gathered == Gathered::Last {
            break WriterEnd::Closed;
        }
    };
    if end == WriterEnd::SlowConsumer {
        let (code, reason) = SLOW_CONSUMER;
        let mut batch = Vec::new();
        encode_close(&mut batch, code, reason.as_bytes());
        write(&mut io, &batch, killed.as_mut(), stall).await;
    }
    // Close the queue and drop the accounting of whatever is left in it.
    drop(rx);
    end
}

async fn write<W: AsyncWrite + Unpin>(
    io: &mut W,
    batch: &[u8],
    killed: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    stall: Duration,
) -> bool {
    tokio::select! {
        biased;
        _ = killed => false,
        r = tokio::time::timeout(stall, io.write_all(batch)) => matches!(r, Ok(Ok(()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(limit: usize) -> (Outbound, OutRx, Gauge, Counter) {
        let gauge = Gauge::default();
        let slow = Counter::default();
        let (out, rx) = Outbound::new(limit, gauge.clone(), slow.clone(), Counter::default());
        (out, rx, gauge, slow)
    }

    /// A write half that records every `poll_write` call.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    }

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode_frame(&mut b, opcode, payload);
        b
    }

    #[test]
    fn frame_headers_use_the_7_16_and_64_bit_lengths() {
        for (len, header) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xff, 0xff]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let payload = vec![b'x'; len];
            let b = frame(OP_TEXT, &payload);
            assert_eq!(b[..header.len()], header[..], "length {len}");
            assert_eq!(b.len(), header.len() + len, "length {len}");
            assert!(b[header.len()..].iter().all(|&c| c == b'x'));
        }
        assert_eq!(frame(OP_PING, &[]), [0x89, 0]);
        let mut close = Vec::new();
        encode_close(&mut close, 1013, b"slow");
        assert_eq!(close, [0x88, 6, 0x03, 0xf5, b's', b'l', b'o', b'w']);
    }

    #[tokio::test]
    async fn encoded_frames_parse_as_websocket_frames_in_a_client() {
        // A second implementation reads what the encoder wrote (fastwebsockets, client role).
        let (server, client) = tokio::io::duplex(1 << 20);
        let lens = [0usize, 125, 126, 65535, 65536];
        let (mut srd, mut swr) = tokio::io::split(server);
        let writer = tokio::spawn(async move {
            let mut all = Vec::new();
            for len in lens {
                encode_frame(&mut all, OP_TEXT, &vec![b'y'; len]);
            }
            encode_close(&mut all, 1000, b"bye");
            swr.write_all(&all).await.map(|_| swr)
        });
        let mut ws =
            fastwebsockets::WebSocket::after_handshake(client, fastwebsockets::Role::Client);
        ws.set_max_message_size(1 << 20);
        for len in lens {
            let f = ws.read_frame().await.expect("a text frame");
            assert_eq!(f.opcode, fastwebsockets::OpCode::Text);
            assert!(f.fin);
            assert_eq!(f.payload.len(), len);
        }
        let f = ws.read_frame().await.expect("the close frame");
        assert_eq!(f.opcode, fastwebsockets::OpCode::Close);
        assert_eq!(
            &f.payload[..],
            [&1000u16.to_be_bytes()[..], b"bye"].concat()
        );
        drop(writer.await);
        let _ = tokio::io::AsyncReadExt::read(&mut srd, &mut [0u8; 16]).await;
    }

    #[tokio::test]
    async fn queued_frames_leave_in_one_write_in_order() {
        let (out, rx, gauge, _) = outbound(1 << 20);
        assert!(out.text(Bytes::from_static(b"one")));
        out.pong(b"p1");
        out.pong(b"p2"); // coalesced into the pending pong: the latest payload wins
        assert!(out.text(Bytes::from_static(b"two")));
        out.control(OutFrame::Ping);
        assert!(out.text(Bytes::from_static(b"three")));
        let (code, reason) = crate::protocol::codes::DISCONNECTED.pair();
        out.close(code, reason);
        assert!(out.text(Bytes::from_static(b"after the close")));
        let rec = Recorder::default();
        let end = write_loop(
            rec.clone(),
            rx,
            out.clone(),
            CancellationToken::new(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(end, WriterEnd::Closed);
        let mut close = Vec::new();
        encode_close(&mut close, code, reason.as_bytes());
        let expected = [
            frame(OP_TEXT, b"one"),
            frame(OP_PONG, b"p2"),
            frame(OP_TEXT, b"two"),
            frame(OP_PING, b""),
            frame(OP_TEXT, b"three"),
            close,
        ]
        .concat();
        assert_eq!(rec.writes(), vec![expected]);
        // What was queued after the close was dropped, and its bytes uncounted.
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_batch_is_cut_at_the_byte_cap() {
        let (out, rx, gauge, _) = outbound(1 << 20);
        let chunk = Bytes::from(vec![b'z'; 10_000]);
        for _ in 0..20 {
            assert!(out.text(chunk.clone()));
        }
        let (code, reason) = crate::protocol::codes::DISCONNECTED.pair();
        out.close(code, reason);
        let rec = Recorder::default();
        let end = write_loop(
            rec.clone(),
            rx,
            out,
            CancellationToken::new(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(end, WriterEnd::Closed);
        let writes = rec.writes();
        let per_frame = frame(OP_TEXT, &chunk).len();
        // 7 frames reach the cap (7 × 10 004 ≥ 65 536): 7 + 7 + 6 and the close.
        let sizes: Vec<usize> = writes.iter().map(Vec::len).collect();
        let close = 2 + 2 + reason.len();
        assert_eq!(sizes, [7 * per_frame, 7 * per_frame, 6 * per_frame + close]);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn an_overflow_drops_the_queue_and_closes_slow_consumer() {
        let (out, rx, gauge, slow) = outbound(10);
        assert!(out.text(Bytes::from_static(b"12345")));
        assert!(!out.text(Bytes::from_static(b"123456")));
        let rec = Recorder::default();
        let end = write_loop(
            rec.clone(),
            rx,
            out,
            CancellationToken::new(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(end, WriterEnd::SlowConsumer);
        let mut close = Vec::new();
        encode_close(&mut close, SLOW_CONSUMER.0, SLOW_CONSUMER.1.as_bytes());
        assert_eq!(rec.writes(), vec![close]);
        assert_eq!(slow.get(), 1);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_stalled_batch_ends_the_writer_at_the_deadline() {
        // A peer that never reads: the duplex buffer (16 bytes) fills and the write stalls.
        let (server, _client) = tokio::io::duplex(16);
        let (out, rx, gauge, _) = outbound(1 << 20);
        assert!(out.text(Bytes::from(vec![b'a'; 1000])));
        let end = write_loop(
            server,
            rx,
            out,
            CancellationToken::new(),
            Duration::from_millis(50),
        )
        .await;
        assert_eq!(end, WriterEnd::Broken);
        assert_eq!(gauge.get(), 0);
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
            Some(OutFrame::Text(b)) => Some(b.len()),
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

    #[tokio::test]
    async fn an_idle_writer_wakes_for_each_later_frame_and_holds_no_buffer_between() {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let (out, rx, gauge, _) = outbound(1 << 20);
        let state = out.state.clone();
        let writer = tokio::spawn(write_loop(
            server,
            rx,
            out.clone(),
            CancellationToken::new(),
            Duration::from_secs(5),
        ));
        for round in 0..3u8 {
            // A burst larger than a tokio channel block (32 slots).
            for _ in 0..40 {
                assert!(out.text(Bytes::from(vec![b'a' + round; 10])));
            }
            let mut got = vec![0u8; 40 * 12];
            tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
                .await
                .expect("the burst");
            assert!(
                got.chunks(12)
                    .all(|f| f == frame(OP_TEXT, &[b'a' + round; 10]))
            );
            // Written: the queue's buffer is freed, not kept for the socket's life.
            assert_eq!(lock(&state.queue).frames.capacity(), 0);
            assert_eq!(gauge.get(), 0);
        }
        let (code, reason) = crate::protocol::codes::DISCONNECTED.pair();
        out.close(code, reason);
        assert_eq!(writer.await.ok(), Some(WriterEnd::Closed));
        assert!(out.is_closed());
        assert!(!out.text(Bytes::from_static(b"late")));
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
