//! One simulated peer: it stays connected (reconnecting with jittered backoff on any
//! close), acknowledges every push with `client_ack`, records sends, acks and pushes in
//! the shared [`Ledger`], and sends what its [`Plan`] says.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker::protocol::Priority;
use broker::protocol::frames::tag;
use crypto_box::SalsaBox;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Backoff, ConnectError, Dial, InFrame};
use crate::ledger::{Ledger, Micros, MsgKey, PushOutcome};
use crate::seal::{self, Identity, NONCE_BYTES, TAG_BYTES};
use crate::series::{self, Bucket, Series};

/// How long a peer waits for its `hello_ack`.
const HELLO_WAIT: Duration = Duration::from_secs(10);
/// Frames handled per wake-up before the writes are flushed.
const BATCH: usize = 256;

/// What the message payloads are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// `crypto_box` to the recipient's key, plaintext of this many bytes (real clients).
    Sealed(usize),
    /// Random bytes of the size a sealed plaintext of this many bytes would have.
    Random(usize),
}

/// One enrolled member the harness plays.
#[derive(Debug)]
pub struct PeerInfo {
    pub identity: Identity,
    pub mesh_id: String,
    pub member_id: String,
    pub session_id: String,
}

/// What a peer sends.
#[derive(Debug)]
pub enum Plan {
    /// Closed loop: `total` direct messages to random other peers of the mesh, with at
    /// most `window` unacknowledged at a time (`0`: no limit, all at once).
    Window { total: u32, window: u32 },
    /// Sends arrive from a pacer.
    Paced(mpsc::UnboundedReceiver<Cmd>),
    /// Receives only.
    Idle,
}

/// A send ordered by a pacer, with the time it was due (latency counts from then, so a
/// late sender does not hide its own lateness).
#[derive(Debug, Clone, Copy)]
pub enum Cmd {
    Direct { due: Micros },
    Broadcast { due: Micros },
}

/// One period without a connection.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub peer: u32,
    pub down_at: Micros,
    pub up_at: Micros,
}

/// Connection bookkeeping shared by all peers.
#[derive(Debug)]
pub struct ConnStats {
    /// Closes seen, by `code reason` (or `dropped` without a close frame).
    pub closes: BTreeMap<String, u64>,
    /// Failed connection attempts, by cause (`overloaded` refusals are in `overloaded`).
    pub connect_failures: BTreeMap<String, u64>,
    /// Honoured `overloaded` refusals of a handshake.
    pub overloaded: Overloaded,
    /// `error` frames after the handshake, by code.
    pub errors: BTreeMap<String, u64>,
    /// `ack.error` texts.
    pub rejects: BTreeMap<String, u64>,
    /// Successful handshakes after the first one of a peer.
    pub reconnects: u64,
    /// TCP connect → `hello_ack`, microseconds.
    pub handshake_us: Histogram<u64>,
    open: HashMap<u32, Micros>,
    pub outages: Vec<Outage>,
}

impl Default for ConnStats {
    fn default() -> Self {
        ConnStats {
            closes: BTreeMap::new(),
            connect_failures: BTreeMap::new(),
            overloaded: Overloaded::default(),
            errors: BTreeMap::new(),
            rejects: BTreeMap::new(),
            reconnects: 0,
            handshake_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            open: HashMap::new(),
            outages: Vec::new(),
        }
    }
}

/// Handshakes refused `overloaded` and the waits they asked for: not failures of the run
/// by themselves (the peer tries again after the wait), reported apart.
#[derive(Debug, Default, Clone)]
pub struct Overloaded {
    /// Refusals by how they came: `error` (`error{code:"overloaded"}` + close 1013) or
    /// `http_503` (before the upgrade).
    pub by: BTreeMap<String, u64>,
    /// Microseconds waited because of them, in total.
    pub waited_us: u64,
    /// The longest delay asked for (before the cap), microseconds.
    pub asked_max_us: u64,
    /// Waits cut to `--max-retry-after`.
    pub capped: u64,
    /// Refusals that named no delay (waited the harness's own backoff instead).
    pub without_delay: u64,
}

