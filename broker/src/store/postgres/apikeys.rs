//! [`ApiKeyStore`](crate::store::apikeys::ApiKeyStore) on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::store::apikeys::ApiKeyStore;

#[async_trait]
impl ApiKeyStore for PgStore {}
