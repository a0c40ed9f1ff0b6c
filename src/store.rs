//! The fjall database under `--db`: one keyspace of users, and one keyspace
//! per tenant holding its event log and the latest event of each name.
//!
//! Tenant keyspace layout:
//! - `e` + id (u64 big-endian) → insert time (u64 ms, big-endian) + the SSE
//!   frame, stored ready to send so a replay never re-encodes;
//! - `l` + event name → id of the latest event with that name.

use crate::auth::Caller;
use crate::http::{Error, bad};
use crate::hub::{Hub, Receiver};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Cheap handle to the database, cloned into every request: fjall's handles
/// are reference-counted, and so is the rest.
#[derive(Clone)]
pub struct Store {
    db: Database,
    users: Keyspace,
    /// Where inserted events go live.
    hub: Hub,
    /// Serializes read-modify-write of user records (unique names, updates).
    /// Held only around synchronous fjall calls, never across an await.
    user_writes: Arc<Mutex<()>>,
    /// Tenants touched since start, each recovered lazily on first use.
    tenants: Arc<Mutex<HashMap<String, Arc<Tenant>>>>,
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

    fn parse(bytes: &[u8]) -> Option<User> {
        serde_json::from_slice(bytes).ok().map(User)
    }
}

impl Store {
    /// Opens the database and starts a thread that syncs it to disk every
    /// second. An acknowledged insert is already in the OS, so `kill -9`
    /// cannot lose it; the sync bounds what a power cut can lose.
    pub fn open(path: &std::path::Path, hub: Hub) -> Result<Store, String> {
        let failed = |error| format!("cannot open --db {}: {error}", path.display());
        // A journal of at most 64 MiB bounds what a restart after a crash
        // replays; a clean shutdown leaves nothing to replay (see `close`).
        let builder = Database::builder(path).max_journaling_size(64 << 20);
        let db = builder.open().map_err(failed)?;
        let users = db.keyspace("users", options);
        let users = users.map_err(failed)?;
        let (user_writes, tenants) = (Arc::default(), Arc::default());
        let store = Store {
            db,
            users,
            hub,
            user_writes,
            tenants,
        };
        let syncing = store.db.clone();
        std::thread::spawn(move || {
            while syncing.persist(PersistMode::SyncAll).is_ok() {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Ok(store)
    }

    /// At shutdown: writes every memtable out to disk, so the next start has
    /// no journal to replay and serves at once, then syncs.
    pub fn close(&self) -> Result<(), String> {
        for name in self.db.list_keyspace_names() {
            let keyspace = self.db.keyspace(&name, options);
            let keyspace = keyspace.map_err(|error| format!("cannot flush {name:?}: {error}"))?;
            // Public but doc-hidden in fjall 3.1; pinned by Cargo.lock. It
            // waits only for a memtable it sealed itself, so also wait for
            // those sealed before (by size, or by recovery).
            let _ = keyspace.rotate_memtable_and_wait();
            while keyspace.sealed_memtable_count() > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let synced = self.db.persist(PersistMode::SyncAll);
        synced.map_err(|error| format!("cannot sync the database: {error}"))
    }

    pub fn user(&self, username: &str) -> Result<Option<User>, Error> {
        let record = self.users.get(username)?;
        Ok(record.and_then(|bytes| User::parse(&bytes)))
    }

    pub fn users(&self) -> Result<Vec<User>, Error> {
        let records = self.users.iter().map(|entry| entry.value());
        let records = records.collect::<fjall::Result<Vec<_>>>()?;
        let users = records.iter().filter_map(|record| User::parse(record));
        Ok(users.collect())
    }

    /// Writes a user record atomically: a new one with `create` (a taken
    /// name is a 400), else `changes` merged into the stored one (an unknown
    /// name is a 400). A refused write changes nothing. A new password,
    /// tenant or revocation ends the user's open streams: the client
    /// reconnects and resyncs under the new rules.
    pub fn write_user(&self, username: &str, changes: Value, create: bool) -> Result<(), Error> {
        let _writes = lock(&self.user_writes);
        let mut user = match (self.user(username)?, create) {
            (None, true) => User(Map::new()),
            (Some(user), false) => user,
            (Some(_), true) => return Err(bad("username already exists")),
            (None, false) => return Err(bad("unknown user")),
        };
        let fields = ["password", "tenant_name", "revoked"];
        let ends_streams = fields.iter().any(|field| changes.get(field).is_some());
        if let Value::Object(changes) = changes {
            user.0.extend(changes);
        }
        let record = Value::Object(user.0).to_string();
        self.users.insert(username, record)?;
        if ends_streams && !create {
            self.hub.disconnect(username);
        }
        Ok(())
    }

    /// Appends an event, publishes it to the tenant's streams and returns
    /// its id. The tenant stays locked from id to publication, so every
    /// stream sees ids in ascending order.
    pub fn insert(&self, tenant: &str, name: &str, data: &Value) -> Result<u64, Error> {
        let state = self.tenant(tenant)?;
        let mut last_id = lock(&state.last_id);
        let id = *last_id + 1;
        let frame = frame(id, name, data);
        let mut value = crate::clock::now_ms().to_be_bytes().to_vec();
        value.extend_from_slice(&frame);
        let mut batch = self.db.batch();
        batch.insert(&state.events, event_key(id), value);
        let latest = [b"l", name.as_bytes()].concat();
        batch.insert(&state.events, latest, id.to_be_bytes());
        batch.commit()?;
        *last_id = id;
        self.hub.publish(tenant, frame);
        Ok(id)
    }

    /// Opens a stream: the frames it starts with, oldest first, and the
    /// receiver of live ones. With `after`, the start is every stored event
    /// after that id (a reconnect's replay); without, the latest event of each
    /// name (the sync on connect). The subscription is made while no insert
    /// can happen, so nothing falls between the two or arrives twice.
    pub fn subscribe(
        &self,
        caller: &Caller,
        after: Option<u64>,
    ) -> Result<(Frames, Receiver), Error> {
        let ((user, expires), hub) = (caller, &self.hub);
        let tenant = user.text("tenant_name");
        let state = self.tenant(tenant)?;
        let last_id = lock(&state.last_id);
        let receiver = hub.subscribe(tenant, user.text("username"), *expires);
        let upto = *last_id;
        drop(last_id);
        let events = state.events.clone();
        // Later events reach the receiver; the backlog takes ids up to `upto`, lazily,
        // so replaying a long log holds one frame at a time.
        let values: Box<dyn Iterator<Item = Slice> + Send> = match after {
            Some(after) => {
                let (start, end) = (after.min(upto) + 1, upto + 1);
                let range = event_key(start)..event_key(end);
                Box::new(events.range(range).map_while(|entry| entry.value().ok()))
            }
            None => {
                let mut ids = Vec::new();
                for entry in events.prefix(b"l") {
                    ids.extend(id_of(&entry.value()?).filter(|id| *id <= upto));
                }
                ids.sort_unstable();
                let read = move |id| events.get(event_key(id)).ok().flatten();
                Box::new(ids.into_iter().map_while(read))
            }
        };
        // Skip the 8-byte insert time in front of each stored frame.
        let frame = |value: Slice| Some(Bytes::copy_from_slice(value.get(8..)?));
        Ok((Box::new(values.filter_map(frame)), receiver))
    }

    fn tenant(&self, name: &str) -> Result<Arc<Tenant>, Error> {
        let mut tenants = lock(&self.tenants);
        if let Some(tenant) = tenants.get(name) {
            return Ok(tenant.clone());
        }
        let keyspace = format!("tenant:{name}");
        let events = self.db.keyspace(&keyspace, options)?;
        // The newest id is the last key of the log: no scan, whatever its size.
        let last = events.prefix(b"e").next_back();
        let last = last.map(|entry| entry.key()).transpose()?;
        let last = last.and_then(|key| key.get(1..).and_then(id_of));
        let last_id = Mutex::new(last.unwrap_or(0));
        let tenant = Arc::new(Tenant { events, last_id });
        tenants.insert(name.to_string(), tenant.clone());
        Ok(tenant)
    }
}

/// One SSE frame, `id:<id>\nevent:<name>\ndata:<json>\n\n`, pure ASCII:
/// broker-client decodes byte by byte as Latin-1, so every non-ASCII
/// character of the JSON (only strings can hold one) becomes `\uXXXX`.
fn frame(id: u64, name: &str, data: &Value) -> Bytes {
    let mut frame = format!("id:{id}\nevent:{name}\ndata:");
    for character in data.to_string().chars() {
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

/// Small memtables (fjall's default is 64 MiB each): memory stays low
/// however many tenants there are, at the cost of more, smaller flushes.
fn options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(4 << 20)
}

/// Stored frames, oldest first, read as the stream is written.
pub type Frames = Box<dyn Iterator<Item = Bytes> + Send>;

fn event_key(id: u64) -> Vec<u8> {
    [b"e".as_slice(), &id.to_be_bytes()].concat()
}

fn id_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Locks a mutex, ignoring poisoning: no critical section here leaves data
/// half-written in memory, so a panic elsewhere must not wedge the server.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
