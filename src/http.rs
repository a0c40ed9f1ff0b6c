//! The one `service_fn`: routing by method and path, CORS, JSON bodies,
//! error replies, the access log, and one function per endpoint.

use crate::auth::Auth;
use crate::config::Config;
use crate::hub::{Hub, stream};
use crate::store::{Store, User};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::convert::Infallible;
use std::sync::Arc;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
type HttpRequest = Request<hyper::body::Incoming>;
type Reply = Result<Response<Body>, Error>;
type Fields = Map<String, Value>;

/// Every path that exists, so a wrong method is told 405 rather than 404.
const PATHS: &str = "/ /create_user /login /sse /insert /verify /revoke_user /unrevoke_user \
                     /list_users /get_user /update_user";

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

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
pub async fn serve(state: Arc<State>, request: HttpRequest) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let result = route(&state, request).await;
    let mut response = result.unwrap_or_else(|Error(status, reason)| {
        let body = json!({ "error": reason }).to_string();
        respond(status, Full::new(body.into()), JSON)
    });
    let origin = HeaderValue::from_str(&state.config.origin);
    let origin = origin.unwrap_or(HeaderValue::from_static("*"));
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", origin);
    let (status, elapsed) = (response.status().as_u16(), started.elapsed());
    eprintln!(
        "{method} {path} {status} {:.1}ms",
        elapsed.as_secs_f64() * 1000.0
    );
    Ok(response)
}

async fn route(state: &State, request: HttpRequest) -> Reply {
    match (request.method(), request.uri().path()) {
        (&Method::OPTIONS, _) => Ok(respond(StatusCode::NO_CONTENT, Full::default(), PREFLIGHT)),
        (&Method::GET | &Method::HEAD, "/") => ok(json!({"status": "ok"})),
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
        (_, path) if PATHS.split(' ').any(|known| known == path) => {
            let reason = format!("method not allowed on {path}");
            Err(Error(StatusCode::METHOD_NOT_ALLOWED, reason))
        }
        (_, path) => Err(Error(StatusCode::NOT_FOUND, format!("no such path {path}"))),
    }
}

