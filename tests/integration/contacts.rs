//! Contacts over REST: the request lifecycle seen from both sides, races, blocks, search,
//! and contacts gating messaging.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Api, Backend, TestApp, error_code, spawn_app, spawn_app_with};
use crate::ws_client::{Client, make_contacts, user};

struct U {
    token: String,
    id: String,
}

async fn u(app: &TestApp, name: &str) -> U {
    let (token, id) = user(app, name).await;
    U { token, id }
}

async fn get(app: &TestApp, who: &U, path: &str) -> Value {
    let r = app.client().get(app.url(path)).bearer_auth(&who.token).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK, "GET {path}");
    r.json().await.expect("json")
}

async fn request(app: &TestApp, from: &U, to_username: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/contacts/requests"))
        .bearer_auth(&from.token)
        .json(&json!({ "username": to_username }))
        .send()
        .await
        .expect("sent")
}

async fn post(app: &TestApp, who: &U, path: &str) -> reqwest::Response {
    app.client().post(app.url(path)).bearer_auth(&who.token).send().await.expect("sent")
}

async fn delete(app: &TestApp, who: &U, path: &str) -> reqwest::Response {
    app.client().delete(app.url(path)).bearer_auth(&who.token).send().await.expect("sent")
}

/// The other user's relation as `who` sees it in search.
async fn relation(app: &TestApp, who: &U, username: &str) -> Option<String> {
    let v = get(app, who, &format!("/api/users?q={username}")).await;
    v["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|h| h["username"] == username)
        .map(|h| h["relation"].as_str().expect("relation").to_owned())
}

async fn contact_ids(app: &TestApp, who: &U) -> Vec<String> {
    let v = get(app, who, "/api/contacts").await;
    v["contacts"]
        .as_array()
        .expect("contacts")
        .iter()
        .map(|c| c["user"]["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn request_lifecycle_seen_from_both_sides() {
    let app = spawn_app().await;
    let (ann, ben, cat) = (u(&app, "ann").await, u(&app, "ben").await, u(&app, "cat").await);

    // Ann asks Ben: pending out for her, in for him; asking again changes nothing.
    let r = request(&app, &ann, "Ben").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let req: Value = r.json().await.expect("json");
    let id = req["id"].as_str().expect("id").to_owned();
    assert_eq!((req["state"].as_str(), req["requester_id"].as_str()), (Some("pending"), Some(ann.id.as_str())));
    let again = request(&app, &ann, "ben").await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.expect("json")["id"], id.as_str());
    assert_eq!(relation(&app, &ann, "ben").await.as_deref(), Some("pending_out"));
    assert_eq!(relation(&app, &ben, "ann").await.as_deref(), Some("pending_in"));
    let ben_reqs = get(&app, &ben, "/api/contacts/requests").await;
    assert_eq!(ben_reqs["incoming"][0]["id"], id.as_str());
    assert_eq!(ben_reqs["incoming"][0]["user"]["username"], "ann");
    assert_eq!(ben_reqs["outgoing"], json!([]));

    // Nobody else can answer or cancel it; Ann cannot accept her own request; Ben cannot
    // cancel a request he did not send.
    assert_eq!(post(&app, &cat, &format!("/api/contacts/requests/{id}/accept")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(post(&app, &cat, &format!("/api/contacts/requests/{id}/decline")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(delete(&app, &cat, &format!("/api/contacts/requests/{id}")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(post(&app, &ann, &format!("/api/contacts/requests/{id}/accept")).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(delete(&app, &ben, &format!("/api/contacts/requests/{id}")).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(post(&app, &ben, "/api/contacts/requests/not-a-uuid/accept").await.status(), StatusCode::NOT_FOUND);

    // Ben declines; declining twice is fine; accepting a declined request is not.
    let r = post(&app, &ben, &format!("/api/contacts/requests/{id}/decline")).await;
    assert_eq!(r.json::<Value>().await.expect("json")["state"], "declined");
    assert_eq!(post(&app, &ben, &format!("/api/contacts/requests/{id}/decline")).await.status(), StatusCode::OK);
    let r = post(&app, &ben, &format!("/api/contacts/requests/{id}/accept")).await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "conflict");
    assert_eq!(relation(&app, &ann, "ben").await.as_deref(), Some("none"));

    // Ann asks again, then cancels; cancelling twice is fine.
    assert_eq!(request(&app, &ann, "ben").await.status(), StatusCode::CREATED);
    let r = delete(&app, &ann, &format!("/api/contacts/requests/{id}")).await;
    assert_eq!(r.json::<Value>().await.expect("json")["state"], "cancelled");
    assert_eq!(delete(&app, &ann, &format!("/api/contacts/requests/{id}")).await.status(), StatusCode::OK);
    assert_eq!(get(&app, &ben, "/api/contacts/requests").await["incoming"], json!([]));

    // Ben asks, Ann accepts (twice: fine): contacts on both sides.
    let r = request(&app, &ben, "ann").await;
    let id2 = r.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    for _ in 0..2 {
        let r = post(&app, &ann, &format!("/api/contacts/requests/{id2}/accept")).await;
        assert_eq!(r.json::<Value>().await.expect("json")["state"], "accepted");
    }
    assert_eq!(contact_ids(&app, &ann).await, vec![ben.id.clone()]);
    assert_eq!(contact_ids(&app, &ben).await, vec![ann.id.clone()]);
    assert_eq!(relation(&app, &ann, "ben").await.as_deref(), Some("contact"));
    assert_eq!(relation(&app, &ben, "ann").await.as_deref(), Some("contact"));
    // Cat sees neither as a contact; Cat's lists are empty.
    assert_eq!(relation(&app, &cat, "ann").await.as_deref(), Some("none"));
    assert!(contact_ids(&app, &cat).await.is_empty());

    // Ben removes Ann: gone on both sides; removing twice is fine; cat cannot remove.
    assert_eq!(delete(&app, &ben, &format!("/api/contacts/{}", ann.id)).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(delete(&app, &ben, &format!("/api/contacts/{}", ann.id)).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(delete(&app, &cat, &format!("/api/contacts/{}", ann.id)).await.status(), StatusCode::NOT_FOUND);
    assert!(contact_ids(&app, &ann).await.is_empty());
    assert!(contact_ids(&app, &ben).await.is_empty());

    // Bad input.
    let r = request(&app, &ann, "nobody").await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    assert_eq!(request(&app, &ann, "ann").await.status(), StatusCode::FORBIDDEN);
    assert_eq!(request(&app, &ann, "x").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn simultaneous_mutual_requests_make_contacts() {
    let app = spawn_app().await;
    for round in 0..10 {
        let a = u(&app, &format!("left{round}")).await;
        let b = u(&app, &format!("right{round}")).await;
        let (right, left) = (format!("right{round}"), format!("left{round}"));
        let (ra, rb) = tokio::join!(request(&app, &a, &right), request(&app, &b, &left));
        assert!(ra.status().is_success() && rb.status().is_success());
        assert_eq!(contact_ids(&app, &a).await, vec![b.id.clone()], "round {round}");
        assert_eq!(contact_ids(&app, &b).await, vec![a.id.clone()], "round {round}");
        let pending = get(&app, &a, "/api/contacts/requests").await;
        assert_eq!((pending["incoming"].clone(), pending["outgoing"].clone()), (json!([]), json!([])));
    }
}

#[tokio::test]
async fn blocking_hides_the_blocker_and_stops_everything() {
    let app = spawn_app().await;
    let (ann, ben) = (u(&app, "ann").await, u(&app, "ben").await);
    make_contacts(&app, &ann.token, &ben.token, "ben").await;
    let mut a = Client::connect(&app, &ann.token).await;
    a.send(json!({"type": "send", "client_msg_id": "x1", "to_user_id": ben.id, "body": "hi"})).await;
    let conv = a.next_of("ack").await["conversation_id"].as_str().expect("conv").to_owned();

    assert_eq!(post(&app, &ann, &format!("/api/contacts/{}/block", ben.id)).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(post(&app, &ann, &format!("/api/contacts/{}/block", ben.id)).await.status(), StatusCode::NO_CONTENT);
    // No longer contacts; Ben cannot find Ann, request her or message her; nor she him.
    assert!(contact_ids(&app, &ann).await.is_empty());
    assert_eq!(relation(&app, &ben, "ann").await, None, "a blocker is invisible in search");
    assert_eq!(relation(&app, &ann, "ben").await.as_deref(), Some("none"));
    assert_eq!(request(&app, &ben, "ann").await.status(), StatusCode::NOT_FOUND);
    let r = request(&app, &ann, "ben").await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "conflict");
    let mut b = Client::connect(&app, &ben.token).await;
    b.send(json!({"type": "send", "client_msg_id": "x2", "conversation_id": conv, "body": "why?"})).await;
    let e = b.next_of("error").await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("forbidden"), Some("x2")));
    a.send(json!({"type": "send", "client_msg_id": "x3", "conversation_id": conv, "body": "bye"})).await;
    let e = a.next_of("error").await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("forbidden"), Some("x3")));
    // History stays readable.
    let r = app
        .client
        .get(app.url(&format!("/api/conversations/{conv}/messages")))
        .bearer_auth(&ben.token)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.json::<Value>().await.expect("json")["messages"][0]["body"], "hi");

    // Typing and read receipts no longer cross either. Ben types, reads and pings. His
    // pong means his session has handled all three frames, and a typing event, had it been
    // let through, is published inside the typing frame's handler. His own read marker
    // coming back means the receipt's task has published to him; it publishes to the peer
    // (were that allowed) right after, with nothing to wait for in between (the
    // in-process bus puts an event in the recipients' session mailboxes inside
    // `publish`), so both are queued before Ben sees his.
    b.send(json!({"type": "typing", "conversation_id": conv, "active": true})).await;
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 1})).await;
    b.send(json!({"type": "ping"})).await;
    let ben_id = ben.id.clone();
    b.read_until("Ben's pong and his own read marker", move |c| {
        c.others.iter().any(|f| f["type"] == "pong")
            && c.others.iter().any(|f| f["type"] == "receipt" && f["user_id"] == ben_id.as_str() && f["read_seq"] == 1)
    })
    .await;
    // The sentinel: Ann's own read marker, published only now, into her session's mailbox
    // (first in, first out), so it reaches her socket after anything of Ben's above would
    // have.
    a.send(json!({"type": "read", "conversation_id": conv, "seq": 1})).await;
    let ann_id = ann.id.clone();
    a.read_until("Ann's own read marker", move |c| {
        c.others.iter().any(|f| f["type"] == "receipt" && f["user_id"] == ann_id.as_str())
    })
    .await;
    assert!(
        !a.others.iter().any(|f| f["type"] == "typing" || f["type"] == "receipt" && f["user_id"] == ben.id.as_str()),
        "{:?}",
        a.others
    );
    // Neither sees the other's presence any more. A new connection's session pushes the
    // presence of the contacts online before it handles any frame: the pong to its first
    // frame comes after those.
    let mut a2 = Client::connect(&app, &ann.token).await;
    let mut b2 = Client::connect(&app, &ben.token).await;
    for c in [&mut a2, &mut b2] {
        c.send(json!({"type": "ping"})).await;
        c.next_of("pong").await;
        assert!(!c.others.iter().any(|f| f["type"] == "presence"), "presence across a block: {:?}", c.others);
    }
    // Unblock restores searchability only.
    assert_eq!(delete(&app, &ann, &format!("/api/contacts/{}/block", ben.id)).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(relation(&app, &ben, "ann").await.as_deref(), Some("none"));
    assert!(contact_ids(&app, &ben).await.is_empty());
    b.send(json!({"type": "send", "client_msg_id": "x4", "conversation_id": conv, "body": "friends?"})).await;
    let e = b.next_of("error").await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("forbidden"), Some("x4")));
    // Anyone may be requested again after an unblock.
    assert_eq!(request(&app, &ben, "ann").await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn non_contacts_cannot_message_and_live_sessions_see_contact_events() {
    let app = spawn_app().await;
    let (ann, ben) = (u(&app, "ann").await, u(&app, "ben").await);
    let mut a = Client::connect(&app, &ann.token).await;
    let mut b = Client::connect(&app, &ben.token).await;
    a.send(json!({"type": "send", "client_msg_id": "n1", "to_user_id": ben.id, "body": "hi stranger"})).await;
    let e = a.next_of("error").await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("forbidden"), Some("n1")));

    let r = request(&app, &ann, "ben").await;
    let id = r.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let c = b.next_of("contact").await;
    assert_eq!((c["kind"].as_str(), c["request_id"].as_str()), (Some("requested"), Some(id.as_str())));
    assert_eq!(a.next_of("contact").await["kind"], "requested");
    post(&app, &ben, &format!("/api/contacts/requests/{id}/accept")).await;
    assert_eq!(a.next_of("contact").await["kind"], "accepted");
    a.send(json!({"type": "send", "client_msg_id": "n2", "to_user_id": ben.id, "body": "hi friend"})).await;
    a.read_until("ack", |d| d.acks.contains_key("n2")).await;
}

#[tokio::test]
async fn search_matches_prefixes_and_pages_with_a_cursor() {
    search_pages(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_search_matches_prefixes_and_pages_with_a_cursor() {
    search_pages(Backend::Postgres).await
}

async fn search_pages(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let me = u(&app, "searcher").await;
    for i in 0..25 {
        user(&app, &format!("zed{i:02}")).await;
    }
    let r = app
        .post_json(
            "/api/auth/register",
            &json!({"username": "quiet", "password": crate::helpers::PASSWORD, "display_name": "Zelda Quiet"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Page through "ze": 25 usernames + 1 display name, 10 at a time, in username order.
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 10, "26 hits, 10 a page: the cursor never ends ({cursor:?})");
        let path = match &cursor {
            Some(c) => format!("/api/users?q=ZE&limit=10&cursor={c}"),
            None => "/api/users?q=ZE&limit=10".to_owned(),
        };
        let v = get(&app, &me, &path).await;
        for h in v["users"].as_array().expect("users") {
            seen.push(h["username"].as_str().expect("name").to_owned());
            assert!(h.get("password_hash").is_none() && h.get("created_at").is_none(), "public fields only: {h}");
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut want: Vec<String> = (0..25).map(|i| format!("zed{i:02}")).collect();
    want.push("quiet".into());
    want.sort();
    assert_eq!(seen, want);
    // Any word of a display name matches from its start ("Quiet" finds "Zelda Quiet"),
    // and follows renames; a deleted account is found by none.
    let names = |v: Value| -> Vec<String> {
        v["users"].as_array().expect("users").iter().map(|h| h["username"].as_str().expect("name").to_owned()).collect()
    };
    assert_eq!(names(get(&app, &me, "/api/users?q=quie").await), ["quiet"]);
    assert_eq!(names(get(&app, &me, "/api/users?q=Zelda%20Q").await), ["quiet"]);
    assert!(names(get(&app, &me, "/api/users?q=uiet").await).is_empty(), "word starts only");
    let quiet = app.login("quiet", crate::helpers::PASSWORD).await.json::<Value>().await.expect("json");
    let quiet_token = quiet["access_token"].as_str().expect("token").to_owned();
    let r = app
        .client()
        .patch(app.url("/api/auth/me"))
        .bearer_auth(&quiet_token)
        .json(&json!({"display_name": "Zelda Becker-Stone"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(names(get(&app, &me, "/api/users?q=quiet").await).contains(&"quiet".to_owned()), "the username still");
    assert_eq!(names(get(&app, &me, "/api/users?q=becker").await), ["quiet"]);
    assert_eq!(names(get(&app, &me, "/api/users?q=STONE").await), ["quiet"]);
    let r = app
        .client()
        .delete(app.url("/api/auth/me"))
        .bearer_auth(&quiet_token)
        .json(&json!({"password": crate::helpers::PASSWORD}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(names(get(&app, &me, "/api/users?q=becker").await).is_empty());
    // The caller never finds themself; bad queries are refused.
    assert_eq!(get(&app, &me, "/api/users?q=searcher").await["users"], json!([]));
    for bad in
        ["/api/users", "/api/users?q=", "/api/users?q=a&limit=0", "/api/users?q=a&limit=51", "/api/users?q=a&limit=x"]
    {
        let r = app.client().get(app.url(bad)).bearer_auth(&me.token).send().await.expect("sent");
        assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_query", "{bad}");
    }
    let r = app.client().get(app.url("/api/users?q=zed")).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// 100,000 users seeded straight into the database: the first page of a prefix search is
/// right, whatever the table's size. (Its speed is measured by `switchboard-bench search`,
/// not asserted here.)
#[tokio::test]
async fn search_at_100k_users_returns_the_right_first_page() {
    use sea_orm::EntityTrait;
    use switchboard::storage::entities::user;

    let app = spawn_app().await;
    let me = u(&app, "seeker").await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("db");
    let now = chrono::Utc::now().timestamp_millis();
    for chunk in 0..100 {
        let rows = (0..1000).map(|i| {
            let n = chunk * 1000 + i;
            switchboard::storage::seed::user_row(
                uuid::Uuid::now_v7(),
                format!("user{n:06}"),
                format!("Person {n}"),
                now,
            )
        });
        user::Entity::insert_many(rows).exec_without_returning(&db).await.expect("seed");
    }
    let v = get(&app, &me, "/api/users?q=user0421&limit=5").await;
    let names: Vec<&str> =
        v["users"].as_array().expect("users").iter().map(|h| h["username"].as_str().expect("name")).collect();
    assert_eq!(names, ["user042100", "user042101", "user042102", "user042103", "user042104"]);
    assert_eq!(v["next_cursor"], "user042104");
    let v = get(&app, &me, "/api/users?q=Person%209999&limit=50").await;
    let mut names: Vec<&str> =
        v["users"].as_array().expect("users").iter().map(|h| h["display_name"].as_str().expect("name")).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Person 9999",
            "Person 99990",
            "Person 99991",
            "Person 99992",
            "Person 99993",
            "Person 99994",
            "Person 99995",
            "Person 99996",
            "Person 99997",
            "Person 99998",
            "Person 99999"
        ]
    );
}

#[tokio::test]
async fn blocked_users_are_listed_for_the_blocker_only_and_unblocking_clears_them() {
    let app = crate::helpers::spawn_app().await;
    let (alice, _) = crate::ws_client::user(&app, "alice").await;
    let (bob, bob_id) = crate::ws_client::user(&app, "bob").await;
    let r =
        app.client().post(app.url(&format!("/api/contacts/{bob_id}/block"))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
    let list = app.get_json("/api/contacts/blocked", &alice).await;
    assert_eq!(list["blocked"].as_array().unwrap().len(), 1);
    assert_eq!(list["blocked"][0]["user"]["username"], "bob");
    assert!(list["blocked"][0]["since"].as_i64().unwrap() > 0);
    assert_eq!(app.get_json("/api/contacts/blocked", &bob).await["blocked"], serde_json::json!([]), "bob sees no one");
    let r = app
        .client()
        .delete(app.url(&format!("/api/contacts/{bob_id}/block")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
    assert_eq!(app.get_json("/api/contacts/blocked", &alice).await["blocked"], serde_json::json!([]));
}
