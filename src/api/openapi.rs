//! The OpenAPI 3 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
        debug::sentry_test,
    ),
    modifiers(&BearerAuth)
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

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
