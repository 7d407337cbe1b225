//! The voice runtime's side of the api.

mod dispatches;
