//! Every endpoint's success path and every error it can answer with.

mod common;
use common::*;
use serde_json::json;

#[test]
fn health_answers_get_and_head() {
    let broker = Broker::start(&[]);
    let reply = broker.get("/", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let head = broker.request("HEAD", "/", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[test]
fn create_user_then_get_and_list_show_it_without_password() {
    let broker = Broker::start(&[]);
    let body = json!({
        "username": "bob", "password": "password1", "admin_token": ADMIN, "tenant_name": "tenant_1",
        "email": "", "data": {"name": "Robert Wieland", "image": ""}
    });
    let reply = broker.post("/create_user", &body);
    assert_eq!(reply.status, 200);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4", "a UUID v4");

    let user = broker.admin("/get_user", "bob").json();
    let expected = json!({
        "id": id, "password": "***", "revoked": false, "tenant_name": "tenant_1", "username": "bob",
        "email": null, "data": {"name": "Robert Wieland", "image": ""}
    });
    assert_eq!(user, expected);
    broker.create_user("alice", "pw", "tenant_2");
    let list = broker
        .post("/list_users", &json!({"admin_token": ADMIN}))
        .json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|user| user["password"] == "***"));
    assert!(list.contains(&expected));
}

#[test]
fn create_user_rejects_bad_input_without_storing_anything() {
    let broker = Broker::start(&[]);
    let base =
        json!({"username": "bob", "password": "pw", "admin_token": ADMIN, "tenant_name": "t1"});
    let with = |field: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = base.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    broker
        .post("/create_user", &with("admin_token", json!("wrong")))
        .assert_error(401);
    for field in ["username", "password", "tenant_name", "admin_token"] {
        broker
            .post("/create_user", &without(field))
            .assert_error(400);
        broker
            .post("/create_user", &with(field, json!(42)))
            .assert_error(400);
    }
    for tenant in ["", "has space", "dots.not.allowed", "ü", &"x".repeat(65)] {
        broker
            .post("/create_user", &with("tenant_name", json!(tenant)))
            .assert_error(400);
    }
    for email in [
        "not-an-email",
        "bob@mailinator.com",
        "x@guerrillamail.com",
        " bob@example.com",
    ] {
        broker
            .post("/create_user", &with("email", json!(email)))
            .assert_error(400);
    }
    broker
        .post("/create_user", &with("password", json!("")))
        .assert_error(400);
    broker
        .post("/create_user", &with("password", json!("p".repeat(1025))))
        .assert_error(400);
    broker
        .post("/create_user", &with("username", json!("a:b")))
        .assert_error(400);
    broker
        .post("/create_user", &with("username", json!("")))
        .assert_error(400);
    let list = broker
        .post("/list_users", &json!({"admin_token": ADMIN}))
        .json();
    assert_eq!(list, json!([]), "no failed request may store a user");

    assert_eq!(
        broker
            .post("/create_user", &with("email", json!("bob@example.com")))
            .status,
        200
    );
    broker.post("/create_user", &base).assert_error(400); // duplicate username
    let tenant_64 = with("tenant_name", json!("A-z_0".repeat(12) + "abcd"));
    assert_eq!(
        broker
            .post(
                "/create_user",
                &with("username", json!("carol")).merge(tenant_64)
            )
            .status,
        200
    );
}

trait Merge {
    fn merge(self, other: serde_json::Value) -> serde_json::Value;
}

impl Merge for serde_json::Value {
    /// `other`'s fields win, except `username`, which stays `self`'s.
    fn merge(self, mut other: serde_json::Value) -> serde_json::Value {
        other["username"] = self["username"].clone();
        other
    }
}

#[test]
fn login_issues_a_jwt_and_refuses_wrong_credentials() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "password1", "t1");
    let jwt = broker.login("bob", "password1");
    assert_eq!(jwt.split('.').count(), 3);
    broker
        .post("/login", &json!({"username": "bob", "password": "nope"}))
        .assert_error(401);
    broker
        .post(
            "/login",
            &json!({"username": "nobody", "password": "password1"}),
        )
        .assert_error(401);
    broker
        .post("/login", &json!({"username": "bob"}))
        .assert_error(400);
    broker
        .post("/login", &json!({"password": "x"}))
        .assert_error(400);
    broker.post("/login", &json!(["bob"])).assert_error(400);
}

