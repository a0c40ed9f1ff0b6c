//! Who is asking: HS256 JWTs written by hand, HTTP Basic, Argon2id passwords,
//! and the constant-time admin token check.

use crate::http::{Error, internal, unauthorized};
use crate::store::{Store, User, lock};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as BASE64URL};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::Semaphore;

/// Most Basic credentials remembered; past it the cache starts over.
const CACHE_LIMIT: usize = 100_000;

/// The user of an authenticated request and, for a JWT, when it expires.
pub type Caller = (User, Option<u64>);

/// Everything needed to authenticate a request; shared by all connections.
pub struct Auth {
    jwt_secret: String,
    jwt_expiry: u64,
    admin_token: String,
    /// Argon2id costs ~19 MiB and tens of milliseconds per hash: at most one
    /// per core runs at a time, on the blocking pool, never on a worker.
    argon_permits: Semaphore,
    /// Random per process: keys the digests in `verified` and the admin check.
    cache_key: String,
    /// username → keyed digest of a Basic password that matched the stored
    /// hash, so repeated Basic requests skip Argon2. The digest covers the
    /// hash too, so after a password change an old entry can never match.
    verified: Mutex<HashMap<String, Vec<u8>>>,
    /// A real hash to check when the user does not exist, so a wrong
    /// username takes as long as a wrong password.
    decoy: String,
}

impl Auth {
    pub fn new(config: &crate::config::Config) -> Auth {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        // uuid's v4 generator draws from the OS random source: reuse it.
        let random = || uuid::Uuid::new_v4().to_string();
        Auth {
            jwt_secret: config.jwt_secret.clone(),
            jwt_expiry: config.jwt_expiry,
            admin_token: config.admin_token.clone(),
            argon_permits: Semaphore::new(cores),
            cache_key: random() + &random(),
            verified: Mutex::default(),
            decoy: hash(&random()).unwrap_or_default(),
        }
    }

    /// Compares HMACs of both tokens under the random cache key, in
    /// constant time, so timing reveals nothing about the real token.
    pub fn check_admin(&self, token: &str) -> Result<(), Error> {
        let expected = hmac(&self.cache_key, &self.admin_token).finalize();
        let given = hmac(&self.cache_key, token);
        let matched = given.verify(&expected.into_bytes());
        matched.map_err(|_| unauthorized("wrong admin_token"))
    }

    /// A signed JWT for `username`, valid for `--jwt_expiry` seconds of NTP time.
    pub fn issue(&self, username: &str) -> String {
        let now = crate::clock::now_ms() / 1000;
        let expires = now + self.jwt_expiry;
        let claims = json!({"sub": username, "iat": now, "exp": expires, "iss": "Broker"});
        let header = BASE64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let signed = format!("{header}.{}", BASE64URL.encode(claims.to_string()));
        let signature = hmac(&self.jwt_secret, &signed).finalize().into_bytes();
        format!("{signed}.{}", BASE64URL.encode(signature))
    }

