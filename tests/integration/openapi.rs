//! `GET /api/openapi.json`: generated from the code, complete, with limits and error
//! shapes. (scripts/fuzz-api runs schemathesis against a live server with this spec.)

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{Api, spawn_app};

const OPERATIONS: &[&str] = &[
    "GET /healthz",
    "GET /readyz",
    "POST /api/auth/register",
    "POST /api/auth/login",
    "POST /api/auth/logout",
    "GET /api/auth/me",
    "PATCH /api/auth/me",
    "DELETE /api/auth/me",
    "GET /api/auth/me/export",
    "POST /api/auth/refresh",
    "POST /api/auth/password",
    "GET /api/auth/sessions",
    "DELETE /api/auth/sessions",
    "DELETE /api/auth/sessions/{id}",
    "GET /api/users",
    "GET /api/contacts",
    "GET /api/contacts/requests",
    "GET /api/contacts/blocked",
    "POST /api/contacts/requests",
    "POST /api/contacts/requests/{id}/accept",
    "POST /api/contacts/requests/{id}/decline",
    "DELETE /api/contacts/requests/{id}",
    "DELETE /api/contacts/{user_id}",
    "POST /api/contacts/{user_id}/block",
    "DELETE /api/contacts/{user_id}/block",
    "GET /api/conversations",
    "PUT /api/conversations/{id}/mute",
    "DELETE /api/conversations/{id}/mute",
    "GET /api/conversations/{id}/messages",
    "PATCH /api/messages/{id}",
    "DELETE /api/messages/{id}",
    "GET /api/search/messages",
    "POST /api/transfers",
    "GET /api/transfers/{id}",
    "PUT /api/transfers/{id}/chunks/{index}",
    "GET /api/files/{id}",
    "GET /api/files/{id}/thumbnail",
    "GET /api/notifications",
    "POST /api/notifications/{id}/read",
    "POST /api/notifications/read-all",
    "GET /api/notifications/stream",
];

#[tokio::test]
async fn the_spec_covers_every_route_with_errors_and_limits() {
    let app = spawn_app().await;
    let r = app.client().get(app.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let spec: Value = r.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));

    let mut found = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            let codes: BTreeSet<&str> = op["responses"].as_object().unwrap().keys().map(String::as_str).collect();
            assert!(codes.iter().any(|c| c.starts_with('2')), "{name} documents its success");
            if path.starts_with("/api/")
                && !path.starts_with("/api/auth/register")
                && !path.starts_with("/api/auth/login")
            {
                assert!(codes.contains("401"), "{name} documents 401");
            }
            if op["requestBody"]["content"]["application/json"].is_object() {
                for c in ["400", "413", "415"] {
                    assert!(codes.contains(c), "{name} documents {c}");
                }
            }
            for (code, resp) in op["responses"].as_object().unwrap() {
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                    assert!(
                        schema.as_str().is_some_and(|s| s.ends_with("ErrorBody")),
                        "{name} {code} uses the error shape"
                    );
                }
            }
            found.insert(name);
        }
    }
    let expected: BTreeSet<String> = OPERATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(found, expected, "the spec lists exactly the REST routes");

    // Limits are part of the schemas.
    let schemas = &spec["components"]["schemas"];
    let register = schemas.as_object().unwrap().iter().find(|(k, _)| k.ends_with("RegisterBody")).unwrap().1;
    assert_eq!(register["properties"]["username"]["maxLength"], 32);
    assert_eq!(register["properties"]["password"]["minLength"], 8);
    let error = schemas.as_object().unwrap().iter().find(|(k, _)| k.ends_with("ErrorDetail")).unwrap().1;
    assert_eq!(error["required"], serde_json::json!(["code", "message"]));
}

/// Names in the document are part of the API (generated clients use them): operations are
/// `<area>.<handler>`, unique, and schemas are named by type, never by the module the code
/// happens to live in, so moving code does not change the document.
#[tokio::test]
async fn operation_and_schema_names_do_not_depend_on_the_code_layout() {
    let app = spawn_app().await;
    let spec: Value = app.client().get(app.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut ids = BTreeSet::new();
    for ops in spec["paths"].as_object().unwrap().values() {
        for op in ops.as_object().unwrap().values() {
            let id = op["operationId"].as_str().expect("every operation has an id");
            let (area, handler) = id.split_once('.').expect("area.handler");
            assert!(!area.is_empty() && !handler.is_empty() && !handler.contains('.'), "{id}");
            assert!(ids.insert(id.to_owned()), "{id} twice");
        }
    }
    assert_eq!(ids.len(), OPERATIONS.len());
    for name in spec["components"]["schemas"].as_object().unwrap().keys() {
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "schema {name} is named by its type alone");
    }
}
