//! What a run created through the operator API, and deleting it again at the end
//! (`DELETE /api/v1/meshes/{meshId}/members/{memberId}`, then `DELETE
//! /api/v1/meshes/{meshId}`), unless `--keep`.
//!
//! A 404 or 405 (a broker that predates the delete routes, or something already gone)
//! is a warning; any other answer, or no operator API reachable, fails the run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde_json::{Value, json};

use crate::client::Dial;
use crate::operator::{ApiConn, Deleted};

/// Meshes and members a run created, in creation order.
#[derive(Debug, Default)]
pub struct Created {
    inner: Mutex<Vec<(String, Vec<String>)>>,
}

impl Created {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Vec<String>)>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mesh(&self, id: &str) {
        self.lock().push((id.to_string(), Vec::new()));
    }

    pub fn member(&self, mesh: &str, id: &str) {
        let mut all = self.lock();
        match all.iter_mut().find(|(m, _)| m == mesh) {
            Some((_, members)) => members.push(id.to_string()),
            None => all.push((mesh.to_string(), vec![id.to_string()])),
        }
    }

    pub fn mesh_ids(&self) -> Vec<String> {
        self.lock().iter().map(|(m, _)| m.clone()).collect()
    }

    pub fn counts(&self) -> (usize, usize) {
        let all = self.lock();
        (all.len(), all.iter().map(|(_, m)| m.len()).sum())
    }
}

/// How the clean-up went.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub meshes_deleted: u64,
    pub members_deleted: u64,
    /// Not failures: 404/405 answers, summarised.
    pub warnings: Vec<String>,
    /// Failures: other answers, unreachable operator API.
    pub errors: Vec<String>,
    /// Meshes that may remain.
    pub left: Vec<String>,
}

impl Outcome {
    pub fn to_json(&self) -> Value {
        json!({
            "meshes_deleted": self.meshes_deleted,
            "members_deleted": self.members_deleted,
            "warnings": self.warnings,
            "errors": self.errors,
            "meshes_left": self.left,
        })
    }
}

/// Connects to the first operator API endpoint of `api` that answers.
async fn connect_any(api: &[Dial], token: &str) -> Result<ApiConn> {
    let mut last = None;
    for d in api {
        match ApiConn::connect(d, token).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no operator API URL")))
}

/// Deletes every member, then every mesh of `created`, over `parallel` connections.
pub async fn delete_all(api: &[Dial], token: &str, created: &Created, parallel: usize) -> Outcome {
    let all: Vec<(String, Vec<String>)> = created.lock().clone();
    let mut out = Outcome::default();
    if all.is_empty() {
        return out;
    }
    let members: Arc<Vec<(String, String)>> = Arc::new(
        all.iter()
            .flat_map(|(mesh, ms)| ms.iter().map(move |m| (mesh.clone(), m.clone())))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1).min(members.len().max(1)) {
        let conn = connect_any(api, token).await;
        let (members, next) = (members.clone(), next.clone());
        tasks.spawn(async move {
            let mut tally = (0u64, Vec::<u16>::new(), Vec::<String>::new());
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tally.2.push(format!("{e:#}"));
                    return tally;
                }
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((mesh, member)) = members.get(i) else {
                    break;
                };
                match conn
                    .delete(&format!("/api/v1/meshes/{mesh}/members/{member}"))
                    .await
                {
                    Ok(Deleted::Yes) => tally.0 += 1,
                    Ok(Deleted::Missing(status)) => tally.1.push(status),
                    Err(e) => tally.2.push(format!("{e:#}")),
                }
            }
            tally
        });
    }
    let mut missing: Vec<u16> = Vec::new();
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok((n, miss, errs)) => {
                out.members_deleted += n;
                missing.extend(miss);
                out.errors.extend(errs);
            }
            Err(e) => out.errors.push(format!("a clean-up task failed: {e}")),
        }
    }
    summarise(&mut out.warnings, "members", &missing);

    let mut missing = Vec::new();
    match connect_any(api, token).await {
        Err(e) => {
            out.errors.push(format!("{e:#}"));
            out.left = all.iter().map(|(m, _)| m.clone()).collect();
        }
        Ok(mut conn) => {
            for (mesh, _) in &all {
                match conn.delete(&format!("/api/v1/meshes/{mesh}")).await {
                    Ok(Deleted::Yes) => out.meshes_deleted += 1,
                    Ok(Deleted::Missing(status)) => {
                        missing.push(status);
                        out.left.push(mesh.clone());
                    }
                    Err(e) => {
                        out.errors.push(format!("{e:#}"));
                        out.left.push(mesh.clone());
                    }
                }
            }
        }
    }
    summarise(&mut out.warnings, "meshes", &missing);
    // Keep the error list short: one line per distinct text.
    out.errors.sort();
    out.errors.dedup();
    out
}

fn summarise(warnings: &mut Vec<String>, what: &str, statuses: &[u16]) {
    for status in [404u16, 405] {
        let n = statuses.iter().filter(|s| **s == status).count();
        if n > 0 {
            warnings.push(format!(
                "DELETE of {n} {what} answered {status}: already gone, or a broker without the operator API's delete routes"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_filed_under_their_mesh() {
        let c = Created::default();
        c.mesh("m1");
        c.member("m1", "a");
        c.member("m2", "b");
        c.member("m1", "c");
        assert_eq!(c.mesh_ids(), ["m1", "m2"]);
        assert_eq!(c.counts(), (2, 3));
        let mut w = Vec::new();
        summarise(&mut w, "members", &[404, 404, 405]);
        assert_eq!(w.len(), 2);
        assert!(
            w[0].starts_with("DELETE of 2 members answered 404"),
            "{w:?}"
        );
    }
}
