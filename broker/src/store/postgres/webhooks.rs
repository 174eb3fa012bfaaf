//! [`WebhookStore`](crate::store::webhooks::WebhookStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::webhooks::WebhookStore;

#[async_trait]
impl WebhookStore for PgStore {}