    /// The username and expiry of a valid token. Only HS256 is accepted, the
    /// signature is compared in constant time, and `exp` is enforced.
    fn verify_jwt(&self, token: &str) -> Result<(String, u64), Error> {
        let invalid = || unauthorized("invalid token");
        let (signed, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
        let (header, claims) = signed.split_once('.').ok_or_else(invalid)?;
        if decode_json(header)?.get("alg") != Some(&json!("HS256")) {
            return Err(invalid());
        }
        let signature = BASE64URL.decode(signature).map_err(|_| invalid())?;
        let mac = hmac(&self.jwt_secret, signed);
        mac.verify_slice(&signature).map_err(|_| invalid())?;
        let claims = decode_json(claims)?;
        let expires = claims.get("exp").and_then(Value::as_u64);
        let expires = expires.ok_or_else(invalid)?;
        if expires <= crate::clock::now_ms() / 1000 {
            return Err(unauthorized("token expired"));
        }
        let issuer = claims.get("iss") == Some(&json!("Broker"));
        match (issuer, claims.get("sub")) {
            (true, Some(Value::String(username))) => Ok((username.clone(), expires)),
            _ => Err(invalid()),
        }
    }

    /// Authenticates an `Authorization: Bearer …` or `Basic …` header value.
    /// Revoked users are refused whatever they present.
    pub async fn authenticate(&self, store: &Store, header: Option<&str>) -> Result<Caller, Error> {
        let header = header.ok_or_else(|| unauthorized("missing Authorization header"))?;
        let (scheme, credentials) = header.split_once(' ').unwrap_or((header, ""));
        let (user, expires) = match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let (username, expires) = self.verify_jwt(credentials.trim())?;
                let user = store.user(&username)?;
                let user = user.ok_or_else(|| unauthorized("unknown user"))?;
                (user, Some(expires))
            }
            "basic" => {
                let invalid = || unauthorized("malformed Basic credentials");
                let decoded = STANDARD.decode(credentials.trim()).map_err(|_| invalid())?;
                let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
                // The password is everything after the first colon, colons and all.
                let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
                (self.login(store, username, password).await?, None)
            }
            _ => return Err(unauthorized("unsupported Authorization scheme")),
        };
        match user.revoked() {
            true => Err(unauthorized("user is revoked")),
            false => Ok((user, expires)),
        }
    }

    /// Checks a username and password; either one wrong is the same 401.
    pub async fn login(&self, store: &Store, name: &str, password: &str) -> Result<User, Error> {
        let wrong = || unauthorized("wrong username or password");
        let user = store.user(name)?;
        let stored = user.as_ref().map(|user| user.text("password"));
        let stored = stored.unwrap_or(&self.decoy);
        // Length-prefixed parts, so ("ab", "c") and ("a", "bc") differ.
        let message = [name, password, stored].map(|part| format!("{}:{part}", part.len()));
        let digest = hmac(&self.cache_key, &message.concat()).finalize();
        let digest = digest.into_bytes().to_vec();
        if lock(&self.verified).get(name) == Some(&digest) {
            return user.ok_or_else(wrong);
        }
        let (password, stored) = (password.to_string(), stored.to_string());
        let matches = self.argon(move || verify(&password, &stored)).await?;
        let user = user.filter(|_| matches).ok_or_else(wrong)?;
        let mut verified = lock(&self.verified);
        if verified.len() >= CACHE_LIMIT {
            verified.clear();
        }
        verified.insert(name.to_string(), digest);
        Ok(user)
    }

    /// Drops a user's cached credential after its password, tenant or
    /// revocation changed, so the next Basic request is checked afresh.
    pub fn forget(&self, username: &str) {
        lock(&self.verified).remove(username);
    }

    /// Hashes a new password with Argon2id.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        self.argon(move || hash(&password)).await?
    }

    /// Runs Argon2 work on the blocking pool, one job per core at most.
    async fn argon<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self.argon_permits.acquire().await;
        let done = tokio::task::spawn_blocking(work).await;
        done.map_err(|_| internal("password hashing failed"))
    }
}

fn hmac(key: &str, message: &str) -> Hmac<sha2::Sha256> {
    let mut mac = Hmac::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac
}

/// Argon2id with OWASP's parameters: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19456, 2, 1, None).expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash(password: &str) -> Result<String, Error> {
    // A fresh random salt per hash, from the OS source via uuid v4.
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes());
    let salt = salt.map_err(|_| internal("salt encoding failed"))?;
    let hash = argon2().hash_password(password.as_bytes(), &salt);
    let hash = hash.map_err(|_| internal("password hashing failed"))?;
    Ok(hash.to_string())
}

fn verify(password: &str, stored: &str) -> bool {
    let (stored, argon2) = (PasswordHash::new(stored), argon2());
    stored.is_ok_and(|hash| argon2.verify_password(password.as_bytes(), &hash).is_ok())
}

fn decode_json(part: &str) -> Result<Value, Error> {
    let json = BASE64URL.decode(part).ok();
    let json = json.and_then(|bytes| serde_json::from_slice(&bytes).ok());
    json.ok_or_else(|| unauthorized("invalid token"))
}
