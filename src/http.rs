//! The one `service_fn`: routing by method and path, CORS, JSON bodies,
//! error replies, the access log, and one function per endpoint.

use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::hub::stream;
use crate::store::{Store, User};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body as _;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
type HttpRequest = Request<hyper::body::Incoming>;
type Reply = Result<Response<Body>, Error>;
type Fields = Map<String, Value>;
type Headers = &'static [(&'static str, &'static str)];

/// Every path that exists, so a wrong method is told 405 rather than 404.
const PATHS: &str = "/ /login /sse /insert /verify";
/// The calls authorized by the admin_token in their body.
const ADMIN_PATHS: &str =
    "/create_user /revoke_user /unrevoke_user /list_users /get_user /update_user";

const USERNAME_RULE: &str = "username must be 1-128 bytes without ':' or line breaks";
const PASSWORD_RULE: &str = "password must be 1-1024 bytes";
const TENANT_RULE: &str = "tenant_name must match ^[A-Za-z0-9_-]{1,64}$";
const ALLOWED_HEADERS: &str = "authorization, content-type, last-event-id";

const JSON: Headers = &[("content-type", "application/json")];

const PREFLIGHT: Headers = &[
    ("access-control-allow-methods", "GET, POST, OPTIONS"),
    ("access-control-allow-headers", ALLOWED_HEADERS),
    ("access-control-max-age", "86400"),
];

const EVENT_STREAM: Headers = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    // Tells nginx-style proxies not to buffer the stream.
    ("x-accel-buffering", "no"),
];

/// Everything a request handler needs, shared by all connections.
pub struct State {
    pub config: Config,
    pub store: Store,
    pub auth: Auth,
}

/// A failed request: the status it answers with and a reason for the client,
/// sent as `{"error": "<reason>"}`.
#[derive(Debug)]
pub struct Error(StatusCode, String);

pub fn bad(reason: impl Into<String>) -> Error {
    Error(StatusCode::BAD_REQUEST, reason.into())
}

pub fn unauthorized(reason: impl Into<String>) -> Error {
    Error(StatusCode::UNAUTHORIZED, reason.into())
}

pub fn internal(reason: impl Into<String>) -> Error {
    Error(StatusCode::INTERNAL_SERVER_ERROR, reason.into())
}

impl From<fjall::Error> for Error {
    fn from(error: fjall::Error) -> Error {
        eprintln!("storage error: {error}");
        internal("storage error")
    }
}

/// Serves one request and logs it: method, path, status, milliseconds —
/// never a body, token or password.
pub async fn serve(state: Arc<State>, request: HttpRequest) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let result = route(&state, request, &path).await;
    let mut response =
        result.unwrap_or_else(|Error(status, reason)| reply(status, json!({ "error": reason })));
    let origin = HeaderValue::from_str(&state.config.origin);
    let origin = origin.unwrap_or(HeaderValue::from_static("*"));
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", origin);
    let status = response.status().as_u16();
    let milliseconds = started.elapsed().as_secs_f64() * 1000.0;
    // One write per line: eprintln! would make a syscall per fragment.
    let line = format!("{method} {path} {status} {milliseconds:.1}ms\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    Ok(response)
}

async fn route(state: &State, request: HttpRequest, path: &str) -> Reply {
    match (request.method(), path) {
        (&Method::OPTIONS, _) => Ok(respond(StatusCode::NO_CONTENT, Body::default(), PREFLIGHT)),
        (&Method::GET | &Method::HEAD, "/") => ok(json!({"status": "ok"})),
        (&Method::POST, "/login") => login(state, request).await,
        (&Method::GET, "/sse") => sse(state, request).await,
        (&Method::POST, "/insert") => insert(state, request).await,
        (&Method::GET, "/verify") => verify(state, request).await,
        (&Method::POST, _) if listed(ADMIN_PATHS, path) => admin(state, request, path).await,
        _ if listed(PATHS, path) || listed(ADMIN_PATHS, path) => {
            let reason = format!("method not allowed on {path}");
            Err(Error(StatusCode::METHOD_NOT_ALLOWED, reason))
        }
        _ => Err(Error(StatusCode::NOT_FOUND, format!("no such path {path}"))),
    }
}

