//! The OpenAPI 3.1 document of REST v1, generated from [`super::routes::ROUTES`] (served at
//! `/api/v1/openapi.json`; no hand-kept copy exists).

use serde_json::{Map, Value, json};

use super::routes::{Issuer, ROUTES, Scope};

/// The framework's error shape (key layer and validation).
fn framework_error() -> Value {
    json!({
        "type": "object",
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "status": {"type": "integer"},
            "timestamp": {"type": "string"},
            "path": {"type": "string"}
        },
        "required": ["code", "message", "status", "timestamp", "path"]
    })
}

/// A route-level error: `{error, …}`.
fn route_error() -> Value {
    json!({
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"]
    })
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": json_content(schema)})
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut op = Map::new();
        op.insert("operationId".into(), json!(format!("{:?}", r.op)));
        op.insert("summary".into(), json!(r.summary));
        let mut notes = Vec::new();
        if let Some(cap) = r.cap {
            notes.push(format!("capability `{cap}` (or `admin`)"));
        }
        match r.scope {
            Scope::Path => notes.push("topic scope: the path's topic".into()),
            Scope::Body => notes.push("topic scope: the body's `topic`".into()),
            Scope::Filters => notes.push("filtered by the key's topic scope".into()),
            Scope::Unscoped => notes.push("needs an unscoped key".into()),
            Scope::None => {}
        }
        match r.issuer {
            Issuer::Required => notes.push("needs a key with an issuer".into()),
            Issuer::User => notes.push("needs an issuer with a user".into()),
            Issuer::Optional => {}
        }
        if !notes.is_empty() {
            op.insert("description".into(), json!(notes.join("; ")));
        }
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 64,
                                  "examples": ["general"]}})
            })
            .collect();
        for q in r.query {
            params.push(json!({"name": q.name, "in": "query", "required": false,
                                "description": q.doc, "schema": (q.schema)()}));
        }
        if r.stream {
            params.push(
                json!({"name": "Last-Event-ID", "in": "header", "required": false,
                               "description": "resume after this message id",
                               "schema": {"type": "string", "maxLength": 64}}),
            );
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = r.body {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": json_content(body())}),
            );
        }
        let mut responses = Map::new();
        if r.stream {
            responses.insert(
                "200".into(),
                json!({"description": "the event stream",
                       "content": {"text/event-stream": {"schema": (r.ok)()}}}),
            );
        } else {
            responses.insert("200".into(), response("success", (r.ok)()));
        }
        if r.auth {
            responses.insert(
                "401".into(),
                response("no, or an invalid, API key", framework_error()),
            );
            responses.insert(
                "403".into(),
                json!({"description": "capability missing or topic out of scope",
                       "content": json_content(json!({"oneOf": [framework_error(), route_error()]}))}),
            );
            responses.insert(
                "422".into(),
                response("the body or query failed validation", framework_error()),
            );
            responses.insert(
                "429".into(),
                response("too many failed key lookups", route_error()),
            );
            responses.insert(
                "503".into(),
                response("a backend is unavailable", route_error()),
            );
        }
        if r.body.is_some() {
            responses.insert("413".into(), response("body too large", route_error()));
        }
        if r.issuer != Issuer::Optional {
            responses.insert(
                "400".into(),
                response("the key has no issuer (or it has no user)", route_error()),
            );
        }
        for status in r.errors {
            responses
                .entry(status.to_string())
                .or_insert_with(|| response("refused by the route", route_error()));
        }
        op.insert("responses".into(), Value::Object(responses));
        if r.auth {
            op.insert("security".into(), json!([{"apiKey": []}]));
        } else {
            op.insert("security".into(), json!([]));
        }
        let path = format!("/api/v1{}", r.path);
        let entry = paths
            .entry(path)
            .or_insert_with(|| Value::Object(Map::new()));
        entry[r.method.to_lowercase()] = Value::Object(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "claudemesh broker REST v1",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST v1 for humans and bots (rest.md). Authenticate with `Authorization: Bearer cm_…`, an API key minted over WebSocket (`apikey_create`)."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key secret (cm_…)"}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_of_the_table() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for r in ROUTES {
            let op = &doc["paths"][format!("/api/v1{}", r.path)][r.method.to_lowercase()];
            assert!(
                op["responses"]["200"].is_object(),
                "{} {}",
                r.method,
                r.path
            );
        }
    }
}
