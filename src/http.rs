//! The one `service_fn`: routing by method and path, CORS, JSON bodies,
//! error replies, the access log, and one function per endpoint.

use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::hub::{Hub, Stream};
use crate::store::{Store, User};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::convert::Infallible;
use std::sync::Arc;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
type Reply = Result<Response<Body>, Error>;
type Fields = Map<String, Value>;

/// Every path that exists, so a wrong method is told 405 rather than 404.
const PATHS: &str = "/ /create_user /login /sse /insert /verify /revoke_user /unrevoke_user \
                     /list_users /get_user /update_user";

/// Everything a request handler needs, shared by all connections.
pub struct State {
    pub config: Config,
    pub store: Store,
    pub hub: Hub,
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
pub async fn serve(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let result = route(&state, request).await;
    let mut response =
        result.unwrap_or_else(|Error(status, reason)| reply(status, json!({ "error": reason })));
    let origin = HeaderValue::from_str(&state.config.origin);
    let origin = origin.unwrap_or(HeaderValue::from_static("*"));
    response
        .headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let milliseconds = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "{method} {path} {} {milliseconds:.1}ms",
        response.status().as_u16()
    );
    Ok(response)
}

async fn route(state: &State, request: Request<Incoming>) -> Reply {
    match (request.method(), request.uri().path()) {
        (&Method::OPTIONS, _) => Ok(with_headers(
            reply(StatusCode::NO_CONTENT, Value::Null),
            PREFLIGHT,
        )),
        (&Method::GET | &Method::HEAD, "/") => Ok(reply(StatusCode::OK, json!({"status": "ok"}))),
        (&Method::POST, "/create_user") => create_user(state, request).await,
        (&Method::POST, "/login") => login(state, request).await,
        (&Method::GET, "/sse") => sse(state, request).await,
        (&Method::POST, "/insert") => insert(state, request).await,
        (&Method::GET, "/verify") => verify(state, request).await,
        (&Method::POST, "/revoke_user") => set_revoked(state, request, true).await,
        (&Method::POST, "/unrevoke_user") => set_revoked(state, request, false).await,
        (&Method::POST, "/list_users") => list_users(state, request).await,
        (&Method::POST, "/get_user") => get_user(state, request).await,
        (&Method::POST, "/update_user") => update_user(state, request).await,
        (_, path) if PATHS.split_whitespace().any(|known| known == path) => Err(Error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed on {path}"),
        )),
        (_, path) => Err(Error(StatusCode::NOT_FOUND, format!("no such path {path}"))),
    }
}

const PREFLIGHT: &[(&str, &str)] = &[
    ("access-control-allow-methods", "GET, POST, OPTIONS"),
    (
        "access-control-allow-headers",
        "authorization, content-type, last-event-id",
    ),
    ("access-control-max-age", "86400"),
];

const EVENT_STREAM: &[(&str, &str)] = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    // Tells nginx-style proxies not to buffer the stream.
    ("x-accel-buffering", "no"),
];

/// A JSON reply; `null` means no body at all.
fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let mut response = Response::new(Full::new(bytes).boxed_unsync());
    *response.status_mut() = status;
    if !body.is_null() {
        let json = HeaderValue::from_static("application/json");
        response.headers_mut().insert(header::CONTENT_TYPE, json);
    }
    response
}

fn with_headers(
    mut response: Response<Body>,
    headers: &[(&'static str, &'static str)],
) -> Response<Body> {
    for (name, value) in headers {
        let name = HeaderName::from_static(name);
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

fn ok(body: Value) -> Reply {
    Ok(reply(StatusCode::OK, body))
}

/// Reads a JSON object body of at most `--max_body` bytes.
async fn json_body(state: &State, request: Request<Incoming>) -> Result<Fields, Error> {
    let limit = state.config.max_body;
    let too_large = || {
        Error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {limit} bytes"),
        )
    };
    let declared = request.headers().get(header::CONTENT_LENGTH);
    let declared = declared.and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let bytes = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
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

/// Reads the body of an admin call and checks its admin_token.
async fn admin_body(state: &State, request: Request<Incoming>) -> Result<Fields, Error> {
    let body = json_body(state, request).await?;
    state.auth.check_admin(text(&body, "admin_token")?)?;
    Ok(body)
}

async fn caller(state: &State, request: &Request<Incoming>) -> Result<Caller, Error> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::to_str);
    let header = header
        .transpose()
        .map_err(|_| unauthorized("malformed Authorization"))?;
    state.auth.authenticate(&state.store, header).await
}

/// Usernames cannot hold a colon: Basic splits at the first one.
fn valid_username(username: &str) -> Result<&str, Error> {
    let valid = (1..=128).contains(&username.len()) && !username.contains(':');
    match valid && !username.contains(char::is_control) {
        true => Ok(username),
        false => Err(bad(
            "username must be 1-128 bytes without ':' or control characters",
        )),
    }
}

fn valid_password(password: &str) -> Result<String, Error> {
    match (1..=1024).contains(&password.len()) {
        true => Ok(password.to_string()),
        false => Err(bad("password must be 1-1024 bytes")),
    }
}

fn valid_tenant(tenant: &str) -> Result<Value, Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    match (1..=64).contains(&tenant.len()) && tenant.chars().all(allowed) {
        true => Ok(json!(tenant)),
        false => Err(bad("tenant_name must match ^[A-Za-z0-9_-]{1,64}$")),
    }
}

