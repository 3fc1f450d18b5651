//! The gateway (`switchboard gateway`): the single public entry point.
//!
//! - Serves the pages and static files itself; reverse-proxies everything else (REST and
//!   the WebSocket) to the service that owns the path ([`ROUTES`]), with salvo's proxy and
//!   a plain-HTTP hyper client of our own ([`GatewayClient`]).
//! - Each service is a [`Pool`] of instances, health-checked (`GET /readyz`) every
//!   `gateway.health_interval_ms`; a dead instance gets no traffic. A connection refused
//!   marks the instance down at once, and a request without a body (every GET, every
//!   WebSocket upgrade) is retried on the next live instance, so a killed node costs its
//!   clients one reconnect, not an error.
//! - WebSocket clients go to the messaging node with the fewest open sockets.
//! - A service with no live instance answers 503 `service_unavailable` naming the service;
//!   the others keep working.
//! - At the edge: a request id (`x-request-id`, kept if the client sent a sane one),
//!   requests per client address per minute, and the body size by `Content-Length`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use salvo::catcher::Catcher;
use salvo::conn::tcp::TcpAcceptor;
use salvo::http::header::{self, HeaderValue};
use salvo::http::uri::{Authority, Uri};
use salvo::http::{ReqBody, ResBody};
use salvo::prelude::*;
use salvo_proxy::{Proxy, Upstreams};
use serde_json::json;

use crate::config::Config;
use crate::error::{AppError, ErrorCode, json_catcher};
use crate::ratelimit::KeyedLimiter;

/// How long an upstream may take to start its answer (headers; bodies stream).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Which service owns which path prefix. Anything else (pages, static files, health) the
/// gateway serves itself.
pub const ROUTES: &[(&str, Service)] = &[
    ("api/auth", Service::Auth),
    ("api/openapi.json", Service::Auth),
    ("api/users", Service::Auth),
    ("api/contacts", Service::Auth),
    ("api/conversations", Service::Messaging),
    ("api/messages", Service::Messaging),
    ("api/search", Service::Messaging),
    ("api/transfers", Service::Messaging),
    ("api/files", Service::Messaging),
    ("api/debug", Service::Messaging),
    ("ws", Service::Messaging),
    ("api/notifications", Service::Notify),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Auth,
    Messaging,
    Notify,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Auth => "auth",
            Service::Messaging => "messaging",
            Service::Notify => "notify",
        }
    }
}

/// One instance of a service.
#[derive(Debug)]
pub struct Upstream {
    pub url: String,
    authority: Option<Authority>,
    healthy: AtomicBool,
    /// Open proxied WebSockets.
    sockets: AtomicUsize,
}

impl Upstream {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn set_healthy(&self, service: Service, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            if healthy {
                tracing::info!(service = service.name(), upstream = %self.url, "upstream is up");
            } else {
                tracing::warn!(service = service.name(), upstream = %self.url, "upstream is down");
            }
        }
    }
}

/// The instances of one service.
#[derive(Debug)]
pub struct Pool {
    pub service: Service,
    pub members: Vec<Upstream>,
    next: AtomicUsize,
}

impl Pool {
    fn new(service: Service, urls: &[String]) -> Self {
        let members = urls
            .iter()
            .map(|u| Upstream {
                url: u.trim_end_matches('/').to_owned(),
                authority: u.trim_start_matches("http://").trim_end_matches('/').parse().ok(),
                // Optimistic until the first check: a fresh gateway routes at once.
                healthy: AtomicBool::new(true),
                sockets: AtomicUsize::new(0),
            })
            .collect();
        Self { service, members, next: AtomicUsize::new(0) }
    }

    /// A live instance: for a WebSocket the one with the fewest open sockets, otherwise
    /// round robin. `None` when no instance is live.
    fn pick(&self, websocket: bool, except: Option<usize>) -> Option<usize> {
        let live = |i: &usize| Some(*i) != except && self.members[*i].is_healthy();
        if websocket {
            return (0..self.members.len())
                .filter(live)
                .min_by_key(|i| self.members[*i].sockets.load(Ordering::Relaxed));
        }
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n.max(1)).find(live)
    }

    /// Any instance, live or not, round robin: when none is known live, the gateway tries
    /// one anyway rather than refuse, so an instance that is back is used at once, not
    /// after the next health check (after a restart every client reconnects at once, and
    /// each refusal is a retry). `None` only for an empty pool.
    fn any(&self) -> Option<usize> {
        let n = self.members.len();
        (n > 0).then(|| self.next.fetch_add(1, Ordering::Relaxed) % n)
    }

    fn index_of(&self, authority: Option<&Authority>) -> Option<usize> {
        self.members.iter().position(|m| m.authority.as_ref() == authority)
    }

    fn unavailable(&self) -> hyper::Response<ResBody> {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
            &format!("the {} service is unavailable; try again shortly", self.service.name()),
        )
    }
}

fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> hyper::Response<ResBody> {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    let mut res = hyper::Response::new(ResBody::Once(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    res
}

/// Elects an instance of one pool for salvo's proxy. With none live it still names one,
/// and [`GatewayClient`] answers 503 without calling it.
#[derive(Debug, Clone)]
struct PoolUpstreams(Arc<Pool>);

impl Upstreams for PoolUpstreams {
    type Error = std::io::Error;

    async fn elect(&self, req: &Request, _depot: &Depot) -> Result<&str, Self::Error> {
        let pool = &self.0;
        let i = pool.pick(is_upgrade(req.headers()), None).unwrap_or(0);
        pool.members.get(i).map(|m| m.url.as_str()).ok_or_else(|| std::io::Error::other("no upstreams"))
    }
}

fn is_upgrade(headers: &salvo::http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// The proxy's HTTP client: plain HTTP/1.1 to the services, retry on the next live
/// instance when a bodiless request finds its instance gone, JSON 502/503 errors.
#[derive(Clone)]
struct GatewayClient {
    http: HttpClient<HttpConnector, ReqBody>,
    pool: Arc<Pool>,
    /// A proxied WebSocket with no byte moving for this long is dropped.
    stall: Duration,
}

impl salvo_proxy::Client for GatewayClient {
    type Error = salvo::Error;

    async fn execute(
        &self,
        req: hyper::Request<ReqBody>,
        upgraded: Option<OnUpgrade>,
    ) -> Result<hyper::Response<ResBody>, Self::Error> {
        let pool = &self.pool;
        let websocket = is_upgrade(req.headers());
        let mut index = pool.index_of(req.uri().authority());
        // Whether no instance was known live: then one is tried anyway, once.
        let mut last_resort = false;
        if !index.is_some_and(|i| pool.members[i].is_healthy()) {
            index = pool.pick(websocket, None).or_else(|| {
                last_resort = true;
                pool.any()
            });
        }
        let Some(mut index) = index else { return Ok(pool.unavailable()) };
        let retryable =
            websocket || (req.method() == salvo::http::Method::GET || req.method() == salvo::http::Method::HEAD);
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        let response = loop {
            let mut attempt = hyper::Request::from_parts(parts.clone(), body.take().unwrap_or_default());
            *attempt.uri_mut() = with_authority(&parts.uri, pool.members[index].authority.clone());
            let Ok(result) = tokio::time::timeout(UPSTREAM_TIMEOUT, self.http.request(attempt)).await else {
                tracing::warn!(service = pool.service.name(), upstream = %pool.members[index].url, "upstream timed out");
                return Ok(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::GatewayTimeout,
                    &format!("the {} service did not answer in time", pool.service.name()),
                ));
            };
            match result {
                Ok(r) => {
                    // It answered: live again (the health check confirms or corrects it).
                    if last_resort && r.status() != StatusCode::SERVICE_UNAVAILABLE {
                        pool.members[index].set_healthy(pool.service, true);
                    }
                    break r;
                }
                Err(e) if e.is_connect() => {
                    pool.members[index].set_healthy(pool.service, false);
                    match pool.pick(websocket, Some(index)) {
                        Some(next) if retryable => index = next,
                        _ => return Ok(pool.unavailable()),
                    }
                }
                Err(e) => {
                    tracing::warn!(service = pool.service.name(), upstream = %pool.members[index].url, error = %e, "upstream failed");
                    return Ok(error_response(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::BadGateway,
                        &format!("the {} service failed to answer", pool.service.name()),
                    ));
                }
            }
        };
        let mut response = response;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS && websocket {
            let Some(client_side) = upgraded else {
                return Err(salvo::Error::other("the request cannot be upgraded"));
            };
            let upstream_side = hyper::upgrade::on(&mut response).await.map_err(salvo::Error::other)?;
            let pool = pool.clone();
            pool.members[index].sockets.fetch_add(1, Ordering::Relaxed);
            let stall = self.stall;
            tokio::spawn(async move {
                if let Ok(client_side) = client_side.await {
                    let moved = Arc::new(AtomicU64::new(0));
                    let mut a = Counted { io: TokioIo::new(client_side), moved: moved.clone() };
                    let mut b = Counted { io: TokioIo::new(upstream_side), moved: moved.clone() };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = stalled(&moved, stall) => {
                            tracing::debug!("proxied WebSocket stalled; dropped");
                        }
                    }
                }
                pool.members[index].sockets.fetch_sub(1, Ordering::Relaxed);
            });
        }
        Ok(response.map(ResBody::Hyper))
    }
}

/// One side of a proxied connection, counting the bytes it reads into `moved` (shared by
/// both sides), so a watchdog can tell a stalled connection from a quiet one.
struct Counted<T> {
    io: T,
    moved: Arc<AtomicU64>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Resolves once `moved` has not changed for `stall`.
async fn stalled(moved: &AtomicU64, stall: Duration) {
    let check = (stall / 4).max(Duration::from_millis(250));
    let mut last = (moved.load(Ordering::Relaxed), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(check).await;
        let now = moved.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        } else if last.1.elapsed() >= stall {
            return;
        }
    }
}

fn with_authority(uri: &Uri, authority: Option<Authority>) -> Uri {
    let mut parts = uri.clone().into_parts();
    if authority.is_some() {
        parts.authority = authority;
    }
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Checks every instance of every pool, forever.
async fn health_checks(pools: Vec<Arc<Pool>>, every: Duration) {
    let http: HttpClient<HttpConnector, String> = HttpClient::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = pools.iter().flat_map(|pool| {
            pool.members.iter().map(|m| {
                let http = http.clone();
                let pool = pool.clone();
                async move {
                    let ok = match format!("{}/readyz", m.url).parse::<Uri>() {
                        Ok(uri) => {
                            let req = hyper::Request::get(uri).body(String::new());
                            match req {
                                Ok(req) => matches!(
                                    tokio::time::timeout(every.max(Duration::from_millis(500)), http.request(req)).await,
                                    Ok(Ok(r)) if r.status().is_success()
                                ),
                                Err(_) => false,
                            }
                        }
                        Err(_) => false,
                    };
                    m.set_healthy(pool.service, ok);
                }
            })
        });
        futures_util::future::join_all(checks).await;
    }
}

/// The gateway's shared state.
#[derive(Debug, Clone)]
struct Edge {
    limiter: Arc<KeyedLimiter>,
    /// Proxies in front of the gateway whose `X-Forwarded-For` is believed.
    trusted_proxies: Arc<[std::net::IpAddr]>,
    max_body_bytes: u64,
    pools: Vec<Arc<Pool>>,
}

/// Request id, rate limit and body limit, before anything else.
#[async_trait]
impl Handler for Edge {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        if let Ok(v) = HeaderValue::from_str(&id) {
            req.headers_mut().insert("x-request-id", v.clone());
            res.headers_mut().insert("x-request-id", v);
        }
        // Limits count per client: behind a trusted proxy (TLS terminator, load balancer)
        // the client is named in X-Forwarded-For, and every client would otherwise share
        // the proxy's one address and budget. The chain goes on with the peer appended
        // (trusted) or replaced by it (anyone else: a client cannot plant addresses).
        let forwarded = crate::net::forwarded_header(req.headers());
        let (ip, chain) = match req.remote_addr().ip() {
            Some(peer) => (
                crate::net::limit_key(crate::net::client_addr(peer, forwarded.as_deref(), &self.trusted_proxies)),
                Some(crate::net::forwarded_for(peer, forwarded.as_deref(), &self.trusted_proxies)),
            ),
            None => (String::new(), None),
        };
        req.headers_mut().remove("x-forwarded-for");
        if let Some(v) = chain.and_then(|c| HeaderValue::from_str(&c).ok()) {
            req.headers_mut().insert("x-forwarded-for", v);
        }
        if let Err(wait) = self.limiter.check(&ip) {
            AppError::RateLimited { retry_after_secs: wait }.write(req, depot, res).await;
            ctrl.skip_rest();
            return;
        }
        let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if length.is_some_and(|n| n > self.max_body_bytes) {
            AppError::PayloadTooLarge { limit: self.max_body_bytes as usize }.write(req, depot, res).await;
            ctrl.skip_rest();
            return;
        }
        depot.insert_typed(self.clone());
        ctrl.call_next(req, depot, res).await;
    }
}

