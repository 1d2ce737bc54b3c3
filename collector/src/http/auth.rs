//! Who is calling, and may they: every route asks here, through the [`Authed`] extractor (or
//! [`authenticate`], for the long-poll, which asks again at each wake-up).
//!
//! With the control plane (`--db`) a caller is a bearer token's (its role decides), or
//! `localhost`, a viewer, for a connection from the loopback without one; the token is looked
//! up on the blocking pool, since the database may be held by a change for a moment. Without
//! it, actions need the loopback or the `--api-token`, and so do reads from other hosts once an
//! `--api-token` is set. Secrets are compared as SHA-256 digests in constant time
//! ([`tapwire_control::auth::constant_time_eq`], the one comparison): equal lengths, so the time
//! tells nothing of the secret's length either.
//!
//! Every route authenticates its caller before it looks at its request: an anonymous client
//! gets 401 or 403, never a 400 that tells what the route would accept.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use tapwire_control::auth::{Caller, Need, constant_time_eq, hash};

use super::{ApiState, Peer, refused, reply};

/// The `--api-token`, kept as its SHA-256 only.
#[derive(Clone)]
pub struct ApiToken(Arc<[u8]>);

impl ApiToken {
    pub fn new(token: &str) -> ApiToken {
        ApiToken(Arc::from(hash(token)))
    }

    /// Whether `presented` is the token: digests of equal length compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(&self.0, &hash(presented))
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// What a route needs, as a type: `Authed<Read>`, `Authed<Change>`, ...
pub(crate) trait Needs: Send + Sync + 'static {
    const NEED: Need;
    /// Whether another collector of the fleet may call it with a peer token (as a viewer).
    const PEERS: bool = false;
}

/// Read sessions, flows, probes, stats, the audit log.
pub(crate) struct Read;
/// Change sessions, flows, probe limits; act on sessions.
pub(crate) struct Change;
/// The probe protocol.
pub(crate) struct Probe;
/// Tokens.
pub(crate) struct Admin;
/// Read a query's part or a live stream: viewers, and the fleet's other collectors.
pub(crate) struct ReadPart;

impl Needs for Read {
    const NEED: Need = Need::Read;
}
impl Needs for Change {
    const NEED: Need = Need::Change;
}
impl Needs for Probe {
    const NEED: Need = Need::Probe;
}
impl Needs for Admin {
    const NEED: Need = Need::Admin;
}
impl Needs for ReadPart {
    const NEED: Need = Need::Read;
    const PEERS: bool = true;
}

/// The caller of a route that needs `N`; extracting it refuses everyone else with the answer
/// they get. Routes that read a query or an action name take it first.
pub(crate) struct Authed<N>(pub Caller, pub PhantomData<N>);

impl<N: Needs> FromRequestParts<ApiState> for Authed<N> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Response> {
        let peer = match parts.extensions.get::<ConnectInfo<Peer>>() {
            Some(ConnectInfo(p)) => *p,
            None => {
                return Err(reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no peer address".into(),
                ));
            }
        };
        authenticate_as(s, peer, &parts.headers, N::NEED, N::PEERS)
            .await
            .map(|c| Authed(c, PhantomData))
    }
}

/// The caller, or the answer that refuses them.
pub(crate) async fn authenticate(
    s: &ApiState,
    peer: Peer,
    headers: &HeaderMap,
    need: Need,
) -> Result<Caller, Response> {
    authenticate_as(s, peer, headers, need, false).await
}

/// [`authenticate`]; with `peers`, a peer token of the fleet is a caller too (a viewer).
pub(crate) async fn authenticate_as(
    s: &ApiState,
    peer: Peer,
    headers: &HeaderMap,
    need: Need,
    peers: bool,
) -> Result<Caller, Response> {
    let loopback = peer.0.ip().to_canonical().is_loopback();
    let Some(ctl) = s.controller.as_ref().map(Arc::clone) else {
        return without_controller(s, loopback, headers, need)
            .map_err(|(code, message)| reply(code, message.into()));
    };
    let token = match bearer(headers) {
        Ok(t) => t.map(str::to_string),
        Err(m) => return Err(reply(StatusCode::UNAUTHORIZED, m)),
    };
    match tokio::task::spawn_blocking(move || {
        ctl.authenticate_as(token.as_deref(), loopback, need, peers)
    })
    .await
    {
        Ok(Ok(caller)) => Ok(caller),
        Ok(Err(r)) => Err(refused(r)),
        Err(e) => Err(reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Without the control plane: with an `--api-token`, reads from other hosts need it too (the
/// stream and the packet query serve payloads); without one, reads are open (other hosts reach
/// such an API only with `--allow-unauthenticated-api`). Actions need the loopback or the API
/// token (a malformed `Authorization` counts as none).
fn without_controller(
    s: &ApiState,
    loopback: bool,
    headers: &HeaderMap,
    need: Need,
) -> Result<Caller, (StatusCode, &'static str)> {
    match need {
        Need::Read => match (&s.token, bearer(headers).ok().flatten()) {
            (None, _) => Ok(Caller::localhost()),
            (Some(t), Some(b)) if t.matches(b) => Ok(Caller::system("api-token")),
            (Some(_), None) if loopback => Ok(Caller::localhost()),
            _ => Err((
                StatusCode::UNAUTHORIZED,
                "reads from another host need the API token (Authorization: Bearer TOKEN)",
            )),
        },
        Need::Change => {
            let authorised = match (&s.token, bearer(headers).ok().flatten()) {
                (Some(t), Some(b)) => t.matches(b),
                (_, Some(_)) => false,
                (_, None) => loopback,
            };
            if authorised {
                Ok(Caller::system("api-token"))
            } else {
                Err((
                    StatusCode::FORBIDDEN,
                    "actions need a localhost connection or the API token",
                ))
            }
        }
        Need::Probe | Need::Admin => Err((StatusCode::NOT_FOUND, "the control plane is off")),
    }
}

/// The `Authorization: Bearer` token, if any; another scheme is an error.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, String> {
    match headers.get(header::AUTHORIZATION) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Some(t.trim()))
            .ok_or_else(|| "Authorization: use \"Bearer <token>\"".to_string()),
    }
}
