//! [`WatchStore`](crate::store::watches::WatchStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::watches::WatchStore;

#[async_trait]
impl WatchStore for PgStore {}
