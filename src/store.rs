//! The fjall database under `--db`: one keyspace of users, and one keyspace
//! per tenant holding its event log and the latest event of each name.
//!
//! Tenant keyspace layout:
//! - `e` + id (u64 big-endian) → insert time (u64 ms, big-endian) + the SSE frame,
//!   stored ready to send so replay never re-encodes;
//! - `l` + event name → id of the latest event with that name.

use crate::http::{Error, bad};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// Cheap handle to the database, cloned into every request.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    users: Keyspace,
    /// Serializes read-modify-write of user records (unique names, updates).
    /// Held only around synchronous fjall calls, never across an await.
    user_writes: Mutex<()>,
    /// Tenants touched since start, each recovered lazily on first use.
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
}

/// A tenant's keyspace and the id of its newest event. The mutex orders
/// inserts: an id is assigned, written and published before the next one.
struct Tenant {
    events: Keyspace,
    last_id: Mutex<u64>,
}

/// A user record as stored: `id` (UUID v4), `username`, `password` (the
/// Argon2id PHC string), `tenant_name`, `revoked`, `email` (string or null)
/// and `data` (any JSON). Kept as the JSON object it is stored as.
pub struct User(pub Map<String, Value>);

impl From<Value> for User {
    fn from(record: Value) -> User {
        match record {
            Value::Object(fields) => User(fields),
            _ => User(Map::new()),
        }
    }
}

impl User {
    /// A string field; `""` when absent.
    pub fn text(&self, field: &str) -> &str {
        self.0.get(field).and_then(Value::as_str).unwrap_or("")
    }

    pub fn revoked(&self) -> bool {
        self.0.get("revoked") == Some(&Value::Bool(true))
    }

    /// The user as the API shows it: the password hash never leaves the server.
    pub fn public(&self) -> Value {
        let mut fields = self.0.clone();
        fields.insert("password".into(), json!("***"));
        Value::Object(fields)
    }
}

impl Store {
    pub fn open(path: &std::path::Path) -> fjall::Result<Store> {
        let db = Database::builder(path).open()?;
        let users = db.keyspace("users", KeyspaceCreateOptions::default)?;
        let shared = Shared {
            db,
            users,
            user_writes: Mutex::new(()),
            tenants: Mutex::new(HashMap::new()),
        };
        Ok(Store {
            shared: Arc::new(shared),
        })
    }

    pub fn user(&self, username: &str) -> Result<Option<User>, Error> {
        let record = self.shared.users.get(username)?;
        Ok(record
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .map(User))
    }

    pub fn users(&self) -> Result<Vec<User>, Error> {
        let mut users = Vec::new();
        for entry in self.shared.users.iter() {
            users.extend(serde_json::from_slice(&entry.value()?).ok().map(User));
        }
        Ok(users)
    }

    /// Stores a new user; a taken username is a 400 and changes nothing.
    pub fn create_user(&self, user: User) -> Result<(), Error> {
        let _writes = lock(&self.shared.user_writes);
        if self.shared.users.contains_key(user.text("username"))? {
            return Err(bad("username already exists"));
        }
        self.put(user)
    }

    /// Sets fields of a stored user atomically; an unknown user is a 400.
    pub fn update_user<'a>(
        &self,
        username: &str,
        changes: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Result<(), Error> {
        let _writes = lock(&self.shared.user_writes);
        let mut user = self.user(username)?.ok_or_else(|| bad("unknown user"))?;
        for (field, value) in changes {
            user.0.insert(field.to_string(), value);
        }
        self.put(user)
    }

    fn put(&self, user: User) -> Result<(), Error> {
        let key = user.text("username").to_string();
        Ok(self
            .shared
            .users
            .insert(key, Value::Object(user.0).to_string())?)
    }

    /// Appends an event and returns its id. `publish` receives the frame while
    /// the tenant is still locked, so every stream sees ids in ascending order.
    pub fn insert(
        &self,
        tenant: &str,
        name: &str,
        data: &Value,
        publish: impl FnOnce(Bytes),
    ) -> Result<u64, Error> {
        let tenant = self.tenant(tenant)?;
        let mut last_id = lock(&tenant.last_id);
        let id = *last_id + 1;
        let frame = frame(id, name, data);
        let mut value = crate::clock::now_ms().to_be_bytes().to_vec();
        value.extend_from_slice(&frame);
        let mut batch = self.shared.db.batch();
        batch.insert(&tenant.events, key(b'e', &id.to_be_bytes()), value);
        batch.insert(&tenant.events, key(b'l', name.as_bytes()), id.to_be_bytes());
        batch.commit()?;
        *last_id = id;
        publish(frame);
        Ok(id)
    }

