//! Who is asking: HS256 JWTs written by hand, HTTP Basic, Argon2id
//! passwords, the admin token, and the limits that keep guessing slow.
//!
//! Every credential is checked against the user record as it is now: a
//! request reads the user afresh, so a revocation, a password change or a
//! tenant move takes effect on the next request, mid-authentication ones
//! included.

use crate::store::{Caller, Store, User};
use crate::{config::Config, error::Error, error::ensure, error::lock};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use headers::authorization::{Authorization, Basic, Bearer};
use headers::{HeaderMap, HeaderMapExt};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use std::{collections::HashMap, net::IpAddr, sync::Arc, sync::Mutex};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Argon2 work, for the blocking pool.
trait Job<T>: FnOnce() -> T + Send + 'static {}
impl<T, F: FnOnce() -> T + Send + 'static> Job<T> for F {}

/// Everything needed to authenticate a request; shared by all connections.
pub struct Auth {
    store: Store,
    /// jwt_secret, jwt_expiry, admin_token and login_limit (password checks
    /// that did not pass, allowed per client address and minute; admin_token
    /// guesses are not counted: docs/operations.md, "Threat model", says why).
    config: Config,
    /// Argon2id costs ~19 MiB and tens of milliseconds per hash: at most one
    /// per core runs at a time, on the blocking pool, never on a worker.
    /// Requests wait for a place in turn, however many (the 503 past a
    /// bounded number waiting was retired for the line budget: each waiting
    /// request holds only its connection, and `--login_limit` is counted
    /// before the wait).
    argon_running: Arc<Semaphore>,
    /// username → digest (an HMAC keyed by the JWT secret) of a Basic
    /// password that matched the stored hash, so repeated Basic requests skip
    /// Argon2. The digest covers the hash too: after a password change an old
    /// entry can never match.
    verified: Mutex<HashMap<String, Vec<u8>>>,
    /// The current minute, and the password checks of each client address
    /// in it that did not pass (or have not passed yet).
    failures: Mutex<(u64, HashMap<IpAddr, u64>)>,
}

/// A real hash, with the same parameters, to check when the user does not
/// exist, so a wrong username takes as long as a wrong password. Its
/// password was 244 random bits, thrown away; and even a match would find
/// no user to log in.
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$VoPWsPTVSzCYVicTOsY+4A$GJX4XHrHQVy0q76DbLMrNYXLMiB8MAd8yo5q0+CJWfs";

