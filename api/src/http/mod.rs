//! What every route shares: the api's one error type ([`error`]), the
//! extractors that turn bad input into 4xx with a message ([`extract`]),
//! keyset paging ([`pagination`]), size caps ([`size_caps`]) and the OpenAPI
//! document ([`openapi`]).

pub mod error;
pub mod extract;
pub mod openapi;
pub mod pagination;
pub mod size_caps;
