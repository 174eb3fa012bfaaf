//! [`TaskStore`](crate::store::tasks::TaskStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::tasks::TaskStore;

#[async_trait]
impl TaskStore for PgStore {}
