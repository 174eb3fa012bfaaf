//! The durable state of API keys (extensions §10): `apikey_create`, `apikey_list`, `apikey_revoke`.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/apikeys.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl ApiKeyStore for MemoryStore {}
