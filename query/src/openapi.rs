//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hourglass query API",
        description = "Tenant-scoped reads over rollups, raw events and sessions. Every request carries `Authorization: Bearer <JWT>`; the token's project (and tenant) claims filter every query."
    ),
    paths(
        crate::rollups::metrics,
        crate::event_names::event_names,
        crate::raw::list,
        crate::raw::one,
        crate::raw::user_timeline,
        crate::sessions::sessions,
        crate::deletion::delete_user,
        crate::export::export_user,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "rollups", description = "rollup_5m / rollup_1h / rollup_1d"),
        (name = "raw events", description = "the `events` table"),
        (name = "sessions", description = "events grouped by session_id"),
        (name = "users", description = "deleting a user's data"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
