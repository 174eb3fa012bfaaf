//! [`StreamStore`](crate::store::streams::StreamStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::streams::StreamStore;

#[async_trait]
impl StreamStore for PgStore {}
