//! [`ClockStore`](crate::store::clocks::ClockStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::clocks::ClockStore;

#[async_trait]
impl ClockStore for PgStore {}