/// `""` or absent is no email (null); anything else must be a well-formed
/// address outside mailchecker's list of throwaway domains.
fn valid_email(email: Option<&str>) -> Result<Value, Error> {
    match email.filter(|email| !email.is_empty()) {
        None => Ok(Value::Null),
        Some(email) if email.len() <= 254 && mailchecker::is_valid(email) => Ok(json!(email)),
        Some(_) => Err(bad("invalid or throwaway email address")),
    }
}

async fn create_user(state: &State, request: Request<Incoming>) -> Reply {
    let body = admin_body(state, request).await?;
    let username = valid_username(text(&body, "username")?)?;
    let password = valid_password(text(&body, "password")?)?;
    let tenant = valid_tenant(text(&body, "tenant_name")?)?;
    let email = valid_email(optional_text(&body, "email")?)?;
    if state.store.user(username)?.is_some() {
        return Err(bad("username already exists")); // checked before paying for Argon2
    }
    let id = uuid::Uuid::new_v4().to_string();
    let record = json!({
        "id": id, "username": username, "password": state.auth.hash(password).await?,
        "tenant_name": tenant, "revoked": false, "email": email,
        "data": body.get("data").cloned().unwrap_or(Value::Null),
    });
    state.store.create_user(User::from(record))?;
    ok(json!({ "id": id }))
}

async fn login(state: &State, request: Request<Incoming>) -> Reply {
    let body = json_body(state, request).await?;
    let (username, password) = (text(&body, "username")?, text(&body, "password")?);
    let user = state.auth.login(&state.store, username, password).await?;
    match user.revoked() {
        true => Err(unauthorized("user is revoked")),
        false => ok(json!({ "jwt": state.auth.issue(username) })),
    }
}

async fn verify(state: &State, request: Request<Incoming>) -> Reply {
    let mut user = caller(state, &request).await?.user;
    user.0.remove("password");
    ok(Value::Object(user.0))
}

async fn insert(state: &State, request: Request<Incoming>) -> Reply {
    let user = caller(state, &request).await?.user;
    let body = json_body(state, request).await?;
    let event = text(&body, "event")?;
    // Printable ASCII keeps each frame one line per field and pure ASCII.
    let printable = event.bytes().all(|byte| (b' '..=b'~').contains(&byte));
    if event.is_empty() || event.len() > 256 || !printable {
        return Err(bad("event must be 1-256 printable ASCII characters"));
    }
    let data = body.get("data").ok_or_else(|| bad("missing field data"))?;
    let tenant = user.text("tenant_name");
    let publish = |frame| state.hub.publish(tenant, frame);
    ok(json!({ "id": state.store.insert(tenant, event, data, publish)? }))
}

async fn sse(state: &State, request: Request<Incoming>) -> Reply {
    let Caller { user, expires } = caller(state, &request).await?;
    let last_event_id = request.headers().get("last-event-id").map(|value| {
        let id = value
            .to_str()
            .ok()
            .and_then(|id| id.trim().parse::<u64>().ok());
        id.ok_or_else(|| bad("Last-Event-ID must be a number"))
    });
    let last_event_id = last_event_id.transpose()?;
    let (tenant, username) = (user.text("tenant_name"), user.text("username"));
    let subscribe = || state.hub.subscribe(tenant, username, expires);
    let (receiver, upto) = state.store.watch(tenant, subscribe)?;
    let backlog = state.store.backlog(tenant, last_event_id, upto)?;
    let response = Response::new(Stream::new(backlog, receiver).boxed_unsync());
    Ok(with_headers(response, EVENT_STREAM))
}

async fn set_revoked(state: &State, request: Request<Incoming>, revoked: bool) -> Reply {
    let body = admin_body(state, request).await?;
    let username = text(&body, "username")?;
    state
        .store
        .update_user(username, [("revoked", json!(revoked))])?;
    state.auth.forget(username);
    if revoked {
        state.hub.disconnect(username);
    }
    ok(json!({}))
}

async fn list_users(state: &State, request: Request<Incoming>) -> Reply {
    admin_body(state, request).await?;
    ok(state.store.users()?.iter().map(User::public).collect())
}

async fn get_user(state: &State, request: Request<Incoming>) -> Reply {
    let body = admin_body(state, request).await?;
    let user = state.store.user(text(&body, "username")?)?;
    ok(user.ok_or_else(|| bad("unknown user"))?.public())
}

/// Changes any of tenant_name, password, email, data; every field is checked
/// before anything is written. A new password or tenant ends open streams.
async fn update_user(state: &State, request: Request<Incoming>) -> Reply {
    let body = admin_body(state, request).await?;
    let username = text(&body, "username")?;
    let mut changes = Vec::new();
    if let Some(tenant) = optional_text(&body, "tenant_name")? {
        changes.push(("tenant_name", valid_tenant(tenant)?));
    }
    let password = optional_text(&body, "password")?
        .map(valid_password)
        .transpose()?;
    if body.contains_key("email") {
        changes.push(("email", valid_email(optional_text(&body, "email")?)?));
    }
    if let Some(data) = body.get("data") {
        changes.push(("data", data.clone()));
    }
    if state.store.user(username)?.is_none() {
        return Err(bad("unknown user")); // checked before paying for Argon2
    }
    if let Some(password) = password {
        changes.push(("password", json!(state.auth.hash(password).await?)));
    }
    let ends_streams = changes
        .iter()
        .any(|(field, _)| ["tenant_name", "password"].contains(field));
    state.store.update_user(username, changes)?;
    state.auth.forget(username);
    if ends_streams {
        state.hub.disconnect(username);
    }
    ok(json!({}))
}