#[test]
fn verify_returns_the_user_for_jwt_and_basic() {
    let broker = Broker::start(&[]);
    let id = broker.create_user("bob", "pa:ss:word", "t1")["id"].clone();
    let jwt = broker.login("bob", "pa:ss:word");
    for auth in [bearer(&jwt), basic("bob", "pa:ss:word")] {
        let reply = broker.get("/verify", &[("Authorization", &auth)]);
        assert_eq!(reply.status, 200);
        let user = reply.json();
        assert_eq!(user["id"], id);
        assert_eq!(user["username"], "bob");
        assert_eq!(user["tenant_name"], "t1");
        assert!(user.get("password").is_none());
    }
    broker.get("/verify", &[]).assert_error(401);
    broker
        .get("/verify", &[("Authorization", &basic("bob", "pa:ss"))])
        .assert_error(401);
    broker
        .get("/verify", &[("Authorization", "Digest abc")])
        .assert_error(401);
    broker
        .get("/verify", &[("Authorization", "Basic !!!notbase64")])
        .assert_error(401);
}

#[test]
fn insert_returns_increasing_ids_and_validates_input() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    assert_eq!(broker.insert(&jwt, "test", &json!({"name": "robert"})), 1);
    assert_eq!(broker.insert(&jwt, "test", &json!(null)), 2);
    let auth = [("Authorization", bearer(&jwt))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for bad in [
        json!({"data": 1}),
        json!({"event": "x"}),
        json!({"event": "", "data": 1}),
        json!({"event": 5, "data": 1}),
        json!({"event": "a\nb", "data": 1}),
        json!({"event": "a\rb", "data": 1}),
        json!({"event": "x".repeat(257), "data": 1}),
    ] {
        broker.post_as("/insert", &auth, &bad).assert_error(400);
    }
    broker
        .post("/insert", &json!({"event": "x", "data": 1}))
        .assert_error(401);
    let wrong = [("Authorization", basic("bob", "wrong"))];
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    broker
        .post_as("/insert", &wrong, &json!({"event": "x", "data": 1}))
        .assert_error(401);
    assert_eq!(
        broker.insert(&jwt, &"x".repeat(256), &json!(1)),
        3,
        "failed inserts use no id"
    );
}

#[test]
fn revoke_and_unrevoke_control_access() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let admin = |path: &str, body: serde_json::Value| broker.post(path, &body);
    admin(
        "/revoke_user",
        json!({"admin_token": "wrong", "username": "bob"}),
    )
    .assert_error(401);
    admin(
        "/revoke_user",
        json!({"admin_token": ADMIN, "username": "ghost"}),
    )
    .assert_error(400);
    admin("/revoke_user", json!({"admin_token": ADMIN})).assert_error(400);
    assert_eq!(
        admin(
            "/revoke_user",
            json!({"admin_token": ADMIN, "username": "bob"})
        )
        .status,
        200
    );
    assert_eq!(
        admin(
            "/get_user",
            json!({"admin_token": ADMIN, "username": "bob"})
        )
        .json()["revoked"],
        true
    );
    broker
        .post("/login", &json!({"username": "bob", "password": "pw"}))
        .assert_error(401);
    broker.verify(&jwt).assert_error(401);
    broker
        .get("/verify", &[("Authorization", &basic("bob", "pw"))])
        .assert_error(401);
    broker
        .get("/sse", &[("Authorization", &bearer(&jwt))])
        .assert_error(401);
    admin(
        "/unrevoke_user",
        json!({"admin_token": "wrong", "username": "bob"}),
    )
    .assert_error(401);
    admin(
        "/unrevoke_user",
        json!({"admin_token": ADMIN, "username": "ghost"}),
    )
    .assert_error(400);
    assert_eq!(
        admin(
            "/unrevoke_user",
            json!({"admin_token": ADMIN, "username": "bob"})
        )
        .status,
        200
    );
    assert_eq!(broker.verify(&jwt).status, 200);
    broker.login("bob", "pw");
}

#[test]
fn get_and_list_users_need_the_admin_token() {
    let broker = Broker::start(&[]);
    broker.create_user("bob", "pw", "t1");
    broker
        .post("/list_users", &json!({"admin_token": "nope"}))
        .assert_error(401);
    broker.post("/list_users", &json!({})).assert_error(400);
    broker
        .post(
            "/get_user",
            &json!({"admin_token": "nope", "username": "bob"}),
        )
        .assert_error(401);
    broker.admin("/get_user", "ghost").assert_error(400);
    broker
        .post("/get_user", &json!({"admin_token": ADMIN}))
        .assert_error(400);
}

