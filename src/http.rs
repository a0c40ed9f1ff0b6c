//! The one `service_fn`: routing by method and path, CORS, JSON bodies,
//! error replies, the access log, and one function per endpoint.

use crate::auth::Auth;
use crate::config::Config;
use crate::hub::{Hub, Stream};
use crate::store::{Store, User};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
type Reply = Result<Response<Body>, Error>;

/// Paths that exist, so a wrong method is told 405 rather than 404.
const PATHS: &[&str] = &[
    "/", "/create_user", "/login", "/sse", "/insert", "/verify", "/revoke_user",
    "/unrevoke_user", "/list_users", "/get_user", "/update_user",
];

/// Everything a request handler needs, shared by all connections.
pub struct State {
    pub config: Config,
    pub store: Store,
    pub hub: Hub,
    pub auth: Auth,
}

/// A failed request: the status it answers with and a reason for the client.
#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    message: String,
}

impl Error {
    pub fn bad(message: impl Into<String>) -> Error {
        Error { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error { status: StatusCode::UNAUTHORIZED, message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
}

impl From<fjall::Error> for Error {
    fn from(error: fjall::Error) -> Error {
        eprintln!("storage error: {error}");
        Error::internal("storage error")
    }
}

/// Serves one request and logs it: method, path, status, milliseconds —
/// never a body, token or password.
pub async fn serve(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let mut response = route(&state, request).await.unwrap_or_else(|error| {
        let body = json!({ "error": error.message });
        reply(error.status, body)
    });
    let origin = HeaderValue::from_str(&state.config.origin).unwrap_or(HeaderValue::from_static("*"));
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!("{method} {path} {} {elapsed:.1}ms", response.status().as_u16());
    Ok(response)
}

async fn route(state: &State, request: Request<Incoming>) -> Reply {
    match (request.method(), request.uri().path()) {
        (&Method::OPTIONS, _) => Ok(preflight()),
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
        (_, path) if PATHS.contains(&path) => Err(Error {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("method not allowed on {path}"),
        }),
        (_, path) => Err(Error { status: StatusCode::NOT_FOUND, message: format!("no such path {path}") }),
    }
}

fn preflight() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    let allowed = HeaderValue::from_static("authorization, content-type, last-event-id");
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed);
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    response
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = status;
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

fn ok(body: Value) -> Reply {
    Ok(reply(StatusCode::OK, body))
}

/// Reads a JSON object body of at most `--max_body` bytes.
async fn json_body(state: &State, request: Request<Incoming>) -> Result<Map<String, Value>, Error> {
    let too_large = || Error {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("body over {} bytes", state.config.max_body),
    };
    let declared = request.headers().get(header::CONTENT_LENGTH);
    let declared = declared.and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > state.config.max_body) {
        return Err(too_large());
    }
    let bytes = match Limited::new(request.into_body(), state.config.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(_) => return Err(Error::bad("could not read the request body")),
    };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(Error::bad("body must be a JSON object")),
        Err(error) => Err(Error::bad(format!("invalid JSON: {error}"))),
    }
}

/// A required string field.
fn text<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, Error> {
    match body.get(field) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(Error::bad(format!("{field} must be a string"))),
        None => Err(Error::bad(format!("missing field {field}"))),
    }
}

/// An optional string field: absent or null is `None`.
fn optional_text<'a>(body: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, Error> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => text(body, field).map(Some),
    }
}

/// Checks the body's admin_token and returns the body.
async fn admin_body(state: &State, request: Request<Incoming>) -> Result<Map<String, Value>, Error> {
    let body = json_body(state, request).await?;
    state.auth.check_admin(text(&body, "admin_token")?)?;
    Ok(body)
}

async fn caller(state: &State, request: &Request<Incoming>) -> Result<crate::auth::Caller, Error> {
    let header = request.headers().get(header::AUTHORIZATION);
    let header = header.map(|value| value.to_str().map_err(|_| Error::unauthorized("malformed Authorization")));
    state.auth.authenticate(&state.store, header.transpose()?).await
}

fn valid_username(username: &str) -> Result<&str, Error> {
    // A colon could never log in with Basic, which splits at the first one.
    let fine = !username.is_empty() && username.len() <= 128;
    match fine && !username.chars().any(|c| c == ':' || c.is_control()) {
        true => Ok(username),
        false => Err(Error::bad("username must be 1-128 bytes without ':' or control characters")),
    }
}

fn valid_password(password: &str) -> Result<String, Error> {
    match !password.is_empty() && password.len() <= 1024 {
        true => Ok(password.to_string()),
        false => Err(Error::bad("password must be 1-1024 bytes")),
    }
}

fn valid_tenant(tenant: &str) -> Result<&str, Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    match !tenant.is_empty() && tenant.len() <= 64 && tenant.chars().all(allowed) {
        true => Ok(tenant),
        false => Err(Error::bad("tenant_name must match ^[A-Za-z0-9_-]{1,64}$")),
    }
}

