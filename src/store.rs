//! The fjall database under `--db` and the records it keeps. One set of
//! keyspaces serves every tenant, so 10 000 tenants cost no more files,
//! memtables or shutdown time than one:
//! - `users`: username → the user record as JSON;
//! - `events`: tenant `/` id (u64 big-endian) → the SSE frame, ready to
//!   send: the log replayed to a reconnecting client, its newest
//!   `--history` events;
//! - `latest`: tenant `/` id → the frame, for the newest event of each name:
//!   the sync on connect, in id order by a plain scan;
//! - `names`: tenant `/` event name → the id of its newest event;
//!
//! `names` also holds `/heartbeat` (no tenant name is empty, so no tenant's
//! key starts with `/`), rewritten every second to prove storage writes.
//!
//! Tenant names cannot contain `/`, so no tenant's keys run into another's.
//!
//! After a storage failure (disk full, out of file descriptors) fjall
//! refuses every later write until the database is opened again. Broker then
//! answers 503, and once the disk takes a write again it exits with status 1
//! so that systemd starts it afresh: fjall replays its journal, nothing
//! acknowledged is lost, and writes work within seconds of the cause going
//! away.

use crate::config::Config;
use crate::error::{Error, ensure, lock};
use crate::hub::{self, Body, Hub};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json, value::RawValue};
use std::time::{Duration, Instant};
use std::{collections::HashMap, sync::Arc, sync::Mutex};

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

    /// What a request is authenticated under: a change to any of these ends
    /// the user's streams and refuses what was authenticated before it.
    fn credentials(&self) -> (&str, &str, bool) {
        (&self.password, &self.tenant_name, self.revoked)
    }
}

/// The fields of an admin call: a user to create, or changes to one (a
/// field left out stays as it is).
#[derive(Default, Deserialize)]
pub struct Changes {
    #[serde(default)]
    pub username: String,
    pub tenant_name: Option<String>,
    /// The password: the HTTP layer swaps in its hash before it is written.
    pub password: Option<String>,
    /// `Some(None)`, sent as `null`, removes the email (and the data).
    #[serde(default, with = "serde_with::rust::double_option")]
    pub email: Option<Option<String>>,
    #[serde(default, with = "serde_with::rust::double_option")]
    pub data: Option<Option<Value>>,
    /// Set by the revocation calls alone.
    #[serde(skip)]
    pub revoked: Option<bool>,
}

/// The user of an authenticated request and, for a JWT, when it expires.
pub struct Caller {
    pub user: User,
    pub expires: Option<u64>,
}

/// An event as inserted; its tenant is always the inserting user's. The
/// data stays the text that was sent (checked as JSON, and as a tree by
/// `http::json_body`, but never rebuilt from one): its numbers and key
/// order reach streams as sent.
#[derive(Deserialize)]
pub struct Event {
    pub event: String,
    pub data: Box<RawValue>,
}

/// What the writers know of a tenant since start: its newest event id and
/// how many event names it has (`--max_names` bounds them).
#[derive(Clone, Copy)]
struct Tenant {
    newest: u64,
    names: u64,
}

/// Cheap handle to the database, cloned into every request. Whatever
/// writes may wait on the disk (fjall's write backpressure, a slow or frozen
/// disk) or on another write: async code calls it inside `block_in_place`,
/// so that the other connections are served meanwhile.
#[derive(Clone)]
pub struct Store(Arc<Shared>);

struct Shared {
    db: Database,
    users: Keyspace,
    events: Keyspace,
    latest: Keyspace,
    names: Keyspace,
    /// Every tenant written to since start. Held by every write from
    /// reading to publishing, so writes apply one at a time and streams see
    /// ids in order (fjall's journal serializes writes anyway).
    writing: Mutex<HashMap<String, Tenant>>,
    /// When the heartbeat last reached the disk, by the monotonic clock
    /// (NTP corrections and clock steps do not move it), or `None` since a
    /// write failed: health is read from here, so no request ever waits on
    /// the disk for it. Held for the moment of a read or an assignment,
    /// never across a write.
    beat: Mutex<Option<Instant>>,
    /// `--history`, `--max_names` and `--max_body`: what bounds a tenant.
    limits: Config,
    /// Where inserted events go live.
    hub: Hub,
}

