//! [`MemoriesStore`](crate::store::memories::MemoriesStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::memories::MemoriesStore;

#[async_trait]
impl MemoriesStore for PgStore {}