impl Overloaded {
    /// Records a refusal `e` (when it is an `overloaded` one) and returns the wait it asks
    /// for, at most `cap`.
    pub fn record(&mut self, e: &ConnectError, cap: Duration) -> Option<Duration> {
        let ConnectError::Overloaded { retry_after, http } = e else {
            return None;
        };
        let via = if *http { "http_503" } else { "error" };
        *self.by.entry(via.to_string()).or_default() += 1;
        let Some(asked) = *retry_after else {
            self.without_delay += 1;
            return None;
        };
        let wait = asked.min(cap);
        if wait < asked {
            self.capped += 1;
        }
        self.asked_max_us = self.asked_max_us.max(asked.as_micros() as u64);
        self.waited_us += wait.as_micros() as u64;
        Some(wait)
    }

    pub fn total(&self) -> u64 {
        self.by.values().sum()
    }
}

impl ConnStats {
    /// Peers without a connection right now, with the time they lost it.
    pub fn open_outages(&self) -> &HashMap<u32, Micros> {
        &self.open
    }
}

/// Where a socket connects from: `127.0.0.(first + i / per_address)` for loopback
/// targets, so one source address never runs out of ephemeral ports.
#[derive(Debug, Clone, Copy)]
pub struct SourceAddrs {
    pub per_address: usize,
}

impl SourceAddrs {
    /// The source address of connection `i`; `None` keeps the kernel's choice.
    pub fn pick(&self, i: usize) -> Option<IpAddr> {
        let block = i / self.per_address.max(1);
        if block == 0 {
            return None;
        }
        // 127.0.0.2 … 127.0.255.254: plenty for any machine's file descriptor limit.
        let n = block as u32 + 1;
        let (b2, b3) = ((n / 254) as u8, (n % 254 + 1) as u8);
        Some(IpAddr::from([127, 0, b2, b3]))
    }
}

/// Everything the peers of one run share.
#[derive(Debug)]
pub struct Shared {
    /// Prefix of every `client_message_id` of this run.
    pub run: String,
    /// One per `--url`.
    pub dials: Vec<Dial>,
    pub peers: Vec<PeerInfo>,
    /// `--series` is on: the ledger keeps a [`Series`].
    pub series_on: bool,
    pub ledger: Mutex<Ledger>,
    pub conn: Mutex<ConnStats>,
    pub start: Instant,
    /// Every peer stops (closing with 1000) when this is cancelled.
    pub stop: CancellationToken,
    /// One child of `stop` per peer, to stop peers one by one (`idle --stages` ramping
    /// down); replaced when a stopped peer starts again.
    pub peer_stops: Mutex<Vec<CancellationToken>>,
    /// Peers connect first and send only once this is cancelled.
    pub go: CancellationToken,
    pub connected: AtomicUsize,
    /// Peers whose plan is complete (every send made and acknowledged or given up).
    pub senders_done: AtomicUsize,
    /// Why the run stopped before it settled (`--max-run`, `--timeout`), once it has.
    pub stopped_by: Mutex<Option<String>>,
    pub payload: Payload,
    pub priority: Priority,
    /// Open every sealed push and check its plaintext.
    pub verify: bool,
    pub open_failures: AtomicU64,
    pub system_pushes: AtomicU64,
    /// Set for `idle`: source addresses over 127.0.0.x.
    pub sources: Option<SourceAddrs>,
    /// Peers per mesh: peer `i` is in mesh `i / per_mesh` and messages only its own mesh.
    pub per_mesh: u32,
    /// The longest `overloaded` wait honoured (`--max-retry-after`).
    pub max_retry_after: Duration,
}

/// The peers `[start, end)` of the mesh peer `me` belongs to, when peers are enrolled in
/// consecutive blocks of `per_mesh`.
pub fn mesh_block(me: u32, per_mesh: u32, peers: u32) -> (u32, u32) {
    let per_mesh = per_mesh.max(1);
    let start = me / per_mesh * per_mesh;
    (start, start.saturating_add(per_mesh).min(peers))
}

