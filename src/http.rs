//! The one `service_fn`: routing by method and path, CORS and the headers
//! every answer carries, JSON bodies, error replies, and one function per
//! endpoint. There is no access log: docs/operations.md ("Logs") says why and how to
//! see requests.

use crate::auth::Auth;
use crate::hub::{self, Body};
use crate::store::{Changes, Event, MAX_USERNAME, Store, User};
use crate::{config::Config, error::Error, error::ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode, http::response::Builder};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::{convert::Infallible, net::IpAddr, sync::Arc, time::Duration};
use tokio::task::block_in_place;
use unicode_properties::{GeneralCategory::Format, UnicodeGeneralCategory};

type HttpRequest = Request<hyper::body::Incoming>;
/// A response, or the refusal sent instead; `?` turns any `Error` into one.
type Reply = Result<Response<Body>, Refusal>;
type Refusal = Box<Response<Body>>;
type Served = Result<Response<Body>, Infallible>;
type Headers = &'static [(&'static str, &'static str)];

const ALLOWED_HEADERS: &str = "authorization, content-type, last-event-id";

const JSON: Headers = &[("content-type", "application/json")];

/// On every answer: no type sniffing; no copy kept by a browser or proxy
/// (answers hold tokens, user records and live events); and `Retry-After`
/// readable by a page, so it can honour a 429 or 503.
const EVERY: Headers = &[
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("access-control-expose-headers", "retry-after"),
];

const PREFLIGHT: Headers = &[
    ("access-control-allow-methods", "GET, POST, OPTIONS"),
    ("access-control-allow-headers", ALLOWED_HEADERS),
    ("access-control-max-age", "86400"),
];

/// Everything a request handler needs, shared by all connections.
pub struct State {
    pub flags: Config,
    pub store: Store,
    pub auth: Auth,
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// Serves one request from `address`.
pub async fn serve(state: Arc<State>, address: IpAddr, request: HttpRequest) -> Served {
    // hyper keeps room for this future for the whole connection, idle
    // streams included; boxed, the endpoints' state is freed once answered.
    let result = Box::pin(route(&state, address, request)).await;
    let mut response = result.unwrap_or_else(|refusal| *refusal);
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, state.flags.origin.clone());
    Ok(response)
}

async fn route(state: &State, address: IpAddr, request: HttpRequest) -> Reply {
    match (request.method(), request.uri().path()) {
        (&Method::OPTIONS, _) => Ok(respond(StatusCode::NO_CONTENT, Body::default(), PREFLIGHT)),
        // Health: 200 while storage writes, 503 while it cannot.
        (&Method::GET | &Method::HEAD, "/") if state.store.healthy() => ok(json!({"status": "ok"})),
        (&Method::GET | &Method::HEAD, "/") => Err(Error::Unavailable("no storage".into()).into()),
        (&Method::POST, "/login") => login(state, address, request).await,
        (&Method::GET, "/sse") => stream(state, address, request).await,
        (&Method::POST, "/insert") => insert(state, address, request).await,
        (&Method::GET, "/verify") => verify(state, address, request).await,
        (&Method::POST, "/create_user") => write_user(state, request, true).await,
        (&Method::POST, "/update_user") => write_user(state, request, false).await,
        (&Method::POST, "/revoke_user") => set_revoked(state, request, true).await,
        (&Method::POST, "/unrevoke_user") => set_revoked(state, request, false).await,
        (&Method::POST, "/get_user") => get_user(state, request).await,
        (&Method::POST, "/list_users") => list_users(state, request).await,
        // A known path with another method is answered like an unknown one
        // (LOC_BUDGET.md, "Rules retired for the line budget").
        _ => Err(refuse(StatusCode::NOT_FOUND, "no such method and path")),
    }
}

fn respond(status: StatusCode, body: Body, headers: Headers) -> Response<Body> {
    let builder = Response::builder().status(status);
    let add = |builder: Builder, (name, value): &(&str, &str)| builder.header(*name, *value);
    let builder = headers.iter().chain(EVERY).fold(builder, add);
    builder.body(body).expect("static headers are valid")
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let body = Full::new(Bytes::from(body.to_string()));
    respond(status, body.boxed_unsync(), JSON)
}

