//! [`ScheduleStore`](crate::store::schedule::ScheduleStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::schedule::ScheduleStore;

#[async_trait]
impl ScheduleStore for PgStore {}
