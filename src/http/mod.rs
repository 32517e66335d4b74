//! actix: the routes, one thin handler per door, the server, and what wraps every request
//! (request ids, the access log, CORS).

pub mod admin;
pub mod caller;
pub mod cors;
pub mod group_door;
pub mod handlers;
pub mod observe;
pub mod routes;
pub mod server;
