//! The direct-message queue on PostgreSQL: group commit of sends, batched `client_ack`s,
//! lease claims and the TTL sweep.

use std::collections::HashSet;
use std::future::Future;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{PgStore, db_error, pg_error};
use crate::protocol::Priority;
use crate::store::{Claim, MessageRef, QueueStore, QueuedMessage, StoreError, StoreResult};

/// Most rows one batch writes.
const MAX_BATCH: usize = 512;
/// Submissions waiting for a batch; beyond it callers wait (backpressure).
const QUEUE_BOUND: usize = 8192;

/// A submission: the item, where its result goes, and the submitter's span (the batch's
/// span joins the first submitter's trace and links to the others').
type Pending<T, R> = (
    T,
    oneshot::Sender<StoreResult<R>>,
    Option<opentelemetry::trace::SpanContext>,
);

/// The store's metrics, set once the broker wires them (tests run without).
pub(super) type Metrics = std::sync::Arc<std::sync::OnceLock<super::StoreMetrics>>;

/// A pooled connection, with the wait recorded.
pub(super) async fn timed_get(
    pool: &Pool,
    metrics: &Metrics,
) -> StoreResult<deadpool_postgres::Object> {
    let started = std::time::Instant::now();
    let conn = pool.get().await.map_err(db_error);
    if let Some(m) = metrics.get() {
        m.pool_wait_seconds.observe(started.elapsed().as_secs_f64());
    }
    conn
}

/// Gathers concurrent submissions into batches: a task takes everything that arrived
/// while the previous batch was being written and writes it with one statement.
pub(super) struct Batcher<T, R> {
    tx: mpsc::Sender<Pending<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// `write` gets the batch and returns one result per item, in order, or one error for
    /// the whole batch.
    pub(super) fn spawn<F, Fut>(pool: Pool, metrics: Metrics, write: F) -> Self
    where
        F: Fn(deadpool_postgres::Object, Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = StoreResult<Vec<R>>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Pending<T, R>>(QUEUE_BOUND);
        // What a batch writes (`QueuedMessage`, `AckItem`, …), for its span.
        let what = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("batch");
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let mut items = Vec::with_capacity(batch.len());
                let mut replies = Vec::with_capacity(batch.len());
                let mut submitters = Vec::with_capacity(batch.len());
                for (item, reply, submitter) in batch {
                    items.push(item);
                    replies.push(reply);
                    submitters.push(submitter);
                }
                if let Some(m) = metrics.get() {
                    m.batch_rows.observe(items.len() as f64);
                }
                let span = crate::telemetry::db_batch_span(what, &submitters);
                let conn =
                    tracing::Instrument::instrument(timed_get(&pool, &metrics), span.clone()).await;
                let written = match conn {
                    Ok(conn) => {
                        tracing::Instrument::instrument(write(conn, items), span.clone()).await
                    }
                    Err(e) => Err(e),
                };
                if written.is_err() {
                    span.record("otel.status_code", "error");
                }
                drop(span);
                match written {
                    Ok(results) => {
                        for (reply, r) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(r));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Batcher { tx }
    }

    /// Submits several items at once (they go into the same batch unless it is full) and
    /// waits for each result, in order.
    pub(super) async fn submit_all(&self, items: Vec<T>) -> Vec<StoreResult<R>> {
        let stopped = || StoreError::Unavailable("store writer has stopped".into());
        let mut waiting = Vec::with_capacity(items.len());
        for item in items {
            let (reply, rx) = oneshot::channel();
            let sent = self
                .tx
                .send((item, reply, crate::telemetry::submitter()))
                .await;
            waiting.push(sent.ok().map(|()| rx));
        }
        let mut results = Vec::with_capacity(waiting.len());
        for rx in waiting {
            results.push(match rx {
                Some(rx) => rx.await.unwrap_or_else(|_| Err(stopped())),
                None => Err(stopped()),
            });
        }
        results
    }

    pub(super) async fn submit(&self, item: T) -> StoreResult<R> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((item, reply, crate::telemetry::submitter()))
            .await
            .map_err(|_| StoreError::Unavailable("store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer has stopped".into()))?
    }
}