impl Shared {
    /// Microseconds since the run started.
    pub fn now_us(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn conn_stats(&self) -> MutexGuard<'_, ConnStats> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stop token of peer `me`.
    pub fn peer_stop(&self, me: u32) -> CancellationToken {
        let stops = self.peer_stops.lock().unwrap_or_else(|e| e.into_inner());
        stops
            .get(me as usize)
            .cloned()
            .unwrap_or_else(|| self.stop.clone())
    }

    /// A fresh stop token for peer `me`, so that a stopped peer can run again.
    pub fn renew_peer_stop(&self, me: u32) {
        let mut stops = self.peer_stops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = stops.get_mut(me as usize) {
            *t = self.stop.child_token();
        }
    }

    /// Applies `f` to the series bucket of now, when `--series` is on.
    pub fn note(&self, f: impl FnOnce(&mut Bucket)) {
        if !self.series_on {
            return;
        }
        let now = self.now_us();
        if let Some(b) = self.ledger().second(now) {
            f(b);
        }
    }

    /// Starts the series clock now (second 0), with the connected count so far.
    pub fn start_series(&self) {
        let now = self.now_us();
        let connected = self.connected.load(Ordering::Relaxed) as u64;
        let mut l = self.ledger();
        if let Some(s) = l.series.as_mut() {
            s.start(now);
            if let Some(b) = s.at(now) {
                b.connected = Some(connected);
            }
        }
    }

    fn on_up(&self, peer: u32, handshake: Duration, first: bool) {
        let connected = self.connected.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        self.note(|b| {
            b.handshakes += 1;
            b.handshake_us
                .saturating_record((handshake.as_micros() as u64).max(1));
            b.connected = Some(connected);
        });
        let now = self.now_us();
        let mut c = self.conn_stats();
        c.handshake_us
            .saturating_record((handshake.as_micros() as u64).max(1));
        if !first {
            c.reconnects += 1;
        }
        if let Some(down_at) = c.open.remove(&peer) {
            c.outages.push(Outage {
                peer,
                down_at,
                up_at: now,
            });
        }
    }

    fn on_down(&self, peer: u32, why: String) {
        let connected = (self.connected.fetch_sub(1, Ordering::Relaxed) as u64).saturating_sub(1);
        self.note(|b| {
            b.errors += 1;
            b.connected = Some(connected);
        });
        let now = self.now_us();
        let mut c = self.conn_stats();
        *c.closes.entry(why).or_default() += 1;
        c.open.entry(peer).or_insert(now);
    }

    /// Records a failed attempt; returns the wait an `overloaded` refusal asks for (capped
    /// at `max_retry_after`), which replaces the backoff before the next attempt.
    fn on_connect_failure(&self, e: &ConnectError) -> Option<Duration> {
        self.note(|b| b.errors += 1);
        let mut c = self.conn_stats();
        if matches!(e, ConnectError::Overloaded { .. }) {
            return c.overloaded.record(e, self.max_retry_after);
        }
        *c.connect_failures.entry(e.label()).or_default() += 1;
        None
    }
}

impl series::Source for Shared {
    fn with_series<R>(&self, f: impl FnOnce(&mut Series) -> R) -> Option<R> {
        self.ledger().series.as_mut().map(f)
    }

    fn now_us(&self) -> Micros {
        Shared::now_us(self)
    }
}

/// How a connected session ended.
enum End {
    Stopped,
    Lost(String),
}

/// A peer's own state, kept across reconnects.
struct Peer {
    sh: Arc<Shared>,
    me: u32,
    rng: SmallRng,
    /// Boxes with the other peers (one X25519 per pair, reused both ways).
    boxes: HashMap<u32, SalsaBox>,
    seq: u32,
    /// Own sends without an ack on the current connection.
    unacked: HashSet<u32>,
    go: bool,
    done: bool,
}

impl Peer {
    fn info(&self) -> &PeerInfo {
        &self.sh.peers[self.me as usize]
    }

    fn box_with(&mut self, other: u32) -> &SalsaBox {
        let sh = &self.sh;
        let me = self.me as usize;
        self.boxes.entry(other).or_insert_with(|| {
            sh.peers[me]
                .identity
                .box_with(&sh.peers[other as usize].identity)
        })
    }

