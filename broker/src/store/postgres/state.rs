//! [`StateStore`](crate::store::state::StateStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::state::StateStore;

#[async_trait]
impl StateStore for PgStore {}
