//! The OpenAPI 3.1 document of REST v1 (`/api/v1/openapi.json`) holds against a running
//! dev-mode broker with a real API key: property-based requests generated from the
//! document itself never get a 5xx, and every response has a declared status and matches
//! its declared schema.
//!
//! Two generators: a small one here, and schemathesis from PyPI, whose binary
//! `REST_SCHEMATHESIS` must name (`./scripts/test` and `./scripts/check-rest-api` install it
//! into a venv and set it, as `./scripts/check-deploy` does for its tools).
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use serde_json::{Map, Value, json};

/// A tiny deterministic PRNG (xorshift), so a failure is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Strings a generator draws from: names that exist, near-misses and hostile ones.
const WORDS: &[&str] = &[
    "general",
    "ops",
    "x",
    "a b",
    "%00",
    "💥",
    "@alice",
    "../..",
    "' OR 1=1",
    "null",
    "0",
    "2025-01-01T00:00:00Z",
    "not-a-time",
];

fn gen_string(rng: &mut Rng, schema: &Value) -> String {
    if let Some(pattern) = schema["pattern"].as_str()
        && pattern.contains("[0-9a-fA-F]{64}")
    {
        return (0..64)
            .map(|_| char::from(b"0123456789abcdef"[rng.below(16) as usize]))
            .collect();
    }
    if schema["format"] == "date-time" && !rng.chance(4) {
        return broker::ids::iso8601_ms(1_700_000_000_000 + rng.below(1 << 40) as i64);
    }
    let mut s = WORDS[rng.below(WORDS.len() as u64) as usize].to_string();
    if rng.chance(3) {
        s = STANDARD.encode(format!("hi @alice {}", rng.next()));
    }
    let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
    let max = schema["maxLength"].as_u64().unwrap_or(u64::MAX) as usize;
    while s.chars().count() < min {
        s.push('a');
    }
    s.chars().take(max.max(min)).collect()
}