fn respond<B>(
    status: StatusCode,
    body: B,
    headers: &[(&'static str, &'static str)],
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    let mut response = Response::new(body.boxed_unsync());
    *response.status_mut() = status;
    for (name, value) in headers {
        let value = HeaderValue::from_static(value);
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
    response
}

fn ok(body: Value) -> Reply {
    Ok(respond(
        StatusCode::OK,
        Full::new(body.to_string().into()),
        JSON,
    ))
}

/// Reads a JSON object body of at most `--max_body` bytes.
async fn json_body(state: &State, request: HttpRequest) -> Result<Fields, Error> {
    let limit = state.config.max_body;
    let too_large = Error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body over {limit} bytes"),
    );
    let declared = request
        .headers()
        .get("content-length")
        .map(HeaderValue::to_str);
    if declared.and_then(|length| length.ok()?.parse::<usize>().ok()) > Some(limit) {
        return Err(too_large);
    }
    let bytes = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return Err(too_large),
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
async fn admin_body(state: &State, request: HttpRequest) -> Result<Fields, Error> {
    let body = json_body(state, request).await?;
    state.auth.check_admin(text(&body, "admin_token")?)?;
    Ok(body)
}

/// The authenticated user of a request, and when its JWT expires.
async fn caller(state: &State, request: &HttpRequest) -> Result<(User, Option<u64>), Error> {
    let header = request
        .headers()
        .get("authorization")
        .map(HeaderValue::to_str);
    let header = header
        .transpose()
        .map_err(|_| unauthorized("bad Authorization"))?;
    state.auth.authenticate(&state.store, header).await
}

/// `Ok(value)` if `valid`, else a 400 saying what the field must be.
fn check<T>(valid: bool, value: T, rule: &str) -> Result<T, Error> {
    if valid { Ok(value) } else { Err(bad(rule)) }
}

fn valid_password(password: &str) -> Result<String, Error> {
    let valid = (1..=1024).contains(&password.len());
    check(valid, password.to_string(), "password must be 1-1024 bytes")
}

fn valid_tenant(tenant: &str) -> Result<Value, Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let valid = (1..=64).contains(&tenant.len()) && tenant.chars().all(allowed);
    check(
        valid,
        json!(tenant),
        "tenant_name must match ^[A-Za-z0-9_-]{1,64}$",
    )
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

async fn create_user(state: &State, request: HttpRequest) -> Reply {
    let body = admin_body(state, request).await?;
    let username = text(&body, "username")?;
    // No colon: Basic splits username and password at the first one.
    let valid = (1..=128).contains(&username.len()) && !username.contains([':', '\n', '\r']);
    check(
        valid,
        (),
        "username must be 1-128 bytes without ':' or line breaks",
    )?;
    let password = valid_password(text(&body, "password")?)?;
    let tenant = valid_tenant(text(&body, "tenant_name")?)?;
    let email = valid_email(optional_text(&body, "email")?)?;
    if state.store.user(username)?.is_some() {
        return Err(bad("username already exists")); // before paying for Argon2
    }
    let (id, data) = (uuid::Uuid::new_v4().to_string(), body.get("data"));
    let password = state.auth.hash(password).await?;
    state.store.create_user(json!({
        "id": id, "username": username, "password": password, "tenant_name": tenant,
        "revoked": false, "email": email, "data": data,
    }))?;
    ok(json!({ "id": id }))
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
    let tenant = user.text("tenant_name");
    let publish = |frame| state.hub.publish(tenant, frame);
    ok(json!({ "id": state.store.insert(tenant, event, data, publish)? }))
}

async fn sse(state: &State, request: HttpRequest) -> Reply {
    let (user, expires) = caller(state, &request).await?;
    let last_event_id = match request.headers().get("last-event-id") {
        None => None,
        Some(value) => {
            let id = value.to_str().ok().map(|id| id.trim().parse::<u64>());
            Some(
                id.and_then(Result::ok)
                    .ok_or(bad("Last-Event-ID must be a number"))?,
            )
        }
    };
    let (tenant, username) = (user.text("tenant_name"), user.text("username"));
    let subscribe = || state.hub.subscribe(tenant, username, expires);
    let (receiver, upto) = state.store.watch(tenant, subscribe)?;
    let backlog = state.store.backlog(tenant, last_event_id, upto)?;
    Ok(respond(
        StatusCode::OK,
        stream(backlog, receiver),
        EVENT_STREAM,
    ))
}

async fn set_revoked(state: &State, request: HttpRequest, revoked: bool) -> Reply {
    let body = admin_body(state, request).await?;
    let username = text(&body, "username")?;
    let change = Fields::from_iter([("revoked".into(), json!(revoked))]);
    state.store.update_user(username, change)?;
    state.auth.forget(username);
    if revoked {
        state.hub.disconnect(username);
    }
    ok(json!({}))
}

async fn list_users(state: &State, request: HttpRequest) -> Reply {
    admin_body(state, request).await?;
    ok(state.store.users()?.iter().map(User::public).collect())
}

async fn get_user(state: &State, request: HttpRequest) -> Reply {
    let body = admin_body(state, request).await?;
    let user = state.store.user(text(&body, "username")?)?;
    ok(user.ok_or_else(|| bad("unknown user"))?.public())
}

/// Changes any of tenant_name, password, email, data; every field is checked
/// before anything is written. A new password or tenant ends open streams.
async fn update_user(state: &State, request: HttpRequest) -> Reply {
    let body = admin_body(state, request).await?;
    let username = text(&body, "username")?;
    let mut changes = Fields::new();
    if let Some(tenant) = optional_text(&body, "tenant_name")? {
        changes.insert("tenant_name".into(), valid_tenant(tenant)?);
    }
    let password = optional_text(&body, "password")?;
    let password = password.map(valid_password).transpose()?;
    if body.contains_key("email") {
        let email = valid_email(optional_text(&body, "email")?)?;
        changes.insert("email".into(), email);
    }
    if let Some(data) = body.get("data") {
        changes.insert("data".into(), data.clone());
    }
    if state.store.user(username)?.is_none() {
        return Err(bad("unknown user")); // before paying for Argon2
    }
    if let Some(password) = password {
        changes.insert("password".into(), json!(state.auth.hash(password).await?));
    }
    let ends_streams = changes.contains_key("tenant_name") || changes.contains_key("password");
    state.store.update_user(username, changes)?;
    state.auth.forget(username);
    if ends_streams {
        state.hub.disconnect(username);
    }
    ok(json!({}))
}