    /// Runs `subscribe` while no insert can happen in the tenant and returns
    /// its result with the newest id at that moment: events after it reach the
    /// subscriber live; `backlog(.., upto)` supplies the ones before.
    pub fn watch<T>(&self, tenant: &str, subscribe: impl FnOnce() -> T) -> Result<(T, u64), Error> {
        let tenant = self.tenant(tenant)?;
        let last_id = lock(&tenant.last_id);
        Ok((subscribe(), *last_id))
    }

    /// The frames a new stream starts with, oldest first, all with id ≤ `upto`:
    /// with `after`, every stored event after that id (a reconnect's replay);
    /// without, the latest event of each name (the sync on connect).
    pub fn backlog(&self, tenant: &str, after: Option<u64>, upto: u64) -> Result<Backlog, Error> {
        let events = self.tenant(tenant)?.events.clone();
        let ids: Box<dyn Iterator<Item = u64> + Send> = match after {
            Some(after) => Box::new(after.saturating_add(1)..=upto),
            None => {
                let mut ids = Vec::new();
                for entry in events.prefix(b"l") {
                    ids.extend(id_of(&entry.value()?).filter(|id| *id <= upto));
                }
                ids.sort_unstable();
                Box::new(ids.into_iter())
            }
        };
        Ok(Backlog { events, ids })
    }

    /// Forces the journal to disk; called at shutdown and once a second.
    pub fn persist(&self) -> fjall::Result<()> {
        self.shared.db.persist(fjall::PersistMode::SyncAll)
    }

    fn tenant(&self, name: &str) -> Result<Arc<Tenant>, Error> {
        let mut tenants = lock(&self.shared.tenants);
        if let Some(tenant) = tenants.get(name) {
            return Ok(tenant.clone());
        }
        let events = self
            .shared
            .db
            .keyspace(&format!("tenant:{name}"), KeyspaceCreateOptions::default)?;
        // The newest id is the last key of the log: no scan, whatever its size.
        let last_id = match events.range(key(b'e', &[])..key(b'f', &[])).next_back() {
            Some(entry) => entry.key()?.get(1..).and_then(id_of).unwrap_or(0),
            None => 0,
        };
        let tenant = Arc::new(Tenant {
            events,
            last_id: Mutex::new(last_id),
        });
        tenants.insert(name.to_string(), tenant.clone());
        Ok(tenant)
    }
}

/// Stored frames read lazily, so replaying a long log holds one frame at a time.
pub struct Backlog {
    events: Keyspace,
    ids: Box<dyn Iterator<Item = u64> + Send>,
}

impl Iterator for Backlog {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            let id = self.ids.next()?;
            // A read error ends the backlog; the client resumes with Last-Event-ID.
            let value = self.events.get(key(b'e', &id.to_be_bytes())).ok()?;
            if let Some(value) = value.filter(|value| value.len() > 8) {
                return Some(Bytes::copy_from_slice(&value[8..]));
            }
        }
    }
}

/// One SSE frame, `id:<id>\nevent:<name>\ndata:<json>\n\n`, pure ASCII:
/// broker-client decodes byte by byte as Latin-1, so every non-ASCII character
/// in the JSON is escaped as `\uXXXX` (only strings can hold one).
fn frame(id: u64, name: &str, data: &Value) -> Bytes {
    let json = data.to_string();
    let mut frame = String::with_capacity(json.len() + name.len() + 32);
    let _ = write!(frame, "id:{id}\nevent:{name}\ndata:");
    for character in json.chars() {
        if character.is_ascii() {
            frame.push(character);
        } else {
            for unit in character.encode_utf16(&mut [0; 2]) {
                let _ = write!(frame, "\\u{unit:04x}");
            }
        }
    }
    frame.push_str("\n\n");
    Bytes::from(frame)
}

fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

fn id_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Locks a mutex, ignoring poisoning: no critical section here leaves data
/// half-written in memory, so a panic elsewhere must not wedge the server.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
