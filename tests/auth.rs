//! JWT and Basic authentication as an attacker would probe it.

mod common;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use std::time::Duration;

fn sign(secret: &str, header: &Value, claims: &Value) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn issued_jwt_has_the_contract_header_and_claims() {
    let broker = Broker::start(&["--jwt_expiry=600"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(decode(parts[0]), json!({"alg": "HS256", "typ": "JWT"}));
    let claims = decode(parts[1]);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["iss"], "Broker");
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 600);
    assert!(iat.abs_diff(now()) <= 5);
    // Our own signature over the same header and claims matches the broker's.
    assert_eq!(sign("secret", &decode(parts[0]), &claims), jwt);
}

#[test]
fn forged_tampered_and_foreign_tokens_are_refused() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    broker.create_user("eve", "pw", "t1");
    let jwt = broker.login("eve", "pw");
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let claims = json!({"sub": "bob", "iat": now(), "exp": now() + 600, "iss": "Broker"});
    assert_eq!(
        broker.verify(&sign("secret", &header, &claims)).status,
        200,
        "a correctly signed token works"
    );

    // Eve swaps the subject but keeps her signature.
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut eve = decode(parts[1]);
    eve["sub"] = json!("bob");
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(eve.to_string()),
        parts[2]
    );
    assert_eq!(broker.verify(&swapped).status, 401);
    // One flipped signature character.
    let mut flipped = jwt.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        broker.verify(&String::from_utf8(flipped).unwrap()).status,
        401
    );
    // alg none, with and without a signature.
    let none = json!({"alg": "none", "typ": "JWT"});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(none.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert_eq!(broker.verify(&unsigned).status, 401);
    assert_eq!(broker.verify(&sign("secret", &none, &claims)).status, 401);
    // Another algorithm name over an HMAC signature.
    assert_eq!(
        broker
            .verify(&sign("secret", &json!({"alg": "HS512"}), &claims))
            .status,
        401
    );
    // The wrong secret.
    assert_eq!(
        broker
            .verify(&sign("not-the-secret", &header, &claims))
            .status,
        401
    );
    // Expired, wrong issuer, missing claims, unknown user.
    let expired = json!({"sub": "bob", "iat": now() - 100, "exp": now() - 1, "iss": "Broker"});
    assert_eq!(
        broker.verify(&sign("secret", &header, &expired)).status,
        401
    );
    let issuer = json!({"sub": "bob", "iat": now(), "exp": now() + 60, "iss": "Other"});
    assert_eq!(broker.verify(&sign("secret", &header, &issuer)).status, 401);
    assert_eq!(
        broker
            .verify(&sign("secret", &header, &json!({"sub": "bob"})))
            .status,
        401
    );
    let ghost = json!({"sub": "ghost", "iat": now(), "exp": now() + 60, "iss": "Broker"});
    assert_eq!(broker.verify(&sign("secret", &header, &ghost)).status, 401);
    for garbage in ["", "a", "a.b", "a.b.c", "...", "ü.ü.ü", &"A".repeat(5000)] {
        assert_eq!(broker.verify(garbage).status, 401, "{garbage:?}");
    }
}

#[test]
fn a_token_from_another_secret_is_refused() {
    let one = Broker::start(&["--jwt_secret=first-secret"]);
    let two = Broker::start(&["--jwt_secret=second-secret"]);
    one.create_user("bob", "pw", "t1");
    two.create_user("bob", "pw", "t1");
    let jwt = one.login("bob", "pw");
    assert_eq!(one.verify(&jwt).status, 200);
    assert_eq!(two.verify(&jwt).status, 401);
}

#[test]
fn tokens_expire_after_jwt_expiry() {
    let broker = Broker::start(&["--jwt_expiry=1"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    assert_eq!(broker.verify(&jwt).status, 200);
    std::thread::sleep(Duration::from_millis(2100));
    let reply = broker.verify(&jwt);
    reply.assert_error(401);
    assert!(reply.json()["error"].as_str().unwrap().contains("expired"));
}

#[test]
fn basic_password_may_contain_colons_and_changes_take_effect_at_once() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "a:b::c:", "t1");
    let status = |password: &str| {
        broker
            .get("/verify", &[("Authorization", &basic("bob", password))])
            .status
    };
    assert_eq!(status("a:b::c:"), 200);
    assert_eq!(status("a:b::c:"), 200, "cached credential");
    assert_eq!(status("a:b::c"), 401);
    assert_eq!(status("a"), 401);
    // A password change invalidates the cached credential immediately.
    let update = json!({"admin_token": ADMIN, "username": "bob", "password": "fresh"});
    assert_eq!(broker.post("/update_user", &update).status, 200);
    assert_eq!(status("a:b::c:"), 401);
    assert_eq!(status("fresh"), 200);
    // Revocation beats the cache, unrevoking restores it.
    assert_eq!(broker.admin("/revoke_user", "bob").status, 200);
    assert_eq!(status("fresh"), 401);
    assert_eq!(broker.admin("/unrevoke_user", "bob").status, 200);
    assert_eq!(status("fresh"), 200);
}

#[test]
fn a_tenant_move_takes_effect_for_cached_basic_credentials() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let auth = basic("bob", "pw");
    assert_eq!(
        broker.get("/verify", &[("Authorization", &auth)]).json()["tenant_name"],
        "t1"
    );
    let update = json!({"admin_token": ADMIN, "username": "bob", "tenant_name": "t2"});
    assert_eq!(broker.post("/update_user", &update).status, 200);
    assert_eq!(
        broker.get("/verify", &[("Authorization", &auth)]).json()["tenant_name"],
        "t2"
    );
    let reply = broker.post_as(
        "/insert",
        &[("Authorization", &auth)],
        &json!({"event": "e", "data": 1}),
    );
    assert_eq!(reply.status, 200);
    // The event landed in t2: a t2 user sees it, a t1 user does not.
    broker.create_user("t1user", "pw", "t1");
    broker.create_user("t2user", "pw", "t2");
    let mut t2 = broker.sse(&[("Authorization", &basic("t2user", "pw"))]);
    assert_eq!(t2.events(1)[0].data, json!(1));
    let mut t1 = broker.sse(&[("Authorization", &basic("t1user", "pw"))]);
    assert!(t1.quiet_for(Duration::from_millis(300)));
}

#[test]
fn the_longest_jwt_expiry_gives_tokens_that_never_expire_not_tokens_born_expired() {
    let broker = Broker::start(&["--jwt_expiry=18446744073709551615"]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let claims = decode(jwt.split('.').nth(1).unwrap());
    // iat + expiry does not fit: exp is the latest time there is.
    assert_eq!(claims["exp"], json!(u64::MAX));
    assert!(claims["iat"].as_u64().unwrap() >= now() - 5);
    assert_eq!(broker.verify(&jwt).status, 200);
}
