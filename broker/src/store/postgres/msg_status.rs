//! [`MessageStatusStore`](crate::store::msg_status::MessageStatusStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::msg_status::MessageStatusStore;

#[async_trait]
impl MessageStatusStore for PgStore {}
