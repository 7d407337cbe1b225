//! The OpenAPI document, generated from the handlers' annotations and served
//! at `GET /openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Voice agent control plane API",
        description = "Ops (`/internal`), client (`/client`) and runtime endpoints. \
                       Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    components(schemas(
        shared::error::ErrorBody,
        // What event webhooks send (docs/architecture.md#event-webhooks):
        // the body, and `data` of each event type.
        shared::webhooks::WebhookEvent,
        shared::webhooks::CallEventData,
        shared::webhooks::CallEndedData,
        shared::webhooks::RecordingReadyData,
        shared::webhooks::TranscriptReadyData,
        shared::webhooks::ToolExecutionFailedData,
        shared::webhooks::DispatchExpiredData,
        shared::webhooks::TestEventData,
    ))
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

/// Answers every operation can give besides its own: malformed bodies,
/// oversized bodies and a wrong content type are refused by the extractors
/// and layers before a handler runs.
///
/// Applied to the finished document (after every route is merged), not
/// through `#[openapi(modifiers)]`, which runs before the routes exist.
pub struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                responses
                    .entry("400".into())
                    .or_insert_with(|| error("malformed request"));
                if op.request_body.is_some() {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| error("body too large"));
                    responses
                        .entry("415".into())
                        .or_insert_with(|| error("body must be application/json"));
                }
                if op.security.is_some() {
                    responses
                        .entry("401".into())
                        .or_insert_with(|| error("missing or invalid bearer token"));
                    responses
                        .entry("403".into())
                        .or_insert_with(|| error("role or tenant not allowed"));
                }
            }
        }
    }
}