fn listed(paths: &str, path: &str) -> bool {
    paths.split(' ').any(|known| known == path)
}

fn respond(status: StatusCode, body: Body, headers: Headers) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(body).unwrap_or_default()
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let body = Full::new(Bytes::from(body.to_string()));
    respond(status, body.boxed_unsync(), JSON)
}

fn ok(body: Value) -> Reply {
    Ok(reply(StatusCode::OK, body))
}

/// Reads a JSON object body of at most `--max_body` bytes.
async fn json_body(state: &State, request: HttpRequest) -> Result<Fields, Error> {
    let limit = state.config.max_body;
    let reason = format!("body over {limit} bytes");
    let too_large = || Error(StatusCode::PAYLOAD_TOO_LARGE, reason.clone());
    // An honest Content-Length over the limit is refused before reading.
    if request.body().size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let bytes = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return Err(too_large()),
        Err(_) => return Err(bad("could not read the request body")),
    };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(bad("body must be a JSON object")),
        Err(error) => Err(bad(format!("invalid JSON: {error}"))),
    }
}

/// A required string field.
fn text<'a>(body: &'a Fields, field: &str) -> Result<&'a str, Error> {
    match body.get(field) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(bad(format!("{field} must be a string"))),
        None => Err(bad(format!("missing field {field}"))),
    }
}

/// An optional string field: absent or null is `None`.
fn optional_text<'a>(body: &'a Fields, field: &str) -> Result<Option<&'a str>, Error> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => text(body, field).map(Some),
    }
}

/// The authenticated user of a request, and when its JWT expires.
async fn caller(state: &State, request: &HttpRequest) -> Result<Caller, Error> {
    let header = request.headers().get("authorization");
    let header = header.map(HeaderValue::to_str).transpose();
    let header = header.map_err(|_| unauthorized("bad Authorization"))?;
    state.auth.authenticate(&state.store, header).await
}

/// `Ok(value)` if `valid`, else a 400 saying what the field must be.
fn check<T>(valid: bool, value: T, rule: &str) -> Result<T, Error> {
    if valid { Ok(value) } else { Err(bad(rule)) }
}

fn valid_tenant(tenant: &str) -> Result<Value, Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let valid = (1..=64).contains(&tenant.len()) && tenant.chars().all(allowed);
    check(valid, json!(tenant), TENANT_RULE)
}

/// `""` or absent is no email (null); anything else must be a well-formed
/// address outside mailchecker's list of throwaway domains.
fn valid_email(email: Option<&str>) -> Result<Value, Error> {
    let Some(email) = email.filter(|email| !email.is_empty()) else {
        return Ok(Value::Null);
    };
    let valid = email.len() <= 254 && mailchecker::is_valid(email);
    check(valid, json!(email), "invalid or throwaway email address")
}

/// Checks a new password and returns its Argon2id hash; checked last in
/// each handler, so a bad request never pays for hashing.
async fn hashed(state: &State, password: &str) -> Result<Value, Error> {
    check((1..=1024).contains(&password.len()), (), PASSWORD_RULE)?;
    Ok(json!(state.auth.hash(password.to_string()).await?))
}

async fn login(state: &State, request: HttpRequest) -> Reply {
    let body = json_body(state, request).await?;
    let (username, password) = (text(&body, "username")?, text(&body, "password")?);
    let user = state.auth.login(&state.store, username, password).await?;
    match user.revoked() {
        true => Err(unauthorized("user is revoked")),
        false => ok(json!({ "jwt": state.auth.issue(username) })),
    }
}

async fn verify(state: &State, request: HttpRequest) -> Reply {
    let (User(mut fields), _) = caller(state, &request).await?;
    fields.remove("password");
    ok(Value::Object(fields))
}

