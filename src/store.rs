//! The fjall database under `--db` and the records it keeps. One set of
//! keyspaces serves every tenant, so 10 000 tenants cost no more files,
//! memtables or shutdown time than one:
//! - `users`: username → the user record as JSON;
//! - `events`: tenant `/` id (u64 big-endian) → the SSE frame, ready to send;
//! - `latest`: tenant `/` event name → id of the newest event of that name;
//! - `meta`: `applied` → position in the cluster log of the last write
//!   applied; `heartbeat` → rewritten every second to prove storage writes.
//!
//! Tenant names cannot contain `/`, so no tenant's keys run into another's.
//!
//! After a storage failure (disk full, out of file descriptors) fjall refuses
//! every later write. The store then drops the database and reopens it until
//! that works — fjall replays its journal, so nothing acknowledged is lost —
//! and answers 503 meanwhile: Broker heals without a restart.

use crate::error::{Error, lock};
use crate::{hub::Hub, sse};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration, time::Instant};

/// Longest username. Longer names cannot exist, and never reach fjall,
/// whose keys must stay under 64 KiB.
pub const MAX_USERNAME: usize = 128;

/// A user as stored, and as the admin calls show it (password masked).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// UUID v4, assigned at creation.
    pub id: String,
    pub username: String,
    /// The Argon2id PHC string; it never leaves the server.
    pub password: String,
    pub tenant_name: String,
    pub revoked: bool,
    pub email: Option<String>,
    pub data: Value,
}

impl User {
    pub fn public(&self) -> Value {
        let mut user = json!(self);
        user["password"] = json!("***");
        user
    }
}

/// The fields of a user to create, or to change; a field left out of a
/// change stays as it is.
#[derive(Default, Serialize, Deserialize)]
pub struct Changes {
    #[serde(skip_deserializing)]
    pub id: Option<String>,
    pub username: String,
    pub tenant_name: Option<String>,
    /// The password: the HTTP layer swaps in its hash before it is written.
    pub password: Option<String>,
    /// `Some(None)` removes the email.
    #[serde(default, deserialize_with = "present")]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub data: Option<Value>,
    #[serde(skip_deserializing)]
    pub revoked: Option<bool>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    field: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(field).map(Some)
}

/// An event as inserted: `tenant` is always the inserting user's.
#[derive(Serialize, Deserialize)]
pub struct Event {
    #[serde(skip_deserializing)]
    pub tenant: String,
    pub event: String,
    pub data: Value,
}

/// Every change to stored state. In cluster mode each one is a message of
/// the replicated log, applied in the same order on every node.
#[derive(Serialize, Deserialize)]
pub enum Write {
    Create(Changes),
    Update(Changes),
    Insert(Event),
}

/// Cheap handle to the database, cloned into every request.
#[derive(Clone)]
pub struct Store(Arc<Shared>);

struct Shared {
    path: PathBuf,
    /// Events kept per tenant (`--history`; 0 keeps all).
    history: u64,
    /// Where inserted events go live.
    hub: Hub,
    /// The open database, or `None` while it is reopened after a failure.
    engine: Mutex<Option<Arc<Engine>>>,
}

/// One opening of the database, dropped whole when storage fails so that a
/// reopen starts again from what is on disk.
struct Engine {
    db: Database,
    users: Keyspace,
    events: Keyspace,
    latest: Keyspace,
    meta: Keyspace,
    /// tenant → id of its newest event, as far as known. Held by every write
    /// from reading to publishing, so writes apply one at a time and streams
    /// see ids in order (fjall's journal serializes writes anyway).
    writing: Mutex<HashMap<String, u64>>,
}

impl Engine {
    fn open(path: &Path) -> fjall::Result<Engine> {
        // A journal of at most 64 MiB bounds what a restart after a crash
        // replays; a clean shutdown leaves nothing to replay (see `close`).
        let db = Database::builder(path)
            .max_journaling_size(64 << 20)
            .open()?;
        // Small memtables (fjall's default is 64 MiB each) keep memory low.
        let options = || KeyspaceCreateOptions::default().max_memtable_size(4 << 20);
        Ok(Engine {
            users: db.keyspace("users", options)?,
            events: db.keyspace("events", options)?,
            latest: db.keyspace("latest", options)?,
            meta: db.keyspace("meta", options)?,
            db,
            writing: Mutex::default(),
        })
    }

