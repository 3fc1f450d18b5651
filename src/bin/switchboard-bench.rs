//! `switchboard-bench`: a load generator for a running Switchboard.
//!
//! Scenario `pairs`: P pairs of users, each pair one conversation; the first user of each
//! pair sends to the second at a fixed share of the total rate, open loop (a send is due
//! at its intended time whatever the server does, and latency counts from that intended
//! time, so a slow server shows as latency, not as a lower send rate). Reports achieved
//! throughput and send→deliver latency percentiles.
//!
//! The server must allow the load: raise its rate limits, e.g.
//! `SWITCHBOARD_AUTH__REGISTER_PER_IP_PER_MINUTE=100000
//! SWITCHBOARD_AUTH__LOGIN_PER_IP_PER_MINUTE=100000
//! SWITCHBOARD_MESSAGING__SENDS_PER_SECOND=100000
//! SWITCHBOARD_LIMITS__CONTACT_REQUESTS_PER_MINUTE=100000`. `scripts/bench-messaging` does it all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use switchboard_actors::states::{ContactState, MessageKind, TransferState};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Debug, Parser)]
#[command(about = "Load generator for Switchboard")]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Number of sender→receiver pairs (2 × pairs connections).
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Total messages per second across all pairs.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// `pairs` (messaging over WebSockets), `cluster` (as `pairs`, senders on
    /// `--sender-url`, receivers on `--receiver-url`: two messaging nodes, so every message
    /// crosses RabbitMQ), `notify` (as `pairs`, but receivers read their notification
    /// stream, SSE, at `--receiver-url`: latency is send → notification), `ramp` (`pairs`
    /// at rising rates until p99 passes `--p99-bound-ms`), `idle` (connected idle clients;
    /// server RSS per connection), `files` (upload and download throughput), `commit`
    /// (appends/s of the storage layer alone, acks at the durable commit; needs
    /// `--database-url`) or `search` (user search queries against a database seeded with
    /// `--users` users; needs `--database-url`), `message-search` (message search queries
    /// against `--messages` seeded messages; needs `--database-url`), or `storm` (`--connections` synced sockets,
    /// the server killed and restarted by `--restart-cmd`, every socket reconnecting and
    /// syncing at once: time until all are synced, lost and duplicated messages).
    #[arg(long, default_value = "pairs")]
    scenario: String,
    /// Conversations for `commit`.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Messages for `commit` and `message-search`.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Appends waiting for their commit at once, for `commit`.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// Users to seed for `search`.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Database for `search` (created and migrated if needed).
    #[arg(long)]
    database_url: Option<String>,
    /// Connections for `idle`.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// `idle`: seconds to wait after each step before reading the server's memory (long
    /// enough for the sessions to hibernate: `messaging.hibernate_secs` plus a heartbeat).
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// The server's process id: `idle` reads its RSS, `pairs`/`ramp` its CPU time over the run
    /// (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Size of the file for `files`, in MiB.
    #[arg(long, default_value_t = 256)]
    file_mib: u64,
    /// Chunks uploaded at once for `files`.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// `ramp`: the p99 bound (ms) a step must stay under.
    #[arg(long, default_value_t = 20.0)]
    p99_bound_ms: f64,
    /// `ramp`: each step's rate is the last one's times this.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// `ramp`: at most this many steps.
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// Where senders open their WebSocket (default: `--url`).
    #[arg(long)]
    sender_url: Option<String>,
    /// Where receivers open their WebSocket (default: `--url`).
    #[arg(long)]
    receiver_url: Option<String>,
    /// `storm`: the shell command that kills the server and starts it again (on the same
    /// address and data); default: the `SB_BENCH_RESTART` environment variable.
    #[arg(long)]
    restart_cmd: Option<String>,
    /// `storm`: how a socket retries its reconnect: `fast` (every 50-100 ms, the worst
    /// case) or `browser` (the web UI's: 0.5 s doubling up to 10 s, each ±25%).
    #[arg(long, default_value = "fast", value_parser = ["fast", "browser"])]
    retry: String,
}