/// `GET /readyz` on the gateway: ready when every configured service has a live instance;
/// the body lists each instance.
#[handler]
async fn readyz(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let edge = depot.get_typed::<Edge>().map_err(|_| AppError::Internal(anyhow::anyhow!("Edge missing")))?;
    let mut services = serde_json::Map::new();
    let mut ready = true;
    for pool in &edge.pools {
        let members: Vec<_> = pool.members.iter().map(|m| json!({"url": m.url, "healthy": m.is_healthy()})).collect();
        ready &= pool.members.is_empty() || pool.members.iter().any(Upstream::is_healthy);
        services.insert(pool.service.name().to_owned(), json!(members));
    }
    if !ready {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
    }
    res.render(Json(json!({"status": if ready { "ready" } else { "degraded" }, "services": services})));
    Ok(())
}

#[handler]
async fn healthz(res: &mut Response) {
    res.render(Json(json!({"status": "ok"})));
}

/// The gateway's router.
fn router(config: &Config, pools: &[Arc<Pool>], edge: Edge) -> Router {
    let mut root = Router::new()
        .hoop(edge)
        .hoop(crate::web::security_headers)
        .push(Router::with_path("healthz").get(healthz))
        .push(Router::with_path("readyz").get(readyz));
    for (prefix, service) in ROUTES {
        let Some(pool) = pools.iter().find(|p| p.service == *service) else { continue };
        if *prefix == "api/debug" && !config.fault_injection {
            continue;
        }
        let client = GatewayClient {
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            pool: pool.clone(),
            stall: Duration::from_secs(config.gateway.socket_stall_secs),
        };
        let proxy = Proxy::new(PoolUpstreams(pool.clone()), client)
            .url_path_getter(|req, _| Some(req.uri().path().to_owned()))
            .host_header_getter(salvo_proxy::preserve_original_host_header_getter)
            // The edge handler has set X-Forwarded-For (appending for trusted proxies);
            // salvo's forwarding would overwrite it with the peer.
            .client_ip_forwarding(false);
        let proxy = Arc::new(proxy);
        root = root
            .push(Router::with_path(*prefix).goal(SharedProxy(proxy.clone())))
            .push(Router::with_path(format!("{prefix}/{{**rest}}")).goal(SharedProxy(proxy)));
    }
    root.push(crate::web::pages::router(config.auth.cookie_secure))
}