async fn insert(state: &State, request: HttpRequest) -> Reply {
    let (user, _) = caller(state, &request).await?;
    let body = json_body(state, request).await?;
    let event = text(&body, "event")?;
    // Printable ASCII keeps each frame pure ASCII with one line per field.
    let printable = event.bytes().all(|byte| (b' '..=b'~').contains(&byte));
    let valid = (1..=256).contains(&event.len()) && printable;
    check(valid, (), "event must be 1-256 printable ASCII characters")?;
    let data = body.get("data").ok_or_else(|| bad("missing field data"))?;
    let id = state.store.insert(user.text("tenant_name"), event, data)?;
    ok(json!({ "id": id }))
}

async fn sse(state: &State, request: HttpRequest) -> Reply {
    let caller = caller(state, &request).await?;
    let last_event_id = request.headers().get("last-event-id").map(|value| {
        let id = value.to_str().map(str::trim);
        let id = id.ok().and_then(|id| id.parse().ok());
        id.ok_or_else(|| bad("Last-Event-ID must be a number"))
    });
    let after = last_event_id.transpose()?;
    let (backlog, receiver) = state.store.subscribe(&caller, after)?;
    let body = stream(backlog, receiver);
    Ok(respond(StatusCode::OK, body, EVENT_STREAM))
}

/// The admin calls: the body's admin_token is checked before anything else,
/// and the named user must exist, except for a new one.
async fn admin(state: &State, request: HttpRequest, path: &str) -> Reply {
    let body = json_body(state, request).await?;
    state.auth.check_admin(text(&body, "admin_token")?)?;
    if path == "/list_users" {
        return ok(state.store.users()?.iter().map(User::public).collect());
    }
    let username = text(&body, "username")?;
    match (path, state.store.user(username)?) {
        ("/create_user", None) => create_user(state, &body, username).await,
        ("/create_user", Some(_)) => Err(bad("username already exists")),
        (_, None) => Err(bad("unknown user")),
        ("/get_user", Some(user)) => ok(user.public()),
        ("/update_user", _) => update_user(state, &body, username).await,
        _ => {
            let revoked = json!({ "revoked": path == "/revoke_user" });
            change_user(state, username, revoked)
        }
    }
}

async fn create_user(state: &State, body: &Fields, username: &str) -> Reply {
    // No colon: Basic splits username and password at the first one.
    let valid = (1..=128).contains(&username.len()) && !username.contains([':', '\n', '\r']);
    check(valid, (), USERNAME_RULE)?;
    let tenant = valid_tenant(text(body, "tenant_name")?)?;
    let email = valid_email(optional_text(body, "email")?)?;
    let password = hashed(state, text(body, "password")?).await?;
    let (id, data) = (uuid::Uuid::new_v4().to_string(), body.get("data"));
    let user = json!({
        "id": id, "username": username, "password": password, "tenant_name": tenant,
        "revoked": false, "email": email, "data": data,
    });
    state.store.write_user(username, user, true)?;
    ok(json!({ "id": id }))
}

/// Changes any of tenant_name, email, data and password; every field is
/// checked before anything is written.
async fn update_user(state: &State, body: &Fields, username: &str) -> Reply {
    let mut changes = Fields::new();
    if let Some(tenant) = optional_text(body, "tenant_name")? {
        changes.insert("tenant_name".into(), valid_tenant(tenant)?);
    }
    if body.contains_key("email") {
        let email = valid_email(optional_text(body, "email")?)?;
        changes.insert("email".into(), email);
    }
    if let Some(data) = body.get("data") {
        changes.insert("data".into(), data.clone());
    }
    if let Some(password) = optional_text(body, "password")? {
        changes.insert("password".into(), hashed(state, password).await?);
    }
    change_user(state, username, Value::Object(changes))
}

/// Stores changes to a user and drops its cached Basic credential, so the
/// next request is checked under the new rules.
fn change_user(state: &State, username: &str, changes: Value) -> Reply {
    state.store.write_user(username, changes, false)?;
    state.auth.forget(username);
    ok(json!({}))
}