    fn block(&self) -> (u32, u32) {
        mesh_block(self.me, self.sh.per_mesh, self.sh.peers.len() as u32)
    }

    /// A uniformly random other peer of this peer's mesh.
    fn random_other(&mut self) -> u32 {
        let (start, end) = self.block();
        if end - start < 2 {
            return self.me;
        }
        let pick = self.rng.random_range(start..end - 1);
        if pick >= self.me { pick + 1 } else { pick }
    }

    /// Builds the next send (to a random other peer, or a broadcast) and records it as due
    /// at `due`.
    fn next_send(&mut self, broadcast: bool, due: Micros) -> String {
        let key = MsgKey {
            sender: self.me,
            seq: self.seq,
        };
        self.seq += 1;
        self.unacked.insert(key.seq);
        let client_id = key.client_id(&self.sh.run);
        let (target_spec, nonce, ciphertext) = if broadcast {
            let size = match self.sh.payload {
                Payload::Sealed(n) | Payload::Random(n) => n + TAG_BYTES,
            };
            let (n, c) = random_payload(&mut self.rng, size);
            ("*".to_string(), n, c)
        } else {
            let to = self.random_other();
            let target = self.sh.peers[to as usize].identity.pubkey.clone();
            let (n, c) = match self.sh.payload {
                Payload::Sealed(size) => {
                    let mut nonce = [0u8; NONCE_BYTES];
                    self.rng.fill(&mut nonce[..]);
                    let plain = seal::plaintext(&client_id, size);
                    seal::seal(self.box_with(to), &nonce, &plain)
                }
                Payload::Random(size) => random_payload(&mut self.rng, size + TAG_BYTES),
            };
            (target, n, c)
        };
        let expected = if broadcast {
            let (start, end) = self.block();
            (end - start).saturating_sub(1)
        } else {
            1
        };
        self.sh.ledger().on_send(key, due, expected);
        client::send_frame(target_spec, self.sh.priority, nonce, ciphertext, client_id)
    }