/// One proxy shared by the routes of a service.
struct SharedProxy(Arc<Proxy<PoolUpstreams, GatewayClient>>);

#[async_trait]
impl Handler for SharedProxy {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        self.0.handle(req, depot, res, ctrl).await;
    }
}

/// A built gateway: bound listener and router.
pub struct Gateway {
    acceptor: TcpAcceptor,
    local_addr: SocketAddr,
    service: salvo::Service,
    pools: Vec<Arc<Pool>>,
    health_every: Duration,
    limits: crate::config::LimitsConfig,
}

impl Gateway {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let g = &config.gateway;
        let pools: Vec<Arc<Pool>> =
            [(Service::Auth, &g.auth), (Service::Messaging, &g.messaging), (Service::Notify, &g.notify)]
                .into_iter()
                .map(|(s, urls)| Arc::new(Pool::new(s, urls)))
                .collect();
        let edge = Edge {
            limiter: Arc::new(KeyedLimiter::per_minute(g.requests_per_ip_per_minute)),
            trusted_proxies: g.trusted_proxies.clone().into(),
            max_body_bytes: g.max_body_bytes,
            pools: pools.clone(),
        };
        let router = router(&config, &pools, edge);
        let service = salvo::Service::new(router).catcher(Catcher::default().hoop(json_catcher));
        let listener =
            crate::startup::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let acceptor = TcpAcceptor::try_from(listener)?;
        Ok(Self {
            acceptor,
            local_addr,
            service,
            pools,
            health_every: Duration::from_millis(g.health_interval_ms),
            limits: config.limits.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let checks = tokio::spawn(health_checks(self.pools.clone(), self.health_every));
        let server = crate::config::http_server(self.acceptor, &self.limits);
        let handle = server.handle();
        tokio::spawn(async move {
            shutdown.await;
            handle.stop_graceful(Duration::from_secs(10));
        });
        crate::startup::announce("gateway", self.local_addr);
        server.serve(self.service).await;
        checks.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_live_instances_and_the_least_loaded_for_sockets() {
        let pool = Pool::new(
            Service::Messaging,
            &["http://127.0.0.1:1".to_owned(), "http://127.0.0.1:2".to_owned(), "http://127.0.0.1:3".to_owned()],
        );
        pool.members[0].sockets.store(5, Ordering::Relaxed);
        pool.members[1].sockets.store(1, Ordering::Relaxed);
        pool.members[2].sockets.store(3, Ordering::Relaxed);
        assert_eq!(pool.pick(true, None), Some(1));
        pool.members[1].healthy.store(false, Ordering::Relaxed);
        assert_eq!(pool.pick(true, None), Some(2));
        assert_eq!(pool.pick(true, Some(2)), Some(0));
        let picks: Vec<_> = (0..4).filter_map(|_| pool.pick(false, None)).collect();
        assert!(picks.iter().all(|i| *i != 1), "a dead instance gets no requests: {picks:?}");
        assert!(picks.contains(&0) && picks.contains(&2), "round robin over the live ones: {picks:?}");
        pool.members[0].healthy.store(false, Ordering::Relaxed);
        pool.members[2].healthy.store(false, Ordering::Relaxed);
        assert_eq!(pool.pick(false, None), None);
        assert_eq!(pool.index_of("127.0.0.1:3".parse::<Authority>().ok().as_ref()), Some(2));
    }
}
