//! Who is asking: HS256 JWTs written by hand, HTTP Basic, Argon2id passwords,
//! and the constant-time admin token check.

use crate::http::Error;
use crate::store::{Store, User, lock};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

type HmacSha256 = Hmac<Sha256>;

/// Most cached Basic credentials; past it the cache starts over.
const CACHE_LIMIT: usize = 100_000;

/// Everything needed to authenticate a request; shared by all connections.
pub struct Auth {
    jwt_secret: Vec<u8>,
    jwt_expiry: u64,
    admin_token: String,
    /// Argon2id costs ~20 MiB and tens of milliseconds per hash: at most one
    /// per core runs at a time, on the blocking pool, never on a worker.
    argon_permits: Arc<Semaphore>,
    /// Random per process: keys the digests in `verified`.
    cache_key: [u8; 32],
    /// username → keyed digest of a Basic password verified against the stored
    /// hash, so repeated Basic requests skip Argon2. The digest covers the
    /// hash too, so a password change can never match an old entry.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// A real hash to verify against when the user does not exist, so a login
    /// takes as long for unknown names as for wrong passwords.
    decoy: String,
}

/// An authenticated request: the user and, for a JWT, when it expires.
pub struct Caller {
    pub user: User,
    pub expires: Option<u64>,
}

impl Auth {
    pub fn new(jwt_secret: &str, jwt_expiry: u64, admin_token: &str) -> Auth {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let mut cache_key = [0; 32];
        // uuid's v4 generator draws from the OS random source: reuse it.
        cache_key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        cache_key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Auth {
            jwt_secret: jwt_secret.as_bytes().to_vec(),
            jwt_expiry,
            admin_token: admin_token.to_string(),
            argon_permits: Arc::new(Semaphore::new(cores)),
            cache_key,
            verified: Mutex::new(HashMap::new()),
            decoy: hash(&uuid::Uuid::new_v4().to_string()).unwrap_or_default(),
        }
    }

    pub fn check_admin(&self, token: &str) -> Result<(), Error> {
        match constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            true => Ok(()),
            false => Err(Error::unauthorized("wrong admin_token")),
        }
    }

    /// A signed JWT for `username`, valid for `--jwt_expiry` seconds of NTP time.
    pub fn issue(&self, username: &str) -> String {
        let now = crate::clock::now();
        let claims = json!({"sub": username, "iat": now, "exp": now + self.jwt_expiry, "iss": "Broker"});
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    /// The username and expiry of a valid token. Only HS256 is accepted, the
    /// signature is compared in constant time, and `exp` is enforced.
    fn verify_jwt(&self, token: &str) -> Result<(String, u64), Error> {
        let invalid = || Error::unauthorized("invalid token");
        let (signed, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
        let (header, claims) = signed.split_once('.').ok_or_else(invalid)?;
        let header = decode_json(header).ok_or_else(invalid)?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(invalid());
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid())?;
        self.mac(signed).verify_slice(&signature).map_err(|_| invalid())?;
        let claims = decode_json(claims).ok_or_else(invalid)?;
        let expires = claims.get("exp").and_then(Value::as_u64).ok_or_else(invalid)?;
        if expires <= crate::clock::now() {
            return Err(Error::unauthorized("token expired"));
        }
        if claims.get("iss").and_then(Value::as_str) != Some("Broker") {
            return Err(invalid());
        }
        let username = claims.get("sub").and_then(Value::as_str).ok_or_else(invalid)?;
        Ok((username.to_string(), expires))
    }

    fn mac(&self, message: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.jwt_secret).expect("HMAC takes any key length");
        mac.update(message.as_bytes());
        mac
    }

    /// Authenticates an `Authorization: Bearer …` or `Basic …` header value.
    /// Revoked users are refused whatever they present.
    pub async fn authenticate(&self, store: &Store, header: Option<&str>) -> Result<Caller, Error> {
        let header = header.ok_or_else(|| Error::unauthorized("missing Authorization header"))?;
        let (scheme, credentials) = header.split_once(' ').unwrap_or((header, ""));
        let caller = if scheme.eq_ignore_ascii_case("bearer") {
            let (username, expires) = self.verify_jwt(credentials.trim())?;
            let user = store.user(&username)?.ok_or_else(|| Error::unauthorized("unknown user"))?;
            Caller { user, expires: Some(expires) }
        } else if scheme.eq_ignore_ascii_case("basic") {
            let invalid = || Error::unauthorized("malformed Basic credentials");
            let decoded = STANDARD.decode(credentials.trim()).map_err(|_| invalid())?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
            // The password is everything after the first colon; it may hold colons.
            let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
            let user = self.login(store, username, password).await?;
            Caller { user, expires: None }
        } else {
            return Err(Error::unauthorized("unsupported Authorization scheme"));
        };
        match caller.user.revoked {
            true => Err(Error::unauthorized("user is revoked")),
            false => Ok(caller),
        }
    }

    /// Checks a username and password; wrong either way is the same 401.
    pub async fn login(&self, store: &Store, username: &str, password: &str) -> Result<User, Error> {
        let wrong = || Error::unauthorized("wrong username or password");
        let user = store.user(username)?;
        let stored_hash = user.as_ref().map_or(&self.decoy, |user| &user.password);
        let digest = self.digest(username, password, stored_hash);
        if lock(&self.verified).get(username) == Some(&digest) {
            return user.ok_or_else(wrong);
        }
        let (password, stored) = (password.to_string(), stored_hash.clone());
        let matches = self.blocking(move || verify(&password, &stored)).await?;
        let user = user.filter(|_| matches).ok_or_else(wrong)?;
        let mut verified = lock(&self.verified);
        if verified.len() >= CACHE_LIMIT {
            verified.clear();
        }
        verified.insert(username.to_string(), digest);
        Ok(user)
    }

    /// Drops the cached credential of a user whose password, tenant or
    /// revocation changed, so the next Basic request is checked afresh.
    pub fn forget(&self, username: &str) {
        lock(&self.verified).remove(username);
    }

    /// Hashes a new password with Argon2id on the blocking pool.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        self.blocking(move || hash(&password)).await?
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let _permit = self.argon_permits.acquire().await.map_err(|_| Error::internal("shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| Error::internal("password hashing failed"))
    }

    fn digest(&self, username: &str, password: &str, stored_hash: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.cache_key).expect("HMAC takes any key length");
        for part in [username, password, stored_hash] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }
}

/// Argon2id with OWASP's parameters: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19456, 2, 1, None).expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash(password: &str) -> Result<String, Error> {
    // A fresh random salt per hash, from the OS source via uuid v4.
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|_| Error::internal("salt encoding failed"))?;
    let hash = argon2().hash_password(password.as_bytes(), &salt);
    Ok(hash.map_err(|_| Error::internal("password hashing failed"))?.to_string())
}

fn verify(password: &str, stored: &str) -> bool {
    let Ok(stored) = PasswordHash::new(stored) else { return false };
    argon2().verify_password(password.as_bytes(), &stored).is_ok()
}

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ given.get(index).copied().unwrap_or(!byte));
    }
    difference == 0
}
