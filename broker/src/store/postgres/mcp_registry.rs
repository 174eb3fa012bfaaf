//! [`McpServerStore`](crate::store::mcp_registry::McpServerStore) on PostgreSQL: table
//! `mcp_server`, one row per (mesh, server name), upserted.

use async_trait::async_trait;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::mcp_registry::{McpServerStore, StoredMcpServer};

#[async_trait]
impl McpServerStore for PgStore {
    async fn save_mcp_server(&self, s: StoredMcpServer) -> StoreResult<()> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO mcp_server (mesh_id, server_name, host_member_id, registration, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (mesh_id, server_name) DO UPDATE SET host_member_id = $3, \
             registration = $4, updated_at = $5",
            &[
                &s.mesh_id,
                &s.server_name,
                &s.host_member_id,
                &s.registration,
                &s.updated_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    async fn delete_mcp_server(&self, mesh_id: &str, server_name: &str) -> StoreResult<bool> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "DELETE FROM mcp_server WHERE mesh_id = $1 AND server_name = $2",
                &[&mesh_id, &server_name],
            )
            .await
            .map_err(pg_error)?;
        Ok(n > 0)
    }

    async fn mcp_servers(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<StoredMcpServer>> {
        let c = self.conn().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .query(
                "SELECT mesh_id, server_name, host_member_id, registration, updated_at \
                 FROM mcp_server WHERE mesh_id = $1 ORDER BY server_name COLLATE \"C\" LIMIT $2",
                &[&mesh_id, &limit],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| StoredMcpServer {
                mesh_id: r.get(0),
                server_name: r.get(1),
                host_member_id: r.get(2),
                registration: r.get(3),
                updated_at: r.get(4),
            })
            .collect())
    }
}
