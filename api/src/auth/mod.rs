//! Who may call: `/auth/*` and the development token ([`routes`]), the
//! login and first-admin throttle ([`login_throttle`]) keyed on the client's
//! address ([`client_addr`]), and password hashing ([`password`]).

pub mod client_addr;
pub mod login_throttle;
pub mod password;
pub mod routes;