/// The `commit` scenario: the storage layer alone. `--rooms` conversations in a fresh
/// database at `--database-url`; `--messages` appends spread round-robin over them, at most
/// `--in-flight` waiting for their commit at once, each counted when its durable commit
/// (the ack point) returns. Reports appends/s and the append→commit latency.
async fn commit_bench(url: &str, rooms: usize, total: u64, in_flight: usize) -> anyhow::Result<()> {
    use switchboard::messaging::chat::ChatRepo;
    use switchboard_actors::ports::{ChatStore, NewMessage};

    anyhow::ensure!(rooms >= 1 && total >= 1 && in_flight >= 1, "rooms, messages and in-flight must be positive");
    let db = switchboard::storage::connect(url).await?;
    let run: String = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let convs: Vec<_> = switchboard::storage::seed::contact_pairs(&db, rooms, &format!("c{run}"))
        .await?
        .into_iter()
        .map(|p| (p.conversation, p.a))
        .collect();
    let committer = Arc::new(switchboard::writer::Committer::start(db.clone()));
    let repo = Arc::new(ChatRepo::new(db, committer));
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let failed = Arc::new(AtomicU64::new(0));
    eprintln!("appending {total} messages over {rooms} conversations, {in_flight} in flight ...");
    let start = Instant::now();
    let mut waits = tokio::task::JoinSet::new();
    for i in 0..total {
        let permit = slots.clone().acquire_owned().await?;
        let (conversation_id, sender_id) = convs[(i as usize) % rooms];
        let queued = Instant::now();
        let pending = repo
            .queue_append(NewMessage {
                conversation_id,
                sender_id,
                client_msg_id: format!("m{i}"),
                kind: MessageKind::Text,
                body: format!("message {i} of the committer benchmark"),
                file_id: None,
                target_id: None,
            })
            .await;
        let (hist, failed) = (hist.clone(), failed.clone());
        waits.spawn(async move {
            match pending.await {
                Ok(_) => {
                    let us = queued.elapsed().as_micros() as u64;
                    if let Ok(mut h) = hist.lock() {
                        let _ = h.record(us.max(1));
                    }
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        while waits.try_join_next().is_some() {}
    }
    while waits.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    let h = hist.lock().map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?.clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let failed = failed.load(Ordering::Relaxed);
    println!("| rooms | in flight | messages | failed | appends/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {rooms} | {in_flight} | {total} | {failed} | {:.0} | {:.2} | {:.2} | {:.2} |",
        total as f64 / secs,
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    println!(
        "{}",
        json!({"scenario": "commit", "rooms": rooms, "in_flight": in_flight, "messages": total, "failed": failed,
               "appends_per_s": total as f64 / secs, "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": h.max() as f64 / 1000.0}})
    );
    Ok(())
}

/// Seeds `n` users (if not there yet) and times prefix searches through the repository.
async fn search_bench(url: &str, n: u64) -> anyhow::Result<()> {
    use sea_orm::{EntityTrait, PaginatorTrait};
    use switchboard::contacts::repo::ContactRepo;
    use switchboard::storage::entities::user;
    use switchboard::storage::seed::user_row;

    let db = switchboard::storage::connect(url).await?;
    let have = user::Entity::find().count(&db).await?;
    if have < n {
        eprintln!("seeding {} users ...", n - have);
        let now = chrono::Utc::now().timestamp_millis();
        for start in (have..n).step_by(1000) {
            let rows = (start..(start + 1000).min(n))
                .map(|i| user_row(uuid::Uuid::now_v7(), format!("user{i:07}"), format!("Person {i}"), now));
            user::Entity::insert_many(rows).exec_without_returning(&db).await?;
        }
    }
    let repo = ContactRepo::new(db);
    let me = switchboard::domain::UserId::new();
    let queries = ["u", "user00", "user0042", "user0099999", "person 1", "person 77", "zzz"];
    println!("| query | hits (page of 20) | runs | median µs | p99 µs |");
    println!("|---|---|---|---|---|");
    for q in queries {
        time_query(q, async || Ok(repo.search(me, q, 20, None).await?.0.len())).await?;
    }
    Ok(())
}

/// Runs `query` 200 times and prints its table row: the query, the results of the last
/// run, the runs, median and p99 in µs.
async fn time_query(q: &str, mut query: impl AsyncFnMut() -> anyhow::Result<usize>) -> anyhow::Result<()> {
    let mut times = vec![];
    let mut hits = 0;
    for _ in 0..200 {
        let t = Instant::now();
        hits = query().await?;
        times.push(t.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    println!("| `{q}` | {hits} | {} | {} | {} |", times.len(), times[times.len() / 2], times[times.len() * 99 / 100]);
    Ok(())
}

/// The `message-search` scenario: `--messages` text messages seeded straight into the
/// database (1,000 users, each in ten conversations; bodies of 6-20 words drawn from a
/// 5,000-word vocabulary with Zipf-like frequencies, as language has), then 200 runs of
/// each query through the code `GET /api/search/messages` runs, each as a random user
/// (so each searches their own ~1/500 of the messages). Median and p99 per query.
async fn message_search_bench(url: &str, n: u64) -> anyhow::Result<()> {
    use sea_orm::{ActiveValue::Set, EntityTrait, PaginatorTrait};
    use switchboard::messaging::search::{Query, search, terms};
    use switchboard::storage::entities::{conversation, message, user};
    use switchboard::storage::seed::user_row;

    const USERS: u64 = 1000;
    const WORDS: u64 = 5000;
    let db = switchboard::storage::connect(url).await?;
    // A small xorshift generator: reproducible bodies, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Zipf-like: word k (0-based) with weight ~1/(k+1), by inverting the harmonic sum.
    let harmonic: Vec<f64> = (1..=WORDS)
        .scan(0.0, |s, k| {
            *s += 1.0 / k as f64;
            Some(*s)
        })
        .collect();
    let total = harmonic[harmonic.len() - 1];
    let word = |r: u64| {
        let x = (r % 1_000_000) as f64 / 1_000_000.0 * total;
        let k = harmonic.partition_point(|h| *h < x);
        format!("w{k}")
    };
    let users: Vec<uuid::Uuid> = if user::Entity::find().count(&db).await? < USERS {
        let now = chrono::Utc::now().timestamp_millis();
        let ids: Vec<uuid::Uuid> = (0..USERS).map(|_| uuid::Uuid::now_v7()).collect();
        user::Entity::insert_many(
            ids.iter()
                .enumerate()
                .map(|(i, id)| user_row(*id, format!("searcher{i:05}"), format!("Searcher {i}"), now)),
        )
        .exec_without_returning(&db)
        .await?;
        ids
    } else {
        user::Entity::find().all(&db).await?.into_iter().map(|u| u.id).collect()
    };
    let have = message::Entity::find().count(&db).await?;
    if have < n {
        eprintln!("seeding {} messages ...", n - have);
        let now = chrono::Utc::now().timestamp_millis();
        // Each user with the next five in a ring: 5,000 conversations, ten per user.
        let mut convs = vec![];
        for (i, a) in users.iter().enumerate() {
            for d in 1..=5 {
                let b = users[(i + d) % users.len()];
                let (low, high) = if *a < b { (*a, b) } else { (b, *a) };
                convs.push((uuid::Uuid::now_v7(), low, high));
            }
        }
        for chunk in convs.chunks(1000) {
            conversation::Entity::insert_many(chunk.iter().map(|(id, low, high)| conversation::ActiveModel {
                id: Set(*id),
                user_low: Set(*low),
                user_high: Set(*high),
                last_seq: Set(0),
                created_at: Set(now),
                updated_at: Set(now),
            }))
            .exec_without_returning(&db)
            .await?;
        }
        let per = (n - have).div_ceil(convs.len() as u64);
        let started = Instant::now();
        let mut rows = Vec::with_capacity(1000);
        let mut written = 0u64;
        for seq in 1..=per as i64 {
            for (c, low, high) in &convs {
                let len = 6 + next() % 15;
                let body = (0..len).map(|_| word(next())).collect::<Vec<_>>().join(" ");
                rows.push(message::ActiveModel {
                    id: Set(uuid::Uuid::now_v7()),
                    conversation_id: Set(*c),
                    seq: Set(seq),
                    sender_id: Set(if seq % 2 == 0 { *low } else { *high }),
                    client_msg_id: Set(format!("seed-{c}-{seq}")),
                    kind: Set(MessageKind::Text.to_string()),
                    body: Set(body),
                    file_id: Set(None),
                    created_at: Set(now + seq),
                    target_id: Set(None),
                    edited_at: Set(None),
                    deleted_at: Set(None),
                });
                if rows.len() == 1000 {
                    message::Entity::insert_many(std::mem::take(&mut rows)).exec_without_returning(&db).await?;
                    written += 1000;
                    if written.is_multiple_of(100_000) {
                        eprintln!("  {written} in {:.0} s", started.elapsed().as_secs_f64());
                    }
                }
            }
        }
        if !rows.is_empty() {
            message::Entity::insert_many(rows).exec_without_returning(&db).await?;
        }
        eprintln!("seeded in {:.0} s", started.elapsed().as_secs_f64());
    }
    // The search index, as a server's writer fills it (SQLite), timed.
    if let Some(path) = switchboard::storage::sqlite_file(&db) {
        let mut conn = rusqlite::Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let started = Instant::now();
        loop {
            let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let more =
                switchboard::messaging::search::index_pending(&txn, switchboard::messaging::search::INDEX_IDLE_BYTES)?;
            txn.commit()?;
            if !more {
                break;
            }
        }
        eprintln!("indexed for search in {:.1} s", started.elapsed().as_secs_f64());
    }
    // Fresh statistics, as autovacuum would have after such a load: without them
    // PostgreSQL plans every query through the whole-table text index.
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        use sea_orm::ConnectionTrait;
        db.execute_unprepared("ANALYZE").await?;
    }
    let readers = switchboard::storage::readers::Readers::for_db(&db);
    // Word ranks: w0 is in most messages, w50 in a few per cent, w2000 rare.
    let queries = ["w0", "w50", "w2000", "w3 w7", "w12 w400", "w49", "nothing"];
    println!("| query | results (page of 20) | runs | median µs | p99 µs |");
    println!("|---|---|---|---|---|");
    for q in queries {
        let words = terms(q).map_err(|e| anyhow::anyhow!(e))?;
        time_query(q, async || {
            let me = switchboard::domain::UserId(users[(next() % users.len() as u64) as usize]);
            let query = Query { me, words: &words, conversation: None, limit: 20, offset: 0 };
            Ok(search(&db, readers.clone(), &query).await.map_err(|e| anyhow::anyhow!("{e}"))?.len())
        })
        .await?;
    }
    Ok(())
}

/// CPU time (user + system) a process has used so far, in seconds (from /proc, in
/// clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from the `)` that ends it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("stat field");
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .context("VmRSS")
}

/// A WebSocket from loopback source address `127.0.0.<2 + k % 250>`: each source address
/// has its own ~28k ephemeral ports, so many sources pass that limit.
async fn connect_from(url: &str, token: &str, k: usize) -> anyhow::Result<Ws> {
    let ws_url = format!("{}/ws", url.replacen("http", "ws", 1));
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let host = url.trim_start_matches("http://").split('/').next().context("host")?;
    let server: std::net::SocketAddr = tokio::net::lookup_host(host).await?.next().context("address")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 2 + (k % 250) as u8], 0)))?;
    let stream = socket.connect(server).await?;
    let (ws, _) = tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

const SOCKETS_PER_ACCOUNT: usize = 16;

/// The `actors` scenario: what the actor runtime alone costs per actor, in this process
/// (no server): `--connections` idle ractor actors, bare, then as many again each with a
/// registered name, as a session actor has. Evidence for where an idle connection's
/// memory goes.
async fn actors_bench(n: usize) -> anyhow::Result<()> {
    use ractor::{Actor, ActorProcessingErr, ActorRef};
    struct Idle;
    impl Actor for Idle {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }
    let me = std::process::id();
    let mut rows = vec![];
    let mut actors = Vec::with_capacity(2 * n);
    println!("| actors | KiB each |");
    println!("|---|---|");
    for named in [false, true] {
        let before = rss_kib(me)?;
        for i in 0..n {
            let name = named.then(|| format!("n0123456789abcdef/session:{}", uuid::Uuid::now_v7()));
            let (actor, handle) = Actor::spawn(name, Idle, ()).await.map_err(|e| anyhow::anyhow!("spawn {i}: {e}"))?;
            actors.push((actor, handle));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let per = (rss_kib(me)?.saturating_sub(before)) as f64 / n as f64;
        let what = if named { "named" } else { "bare" };
        println!("| {n} {what} | {per:.2} |");
        rows.push(json!({"actors": n, "named": named, "kib_each": per}));
    }
    println!("{}", json!({"scenario": "actors", "rows": rows}));
    for (actor, handle) in actors {
        actor.stop(None);
        let _ = handle.await;
    }
    Ok(())
}

/// `idle`: N authenticated, idle connections (16 per account); reports the
/// server's RSS growth per connection at each step.
async fn idle_bench(args: &Args) -> anyhow::Result<()> {
    let pid = args.server_pid.context("--server-pid is needed for the idle scenario")?;
    if let Ok(n) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("open-file limit of the load tool: {n}");
    }
    let http = reqwest::Client::new();
    let run: String = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    // 16 sockets per account (under the server's per-user cap, 32 by default).
    let accounts = args.connections.div_ceil(SOCKETS_PER_ACCOUNT).max(1);
    eprintln!("registering {accounts} users ...");
    let mut tokens = vec![];
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(8) {
        let names: Vec<String> = chunk.iter().map(|i| format!("i{run}_{i}")).collect();
        let futs = names.iter().map(|n| account(&http, &args.url, n));
        for r in futures_util::future::join_all(futs).await {
            tokens.push(r?.0);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib(pid)?;
    let steps: Vec<usize> =
        [1000, 5000, 10_000, 19_000].into_iter().filter(|s| *s < args.connections).chain([args.connections]).collect();
    let mut sockets = Vec::with_capacity(args.connections);
    println!("| connections | server RSS MiB | KiB per connection since the last step |");
    println!("|---|---|---|");
    let mut rows = vec![];
    let (mut prev_n, mut prev_rss) = (0usize, base);
    for step in steps {
        while sockets.len() < step {
            let k = sockets.len();
            let batch = (step - k).min(200);
            let futs = (k..k + batch).map(|i| connect_from(&args.url, &tokens[i % tokens.len()], i));
            for r in futures_util::future::join_all(futs).await {
                let mut ws = r?;
                // Authenticated and served: the hello frame arrived.
                let hello = next_json(&mut ws).await?;
                anyhow::ensure!(hello["type"] == "hello", "expected hello, got {hello}");
                sockets.push(ws);
            }
            eprint!("\r  {} connected", sockets.len());
        }
        eprintln!();
        // Let the server settle (its sessions hibernate), then read its memory. The
        // sockets are read meanwhile, so they answer the server's pings as clients do.
        let settle = tokio::time::Instant::now() + Duration::from_secs(args.settle_secs);
        while tokio::time::Instant::now() < settle {
            for ws in sockets.iter_mut() {
                while let Some(Some(Ok(_))) = futures_util::FutureExt::now_or_never(ws.next()) {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Per connection from the growth between steps: the first step also carries the
        // allocator's start-up swings, so later steps are the cleaner figure.
        let rss = rss_kib(pid)?;
        let per = rss.saturating_sub(prev_rss) as f64 / (step - prev_n) as f64;
        println!("| {step} | {:.1} | {per:.2} |", rss as f64 / 1024.0);
        rows.push(json!({"connections": step, "server_rss_kib": rss, "kib_per_connection": per}));
        (prev_n, prev_rss) = (step, rss);
    }
    println!("{}", json!({"scenario": "idle", "steps": rows}));
    Ok(())
}

/// The bytes of chunk `i` (cheap to make again: a pattern of the index).
fn pattern_chunk(i: u64, len: usize) -> Vec<u8> {
    let seed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
    (0..len).map(|k| seed[k % 8] ^ (k as u8)).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Uploads a `mib` MiB file in chunks (`parallel` at a time) and downloads it again;
/// reports MiB/s each way. Hashes are computed before the clock starts.
async fn files_bench(url: &str, mib: u64, parallel: usize) -> anyhow::Result<()> {
    use sha2::{Digest, Sha256};
    anyhow::ensure!(mib >= 1 && parallel >= 1, "file size and parallel must be positive");
    let http = reqwest::Client::new();
    let run: String = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let (a_token, _) = account(&http, url, &format!("f{run}_a")).await?;
    let (b_token, b_id) = account(&http, url, &format!("f{run}_b")).await?;
    befriend(&http, url, &a_token, &b_token, &format!("f{run}_b")).await?;
    let mut ws = connect(url, &a_token).await?;
    ws.send(Message::text(json!({"type":"send","client_msg_id":"open","to_user_id":b_id,"body":"file"}).to_string()))
        .await?;
    let conv = loop {
        let v = next_json(&mut ws).await?;
        if v["type"] == "ack" {
            break v["conversation_id"].as_str().context("conv")?.to_owned();
        }
    };
    let size = mib << 20;
    // Ask for the chunk size first, then hash with it.
    let probe = http
        .post(format!("{url}/api/transfers"))
        .bearer_auth(&a_token)
        .json(&json!({"conversation_id": conv, "name": "probe", "size": 1, "sha256": "0".repeat(64)}))
        .send()
        .await?;
    let chunk = probe.json::<Value>().await?["chunk_size"].as_u64().context("chunk size")? as usize;
    eprintln!("hashing {mib} MiB in {} KiB chunks ...", chunk / 1024);
    let count = size.div_ceil(chunk as u64);
    let mut whole = Sha256::new();
    let mut chunk_sha = vec![];
    for i in 0..count {
        let len = (size - i * chunk as u64).min(chunk as u64) as usize;
        let data = pattern_chunk(i, len);
        whole.update(&data);
        chunk_sha.push(hex(&Sha256::digest(&data)));
    }
    let sha = hex(&whole.finalize());
    let r = http
        .post(format!("{url}/api/transfers"))
        .bearer_auth(&a_token)
        .json(&json!({"conversation_id": conv, "name": "bench.bin", "size": size, "sha256": sha}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "create transfer: {}", r.status());
    let id = r.json::<Value>().await?["id"].as_str().context("id")?.to_owned();
    eprintln!("uploading {count} chunks, {parallel} at a time ...");
    let t0 = Instant::now();
    let chunk_sha = Arc::new(chunk_sha);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = vec![];
    for _ in 0..parallel {
        let (http, url, token, id, next, chunk_sha) =
            (http.clone(), url.to_owned(), a_token.clone(), id.clone(), next.clone(), chunk_sha.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let len = (size - i * chunk as u64).min(chunk as u64) as usize;
                let r = http
                    .put(format!("{url}/api/transfers/{id}/chunks/{i}"))
                    .bearer_auth(&token)
                    .header("x-chunk-sha256", &chunk_sha[i as usize])
                    .body(pattern_chunk(i, len))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "chunk {i}: {}", r.status());
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let upload = t0.elapsed();
    // Complete once the file is assembled, verified and posted.
    let file_id = loop {
        let v: Value = http.get(format!("{url}/api/transfers/{id}")).bearer_auth(&a_token).send().await?.json().await?;
        if v["state"] == TransferState::Complete.as_str() {
            break v["file_id"].as_str().context("file id")?.to_owned();
        }
        anyhow::ensure!(v["state"] == TransferState::Uploading.as_str(), "transfer {}", v["state"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let assembled = t0.elapsed();
    let t1 = Instant::now();
    let mut r = http.get(format!("{url}/api/files/{file_id}")).bearer_auth(&b_token).send().await?;
    anyhow::ensure!(r.status().is_success(), "download: {}", r.status());
    let mut got = 0u64;
    while let Some(c) = r.chunk().await? {
        got += c.len() as u64;
    }
    let download = t1.elapsed();
    anyhow::ensure!(got == size, "downloaded {got} of {size} bytes");
    let mibs = |d: Duration| mib as f64 / d.as_secs_f64();
    println!("| file MiB | chunk KiB | parallel | upload MiB/s | upload + assemble MiB/s | download MiB/s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {mib} | {} | {parallel} | {:.1} | {:.1} | {:.1} |",
        chunk / 1024,
        mibs(upload),
        mibs(assembled),
        mibs(download)
    );
    println!(
        "{}",
        json!({"scenario": "files", "file_mib": mib, "chunk_kib": chunk / 1024, "parallel": parallel,
               "upload_mib_s": mibs(upload), "upload_and_assemble_mib_s": mibs(assembled), "download_mib_s": mibs(download)})
    );
    Ok(())
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
}

/// `a` asks `b` (by username) to be a contact and `b` accepts.
async fn befriend(http: &reqwest::Client, url: &str, a_token: &str, b_token: &str, b_name: &str) -> anyhow::Result<()> {
    let r = http
        .post(format!("{url}/api/contacts/requests"))
        .bearer_auth(a_token)
        .json(&json!({"username": b_name}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "contact request: {}", r.status());
    let v: Value = r.json().await?;
    if v["state"] == ContactState::Accepted.as_str() {
        return Ok(());
    }
    let id = v["id"].as_str().context("request id")?;
    let r = http.post(format!("{url}/api/contacts/requests/{id}/accept")).bearer_auth(b_token).send().await?;
    anyhow::ensure!(r.status().is_success(), "accept: {}", r.status());
    Ok(())
}

async fn account(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<(String, String)> {
    let body = json!({"username": name, "password": "bench password 123"});
    let r = http.post(format!("{url}/api/auth/register")).json(&body).send().await?;
    anyhow::ensure!(r.status().is_success() || r.status() == 409, "register {name}: {}", r.status());
    let r = http.post(format!("{url}/api/auth/login")).json(&body).send().await?;
    anyhow::ensure!(r.status().is_success(), "login {name}: {}", r.status());
    let v: Value = r.json().await?;
    let token = v["access_token"].as_str().context("token")?.to_owned();
    let id = v["user"]["id"].as_str().context("id")?.to_owned();
    Ok((token, id))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    let ws_url = format!("{}/ws", url.replacen("http", "ws", 1));
    let mut req = ws_url.into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await?.context("closed")?? {
            Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
            Message::Close(_) => anyhow::bail!("closed"),
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.scenario == "search" {
        let url = args.database_url.as_deref().context("--database-url is needed for the search scenario")?;
        return search_bench(url, args.users).await;
    }
    if args.scenario == "message-search" {
        let url = args.database_url.as_deref().context("--database-url is needed for the message-search scenario")?;
        return message_search_bench(url, args.messages).await;
    }
    if args.scenario == "commit" {
        let url = args.database_url.as_deref().context("--database-url is needed for the commit scenario")?;
        return commit_bench(url, args.rooms, args.messages, args.in_flight).await;
    }
    if args.scenario == "actors" {
        return actors_bench(args.connections).await;
    }
    if args.scenario == "idle" {
        return idle_bench(&args).await;
    }
    if args.scenario == "storm" {
        return storm_bench(&args).await;
    }
    if args.scenario == "files" {
        return files_bench(&args.url, args.file_mib, args.parallel).await;
    }
    if args.scenario == "ramp" {
        return ramp(&args).await;
    }
    anyhow::ensure!(
        matches!(args.scenario.as_str(), "pairs" | "cluster" | "notify"),
        "unknown scenario {:?}",
        args.scenario
    );
    let result = run_pairs(&args, args.rate).await?;
    println!("{result}");
    Ok(())
}

/// The `ramp` scenario: `pairs` at `--rate`, then at `--factor` times that, and so on
/// (fresh users per step, same server), until a step's p99 passes `--p99-bound-ms`, or it
/// has errors, or it loses messages. Reports every step and the highest rate that held.
async fn ramp(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.factor > 1.0, "--factor must be above 1");
    let mut rate = args.rate;
    let mut best = 0.0;
    let mut steps = vec![];
    let mut rows = vec![];
    for step in 0..args.max_steps {
        eprintln!("ramp step {}: {rate:.0} msg/s", step + 1);
        let r = run_pairs(args, rate).await?;
        let p99 = r["latency_ms"]["p99"].as_f64().unwrap_or(f64::INFINITY);
        let held = p99 <= args.p99_bound_ms && r["errors"] == 0 && r["delivered"] == r["sent"];
        rows.push(format!(
            "| {rate:.0} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
            r["sent"],
            r["delivered"],
            r["errors"],
            r["latency_ms"]["p50"].as_f64().unwrap_or_default(),
            p99,
            r["latency_ms"]["max"].as_f64().unwrap_or_default(),
            if held { "held" } else { "passed the bound" }
        ));
        steps.push(r);
        if !held {
            break;
        }
        best = rate;
        rate = (rate * args.factor).round();
    }
    println!("| target msg/s | sent | delivered | errors | p50 ms | p99 ms | max ms | |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!(
        "highest sustained rate with p99 <= {} ms: {best} msg/s ({} pairs, {} s per step)",
        args.p99_bound_ms, args.pairs, args.duration
    );
    println!(
        "{}",
        json!({"scenario": "ramp", "p99_bound_ms": args.p99_bound_ms, "highest_sustained_msg_s": best, "steps": steps})
    );
    Ok(())
}

/// One open-loop run of `pairs`, `cluster` or `notify` at `rate`; prints its table and
/// returns its result.
async fn run_pairs(args: &Args, rate: f64) -> anyhow::Result<Value> {
    let sender_url = args.sender_url.clone().unwrap_or_else(|| args.url.clone());
    let receiver_url = args.receiver_url.clone().unwrap_or_else(|| args.url.clone());
    if args.scenario == "cluster" {
        anyhow::ensure!(
            sender_url != receiver_url,
            "the cluster scenario needs --sender-url and --receiver-url on different messaging nodes"
        );
    }
    anyhow::ensure!(args.pairs >= 1 && rate > 0.0 && args.duration >= 1, "pairs, rate and duration must be positive");
    let http = reqwest::Client::new();
    let run: String = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    eprintln!("registering {} users ...", args.pairs * 2);
    let mut users = Vec::with_capacity(args.pairs * 2);
    for chunk in (0..args.pairs * 2).collect::<Vec<_>>().chunks(8) {
        let names: Vec<String> = chunk.iter().map(|i| format!("b{run}_{i}")).collect();
        let futs = names.iter().map(|n| account(&http, &args.url, n));
        for r in futures_util::future::join_all(futs).await {
            users.push(r?);
        }
    }
    eprintln!("connecting {} sockets and opening {} conversations ...", args.pairs * 2, args.pairs);
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    let per_pair = rate / args.pairs as f64;
    let period = Duration::from_secs_f64(1.0 / per_pair);
    // Senders start together once every pair is set up; readers run until `stop`.
    let (start_tx, start_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = vec![];
    let mut receivers = vec![];
    let mut readers = vec![];
    for p in 0..args.pairs {
        let (a_token, _) = &users[2 * p];
        let (b_token, b_id) = &users[2 * p + 1];
        befriend(&http, &args.url, a_token, b_token, &format!("b{run}_{}", 2 * p + 1)).await?;
        let mut a = connect(&sender_url, a_token).await?;
        let notify = args.scenario == "notify";
        let mut b = if notify { None } else { Some(connect(&receiver_url, b_token).await?) };
        let mut stream = if notify {
            let r = http.get(format!("{receiver_url}/api/notifications/stream")).bearer_auth(b_token).send().await?;
            anyhow::ensure!(r.status().is_success(), "notification stream: {}", r.status());
            Some(r)
        } else {
            None
        };
        a.send(Message::text(
            json!({"type":"send","client_msg_id":"open","to_user_id":b_id,"body":"open"}).to_string(),
        ))
        .await?;
        let conv = loop {
            let v = next_json(&mut a).await?;
            if v["type"] == "ack" {
                break v["conversation_id"].as_str().context("conv")?.to_owned();
            }
        };
        // Receiver: latency of every message from the peer, from its intended send time.
        let c = counters.clone();
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let stop_r = stop.clone();
        if let Some(mut resp) = stream.take() {
            let c = c.clone();
            let stop_r = stop_r.clone();
            let mut hist = hist.clone();
            // Receiver over the notification stream: latency from the intended send time to
            // the `notification` event (its preview carries the newest message's time). A
            // conversation's notification is updated in place, and messages stored in one
            // batch make one update: each update counts the messages up to its seq (the
            // opening message is seq 1).
            receivers.push(tokio::spawn(async move {
                let mut buf = String::new();
                let mut counted_seq = 1u64;
                loop {
                    let chunk = tokio::select! {
                        _ = stop_r.cancelled() => break,
                        chunk = resp.chunk() => match chunk { Ok(Some(c)) => c, _ => break },
                    };
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        if !block.contains("event: notification") {
                            continue;
                        }
                        let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
                        let Ok(v) = serde_json::from_str::<Value>(data.trim()) else { continue };
                        if let Some(intended) = v["payload"]["preview"]
                            .as_str()
                            .and_then(|b| b.split(' ').nth(1))
                            .and_then(|s| s.parse::<u64>().ok())
                        {
                            let now = epoch.elapsed().as_micros() as u64;
                            let _ = hist.record(now.saturating_sub(intended).max(1));
                            let seq = v["seq"].as_u64().unwrap_or(counted_seq + 1);
                            if seq > counted_seq {
                                c.delivered.fetch_add(seq - counted_seq, Ordering::Relaxed);
                                counted_seq = seq;
                            }
                        }
                    }
                }
                hist
            }));
        }
        if let Some(mut b) = b.take() {
            receivers.push(tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        _ = stop_r.cancelled() => break,
                        next = b.next() => next,
                    };
                    let Some(Ok(Message::Text(t))) = next else {
                        if next.is_none() {
                            break;
                        }
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    if v["type"] != "message" {
                        continue;
                    }
                    if let Some(intended) =
                        v["body"].as_str().and_then(|b| b.split(' ').nth(1)).and_then(|s| s.parse::<u64>().ok())
                    {
                        let now = epoch.elapsed().as_micros() as u64;
                        let _ = hist.record(now.saturating_sub(intended).max(1));
                        c.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                hist
            }));
        }
        // Sender: open loop at its share of the rate; a reader half counts acks.
        let (mut sink, mut stream) = a.split();
        let c = counters.clone();
        let stop_r = stop.clone();
        readers.push(tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop_r.cancelled() => break,
                    next = stream.next() => match next { Some(Ok(m)) => m, _ => break },
                };
                if let Message::Text(t) = m
                    && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                {
                    match v["type"].as_str() {
                        Some("ack") => c.acked.fetch_add(1, Ordering::Relaxed),
                        Some("error") => c.errors.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                }
            }
        }));
        let c = counters.clone();
        let measure = Duration::from_secs(args.duration);
        let offset = period.mul_f64(p as f64 / args.pairs as f64);
        let mut start_rx = start_rx.clone();
        senders.push(tokio::spawn(async move {
            let Ok(start) = start_rx.wait_for(Option::is_some).await.map(|s| s.unwrap_or_else(Instant::now)) else {
                return;
            };
            let start = start + offset;
            let mut k: u64 = 0;
            loop {
                let due = start + period.mul_f64(k as f64);
                if due > start + measure {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let intended = due.duration_since(epoch).as_micros() as u64;
                let frame = json!({"type":"send","client_msg_id":format!("m{k}"),"conversation_id":conv,"body":format!("{k} {intended}")});
                if sink.send(Message::text(frame.to_string())).await.is_err() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                c.sent.fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
        }));
    }
    let started = Instant::now() + Duration::from_millis(500);
    let _ = start_tx.send(Some(started));
    eprintln!("running {} s at {} msg/s over {} pairs ...", args.duration, rate, args.pairs);
    // The server's CPU over the run only (not the registrations and logins before it).
    let cpu_before = match args.server_pid {
        Some(pid) => {
            tokio::time::sleep_until(started.into()).await;
            Some(cpu_seconds(pid)?)
        }
        None => None,
    };
    let progress = {
        let c = counters.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!(
                    "  sent {} acked {} delivered {} errors {}",
                    c.sent.load(Ordering::Relaxed),
                    c.acked.load(Ordering::Relaxed),
                    c.delivered.load(Ordering::Relaxed),
                    c.errors.load(Ordering::Relaxed)
                );
            }
        })
    };
    for s in senders {
        s.await?;
    }
    // Let in-flight messages arrive (up to 10 s), then stop the readers.
    for _ in 0..100 {
        if counters.delivered.load(Ordering::Relaxed) >= counters.sent.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Achieved rate: what arrived over the time it took to arrive (a backlog that drains
    // after the senders stop counts against it).
    let took = started.elapsed().as_secs_f64().max(args.duration as f64);
    let server_cpu_s = match (args.server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_seconds(pid)? - before),
        _ => None,
    };
    stop.cancel();
    for r in readers {
        r.await?;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for r in receivers {
        hist.add(r.await?)?;
    }
    progress.abort();
    let sent = counters.sent.load(Ordering::Relaxed);
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let result = json!({
        "scenario": args.scenario,
        "pairs": args.pairs,
        "target_rate": rate,
        "duration_s": args.duration,
        "sent": sent,
        "acked": counters.acked.load(Ordering::Relaxed),
        "delivered": delivered,
        "errors": counters.errors.load(Ordering::Relaxed),
        "throughput_msg_s": delivered as f64 / took,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99_9": ms(0.999), "max": hist.max() as f64 / 1000.0},
        "server_cpu_s": server_cpu_s,
        "server_cpu_ms_per_msg": server_cpu_s.map(|s| s * 1000.0 / (delivered.max(1) as f64)),
    });
    println!(
        "| pairs | target msg/s | achieved msg/s | sent | acked | delivered | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        args.pairs,
        rate,
        delivered as f64 / took,
        sent,
        result["acked"],
        delivered,
        result["errors"],
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );
    if let Some(cpu) = server_cpu_s {
        println!(
            "server CPU during the run: {cpu:.2} s ({:.2} cores), {:.3} ms per delivered message",
            cpu / took,
            cpu * 1000.0 / (delivered.max(1) as f64)
        );
    }
    Ok(result)
}

/// Devices per user in the storm: a few, as people have (a user's devices all syncing at
/// once meet the per-user sync limit, 10 at once, which a client answers by syncing again a
/// second later).
const STORM_SOCKETS_PER_ACCOUNT: usize = 4;

/// Messages each pair's sender has acked before the storm: half before the sockets
/// sync, half just before the kill (some of those still in flight to the receivers).
const STORM_MESSAGES: usize = 6;

/// One socket of the storm: which conversation it follows, the seqs it holds, and when it
/// had synced again after the restart.
#[derive(Default)]
struct StormOutcome {
    seqs: std::collections::HashSet<i64>,
    duplicates: u64,
    attempts: u64,
    synced_after: Option<Duration>,
}

/// `storm`: `--connections` sockets (4 per account, accounts in contact pairs with one
/// conversation each) connect and sync; each pair's sender has messages acked, some of
/// them still on their way to the sockets, when `--restart-cmd` kills and restarts the
/// server. Every socket then reconnects at once (retrying refused connections every
/// 50-100 ms, as a client would) and syncs from the last seq it holds. Reports the time
/// from the kill until every socket has synced, and per socket, and checks that each holds
/// every acked message of its conversation exactly once.
async fn storm_bench(args: &Args) -> anyhow::Result<()> {
    let restart = match &args.restart_cmd {
        Some(c) => c.clone(),
        None => std::env::var("SB_BENCH_RESTART").context("storm needs --restart-cmd or SB_BENCH_RESTART")?,
    };
    if let Ok(n) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("open-file limit of the load tool: {n}");
    }
    let http = reqwest::Client::new();
    let run: String = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let accounts = args.connections.div_ceil(STORM_SOCKETS_PER_ACCOUNT).max(2).next_multiple_of(2);
    eprintln!("registering {accounts} users in {} pairs ...", accounts / 2);
    let mut users = vec![];
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(8) {
        let names: Vec<String> = chunk.iter().map(|i| format!("s{run}_{i}")).collect();
        let futs = names.iter().map(|n| account(&http, &args.url, n));
        for r in futures_util::future::join_all(futs).await {
            users.push(r?);
        }
    }
    // Each pair: contacts, the conversation and its first messages (from a socket closed
    // after: one left unread for minutes would be closed by the server's heartbeat).
    let mut convs = vec![];
    for p in 0..accounts / 2 {
        let ((a_token, _), (b_token, b_id)) = (&users[2 * p], &users[2 * p + 1]);
        befriend(&http, &args.url, a_token, b_token, &format!("s{run}_{}", 2 * p + 1)).await?;
        let mut a = connect(&args.url, a_token).await?;
        let mut conv = None;
        for i in 0..STORM_MESSAGES / 2 {
            let target = match &conv {
                None => json!({"to_user_id": b_id}),
                Some(c) => json!({"conversation_id": c}),
            };
            let mut frame = json!({"type": "send", "client_msg_id": format!("m{i}"), "body": format!("before {i}")});
            frame.as_object_mut().context("object")?.extend(target.as_object().cloned().unwrap_or_default());
            a.send(Message::text(frame.to_string())).await?;
            loop {
                let v = next_json(&mut a).await?;
                if v["type"] == "ack" {
                    conv = v["conversation_id"].as_str().map(str::to_owned);
                    break;
                }
            }
        }
        a.close(None).await.ok();
        convs.push(conv.context("a conversation")?);
    }
    // Every socket connects and syncs; then it reads until the server goes, reconnects,
    // syncs from what it holds, and reports.
    eprintln!("connecting and syncing {} sockets ...", args.connections);
    let (kill_tx, kill_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let mut tasks = Vec::with_capacity(args.connections);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(args.connections);
    // At most this many first connections at once (the listen backlog); the storm itself
    // is every socket at once.
    let opening = Arc::new(tokio::sync::Semaphore::new(200));
    for k in 0..args.connections {
        let account = (k / STORM_SOCKETS_PER_ACCOUNT) % accounts;
        let (token, conv) = (users[account].0.clone(), convs[account / 2].clone());
        let (url, ready, kill) = (args.url.clone(), ready_tx.clone(), kill_rx.clone());
        let opening = opening.clone();
        let browser = args.retry == "browser";
        tasks.push(tokio::spawn(async move {
            let mut out = StormOutcome::default();
            let first = async {
                let _turn = opening.acquire().await?;
                let mut ws = connect_from(&url, &token, k).await?;
                storm_sync(&mut ws, &conv, &mut out).await?;
                anyhow::Ok(ws)
            }
            .await;
            let mut ws = match first {
                Ok(ws) => {
                    let _ = ready.send(Ok(())).await;
                    ws
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    return out;
                }
            };
            // Live until the server goes.
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m
                    && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                {
                    storm_record(&v, &conv, &mut out);
                }
            }
            let Some(killed) = *kill.borrow() else { return out };
            let mut retry: u32 = 0;
            // The web UI waits before its first reconnect too (static/chat.js).
            if browser {
                tokio::time::sleep(browser_delay(retry, k)).await;
            }
            loop {
                out.attempts += 1;
                if let Ok(mut ws) = connect_from(&url, &token, k).await
                    && storm_sync(&mut ws, &conv, &mut out).await.is_ok()
                {
                    out.synced_after = Some(killed.elapsed());
                    return out;
                }
                if killed.elapsed() > Duration::from_secs(120) {
                    return out;
                }
                retry += 1;
                let wait =
                    if browser { browser_delay(retry, k) } else { Duration::from_millis(50 + (k as u64 * 7919) % 50) };
                tokio::time::sleep(wait).await;
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..args.connections {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .context("sockets still not synced after 120 s")?
            .context("a socket task ended")??;
    }
    // The rest of the messages, acked, and at once the kill: some are still on their way.
    let mut senders = vec![];
    for (p, conv) in convs.iter().enumerate() {
        let mut s = connect(&args.url, &users[2 * p].0).await?;
        for i in STORM_MESSAGES / 2..STORM_MESSAGES {
            let frame = json!({"type": "send", "client_msg_id": format!("m{i}"), "conversation_id": conv, "body": format!("late {i}")});
            s.send(Message::text(frame.to_string())).await?;
        }
        senders.push(s);
    }
    for s in &mut senders {
        let mut acked = 0;
        while acked < STORM_MESSAGES - STORM_MESSAGES / 2 {
            if next_json(s).await?["type"] == "ack" {
                acked += 1;
            }
        }
    }
    eprintln!("killing and restarting the server ...");
    let killed = Instant::now();
    kill_tx.send_replace(Some(killed));
    let status = tokio::task::spawn_blocking(move || std::process::Command::new("sh").arg("-c").arg(&restart).status())
        .await??;
    anyhow::ensure!(status.success(), "the restart command failed: {status}");
    let mut outcomes = vec![];
    for t in tasks {
        outcomes.push(t.await?);
    }
    let total = killed.elapsed();
    let expected = STORM_MESSAGES as i64;
    let mut times: Vec<f64> = outcomes.iter().filter_map(|o| o.synced_after.map(|d| d.as_secs_f64())).collect();
    times.sort_by(f64::total_cmp);
    let synced = times.len();
    let lost: u64 = outcomes.iter().map(|o| (1..=expected).filter(|s| !o.seqs.contains(s)).count() as u64).sum();
    let duplicates: u64 = outcomes.iter().map(|o| o.duplicates).sum();
    let attempts: u64 = outcomes.iter().map(|o| o.attempts).sum();
    let pct = |q: f64| times.get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
    let all = (synced == args.connections).then(|| times.last().copied()).flatten();
    println!(
        "| sockets | synced again | all synced after (s) | p50 (s) | p99 (s) | lost | duplicated | connect attempts |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let show = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.2}"));
    println!(
        "| {} | {synced} | {} | {} | {} | {lost} | {duplicates} | {attempts} |",
        args.connections,
        show(all),
        show(pct(0.5)),
        show(pct(0.99))
    );
    println!(
        "{}",
        json!({"scenario": "storm", "connections": args.connections, "synced": synced,
               "all_synced_s": all, "p50_s": pct(0.5), "p99_s": pct(0.99), "lost": lost,
               "duplicated": duplicates, "connect_attempts": attempts, "took_s": total.as_secs_f64()})
    );
    Ok(())
}

/// The web UI's reconnect delay (static/chat.js): 0.5 s doubling per retry up to 10 s,
/// times 0.75-1.25 (spread by the socket's number `k` instead of a random draw).
fn browser_delay(retry: u32, k: usize) -> Duration {
    let base = (500u64 << retry.min(5)).min(10_000);
    let jitter = 750 + (k as u64 * 7919 + u64::from(retry) * 104_729) % 501;
    Duration::from_millis(base * jitter / 1000)
}

/// Waits for `hello`, asks for everything after the last seq `out` holds of `conv`, and
/// reads until `sync_done`, recording each message.
async fn storm_sync(ws: &mut Ws, conv: &str, out: &mut StormOutcome) -> anyhow::Result<()> {
    let hello = next_json(ws).await?;
    anyhow::ensure!(hello["type"] == "hello", "expected hello, got {hello}");
    let sync = |out: &StormOutcome| {
        let since = out.seqs.iter().max().copied().unwrap_or(0);
        Message::text(json!({"type": "sync", "since": {conv: since}}).to_string())
    };
    ws.send(sync(out)).await?;
    loop {
        let v = next_json(ws).await?;
        match v["type"].as_str() {
            Some("sync_done") => return Ok(()),
            // As a client does: a sync refused for its rate (a user's devices all syncing at
            // once) is sent again a second later.
            Some("error") if v["code"] == "rate_limited" => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ws.send(sync(out)).await?;
            }
            Some("error") => anyhow::bail!("sync refused: {v}"),
            _ => storm_record(&v, conv, out),
        }
    }
}

fn storm_record(v: &Value, conv: &str, out: &mut StormOutcome) {
    if v["type"] == "message"
        && v["conversation_id"] == conv
        && let Some(seq) = v["seq"].as_i64()
        && !out.seqs.insert(seq)
    {
        out.duplicates += 1;
    }
}