/// Writes one batch of sends; each item answers the `messageId` it is known by (its own,
/// or an earlier send's with the same sender and `client_message_id`), `None` when a
/// concurrent writer holds its key uncommitted. A failure after the statement may have
/// reached the server is [`StoreError::OutcomeUnknown`]: the commit may have happened.
pub(super) async fn insert_batch(
    c: deadpool_postgres::Object,
    batch: Vec<QueuedMessage>,
) -> StoreResult<Vec<Option<String>>> {
    let stmt = c
        .prepare_cached(include_str!("sql/enqueue.sql"))
        .await
        .map_err(pg_error)?;
    let col = |f: fn(&QueuedMessage) -> String| batch.iter().map(f).collect::<Vec<String>>();
    let opt = |f: fn(&QueuedMessage) -> Option<String>| {
        batch.iter().map(f).collect::<Vec<Option<String>>>()
    };
    let created: Vec<i64> = batch.iter().map(|m| m.created_at).collect();
    let rows = c
        .query(
            &stmt,
            &[
                &col(|m| m.id.clone()),
                &col(|m| m.mesh_id.clone()),
                &col(|m| m.sender_member_id.clone()),
                &col(|m| m.sender_pubkey.clone()),
                &col(|m| m.sender_member_pubkey.clone()),
                &col(|m| m.sender_name.clone()),
                &col(|m| m.target_member_id.clone()),
                &opt(|m| m.target_session_key.clone()),
                &col(|m| m.priority.as_str().to_string()),
                &col(|m| m.nonce.clone()),
                &col(|m| m.ciphertext.clone()),
                &opt(|m| m.client_message_id.clone()),
                &created,
                &opt(|m| m.trace.clone()),
                &opt(|m| m.subtype.clone()),
            ],
        )
        .await
        .map_err(commit_error)?;
    let mut ids: Vec<Option<String>> = vec![None; batch.len()];
    for r in &rows {
        let ord = r.get::<_, i64>(0);
        if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| ids.get_mut(i)) {
            *slot = r.get::<_, Option<String>>(1);
        }
    }
    Ok(ids)
}

/// The error of an autocommit write that was sent to the server. An error the server
/// reported for the statement itself (constraint, syntax, serialization) means it rolled
/// back. A broken connection, a shutdown or crash of the server (SQLSTATE classes 08, 57,
/// 58, XX) may come after the commit record was written: the outcome is unknown.
fn commit_error(e: tokio_postgres::Error) -> StoreError {
    let definite = e.code().is_some_and(|c| {
        !["08", "57", "58", "XX"]
            .iter()
            .any(|class| c.code().starts_with(class))
    });
    if definite {
        pg_error(e)
    } else {
        StoreError::OutcomeUnknown(e.to_string())
    }
}

/// After [`StoreError::OutcomeUnknown`]: the `messageId` the send is known by if it (or
/// an earlier send with its key) committed, on a fresh connection.
pub(super) async fn resolve_send(
    store: &PgStore,
    m: &QueuedMessage,
) -> StoreResult<Option<String>> {
    let rows = store
        .query(
            "SELECT id FROM message_queue WHERE id = $1 \
             UNION ALL SELECT message_id FROM message_dedup \
             WHERE sender_member_id = $2 AND client_message_id = $3 LIMIT 1",
            &[&m.id, &m.sender_member_id, &m.client_message_id],
        )
        .await?;
    Ok(rows.first().map(|r| r.get::<_, String>(0)))
}

/// One `client_ack`.
pub(super) struct AckItem {
    pub member_id: String,
    pub id: String,
    pub by_client_id: bool,
}

pub(super) async fn ack_batch(
    c: deadpool_postgres::Object,
    batch: Vec<AckItem>,
) -> StoreResult<Vec<bool>> {
    let mut marked: [HashSet<(String, String)>; 2] = Default::default();
    for (by_client, sql) in [
        (false, include_str!("sql/ack_by_id.sql")),
        (true, include_str!("sql/ack_by_client_id.sql")),
    ] {
        let (ids, members): (Vec<String>, Vec<String>) = batch
            .iter()
            .filter(|a| a.by_client_id == by_client)
            .map(|a| (a.id.clone(), a.member_id.clone()))
            .unzip();
        if ids.is_empty() {
            continue;
        }
        let stmt = c.prepare_cached(sql).await.map_err(pg_error)?;
        let rows = c.query(&stmt, &[&ids, &members]).await.map_err(pg_error)?;
        let found: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        for (id, member) in ids.into_iter().zip(members) {
            if found.contains(&id) {
                marked[usize::from(by_client)].insert((id, member));
            }
        }
    }
    Ok(batch
        .iter()
        .map(|a| marked[usize::from(a.by_client_id)].contains(&(a.id.clone(), a.member_id.clone())))
        .collect())
}

/// One pushed message whose lease is to be recorded.
pub(super) struct LeaseItem {
    pub member_id: String,
    pub id: String,
    pub now_ms: i64,
    pub until_ms: i64,
}

/// Records the leases of a batch of messages pushed without a claim, in one statement;
/// `true` for each item leased.
pub(super) async fn lease_batch(
    c: deadpool_postgres::Object,
    batch: Vec<LeaseItem>,
) -> StoreResult<Vec<bool>> {
    let stmt = c
        .prepare_cached(include_str!("sql/lease_pushed.sql"))
        .await
        .map_err(pg_error)?;
    let ids: Vec<&str> = batch.iter().map(|l| l.id.as_str()).collect();
    let members: Vec<&str> = batch.iter().map(|l| l.member_id.as_str()).collect();
    let now: Vec<i64> = batch.iter().map(|l| l.now_ms).collect();
    let until: Vec<i64> = batch.iter().map(|l| l.until_ms).collect();
    let rows = c
        .query(&stmt, &[&ids, &members, &now, &until])
        .await
        .map_err(pg_error)?;
    let leased: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    Ok(batch.iter().map(|l| leased.contains(&l.id)).collect())
}

