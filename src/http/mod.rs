//! actix: the routes, one thin handler per door, the dashboard, the server, and what wraps every
//! request (request ids, the access log, CORS).

pub mod admin;
pub mod caller;
pub mod cors;
pub mod dashboard;
pub mod group_door;
pub mod handlers;
pub mod observe;
pub mod routes;
pub mod server;