#[test]
fn update_user_changes_only_given_fields() {
    let broker = Broker::start(&[]);
    let body = json!({"username": "bob", "password": "old", "admin_token": ADMIN, "tenant_name": "t1",
        "email": "bob@example.com", "data": {"name": "Robert"}});
    assert_eq!(broker.post("/create_user", &body).status, 200);
    let get = || broker.admin("/get_user", "bob").json();
    let before = get();

    let update = |fields: serde_json::Value| {
        let mut body = json!({"admin_token": ADMIN, "username": "bob"});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        broker.post("/update_user", &body)
    };
    assert_eq!(
        update(json!({"data": {"name": "Robert Falcon"}})).status,
        200
    );
    let after = get();
    assert_eq!(after["data"], json!({"name": "Robert Falcon"}));
    assert_eq!(after["email"], before["email"]);
    assert_eq!(after["tenant_name"], "t1");
    broker.login("bob", "old");

    assert_eq!(
        update(json!({"password": "new", "tenant_name": "t2", "email": ""})).status,
        200
    );
    let after = get();
    assert_eq!(after["tenant_name"], "t2");
    assert_eq!(after["email"], json!(null));
    assert_eq!(after["id"], before["id"]);
    broker
        .post("/login", &json!({"username": "bob", "password": "old"}))
        .assert_error(401);
    broker.login("bob", "new");

    // Every field is checked before anything is written.
    let snapshot = get();
    update(json!({"tenant_name": "bad tenant", "data": 1})).assert_error(400);
    update(json!({"email": "x@mailinator.com", "data": 1})).assert_error(400);
    update(json!({"password": "", "data": 1})).assert_error(400);
    update(json!({"password": 7})).assert_error(400);
    assert_eq!(get(), snapshot);
    broker
        .post(
            "/update_user",
            &json!({"admin_token": "x", "username": "bob"}),
        )
        .assert_error(401);
    broker
        .post(
            "/update_user",
            &json!({"admin_token": ADMIN, "username": "ghost"}),
        )
        .assert_error(400);
    broker
        .post("/update_user", &json!({"admin_token": ADMIN}))
        .assert_error(400);
}

#[test]
fn unknown_paths_wrong_methods_and_large_bodies() {
    let broker = Broker::start(&["--max_body=1000"]);
    broker.get("/nope", &[]).assert_error(404);
    // A known path with another method is a 404 like an unknown one (a
    // rule retired for the line budget: LOC_BUDGET.md).
    broker.get("/create_user", &[]).assert_error(404);
    broker.post("/sse", &json!({})).assert_error(404);
    broker.request("DELETE", "/", &[], b"").assert_error(404);
    let big = json!({"admin_token": ADMIN, "padding": "x".repeat(2000)});
    broker.post("/list_users", &big).assert_error(413);
    // Without Content-Length (chunked), the limit still holds.
    let chunk = "x".repeat(1500);
    let request = format!(
        "POST /list_users HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    broker.raw(request.as_bytes()).assert_error(413);
}

#[test]
fn cors_on_every_response_and_preflight_anywhere() {
    let broker = Broker::start(&["--origin=https://app.example.com"]);
    for reply in [
        broker.get("/", &[]),
        broker.get("/nope", &[]),
        broker.post("/login", &json!({})),
    ] {
        assert_eq!(
            reply.header("access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
    }
    for path in ["/insert", "/sse", "/whatever"] {
        let reply = broker.request(
            "OPTIONS",
            path,
            &[("Access-Control-Request-Method", "POST")],
            b"",
        );
        assert_eq!(reply.status, 204);
        assert_eq!(
            reply.header("access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            reply.header("access-control-allow-methods").as_deref(),
            Some("GET, POST, OPTIONS")
        );
        let headers = reply.header("access-control-allow-headers").unwrap();
        for name in ["authorization", "content-type", "last-event-id"] {
            assert!(headers.contains(name), "{headers}");
        }
        assert!(reply.header("access-control-max-age").is_some());
    }
    broker.create_user("bob", "pw", "t1");
    let jwt = broker.login("bob", "pw");
    let sse = broker.sse(&[("Authorization", &bearer(&jwt))]);
    assert!(
        sse.head
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example.com")
    );
    assert!(
        sse.head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
}