    /// Handles one text frame; returns the frames to write back (a `client_ack`).
    fn on_text(&mut self, text: &str, replies: &mut Vec<String>) {
        let Some(f) = InFrame::parse(text) else {
            return;
        };
        let now = self.sh.now_us();
        match f.kind.as_ref() {
            tag::Ack::TEXT => {
                let Some(key) =
                    f.id.as_deref()
                        .and_then(|id| MsgKey::parse(&self.sh.run, id))
                else {
                    return;
                };
                let queued = f.queued.unwrap_or(false);
                self.sh
                    .ledger()
                    .on_ack(key, now, queued, f.message_id.as_deref().unwrap_or(""));
                if key.sender == self.me {
                    self.unacked.remove(&key.seq);
                }
                if let Some(e) = f.error.as_deref() {
                    *self
                        .sh
                        .conn_stats()
                        .rejects
                        .entry(e.to_string())
                        .or_default() += 1;
                }
            }
            tag::Push::TEXT => {
                if f.subtype.as_deref() == Some(tag::System::TEXT) {
                    self.sh.system_pushes.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let broker_id = f.message_id.as_deref().unwrap_or("");
                replies.push(client::client_ack_frame(broker_id));
                let Some(cid) = f.client_message_id.as_deref() else {
                    self.sh.ledger().unknown_pushes += 1;
                    return;
                };
                let Some(key) = MsgKey::parse(&self.sh.run, cid) else {
                    self.sh.ledger().unknown_pushes += 1;
                    return;
                };
                let outcome = self.sh.ledger().on_push(key, self.me, broker_id, now);
                if self.sh.verify
                    && matches!(outcome, PushOutcome::Delivered { .. })
                    && matches!(self.sh.payload, Payload::Sealed(_))
                    && !self.opens(key, cid, &f)
                {
                    self.sh.open_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            tag::Error::TEXT => {
                self.sh.note(|b| b.errors += 1);
                let code = f.code.as_deref().unwrap_or("?").to_string();
                *self.sh.conn_stats().errors.entry(code).or_default() += 1;
            }
            _ => {}
        }
    }

    /// True when a sealed direct push opens with the sender's box and holds its client id.
    fn opens(&mut self, key: MsgKey, client_id: &str, f: &InFrame<'_>) -> bool {
        let Some(sender) = self.sh.peers.get(key.sender as usize) else {
            return false;
        };
        if f.sender_pubkey.as_deref() != Some(sender.identity.pubkey.as_str()) {
            return false;
        }
        let (Some(nonce), Some(ct)) = (f.nonce.as_deref(), f.ciphertext.as_deref()) else {
            return false;
        };
        seal::open(self.box_with(key.sender), nonce, ct)
            .is_some_and(|p| p.starts_with(client_id.as_bytes()))
    }

    fn check_done(&mut self, plan: &Plan) {
        if self.done {
            return;
        }
        let finished = match plan {
            Plan::Window { total, .. } => self.seq >= *total && self.unacked.is_empty(),
            _ => false,
        };
        if finished {
            self.done = true;
            self.sh.senders_done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn random_payload(rng: &mut impl Rng, ciphertext_bytes: usize) -> (String, String) {
    let mut nonce = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    let mut ct = vec![0u8; ciphertext_bytes];
    rng.fill_bytes(&mut ct);
    (STANDARD.encode(nonce), STANDARD.encode(ct))
}

/// Runs peer `me` until `sh.stop`: connect (from `sh.sources` when set), hello, serve,
/// and reconnect on any close, moving to the next URL when a replica is unreachable.
pub async fn run_peer(sh: Arc<Shared>, me: u32, mut plan: Plan) {
    let mut peer = Peer {
        sh: sh.clone(),
        me,
        rng: SmallRng::seed_from_u64(rand::random()),
        boxes: HashMap::new(),
        seq: 0,
        unacked: HashSet::new(),
        go: false,
        done: false,
    };
    let mut backoff = Backoff::default();
    let mut url = me as usize % sh.dials.len();
    let mut first = true;
    let source = sh.sources.and_then(|s| s.pick(me as usize));
    let stop = sh.peer_stop(me);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let attempt = async {
            let mut ws = client::connect(&sh.dials[url], source).await?;
            let info = peer.info();
            let hello = client::hello_frame(
                &info.mesh_id,
                &info.member_id,
                &info.identity,
                &info.session_id,
                broker::ids::now_ms(),
            );
            client::handshake(&mut ws, hello, HELLO_WAIT).await?;
            Ok::<_, ConnectError>(ws)
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = stop.cancelled() => return,
        };
        let ws = match result {
            Ok(ws) => ws,
            Err(e) => {
                let asked = sh.on_connect_failure(&e);
                if e.replica_down() {
                    url = (url + 1) % sh.dials.len();
                }
                // An overloaded replica says when to come back: that, not our backoff.
                let wait = match asked {
                    Some(w) => w,
                    None => backoff.next_delay(&mut peer.rng),
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        backoff.reset();
        sh.on_up(me, started.elapsed(), first);
        first = false;
        let end = serve(&mut peer, &mut plan, ws, &stop).await;
        // Acks of sends in flight on this socket will never come.
        let lost: Vec<u32> = peer.unacked.drain().collect();
        sh.ledger().abandon(me, lost);
        match end {
            End::Stopped => {
                sh.connected.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            End::Lost(why) => {
                sh.on_down(me, why);
                let wait = backoff.next_delay(&mut peer.rng);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Writes what the session queues, batching frames between flushes. Reading never waits
/// for writing (as in real clients, whose socket writes are buffered): a reader blocked
/// on a full send buffer would stop answering the broker, which then drops it.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<client::Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    while let Some(first) = rx.recv().await {
        let mut closing = matches!(first, Message::Close(_));
        if sink.feed(first).await.is_err() {
            return;
        }
        let mut n = 1;
        while n < BATCH && !closing {
            let Ok(m) = rx.try_recv() else { break };
            closing = matches!(m, Message::Close(_));
            if sink.feed(m).await.is_err() {
                return;
            }
            n += 1;
        }
        if sink.flush().await.is_err() || closing {
            return;
        }
    }
}

async fn serve(peer: &mut Peer, plan: &mut Plan, ws: client::Ws, stop: &CancellationToken) -> End {
    let (sink, mut stream) = ws.split();
    let (out, out_rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_loop(sink, out_rx));
    let end = session(peer, plan, &mut stream, &out, &mut writer, stop).await;
    if matches!(end, End::Stopped) {
        let _ = out.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "loadtest done".into(),
        })));
        drop(out);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
    }
    writer.abort();
    end
}

async fn session(
    peer: &mut Peer,
    plan: &mut Plan,
    stream: &mut futures_util::stream::SplitStream<client::Ws>,
    out: &mpsc::UnboundedSender<Message>,
    writer: &mut tokio::task::JoinHandle<()>,
    stop: &CancellationToken,
) -> End {
    let sh = peer.sh.clone();
    let mut replies: Vec<String> = Vec::new();
    loop {
        if !peer.go && sh.go.is_cancelled() {
            peer.go = true;
        }
        // Closed loop: fill the window.
        if peer.go
            && let Plan::Window { total, window } = *plan
        {
            while peer.seq < total && (window == 0 || (peer.unacked.len() as u32) < window) {
                let frame = peer.next_send(false, sh.now_us());
                if out.send(Message::text(frame)).is_err() {
                    return End::Lost("write failed".into());
                }
            }
        }
        peer.check_done(plan);
        for r in replies.drain(..) {
            if out.send(Message::text(r)).is_err() {
                return End::Lost("write failed".into());
            }
        }
        let paced = matches!(plan, Plan::Paced(_));
        let cmds = async {
            match plan {
                Plan::Paced(rx) => rx.recv().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return End::Stopped,
            _ = &mut *writer => return End::Lost("write failed".into()),
            _ = sh.go.cancelled(), if !peer.go => {}
            cmd = cmds, if paced && peer.go => {
                let Some(cmd) = cmd else { continue };
                let mut next = Some(cmd);
                let mut n = 0;
                while let Some(cmd) = next {
                    let frame = match cmd {
                        Cmd::Direct { due } => peer.next_send(false, due),
                        Cmd::Broadcast { due } => peer.next_send(true, due),
                    };
                    if out.send(Message::text(frame)).is_err() {
                        return End::Lost("write failed".into());
                    }
                    n += 1;
                    next = match plan {
                        Plan::Paced(rx) if n < BATCH => rx.try_recv().ok(),
                        _ => None,
                    };
                }
            }
            msg = stream.next() => {
                let mut next = Some(msg);
                let mut n = 0;
                while let Some(msg) = next {
                    match msg {
                        Some(Ok(Message::Text(t))) => peer.on_text(t.as_str(), &mut replies),
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map_or_else(
                                || "close without code".to_string(),
                                |f| format!("{} {}", u16::from(f.code), f.reason),
                            );
                            return End::Lost(why);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return End::Lost("dropped".into()),
                    }
                    n += 1;
                    next = if n < BATCH { stream.next().now_or_never() } else { None };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_blocks_split_peers_in_enrolment_order() {
        assert_eq!(mesh_block(0, 100, 250), (0, 100));
        assert_eq!(mesh_block(99, 100, 250), (0, 100));
        assert_eq!(mesh_block(100, 100, 250), (100, 200));
        assert_eq!(mesh_block(249, 100, 250), (200, 250));
        assert_eq!(mesh_block(3, u32::MAX, 10), (0, 10));
        assert_eq!(mesh_block(3, 0, 10), (3, 4));
    }

    #[test]
    fn source_addresses_move_on_after_a_block() {
        let s = SourceAddrs { per_address: 10 };
        assert_eq!(s.pick(9), None);
        assert_eq!(s.pick(10), Some(IpAddr::from([127, 0, 0, 3])));
        assert_eq!(s.pick(25), Some(IpAddr::from([127, 0, 0, 4])));
    }
}