/// A value for `schema`: valid most of the time, sometimes not (the broker must answer
/// 4xx, never 5xx).
fn generate(rng: &mut Rng, schema: &Value) -> Value {
    if rng.chance(12) {
        return [json!(null), json!(-1), json!("zz"), json!([]), json!({})][rng.below(5) as usize]
            .clone();
    }
    if let Some(e) = schema["enum"].as_array() {
        return e[rng.below(e.len() as u64) as usize].clone();
    }
    let ty = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts[rng.below(ts.len() as u64) as usize]
            .as_str()
            .unwrap()
            .to_string(),
        _ => "string".into(),
    };
    match ty.as_str() {
        "integer" => {
            let lo = schema["minimum"].as_i64().unwrap_or(-5);
            let hi = schema["maximum"].as_i64().unwrap_or(300);
            json!(lo + rng.below((hi - lo + 1) as u64) as i64)
        }
        "boolean" => json!(rng.chance(2)),
        "null" => Value::Null,
        "array" => {
            let min = schema["minItems"].as_u64().unwrap_or(0);
            let max = schema["maxItems"].as_u64().unwrap_or(4).min(4);
            let n = min + rng.below(max.saturating_sub(min) + 1);
            let items = &schema["items"];
            Value::Array((0..n).map(|_| generate(rng, items)).collect())
        }
        "object" => {
            let mut o = Map::new();
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    if (required.contains(&k.as_str()) && !rng.chance(10)) || rng.chance(2) {
                        o.insert(k.clone(), generate(rng, v));
                    }
                }
            }
            Value::Object(o)
        }
        _ => json!(gen_string(rng, schema)),
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// Validates `v` against the JSON-schema subset the document uses; the first problem.
fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(options) = schema["oneOf"].as_array() {
        return if options.iter().any(|s| validate(s, v, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: matches none of oneOf"))
        };
    }
    let ok = match &schema["type"] {
        Value::String(t) => type_ok(t, v),
        Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)),
        _ => true,
    };
    if !ok {
        return Err(format!("{at}: {v} is not of type {}", schema["type"]));
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} not in {e:?}"));
    }
    if let (Some(props), Some(o)) = (schema["properties"].as_object(), v.as_object()) {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !o.contains_key(r) {
                return Err(format!("{at}: missing {r}"));
            }
        }
        for (k, s) in props {
            if let Some(x) = o.get(k) {
                validate(s, x, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            validate(items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A dev-mode broker with a mesh, an admin member with a user behind it, a topic with a
/// few posts, and an unscoped `admin` key of that member.
async fn fixture() -> (Broker, String, Client) {
    let b = Broker::start(&[
        ("BROKER_SEND_BURST", "0"),
        ("REST_AUTH_FAILURES_PER_MIN", "0"),
    ]);
    let mesh = b.create_mesh("openapi", Some("user-1"));
    let alice = member(
        &b,
        &mesh,
        "alice",
        json!({"role": "admin", "userId": "user-1"}),
    );
    let (mut c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let t = c
        .request(json!({"type": "topic_create", "name": "general"}))
        .await;
    assert_eq!(t["type"], "topic_created", "{t}");
    let k = c
        .request(json!({"type": "apikey_create", "label": "openapi", "capabilities": ["admin"]}))
        .await;
    let secret = k["secret"].as_str().unwrap().to_string();
    for i in 0..3 {
        let body = json!({"topic": "general", "ciphertext": STANDARD.encode(format!("hello {i} @alice")),
                          "nonce": STANDARD.encode("n")});
        let (st, v) = http(
            b.addr,
            "POST",
            "/api/v1/messages",
            Some(&secret),
            Some(&body.to_string()),
        )
        .unwrap();
        assert_eq!(st, 200, "{v}");
    }
    (b, secret, c)
}

#[tokio::test]
async fn generated_requests_get_no_5xx_and_responses_match_the_document() {
    let (b, secret, _c) = fixture().await;
    let (st, text) = http(b.addr, "GET", "/api/v1/openapi.json", None, None).unwrap();
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if path.ends_with("/stream") {
                continue; // an endless body; covered by tests/rest_api.rs
            }
            for round in 0..40 {
                let mut url = path.clone();
                let mut query = Vec::new();
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let v = generate(&mut rng, &p["schema"]);
                    let v = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    match p["in"].as_str().unwrap() {
                        "path" => {
                            let v = if rng.chance(2) {
                                "general".to_string()
                            } else {
                                v
                            };
                            let v = if v.is_empty() { "x".into() } else { v };
                            url = url.replace(
                                &format!("{{{}}}", p["name"].as_str().unwrap()),
                                &encode_component(&v),
                            );
                        }
                        "query" if rng.chance(2) => {
                            query.push(format!(
                                "{}={}",
                                p["name"].as_str().unwrap(),
                                encode_component(&v)
                            ));
                        }
                        _ => {}
                    }
                }
                if !query.is_empty() {
                    url = format!("{url}?{}", query.join("&"));
                }
                let body = op["requestBody"]["content"]["application/json"]["schema"]
                    .as_object()
                    .map(|_| {
                        generate(
                            &mut rng,
                            &op["requestBody"]["content"]["application/json"]["schema"],
                        )
                        .to_string()
                    });
                // Some rounds without the key: the key layer's answers are documented too.
                let auth = if round % 10 == 9 {
                    None
                } else {
                    Some(secret.as_str())
                };
                let (status, text) =
                    http(b.addr, &method.to_uppercase(), &url, auth, body.as_deref()).unwrap();
                let what = format!(
                    "{} {url} {}",
                    method.to_uppercase(),
                    body.as_deref().unwrap_or("")
                );
                assert!(status < 500, "{what} → {status} {text}");
                let declared = &op["responses"][status.to_string()];
                assert!(
                    declared.is_object(),
                    "{what} → undeclared status {status} {text}"
                );
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{what} → not JSON ({e}): {text}"));
                if let Err(e) = validate(
                    &declared["content"]["application/json"]["schema"],
                    &value,
                    "body",
                ) {
                    panic!("{what} → {status} does not match its schema: {e}\n{text}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "{checked}");
    let m = b.metrics();
    assert_eq!(metric(&m, "broker_rest_streams_open"), 0.0);
}

#[tokio::test]
async fn schemathesis_finds_no_5xx_and_no_schema_violation() {
    let bin = std::env::var("REST_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!(
            "REST_SCHEMATHESIS is unset: run the suite with ./scripts/test, or this test with \
             ./scripts/check-rest-api (both install schemathesis into a venv and set it)"
        )
    });
    let (b, secret, _c) = fixture().await;
    let url = format!("http://{}/api/v1/openapi.json", b.addr);
    let out = tokio::process::Command::new(bin)
        .args([
            "run",
            &url,
            "--header",
            &format!("Authorization: Bearer {secret}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--exclude-operation-id",
            "TopicStream",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "30",
            "--workers",
            "1",
            "--seed",
            "1",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}"
    );
}
