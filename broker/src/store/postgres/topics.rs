//! [`TopicStore`](crate::store::topics::TopicStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::topics::TopicStore;

#[async_trait]
impl TopicStore for PgStore {}
