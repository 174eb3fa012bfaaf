//! The audit chain's hashing rule (spec §7): pure functions, shared by every store backend.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prevHash` of the first entry of a mesh's chain.
pub const GENESIS: &str = "genesis";

/// Serialises `v` with object keys sorted, no whitespace, arrays in order, and non-ASCII
/// characters kept as UTF-8.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `sha256_hex(prevHash|meshId|eventType|actorMemberId|canonicalJson(payload)|createdAt)`.
pub fn entry_hash(
    prev_hash: &str,
    mesh_id: &str,
    event_type: &str,
    actor_member_id: Option<&str>,
    payload: &Value,
    created_at_iso: &str,
) -> String {
    let text = format!(
        "{prev_hash}|{mesh_id}|{event_type}|{}|{}|{created_at_iso}",
        actor_member_id.unwrap_or("null"),
        canonical_json(payload)
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_audit_chain_vectors() {
        let v: Value =
            serde_json::from_str(include_str!("../../tests/data/vectors.json")).expect("vectors");
        let chain = &v["audit_chain"];
        let mesh = chain["meshId"].as_str().expect("meshId");
        let mut prev = GENESIS.to_string();
        let entries = chain["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 3);
        for e in entries {
            assert_eq!(
                canonical_json(&e["payload"]),
                e["canonicalPayload"].as_str().expect("canonical")
            );
            assert_eq!(prev, e["prevHash"].as_str().expect("prevHash"));
            let hash = entry_hash(
                &prev,
                mesh,
                e["eventType"].as_str().expect("eventType"),
                e["actorMemberId"].as_str(),
                &e["payload"],
                e["createdAt"].as_str().expect("createdAt"),
            );
            assert_eq!(hash, e["hash"].as_str().expect("hash"));
            prev = hash;
        }
    }
}