impl Auth {
    pub fn new(config: Config, store: Store) -> Auth {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        Auth {
            store,
            config,
            argon_running: Arc::new(Semaphore::new(cores)),
            verified: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Compares the tokens in constant time (`subtle`), so timing reveals
    /// nothing of the real token but its length. (Guessing a long random
    /// token, as the README asks for, is hopeless anyway.)
    pub fn check_admin(&self, token: &str) -> Result<(), Error> {
        let same = token.as_bytes().ct_eq(self.config.admin_token.as_bytes());
        ensure(same.into(), Error::Unauthorized("wrong admin_token".into()))
    }

    /// A signed JWT for `user`, valid for `--jwt_expiry` seconds of NTP time.
    pub fn issue(&self, user: &User) -> String {
        let iat = crate::clock::now_ms() / 1000;
        let exp = iat.saturating_add(self.config.jwt_expiry.get());
        // `cred` binds the token to the password it was issued under: a
        // password change invalidates every earlier token. (Tokens minted
        // elsewhere with the secret may leave it out.)
        let cred = self.credential(user);
        let claims =
            json!({"sub": user.username, "iat": iat, "exp": exp, "iss": "Broker", "cred": cred});
        let header = BASE64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let signed = format!("{header}.{}", BASE64URL.encode(claims.to_string()));
        let signature = hmac(&self.config.jwt_secret, &signed).finalize();
        format!("{signed}.{}", BASE64URL.encode(signature.into_bytes()))
    }

    /// The user of a valid token. Only HS256 is accepted, the signature is
    /// compared in constant time, and `exp` is enforced.
    fn bearer(&self, token: &str) -> Result<Caller, Error> {
        let invalid = || Error::Unauthorized("invalid token".into());
        let (signed, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
        let (header, claims) = signed.split_once('.').ok_or_else(invalid)?;
        let header = decode_json(header).ok_or_else(invalid)?;
        let signature = BASE64URL.decode(signature).map_err(|_| invalid())?;
        let mac = hmac(&self.config.jwt_secret, signed);
        let signed_here = header["alg"] == "HS256" && mac.verify_slice(&signature).is_ok();
        ensure(signed_here, invalid())?;
        let claims = decode_json(claims).ok_or_else(invalid)?;
        let expires = claims["exp"].as_u64().ok_or_else(invalid)?;
        let now = crate::clock::now_ms() / 1000;
        ensure(expires > now, Error::Unauthorized("token expired".into()))?;
        let user = claims["sub"].as_str().map(|name| self.store.user(name));
        let user = user.transpose()?.flatten().ok_or_else(invalid)?;
        let fingerprint = self.credential(&user);
        let cred = claims.get("cred").map(|cred| *cred == fingerprint);
        let current = claims["iss"] == "Broker" && cred != Some(false);
        ensure(current, Error::Unauthorized("token no longer valid".into()))?;
        allowed(user, Some(expires))
    }

    /// Authenticates a request from `client` by its `Authorization: Bearer …`
    /// or `Basic …` header (parsed by the `headers` crate).
    pub async fn authenticate(&self, client: IpAddr, headers: &HeaderMap) -> Result<Caller, Error> {
        if let Some(Authorization(bearer)) = headers.typed_get::<Authorization<Bearer>>() {
            return self.bearer(bearer.token());
        }
        // The password is everything after the first colon, colons and all.
        let basic = headers.typed_get::<Authorization<Basic>>();
        let missing = || Error::Unauthorized("no valid Bearer or Basic credentials".into());
        let Authorization(basic) = basic.ok_or_else(missing)?;
        self.login(client, basic.username(), basic.password()).await
    }

    /// Checks a username and password from `client`; either one wrong is
    /// the same 401. The check counts against the client's `--login_limit`
    /// before it runs, so parallel guesses cannot overshoot the limit, and
    /// is given back only once it has passed: a client that hangs up
    /// mid-check has failed.
    pub async fn login(&self, client: IpAddr, name: &str, password: &str) -> Result<Caller, Error> {
        self.attempt(client)?;
        let wrong = || Error::Unauthorized("wrong username or password".into());
        let stored = self.store.user(name)?.map(|user| user.password);
        let stored = stored.unwrap_or_else(|| DECOY.into());
        // As JSON, so that ("ab", "c") and ("a", "bc") differ.
        let message = json!([name, password, stored]).to_string();
        let digest = hmac(&self.config.jwt_secret, &message).finalize();
        let digest = digest.into_bytes().to_vec();
        let cached = lock(&self.verified).get(name) == Some(&digest);
        let given = password.to_string();
        let hash = stored.clone();
        let check = move || password_auth::verify_password(given, &hash).is_ok();
        if !cached && !self.argon(check).await? {
            return Err(wrong());
        }
        // Read again after the wait: a change that landed meanwhile wins.
        let user = self.store.user(name)?;
        let user = user.filter(|user| user.password == stored);
        let caller = allowed(user.ok_or_else(wrong)?, None)?;
        // Only users that exist get here: the cache is bounded by them.
        lock(&self.verified).insert(name.to_string(), digest);
        // The check passed: it gives its count back.
        if let Some(count) = lock(&self.failures).1.get_mut(&client) {
            *count = count.saturating_sub(1);
        }
        Ok(caller)
    }

    /// Hashes a new password: Argon2id with argon2's default parameters,
    /// which are OWASP's (19 MiB, 2 passes, 1 lane), and a fresh random
    /// salt from the OS, through RustCrypto's `password-auth`.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        self.argon(move || password_auth::generate_hash(password))
            .await
    }

    /// Counts a password check of `address` in this minute, or refuses it
    /// once `--login_limit` of them have not passed. The table starts over
    /// each minute, so it stays small.
    fn attempt(&self, address: IpAddr) -> Result<(), Error> {
        let minute = crate::clock::now_ms() / 60_000;
        let mut table = lock(&self.failures);
        if table.0 != minute {
            *table = (minute, HashMap::new());
        }
        // At most 100 000 addresses a minute. Past that a new one is not
        // counted, rather than the table starting over: a client with a
        // whole IPv6 block then gains only Argon2's own pace (a place per
        // core), and every other address keeps its count.
        if table.1.len() >= 100_000 && !table.1.contains_key(&address) {
            return Ok(());
        }
        let count = table.1.entry(address).or_default();
        let refused = Error::TooMany("too many failed password checks".into(), 60);
        ensure(*count < self.config.login_limit, refused)?;
        *count += 1;
        Ok(())
    }

    /// A fingerprint of the user's password hash, for the `cred` claim. The
    /// hash holds a fresh salt, so every password change yields a new one.
    fn credential(&self, user: &User) -> String {
        let fingerprint = hmac(&self.config.jwt_secret, &user.password).finalize();
        BASE64URL.encode(&fingerprint.into_bytes()[..12])
    }

    /// Runs Argon2 work on the blocking pool, one job per core at most.
    async fn argon<T: Send + 'static>(&self, work: impl Job<T>) -> Result<T, Error> {
        let running = self.argon_running.clone().acquire_owned().await;
        // The job holds its place until the hash is done, even if the
        // client hung up and dropped this future: the bound stays exact.
        let done = tokio::task::spawn_blocking(move || {
            let _place = running;
            work()
        });
        let done = done.await;
        // Only a bug could make the job panic; the client may retry.
        done.map_err(|_| Error::Unavailable("password check failed".into()))
    }
}

/// The one check of whether a known user may do anything at all: the
/// caller it makes, if so, whose JWT (if any) expires at `expires`.
fn allowed(user: User, expires: Option<u64>) -> Result<Caller, Error> {
    ensure(!user.revoked, Error::Unauthorized("user is revoked".into()))?;
    Ok(Caller { user, expires })
}

fn hmac(key: &str, message: &str) -> Hmac<sha2::Sha256> {
    let mut mac = Hmac::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac
}

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&BASE64URL.decode(part).ok()?).ok()
}