    fn user(&self, username: &str) -> Result<Option<User>, Error> {
        if username.len() > MAX_USERNAME {
            return Ok(None);
        }
        let record = self.users.get(username)?;
        Ok(record.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// The newest id of a tenant: known, or the last key of its log (no scan).
    fn last_id(&self, known: &HashMap<String, u64>, tenant: &str) -> Result<u64, Error> {
        if let Some(id) = known.get(tenant) {
            return Ok(*id);
        }
        let last = self.events.prefix(key(tenant, b"")).next_back();
        let last = last.map(|entry| entry.key()).transpose()?;
        Ok(last
            .and_then(|key| id_of(&key[key.len() - 8..]))
            .unwrap_or(0))
    }

    /// The id of the latest event of a name in a tenant.
    fn latest_id(&self, tenant: &str, name: &[u8]) -> Result<Option<u64>, Error> {
        let id = self.latest.get(key(tenant, name))?;
        Ok(id.and_then(|id| id_of(&id)))
    }

    fn frame(&self, tenant: &str, id: u64) -> Option<Bytes> {
        let frame = self.events.get(key(tenant, &id.to_be_bytes())).ok()??;
        Some(Bytes::copy_from_slice(&frame))
    }

    /// The events that leave a tenant's history of `history` events as
    /// event `id` arrives: the one that falls out of the newest, unless it
    /// is the latest of its name, and the latest of this event's name, if it
    /// was kept only for being the latest. So disk use stays bounded by the
    /// history and the number of names, and the sync stays complete.
    fn expired(&self, event: &Event, id: u64, history: u64) -> Result<Vec<u64>, Error> {
        let Some(leaving) = id.checked_sub(history).filter(|_| history > 0) else {
            return Ok(Vec::new());
        };
        let superseded = self.latest_id(&event.tenant, event.event.as_bytes())?;
        let mut expired: Vec<u64> = superseded
            .filter(|old| *old <= leaving)
            .into_iter()
            .collect();
        if let Some(frame) = self.frame(&event.tenant, leaving) {
            let latest = self.latest_id(&event.tenant, sse::event_name(&frame))?;
            expired.extend(Some(leaving).filter(|leaving| latest != Some(*leaving)));
        }
        Ok(expired)
    }

    /// Proves that storage can take a large write again, after a failure.
    fn probe(&self) -> fjall::Result<()> {
        // Random bytes: the journal would compress anything else to nothing.
        let noise = (0..1 << 16).flat_map(|_| *uuid::Uuid::new_v4().as_bytes());
        self.meta.insert("probe", noise.collect::<Vec<u8>>())?;
        self.meta.remove("probe")?;
        self.heartbeat()
    }

    /// Proves that storage still writes, and syncs the journal to disk.
    fn heartbeat(&self) -> fjall::Result<()> {
        let now = crate::clock::now_ms().to_be_bytes();
        self.meta.insert("heartbeat", now)?;
        self.db.persist(PersistMode::SyncAll)
    }
}

impl Store {
    /// Opens the database and starts the thread that keeps it healthy.
    pub fn open(path: &Path, history: u64, hub: Hub) -> Result<Store, String> {
        let engine = Engine::open(path).map_err(|error| format!("cannot open --db: {error}"))?;
        let engine = Mutex::new(Some(Arc::new(engine)));
        let path = path.to_path_buf();
        let shared = Shared {
            path,
            history,
            hub,
            engine,
        };
        let store = Store(Arc::new(shared));
        let watched = store.clone();
        std::thread::spawn(move || watched.watch());
        Ok(store)
    }

    /// Every second, a heartbeat write and a sync to disk: an acknowledged
    /// write is already in the OS, so `kill -9` cannot lose it, and the sync
    /// bounds what a power cut can. When the heartbeat fails, storage is
    /// broken: drop the database and reopen it until that works.
    fn watch(self) {
        let mut failure = String::new();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let Err(error) = self.engine().and_then(|engine| Ok(engine.heartbeat()?)) else {
                continue;
            };
            if lock(&self.0.engine).take().is_some() {
                eprintln!("storage: cannot write ({error:?}); reopening the database");
            }
            // A reopened database counts once it has written a megabyte: a
            // full disk may still take a heartbeat's few bytes.
            let reopened = Engine::open(&self.0.path).and_then(|engine| {
                engine.probe()?;
                Ok(engine)
            });
            match reopened {
                Ok(engine) => {
                    *lock(&self.0.engine) = Some(Arc::new(engine));
                    eprintln!("storage: database reopened; writes work again");
                }
                // Logged when the reason changes, not every second.
                Err(error) if error.to_string() != failure => {
                    failure = error.to_string();
                    eprintln!("storage: cannot reopen yet ({failure}); retrying");
                }
                Err(_) => {}
            }
        }
    }

    fn engine(&self) -> Result<Arc<Engine>, Error> {
        let engine = lock(&self.0.engine).clone();
        engine.ok_or_else(|| Error::Unavailable("storage is unavailable; retrying".into()))
    }

    /// Whether storage takes writes, as of the last heartbeat.
    pub fn healthy(&self) -> bool {
        lock(&self.0.engine).is_some()
    }

    /// At shutdown: seals every memtable and waits (three seconds at most)
    /// for them to be written out, so the next start has no journal to
    /// replay, then syncs. A database that cannot write is left to that
    /// replay.
    pub fn close(&self) -> Result<(), String> {
        let engine = self
            .engine()
            .map_err(|_| "storage unavailable at shutdown")?;
        let deadline = Instant::now() + Duration::from_secs(3);
        for keyspace in [&engine.users, &engine.events, &engine.latest, &engine.meta] {
            // Public but doc-hidden in fjall 3.1; pinned by Cargo.lock.
            let _ = keyspace.rotate_memtable();
            while keyspace.sealed_memtable_count() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let synced = engine.db.persist(PersistMode::SyncAll);
        synced.map_err(|error| format!("cannot sync the database: {error}"))
    }

    pub fn user(&self, username: &str) -> Result<Option<User>, Error> {
        self.engine()?.user(username)
    }

    pub fn users(&self) -> Result<Vec<User>, Error> {
        let engine = self.engine()?;
        let records = engine.users.iter().map(|entry| entry.value());
        let records = records.collect::<fjall::Result<Vec<_>>>()?;
        let users = records.iter().map(|record| serde_json::from_slice(record));
        Ok(users.filter_map(Result::ok).collect())
    }

    /// The cluster log position of the last write applied (0 for none).
    pub fn position(&self) -> Result<u64, Error> {
        let position = self.engine()?.meta.get("applied")?;
        Ok(position.and_then(|bytes| id_of(&bytes)).unwrap_or(0))
    }

    /// Applies one write and returns what its client is told. `position` is
    /// its place in the cluster log, stored in the same atomic batch (even
    /// for a refused write), so a restarted node resumes right after it.
    pub fn apply(&self, write: Write, position: Option<u64>) -> Result<Value, Error> {
        let engine = self.engine()?;
        let mut writing = lock(&engine.writing);
        let mut batch = engine.db.batch();
        if let Some(position) = position {
            batch.insert(&engine.meta, "applied", position.to_be_bytes());
        }
        let (changes, create) = match write {
            Write::Create(changes) => (changes, true),
            Write::Update(changes) => (changes, false),
            Write::Insert(event) => {
                let id = engine.last_id(&writing, &event.tenant)? + 1;
                let frame = sse::frame(id, &event.event, &event.data);
                for expired in engine.expired(&event, id, self.0.history)? {
                    batch.remove(&engine.events, key(&event.tenant, &expired.to_be_bytes()));
                }
                batch.insert(
                    &engine.events,
                    key(&event.tenant, &id.to_be_bytes()),
                    &*frame,
                );
                let latest = key(&event.tenant, event.event.as_bytes());
                batch.insert(&engine.latest, latest, id.to_be_bytes());
                batch.commit()?;
                writing.insert(event.tenant.clone(), id);
                self.0.hub.publish(&event.tenant, frame);
                return Ok(json!({ "id": id }));
            }
        };
        let old = engine.user(&changes.username)?;
        let mut user = match (old.clone(), create) {
            (None, true) => User::default(),
            (Some(user), false) => user,
            (Some(_), true) => return Err(Error::Invalid("username already exists".into())),
            (None, false) => return Err(Error::Invalid("unknown user".into())),
        };
        user.id = changes.id.unwrap_or(user.id);
        user.username = changes.username;
        user.tenant_name = changes.tenant_name.unwrap_or(user.tenant_name);
        user.password = changes.password.unwrap_or(user.password);
        user.email = changes.email.unwrap_or(user.email);
        user.data = changes.data.unwrap_or(user.data);
        user.revoked = changes.revoked.unwrap_or(user.revoked);
        batch.insert(&engine.users, &user.username, json!(user).to_string());
        batch.commit()?;
        // The one place where a credential change reaches open streams: a
        // new password or tenant, or a revocation, ends them, and the client
        // authenticates again. JWTs and cached Basic credentials are bound
        // to the password hash, and every request reads the user afresh.
        let same = |old: User| {
            (old.password, old.tenant_name) == (user.password.clone(), user.tenant_name.clone())
        };
        if user.revoked || !old.is_none_or(same) {
            self.0.hub.disconnect(&user.username);
        }
        Ok(json!({ "id": user.id }))
    }

    /// Opens a stream for `user`. It starts with every event after `after`
    /// (a reconnect's replay) when those are all still kept, else, as on a
    /// fresh connect, with the latest event of each name (the sync); then
    /// live events. Writes wait meanwhile, so nothing falls between the
    /// backlog and the live events, or arrives twice.
    pub fn subscribe(
        &self,
        user: &User,
        expires: Option<u64>,
        after: Option<u64>,
    ) -> Result<sse::Body, Error> {
        let engine = self.engine()?;
        let tenant = user.tenant_name.clone();
        let writing = lock(&engine.writing);
        let upto = engine.last_id(&writing, &tenant)?;
        // Opened only if the user is still as authenticated: a credential
        // change waits for `writing`, and then ends the stream.
        if engine.user(&user.username)?.as_ref() != Some(user) {
            return Err(Error::Unauthorized(
                "credentials changed; authenticate again".into(),
            ));
        }
        let history = self.0.history;
        let kept = |after: &u64| history == 0 || after + history >= upto;
        let ids: Box<dyn Iterator<Item = u64> + Send> = match after.filter(kept) {
            Some(after) => Box::new(after.min(upto) + 1..=upto),
            None => {
                let latest = engine
                    .latest
                    .prefix(key(&tenant, b""))
                    .map(|entry| entry.value());
                let mut ids: Vec<u64> = latest.filter_map(|id| id_of(&id.ok()?)).collect();
                ids.sort_unstable();
                Box::new(ids.into_iter())
            }
        };
        // Frames are read as the stream is written, one at a time, through
        // the store (a reopen may replace the database meanwhile).
        let store = self.clone();
        let reader = tenant.clone();
        let frames = ids.map(move |id| store.engine().ok()?.frame(&reader, id));
        let (sender, body) = sse::stream(Box::new(frames));
        self.0
            .hub
            .subscribe(&tenant, &user.username, expires, sender)?;
        Ok(body)
    }
}

/// Every storage fault is answered 503: the store heals by itself.
impl From<fjall::Error> for Error {
    fn from(error: fjall::Error) -> Error {
        eprintln!("storage error: {error}");
        Error::Unavailable("storage error; retrying".into())
    }
}

/// A key of a tenant: `tenant/suffix`.
fn key(tenant: &str, suffix: &[u8]) -> Vec<u8> {
    [tenant.as_bytes(), b"/", suffix].concat()
}

fn id_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
