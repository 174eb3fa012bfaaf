//! The audit chain's hashing rule (spec §7): pure functions, shared by every store backend.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prevHash` of the first entry of a mesh's chain.
pub const GENESIS: &str = "genesis";

/// Serialises `v` with object keys sorted, no whitespace, arrays in order, and non-ASCII
/// characters kept as UTF-8.
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    // Only JSON text (valid UTF-8) was written.
    String::from_utf8(out).unwrap_or_default()
}

/// Keys and scalars are written by `serde_json` itself (as `Value`'s `Display` would),
/// straight into `out`, without a `String` per key or scalar.
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// Everything an entry's hash covers after its `prevHash`:
/// `|meshId|eventType|actorMemberId|canonicalJson(payload)|createdAt`. It does not depend
/// on the chain, so a batch computes it before taking the chain's lock.
pub fn entry_suffix(
    mesh_id: &str,
    event_type: &str,
    actor_member_id: Option<&str>,
    payload: &Value,
    created_at_iso: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for part in [mesh_id, event_type, actor_member_id.unwrap_or("null")] {
        out.push(b'|');
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'|');
    write_canonical(payload, &mut out);
    out.push(b'|');
    out.extend_from_slice(created_at_iso.as_bytes());
    out
}

/// The hash of the entry after `prev_hash` whose [`entry_suffix`] is `suffix`.
pub fn chain_hash(prev_hash: &str, suffix: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(suffix);
    hex::encode(h.finalize())
}

/// `createdAt` texts for a batch of entries: [`crate::ids::iso8601_ms`], with the
/// calendar part computed once per second rather than once per entry.
#[derive(Debug, Default)]
pub struct IsoDates {
    /// The epoch second and its text up to the `.` (included).
    second: Option<(i64, String)>,
    text: String,
}

impl IsoDates {
    /// The ISO 8601 text of `epoch_ms`, valid until the next call.
    pub fn format(&mut self, epoch_ms: i64) -> &str {
        let (secs, ms) = (epoch_ms.div_euclid(1000), epoch_ms.rem_euclid(1000));
        let prefix = match &self.second {
            Some((s, prefix)) if *s == secs => prefix,
            _ => {
                let mut whole = crate::ids::iso8601_ms(secs * 1000);
                whole.truncate(whole.len() - "000Z".len());
                &self.second.insert((secs, whole)).1
            }
        };
        self.text.clear();
        self.text.push_str(prefix);
        let digits = [ms / 100, ms / 10 % 10, ms % 10].map(|d| char::from(b'0' + d as u8));
        self.text.extend(digits);
        self.text.push('Z');
        &self.text
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
    let suffix = entry_suffix(
        mesh_id,
        event_type,
        actor_member_id,
        payload,
        created_at_iso,
    );
    chain_hash(prev_hash, &suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_escapes_like_serde_json() {
        let v = serde_json::json!({"b": [1, 2.5, null, true], "a": {"y\"\u{e9}\n": "x\u{1}", "x": -3},
            "c": "\u{2028}"});
        assert_eq!(
            canonical_json(&v),
            "{\"a\":{\"x\":-3,\"y\\\"\u{e9}\\n\":\"x\\u0001\"},\"b\":[1,2.5,null,true],\"c\":\"\u{2028}\"}"
        );
    }

    #[test]
    fn iso_dates_are_iso8601_ms() {
        let mut dates = IsoDates::default();
        let starts = [0, 1_764_547_199_000, -86_400_000, 951_782_400_000, -1];
        for start in starts {
            for ms in (start - 1500..start + 2500).step_by(7) {
                assert_eq!(dates.format(ms), crate::ids::iso8601_ms(ms), "{ms}");
            }
        }
    }

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
            // The text the spec hashes, spelled out.
            let text = format!(
                "{prev}|{mesh}|{}|{}|{}|{}",
                e["eventType"].as_str().expect("eventType"),
                e["actorMemberId"].as_str().unwrap_or("null"),
                e["canonicalPayload"].as_str().expect("canonical"),
                e["createdAt"].as_str().expect("createdAt")
            );
            assert_eq!(hash, hex::encode(Sha256::digest(text.as_bytes())));
            prev = hash;
        }
    }
}
