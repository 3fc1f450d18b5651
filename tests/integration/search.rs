//! Message search (issue 20): the caller's conversations only, ranked, with snippets and
//! cursor paging; edits re-indexed and deletions gone; on SQLite and PostgreSQL.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Api, Backend, TestApp, error_code, spawn_app_with};
use crate::ws_client::{Client, make_contacts, say, user};

async fn find(app: &TestApp, token: &str, query: &str) -> reqwest::Response {
    app.client.get(app.url(&format!("/api/search/messages?{query}"))).bearer_auth(token).send().await.unwrap()
}

/// The results' message bodies for `q` (one page of up to 50).
async fn bodies(app: &TestApp, token: &str, q: &str) -> Vec<String> {
    let r = find(app, token, &format!("q={}&limit=50", urlencode(q))).await;
    assert_eq!(r.status(), StatusCode::OK, "search {q}");
    let page: Value = r.json().await.unwrap();
    page["results"].as_array().unwrap().iter().map(|h| h["message"]["body"].as_str().unwrap().to_owned()).collect()
}

/// Waits until everything stored so far is searchable: the search index follows the
/// message path within about half a second (SQLite), in insertion order, so once a new
/// message with a word of its own is found, every earlier one is indexed.
async fn indexed(app: &TestApp, token: &str, dev: &mut Client, conv: &str) {
    let word = format!("sentinel{}", uuid::Uuid::new_v4().simple());
    say(dev, &word, conv, "", &word).await;
    crate::helpers::eventually("the index to catch up", async || {
        (bodies(app, token, &word).await.len() == 1).then_some(())
    })
    .await;
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test]
async fn search_finds_only_the_callers_messages_as_they_are_now() {
    search_works(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_search_finds_only_the_callers_messages_as_they_are_now() {
    search_works(Backend::Postgres).await
}

async fn search_works(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.limits.search_per_minute = 40).await;
    let (alice, _) = user(&app, "alice").await;
    let (bob, bob_id) = user(&app, "bob").await;
    let (carol, _) = user(&app, "carol").await;
    let (dave, dave_id) = user(&app, "dave").await;
    make_contacts(&app, &alice, &bob, "bob").await;
    make_contacts(&app, &carol, &dave, "dave").await;
    let mut a = Client::connect(&app, &alice).await;
    let mut c = Client::connect(&app, &carol).await;
    let (_, conv) = say(&mut a, "a1", "", &bob_id, "Shall we meet at the Café Central tomorrow?").await;
    let (typo, _) = say(&mut a, "a2", &conv, "", "I will bring the blueprints").await;
    let (secret, _) = say(&mut a, "a3", &conv, "", "the vault code is 7391").await;
    say(&mut a, "a4", &conv, "", "plan plan plan").await;
    say(&mut a, "a5", &conv, "", "the plan was long, complicated and very detailed indeed").await;
    let (_, other) = say(&mut c, "c1", "", &dave_id, "Carol's private plan: meet at the cafe").await;
    indexed(&app, &alice, &mut a, &conv).await;

    // Whole words, the last also as a prefix, case and accents folded, all required.
    assert_eq!(bodies(&app, &alice, "cafe").await, ["Shall we meet at the Café Central tomorrow?"]);
    assert!(bodies(&app, &bob, "caf central").await.is_empty(), "only the last word is a prefix");
    assert_eq!(
        bodies(&app, &bob, "CAFÉ centr").await,
        ["Shall we meet at the Café Central tomorrow?"],
        "Bob is in it too"
    );
    assert!(bodies(&app, &alice, "cafe blueprints").await.is_empty());
    // Ranked: the message that is all about it first.
    assert_eq!(
        bodies(&app, &alice, "plan").await,
        ["plan plan plan", "the plan was long, complicated and very detailed indeed"]
    );
    // Never another user's messages: Carol's "plan" and "cafe" are hers and Dave's only.
    assert_eq!(bodies(&app, &carol, "plan").await, ["Carol's private plan: meet at the cafe"]);
    assert!(!bodies(&app, &alice, "private").await.iter().any(|b| b.contains("Carol")));
    let r = find(&app, &alice, &format!("q=plan&conversation_id={other}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["results"],
        json!([]),
        "someone else's conversation has nothing for her"
    );
    let r = find(&app, &dave, &format!("q=plan&conversation_id={conv}")).await;
    assert_eq!(r.json::<Value>().await.unwrap()["results"], json!([]));
    // FTS syntax in a query is just words: no way to widen it to other owners.
    assert!(bodies(&app, &alice, "owners: OR private").await.is_empty());

    // The snippet marks the matched words; the message is whole, as history shows it.
    let r = find(&app, &alice, "q=blue").await;
    let page: Value = r.json().await.unwrap();
    let hit = &page["results"][0];
    assert_eq!(hit["message"]["id"], typo.as_str());
    assert_eq!(hit["message"]["conversation_id"], conv.as_str());
    let marked: Vec<&str> = hit["snippet"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["hit"] == true)
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert_eq!(marked, ["blueprints"], "{hit}");

    // An edit is found by its new words only; a deleted message is not found at all.
    let url = app.url(&format!("/api/messages/{typo}"));
    let r = app
        .client
        .patch(&url)
        .bearer_auth(&alice)
        .json(&json!({"body": "I will bring the floor plans"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(bodies(&app, &alice, "blueprints").await.is_empty());
    assert_eq!(bodies(&app, &bob, "floor").await, ["I will bring the floor plans"]);
    let r = app.client.delete(app.url(&format!("/api/messages/{secret}"))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(bodies(&app, &bob, "vault").await.is_empty());
    assert!(bodies(&app, &bob, "7391").await.is_empty());

    // Cursor paging: 25 matches in pages of 10, each once.
    for i in 0..25 {
        say(&mut a, &format!("p{i}"), &conv, "", &format!("pagination test number {i}")).await;
    }
    indexed(&app, &alice, &mut a, &conv).await;
    let (mut seen, mut cursor, mut pages) = (std::collections::HashSet::new(), None::<String>, 0);
    loop {
        let q = match &cursor {
            Some(c) => format!("q=pagination&limit=10&cursor={c}"),
            None => "q=pagination&limit=10".into(),
        };
        let page: Value = find(&app, &alice, &q).await.json().await.unwrap();
        pages += 1;
        for h in page["results"].as_array().unwrap() {
            assert!(seen.insert(h["message"]["id"].as_str().unwrap().to_owned()), "a result twice");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (25, 3));

    // Bad queries get a clear 400.
    for q in [
        "q=",
        "q=%21%21",
        "q=a+b+c+d+e+f+g+h+i",
        "q=x&conversation_id=nope",
        "q=x&cursor=abc",
        "q=x&cursor=5000",
        "q=x&limit=0",
        "q=x&limit=51",
    ] {
        assert_eq!(error_code(find(&app, &alice, q).await, StatusCode::BAD_REQUEST).await, "invalid_query", "{q}");
    }
    let r = find(&app, &alice, &format!("q={}", "x".repeat(201))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // And a rate limit per user.
    let mut limited = false;
    for _ in 0..60 {
        let r = find(&app, &alice, "q=plan").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            limited = true;
            break;
        }
    }
    assert!(limited, "searches are rate limited");
}