fn ok(body: Value) -> Reply {
    Ok(reply(StatusCode::OK, body))
}

/// A refusal: `{"error": "<reason>"}` with its status.
fn refuse(status: StatusCode, reason: &str) -> Refusal {
    Box::new(reply(status, json!({ "error": reason })))
}

/// The one place where an error becomes a status, with `Retry-After` where
/// waiting helps.
impl From<Error> for Refusal {
    fn from(error: Error) -> Refusal {
        let (status, reason, retry_after) = match error {
            Error::Invalid(reason) => (StatusCode::BAD_REQUEST, reason, None),
            Error::Unauthorized(reason) => (StatusCode::UNAUTHORIZED, reason, None),
            Error::TooMany(reason, wait) => (StatusCode::TOO_MANY_REQUESTS, reason, Some(wait)),
            Error::Unavailable(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason, Some(1)),
        };
        let mut response = refuse(status, &reason);
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Reads a JSON body of at most `--max_body` bytes, arriving within ten
/// seconds, like the headers, as `T`: malformed JSON, or a missing or
/// mistyped field, is a 400 saying so.
async fn json_body<T: DeserializeOwned>(state: &State, request: HttpRequest) -> Result<T, Refusal> {
    let reading = Limited::new(request.into_body(), state.flags.max_body);
    let read = tokio::time::timeout(Duration::from_secs(10), reading.collect()).await;
    let slow = |_| refuse(StatusCode::REQUEST_TIMEOUT, "body arrived too slowly");
    let too_large = || refuse(StatusCode::PAYLOAD_TOO_LARGE, "body over --max_body");
    let bytes = match read.map_err(slow)? {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return Err(too_large()),
        Err(_) => return Err(Error::Invalid("could not read the request body".into()).into()),
    };
    // Read as a tree first, which serde_json bounds (128 levels deep, no
    // lone surrogate): event data, kept as sent, then breaks no subscriber.
    let parse = |_| serde_json::from_slice(&bytes);
    let body = serde_json::from_slice::<Value>(&bytes).and_then(parse);
    Ok(body.map_err(|error| Error::Invalid(format!("invalid JSON: {error}")))?)
}

/// Reads an admin call's fields; its admin_token is checked before any other.
async fn admin(state: &State, request: HttpRequest) -> Result<Changes, Refusal> {
    let body: Value = json_body(state, request).await?;
    let token = body.get("admin_token").and_then(Value::as_str);
    let token = token.ok_or_else(|| Error::Invalid("admin_token must be a string".into()))?;
    state.auth.check_admin(token)?;
    let changes = serde_json::from_value(body);
    Ok(changes.map_err(|error| Error::Invalid(error.to_string()))?)
}

/// A 400 saying what the input must be, unless it is `valid`.
fn check(valid: bool, rule: &str) -> Result<(), Error> {
    ensure(valid, Error::Invalid(rule.into()))
}

/// Usernames show in logs and admin calls: no control characters, no
/// invisible or reordering ones (Unicode's format characters: U+200B,
/// U+202E, U+FEFF, U+00AD …), no outer spaces, and no colon, since Basic
/// splits at the first one.
fn check_username(name: &str) -> Result<(), Error> {
    let unclean = |c: char| c == ':' || c.is_control() || c.general_category() == Format;
    let valid = (1..=MAX_USERNAME).contains(&name.len()) && !name.contains(unclean);
    let rule = "username must be 1-128 bytes, no ':', control or format characters, outer spaces";
    check(valid && name.trim() == name, rule)
}

fn check_tenant(tenant: &str) -> Result<(), Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let valid = (1..=64).contains(&tenant.len()) && tenant.chars().all(allowed);
    check(valid, "tenant_name must match ^[A-Za-z0-9_-]{1,64}$")
}

/// `""` or absent is no email; anything else must be a well-formed address
/// outside mailchecker's list of throwaway domains.
fn check_email(email: Option<String>) -> Result<Option<String>, Error> {
    let email = email.filter(|email| !email.is_empty());
    let valid = |email: &String| email.len() <= 254 && mailchecker::is_valid(email);
    let rule = "invalid or throwaway email address";
    check(email.as_ref().is_none_or(valid), rule)?;
    Ok(email)
}

async fn login(state: &State, address: IpAddr, request: HttpRequest) -> Reply {
    let Credentials { username, password } = json_body(state, request).await?;
    let caller = state.auth.login(address, &username, &password).await?;
    ok(json!({ "jwt": state.auth.issue(&caller.user) }))
}

async fn verify(state: &State, address: IpAddr, request: HttpRequest) -> Reply {
    let caller = state.auth.authenticate(address, request.headers()).await?;
    let mut user = json!(caller.user);
    // The user as the admin calls show it, but without the password field.
    user.as_object_mut().map(|fields| fields.remove("password"));
    ok(user)
}

async fn insert(state: &State, address: IpAddr, request: HttpRequest) -> Reply {
    let caller = state.auth.authenticate(address, request.headers()).await?;
    let event: Event = json_body(state, request).await?;
    // Printable ASCII keeps each frame pure ASCII with one line per field.
    let name = event.event.as_bytes();
    let printable = name.iter().all(|byte| (b' '..=b'~').contains(byte));
    let valid = (1..=256).contains(&name.len()) && printable;
    check(valid, "event must be 1-256 printable ASCII characters")?;
    ok(block_in_place(|| state.store.insert(&caller.user, event))?)
}

async fn stream(state: &State, address: IpAddr, request: HttpRequest) -> Reply {
    let caller = state.auth.authenticate(address, request.headers()).await?;
    // A Last-Event-ID that is not a number is no position: the stream starts
    // with the sync, as without one (its 400 was retired for the line budget).
    let number = |id: &HeaderValue| id.to_str().ok().and_then(|id| id.trim().parse().ok());
    let after = request.headers().get("last-event-id").and_then(number);
    let body = block_in_place(|| state.store.subscribe(&caller, after))?;
    Ok(respond(StatusCode::OK, body, hub::HEADERS))
}

/// Creates a user, or changes any of tenant_name, email, data and password
/// of one; every field is checked before anything is written.
async fn write_user(state: &State, request: HttpRequest, create: bool) -> Reply {
    let mut changes = admin(state, request).await?;
    if create {
        check_username(&changes.username)?;
        // A new user has a tenant and a password: missing ones are refused
        // as empty ones.
        changes.tenant_name.get_or_insert_default();
        changes.password.get_or_insert_default();
    }
    let tenant = changes.tenant_name.as_deref();
    tenant.map(check_tenant).transpose()?;
    changes.email = changes.email.map(check_email).transpose()?;
    if let Some(password) = changes.password {
        let fits = (1..=1024).contains(&password.len());
        check(fits, "password must be 1-1024 bytes")?;
        changes.password = Some(state.auth.hash(password).await?);
    }
    ok(block_in_place(|| state.store.write_user(changes, create))?)
}

async fn set_revoked(state: &State, request: HttpRequest, revoked: bool) -> Reply {
    // Only `revoked` changes, whatever else the body holds.
    let changes = Changes {
        username: admin(state, request).await?.username,
        revoked: Some(revoked),
        ..Changes::default()
    };
    ok(block_in_place(|| state.store.write_user(changes, false))?)
}

async fn get_user(state: &State, request: HttpRequest) -> Reply {
    let username = admin(state, request).await?.username;
    let unknown = || Error::Invalid("unknown user".into());
    ok(state.store.user(&username)?.ok_or_else(unknown)?.public())
}

async fn list_users(state: &State, request: HttpRequest) -> Reply {
    admin(state, request).await?;
    ok(state.store.users()?.iter().map(User::public).collect())
}
