//! The `GET …/{id}` route that every provider's read of one stored object shares.

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
    routing::{get, MethodRouter},
};
use serde_json::Value;

use crate::{handle::Sandbox, state::State as SandboxState};

/// A `GET …/{id}` route: `authenticate` the request (its error is the reply), run
/// `lookup(state, id)` under the state lock, then reply `found(object)`, or `not_found(id)` when
/// there is no such object. Each provider passes its own functions, so each keeps its own
/// authentication and error shapes.
pub(crate) fn get_by_id<A: 'static>(
    authenticate: fn(&HeaderMap) -> Result<A, Response>,
    lookup: fn(&SandboxState, &str) -> Option<Value>,
    found: fn(Value) -> Response,
    not_found: fn(&str) -> Response,
) -> MethodRouter<Sandbox> {
    get(
        move |State(sb): State<Sandbox>, Path(id): Path<String>, headers: HeaderMap| async move {
            if let Err(resp) = authenticate(&headers) {
                return resp;
            }
            let object = lookup(&sb.lock(), &id);
            object.map_or_else(|| not_found(&id), found)
        },
    )
}