/// `""` or absent means no email; anything else must be a real, non-throwaway address.
fn valid_email(email: Option<&str>) -> Result<Option<String>, Error> {
    match email.filter(|email| !email.is_empty()) {
        None => Ok(None),
        Some(email) if email.len() <= 254 && mailchecker::is_valid(email) => Ok(Some(email.to_string())),
        Some(_) => Err(Error::bad("invalid or throwaway email address")),
    }
}

async fn create_user(state: &State, request: Request<Incoming>) -> Reply {
    let body = admin_body(state, request).await?;
    let username = valid_username(text(&body, "username")?)?;
    let password = valid_password(text(&body, "password")?)?;
    let tenant_name = valid_tenant(text(&body, "tenant_name")?)?;
    let email = valid_email(optional_text(&body, "email")?)?;
    if state.store.user(username)?.is_some() {
        return Err(Error::bad("username already exists"));
    }
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.to_string(),
        password: state.auth.hash(password).await?,
        tenant_name: tenant_name.to_string(),
        revoked: false,
        email,
        data: body.get("data").cloned().unwrap_or(Value::Null),
    };
    state.store.create_user(&user)?;
    ok(json!({ "id": user.id }))
}

async fn login(state: &State, request: Request<Incoming>) -> Reply {
    let body = json_body(state, request).await?;
    let (username, password) = (text(&body, "username")?, text(&body, "password")?);
    let user = state.auth.login(&state.store, username, password).await?;
    if user.revoked {
        return Err(Error::unauthorized("user is revoked"));
    }
    ok(json!({ "jwt": state.auth.issue(&user.username) }))
}

async fn verify(state: &State, request: Request<Incoming>) -> Reply {
    let mut user = caller(state, &request).await?.user.public();
    if let Some(fields) = user.as_object_mut() {
        fields.remove("password");
    }
    ok(user)
}

async fn insert(state: &State, request: Request<Incoming>) -> Reply {
    let user = caller(state, &request).await?.user;
    let body = json_body(state, request).await?;
    let event = text(&body, "event")?;
    // Printable ASCII keeps the frame pure ASCII and on one line.
    if event.is_empty() || event.len() > 256 || !event.bytes().all(|byte| (b' '..=b'~').contains(&byte)) {
        return Err(Error::bad("event must be 1-256 printable ASCII characters"));
    }
    let data = body.get("data").ok_or_else(|| Error::bad("missing field data"))?;
    let tenant = &user.tenant_name;
    let id = state.store.insert(tenant, event, data, |frame| state.hub.publish(tenant, frame))?;
    ok(json!({ "id": id }))
}

async fn sse(state: &State, request: Request<Incoming>) -> Reply {
    let caller = caller(state, &request).await?;
    let last_event_id = match request.headers().get("last-event-id") {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(|id| id.trim().parse::<u64>().ok()))
            .map(|id| id.ok_or_else(|| Error::bad("Last-Event-ID must be a number")))
            .transpose()?,
    };
    let (tenant, username) = (&caller.user.tenant_name, &caller.user.username);
    let (receiver, upto) = state.store.watch(tenant, || state.hub.subscribe(tenant, username, caller.expires))?;
    let backlog = state.store.backlog(tenant, last_event_id, upto)?;
    let mut response = Response::new(Stream::new(backlog, receiver).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

async fn set_revoked(state: &State, request: Request<Incoming>, revoked: bool) -> Reply {
    let body = admin_body(state, request).await?;
    let username = text(&body, "username")?;
    state.store.update_user(username, |user| user.revoked = revoked)?;
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
    ok(user.ok_or_else(|| Error::bad("unknown user"))?.public())
}

/// Changes any of tenant_name, password, email, data; every field is checked
/// before anything is written. A new password or tenant ends open streams.
async fn update_user(state: &State, request: Request<Incoming>) -> Reply {
    let body = admin_body(state, request).await?;
    let username = text(&body, "username")?;
    let tenant = optional_text(&body, "tenant_name")?.map(valid_tenant).transpose()?;
    let password = optional_text(&body, "password")?.map(valid_password).transpose()?;
    let email = match body.contains_key("email") {
        true => Some(valid_email(optional_text(&body, "email")?)?),
        false => None,
    };
    if state.store.user(username)?.is_none() {
        return Err(Error::bad("unknown user"));
    }
    let password = match password {
        Some(password) => Some(state.auth.hash(password).await?),
        None => None,
    };
    let ends_streams = tenant.is_some() || password.is_some();
    state.store.update_user(username, |user| {
        if let Some(tenant) = tenant {
            user.tenant_name = tenant.to_string();
        }
        user.password = password.unwrap_or(user.password.clone());
        user.email = email.unwrap_or(user.email.clone());
        if let Some(data) = body.get("data") {
            user.data = data.clone();
        }
    })?;
    state.auth.forget(username);
    if ends_streams {
        state.hub.disconnect(username);
    }
    ok(json!({}))
}