pub(super) async fn claim(store: &PgStore, c: Claim<'_>) -> StoreResult<Vec<QueuedMessage>> {
    let limit = c.limit as i64;
    let lease_end = c.now_ms + c.lease_ms;
    let rows = store
        .query(
            include_str!("sql/claim.sql"),
            &[
                &c.mesh_id,
                &c.member_id,
                &c.session_key,
                &c.all_priorities,
                &c.steal,
                &c.now_ms,
                &lease_end,
                &limit,
            ],
        )
        .await?;
    let mut claimed: Vec<(i64, QueuedMessage)> = rows
        .iter()
        .map(|r| {
            let priority = match r.get::<_, &str>("priority") {
                "now" => Priority::Now,
                "low" => Priority::Low,
                _ => Priority::Next,
            };
            let message = QueuedMessage {
                id: r.get("id"),
                mesh_id: r.get("mesh_id"),
                sender_member_id: r.get("sender_member_id"),
                sender_pubkey: r.get("sender_pubkey"),
                sender_member_pubkey: r.get("sender_member_pubkey"),
                sender_name: r.get("sender_name"),
                target_member_id: r.get("target_member_id"),
                target_session_key: r.get("target_session_key"),
                priority,
                nonce: r.get("nonce"),
                ciphertext: r.get("ciphertext"),
                client_message_id: r.get("client_message_id"),
                created_at: r.get("created_at"),
                subtype: r.get("subtype"),
                trace: r.get("trace_context"),
            };
            (r.get::<_, i64>("seq"), message)
        })
        .collect();
    // RETURNING has no order of its own.
    claimed.sort_by_key(|(seq, _)| *seq);
    Ok(claimed.into_iter().map(|(_, m)| m).collect())
}

pub(super) async fn sweep(store: &PgStore, before_ms: i64) -> StoreResult<u64> {
    // Confirmed messages are deleted at their client_ack; only the undelivered expire here.
    let swept = store
        .execute(
            "DELETE FROM message_queue WHERE delivered_at IS NULL AND created_at < $1",
            &[&before_ms],
        )
        .await?;
    // Idempotency keys live as long as an undelivered message could.
    store
        .execute(
            "DELETE FROM message_dedup WHERE created_at < $1",
            &[&before_ms],
        )
        .await?;
    Ok(swept)
}

#[async_trait]
impl QueueStore for PgStore {
    async fn enqueue(&self, message: QueuedMessage) -> StoreResult<String> {
        let unresolved = match self.enqueuer.submit(message.clone()).await {
            Ok(Some(id)) => return Ok(id),
            // A concurrent send with the same key has not committed yet.
            Ok(None) => "a send with this client_message_id is in flight".to_string(),
            Err(StoreError::OutcomeUnknown(e)) => e,
            Err(e) => return Err(e),
        };
        // The commit may have happened: answer what the database says now, or that the
        // outcome is unknown (the client retries with the same client_message_id).
        match resolve_send(self, &message).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) | Err(_) => Err(StoreError::OutcomeUnknown(format!(
                "{unresolved}; the message may have been queued: retry with the same client_message_id"
            ))),
        }
    }

    async fn claim(&self, c: Claim<'_>) -> StoreResult<Vec<QueuedMessage>> {
        claim(self, c).await
    }

    async fn lease_pushed(
        &self,
        _mesh_id: &str,
        member_id: &str,
        ids: &[String],
        now_ms: i64,
        until_ms: i64,
    ) -> StoreResult<Vec<String>> {
        let items = ids
            .iter()
            .map(|id| LeaseItem {
                member_id: member_id.into(),
                id: id.clone(),
                now_ms,
                until_ms,
            })
            .collect();
        let results = self.leaser.submit_all(items).await;
        let mut leased = Vec::new();
        for (id, r) in ids.iter().zip(results) {
            if r? {
                leased.push(id.clone());
            }
        }
        Ok(leased)
    }

    async fn mark_delivered(
        &self,
        _mesh_id: &str,
        member_id: &str,
        message: MessageRef<'_>,
    ) -> StoreResult<bool> {
        let item = match message {
            MessageRef::Broker(id) => AckItem {
                member_id: member_id.into(),
                id: id.into(),
                by_client_id: false,
            },
            MessageRef::Client(id) => AckItem {
                member_id: member_id.into(),
                id: id.into(),
                by_client_id: true,
            },
        };
        self.acker.submit(item).await
    }

    async fn sweep_expired(&self, before_ms: i64) -> StoreResult<u64> {
        sweep(self, before_ms).await
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        let rows = self
            .query(
                "SELECT count(*) FROM message_queue WHERE delivered_at IS NULL",
                &[],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| r.get::<_, i64>(0).max(0) as u64)
            .unwrap_or(0))
    }
}
