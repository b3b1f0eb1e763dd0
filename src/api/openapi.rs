//! The OpenAPI 3 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use super::{admin, auth, debug, health, me, rooms};

#[derive(OpenApi)]
#[openapi(
    info(title = "chatgw", description = "REST API of the chat gateway. The WebSocket protocol is described in protocol/README.md."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::ws_ticket,
        me::get_me, me::patch_me, me::delete_me, me::export_me, me::get_user,
        rooms::create_room, rooms::list_rooms, rooms::get_room, rooms::patch_room, rooms::delete_room,
        rooms::add_member, rooms::remove_member, rooms::history,
        health::healthz, health::readyz,
        admin::ban, admin::unban, admin::stats, admin::connections, admin::disconnect, admin::audit_log,
        admin::reset_history, admin::delete_message,
        debug::sentry_test,
    ),
    modifiers(&BearerAuth, &ServedAlso, &CommonErrors)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Routes served without a handler annotation of their own: the probes,
/// also under `/api/v1` (the same handlers), and this document. Every
/// routed path is documented (tests/openapi.rs compares the router's routes
/// with this document).
struct ServedAlso;

impl Modify for ServedAlso {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for probe in ["healthz", "readyz"] {
            let Some(mut item) = openapi.paths.paths.get(&format!("/{probe}")).cloned() else { continue };
            if let Some(op) = item.get.as_mut() {
                // Operation ids are unique in a document.
                op.operation_id = Some(format!("{probe}_v1"));
            }
            openapi.paths.paths.insert(format!("/api/v1/{probe}"), item);
        }
        let document = ObjectBuilder::new().schema_type(Type::Object).build();
        let ok = ResponseBuilder::new()
            .description("This document (OpenAPI 3)")
            .content("application/json", ContentBuilder::new().schema(Some(document)).build())
            .build();
        let op = OperationBuilder::new().operation_id(Some("openapi")).tag("meta").response("200", ok).build();
        openapi.paths.paths.insert("/api/v1/openapi.json".into(), PathItem::new(HttpMethod::Get, op));
    }
}

/// The error answers that come from the shared layers rather than from a
/// handler, added to every operation they can reach so that the document
/// lists every status a client can see (schemathesis checks it, see
/// tests/schemathesis.rs):
/// - 401 `unauthorized`: the bearer token extractor, on secured operations;
/// - 400 `bad_request`: a malformed path, query or header parameter (ids are
///   checked before any lookup), or a malformed JSON body;
/// - 413 `too_large` and 415 `unsupported_media_type`: the JSON body
///   extractor and the body limit;
/// - 408 `timeout`, 500 `internal` and 503 `unavailable` (the database is
///   down, or the instance is draining): anything under `/api/v1`.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/api/v1/");
            for op in
                [&mut item.get, &mut item.post, &mut item.patch, &mut item.delete, &mut item.put].into_iter().flatten()
            {
                add_common_errors(op, api);
            }
        }
    }
}

/// Every path parameter is an id, checked before any lookup (400 otherwise).
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

fn add_common_errors(op: &mut Operation, api: bool) {
    for p in op.parameters.iter_mut().flatten().filter(|p| p.parameter_in == ParameterIn::Path) {
        p.schema = Some(RefOr::T(Schema::Object(
            ObjectBuilder::new().schema_type(Type::String).pattern(Some(ID_PATTERN)).build(),
        )));
    }
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut add = |status: &str, when: bool, description: &str| {
        if when && !op.responses.responses.contains_key(status) {
            op.responses.responses.insert(status.to_owned(), error_response(description));
        }
    };
    add("400", has_body || has_params, "bad_request: a malformed parameter or body");
    add("401", secured, "unauthorized: missing, invalid or expired bearer token");
    add("408", api, "timeout: the request did not finish within REQUEST_TIMEOUT_SECS");
    add("413", has_body, "too_large: the body is over MAX_BODY_BYTES");
    add("415", has_body, "unsupported_media_type: the body is not application/json");
    add("500", api, "internal: an unexpected failure (logged, never detailed)");
    add("503", api, "unavailable: the database is unreachable or the instance is draining");
}

fn error_response(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