impl Store {
    /// Opens the database and starts the thread that watches over it.
    pub fn open(limits: &Config, hub: Hub) -> Result<Store, String> {
        let path = &limits.db;
        let failed = |error| format!("cannot open --db {}: {error}", path.display());
        // A journal of at most 64 MiB (fjall's least) bounds what a start
        // replays, after a crash or a clean shutdown alike (shutdown does not
        // flush memtables, so that it stays quick).
        let db = Database::builder(path).max_journaling_size(64 << 20);
        let db = db.open().map_err(failed)?;
        // Small memtables (fjall's default is 64 MiB each) keep memory low.
        let options = || KeyspaceCreateOptions::default().max_memtable_size(4 << 20);
        let keyspace = |name| db.keyspace(name, options).map_err(failed);
        let store = Store(Arc::new(Shared {
            users: keyspace("users")?,
            events: keyspace("events")?,
            latest: keyspace("latest")?,
            names: keyspace("names")?,
            db: db.clone(),
            writing: Mutex::default(),
            beat: Mutex::new(Some(Instant::now())),
            limits: limits.clone(),
            hub,
        }));
        let watched = store.clone();
        std::thread::spawn(move || watched.watch());
        Ok(store)
    }

    /// Every second, a heartbeat write and a sync to disk: an acknowledged
    /// write is already in the OS, so `kill -9` cannot lose it, and the sync
    /// bounds what a power cut can. While the heartbeat fails, Broker says
    /// so (503); once a megabyte can be written beside the database again,
    /// it exits for systemd to restart it on a database that works.
    fn watch(self) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            // What it holds does not matter: that it reaches the disk does.
            let beat = self.0.names.insert("/heartbeat", "beat");
            let beat = beat.and_then(|()| self.0.db.persist(PersistMode::SyncAll));
            // Reached the disk now, once the sync is done.
            let beat = beat.inspect(|()| *lock(&self.0.beat) = Some(Instant::now()));
            let Err(error) = beat else { continue };
            // Said every second while it lasts.
            eprintln!("storage: cannot write ({error}); answering 503 until it can");
            // Random bytes, which no filesystem compresses to nothing.
            let noise = (0..1 << 16).flat_map(|_| *uuid::Uuid::new_v4().as_bytes());
            let probe = self.0.limits.db.join("probe");
            if std::fs::write(&probe, noise.collect::<Vec<u8>>()).is_ok() {
                let _ = std::fs::remove_file(probe);
                eprintln!("storage: the disk writes again; exiting for a clean restart");
                std::process::exit(1);
            }
        }
    }

    /// Whether a heartbeat reached the disk in the last three seconds, and
    /// no write failed since: one fails once fjall refuses writes, and waits
    /// while the disk is stalled. (Beats are a second's sleep, a write and a
    /// sync apart: a disk that syncs in under two seconds, however busy,
    /// stays healthy.)
    pub fn healthy(&self) -> bool {
        lock(&self.0.beat).is_some_and(|beat| beat.elapsed() < Duration::from_secs(3))
    }

    /// A write's outcome: a failed one turns health to 503 at once, until a
    /// heartbeat reaches the disk again.
    fn written<T>(&self, result: fjall::Result<T>) -> Result<T, Error> {
        if result.is_err() {
            *lock(&self.0.beat) = None;
        }
        Ok(result?)
    }

    pub fn user(&self, username: &str) -> Result<Option<User>, Error> {
        if username.len() > MAX_USERNAME {
            return Ok(None);
        }
        let record = self.0.users.get(username)?;
        Ok(record.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    pub fn users(&self) -> Result<Vec<User>, Error> {
        let records = self.0.users.iter().map(|entry| entry.value());
        let records = records.collect::<fjall::Result<Vec<_>>>()?;
        let users = records.iter().map(|record| serde_json::from_slice(record));
        Ok(users.filter_map(Result::ok).collect())
    }

    /// Appends an event to the author's tenant, publishes it to the tenant's
    /// streams and returns its id. Writes wait for one another from id to
    /// publication, so every stream sees ids in order; and the author is
    /// checked once more while they wait, so an event whose body arrived
    /// after its author was revoked or moved is refused, never written to
    /// the old tenant. A tenant's disk use is bounded by counts: its frames,
    /// each at most `--max_body`, are its `--history` newest events and the
    /// latest of at most `--max_names` names.
    pub fn insert(&self, author: &User, event: Event) -> Result<Value, Error> {
        let mut writing = lock(&self.0.writing);
        self.unchanged(author)?;
        let mut batch = self.0.db.batch();
        let tenant = &author.tenant_name;
        let first = !writing.contains_key(tenant);
        let known = self.tenant(&writing, tenant)?;
        let id = known.newest + 1;
        let key_of = |id: u64| key(tenant, &id.to_be_bytes());
        let name = key(tenant, event.event.as_bytes());
        let previous = self.0.names.get(&name)?;
        let names = known.names + u64::from(previous.is_none());
        let full = Error::Invalid("this tenant has --max_names event names; reuse one".into());
        ensure(names <= self.0.limits.max_names, full)?;
        let frame = hub::frame(id, &event.event, event.data.get());
        let too_large = Error::Invalid("event over --max_body once framed".into());
        ensure(frame.len() <= self.0.limits.max_body, too_large)?;
        // The event this one supersedes leaves the latest set. Each key is
        // written exactly once (ids only grow), so the weak tombstones of
        // `remove_weak` are safe and let compaction drop both sides early:
        // inserts run about 40% faster than with `remove`.
        if let Some(previous) = previous {
            batch.remove_weak(&self.0.latest, key(tenant, &previous));
        }
        batch.insert(&self.0.names, name, id.to_be_bytes());
        batch.insert(&self.0.latest, key_of(id), &*frame);
        batch.insert(&self.0.events, key_of(id), &*frame);
        // The event that falls out of the newest `--history` leaves the log,
        // so disk use stays bounded whatever the number of inserts. The
        // tenant's first insert since start also removes whatever an earlier
        // run with a larger `--history` kept.
        if self.0.limits.history > 0 && id > self.0.limits.history {
            let cut = id - self.0.limits.history;
            if !first {
                batch.remove_weak(&self.0.events, key_of(cut));
            } else {
                // No read on the hot path: only the first insert looks.
                for entry in self.0.events.range(key_of(0)..=key_of(cut)) {
                    batch.remove_weak(&self.0.events, entry.key()?);
                }
            }
        }
        self.written(batch.commit())?;
        writing.insert(tenant.clone(), Tenant { newest: id, names });
        self.0.hub.publish(tenant, frame);
        Ok(json!({ "id": id }))
    }

    /// Creates a user (a taken name is refused), or changes one (an unknown
    /// name is refused), and returns its id.
    pub fn write_user(&self, changes: Changes, create: bool) -> Result<Value, Error> {
        let _writing = lock(&self.0.writing);
        let old = self.user(&changes.username)?;
        let mut user = match (old.clone(), create) {
            (None, true) => User {
                id: uuid::Uuid::new_v4().to_string(),
                ..User::default()
            },
            (Some(user), false) => user,
            (Some(_), true) => return Err(Error::Invalid("username already exists".into())),
            (None, false) => return Err(Error::Invalid("unknown user".into())),
        };
        user.username = changes.username;
        user.tenant_name = changes.tenant_name.unwrap_or(user.tenant_name);
        user.password = changes.password.unwrap_or(user.password);
        user.email = changes.email.unwrap_or(user.email);
        user.data = changes.data.map_or(user.data, Option::unwrap_or_default);
        user.revoked = changes.revoked.unwrap_or(user.revoked);
        let record = json!(user).to_string();
        self.written(self.0.users.insert(&user.username, record))?;
        // The one place where a credential change reaches open streams: a
        // new password or tenant, or a revocation, ends them, and the client
        // authenticates again. JWTs and cached Basic credentials are bound
        // to the password hash, and every request reads the user afresh.
        if old.is_some_and(|old| old.credentials() != user.credentials()) {
            self.0.hub.disconnect(&user.username);
        }
        Ok(json!({ "id": user.id }))
    }

    /// Refuses a user authenticated under credentials that have changed
    /// since. Called under `writing`, which every change takes too.
    fn unchanged(&self, user: &User) -> Result<(), Error> {
        let now = self.user(&user.username)?;
        let same = now.as_ref().map(User::credentials) == Some(user.credentials());
        ensure(same, Error::Unauthorized("credentials changed".into()))
    }

    /// What is known of a tenant, or else read from the disk for its first
    /// insert since start: its newest id, and a count of its names (a read
    /// no larger than the sync a stream starts with).
    fn tenant(&self, known: &HashMap<String, Tenant>, tenant: &str) -> Result<Tenant, Error> {
        if let Some(known) = known.get(tenant) {
            return Ok(*known);
        }
        let names = self.0.names.prefix(key(tenant, b"")).count() as u64;
        let newest = self.newest(tenant)?;
        Ok(Tenant { newest, names })
    }

    /// The newest id of a tenant as stored: the last key of its log (no
    /// scan). Called under `writing`, so no insert is half done.
    fn newest(&self, tenant: &str) -> Result<u64, Error> {
        let last = self.0.events.prefix(key(tenant, b"")).next_back();
        let last = last.map(|entry| entry.key()).transpose()?;
        Ok(last.map_or(0, |key| id_of(&key)))
    }

    /// Opens a stream for the caller. It starts with every event after
    /// `after` (a reconnect's replay) when those are all still kept, else,
    /// as on a fresh connect, with the latest event of each name (the sync);
    /// then live events. Writes wait meanwhile and the backlog is read from
    /// a snapshot, so nothing falls between the two or arrives twice.
    pub fn subscribe(&self, caller: &Caller, after: Option<u64>) -> Result<Body, Error> {
        let tenant = &caller.user.tenant_name;
        let _writing = lock(&self.0.writing);
        let upto = self.newest(tenant)?;
        // Opened only if the user is still as authenticated: a credential
        // change waits for `writing`, and then ends the stream.
        self.unchanged(&caller.user)?;
        // A consistent view as of now: later events arrive live.
        let snapshot = self.0.db.snapshot();
        let next = |after: u64| key(tenant, &(after + 1).to_be_bytes());
        // Replayed only if no event after `after` is missing: it is the
        // newest, or the one after it is still kept. Otherwise the sync,
        // never a silent gap.
        let whole = |&after: &u64| {
            let kept = |after| snapshot.contains_key(&self.0.events, next(after));
            after == upto || after < upto && kept(after).unwrap_or(false)
        };
        let backlog = match after.filter(whole) {
            Some(after) => snapshot.range(&self.0.events, next(after)..=key(tenant, &[0xff; 8])),
            None => snapshot.prefix(&self.0.latest, key(tenant, b"")),
        };
        // Frames are read as the stream is written, one at a time.
        let backlog = backlog.map(|entry| Some(Bytes::copy_from_slice(&entry.value().ok()?)));
        let hub = &self.0.hub;
        hub.subscribe(tenant, &caller.user.username, caller.expires, backlog)
    }
}

/// Every storage fault is answered 503: Broker heals (see above).
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

/// The id a key of the event log ends with.
fn id_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().unwrap_or_default())
}
