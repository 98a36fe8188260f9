//! The HTTP gateway: browsers open `https://<canister-id>.<domain>/` and get the canister's
//! page, its body checked against the subnet's certificate first.
//!
//! - **Which canister**: the first label of the host under a configured domain (or under
//!   `localhost`), `<id>.raw.<domain>` for answers served without verification, or
//!   `?canisterId=<id>` on the bare domain (as local development servers do). `/api/...`
//!   is always the API, so an agent in a page can use the page's own origin.
//! - **How**: the request becomes an `http_request` query through an `ic-agent` whose
//!   transport is this boundary's own API router, called in process ([`InProcess`]): the
//!   query takes the same routes, health, retries, subnet limits and cache as an agent's,
//!   and the agent checks the node's signature. `canister-http` then runs DFINITY's response
//!   verification against the network's root key from the verified registry.
//! - **Refusal**: an answer that fails verification is never served; the browser gets an
//!   error page that says why ([`GatewayError`]), with the cause in `x-ic-error-cause` as
//!   the API's errors carry it.

use crate::proxy::{self, ApiError};
use crate::Boundary;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use ic_agent::{Agent, AgentError};
use ic_principal::Principal;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;

/// Says which way an answer was checked: `verified (v1)`, `update`, `raw (not verified)`.
pub const VERIFICATION: &str = "x-icos-verification";
/// The canister that answered.
pub const CANISTER_ID: &str = "x-ic-canister-id";

/// A request for a canister's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub canister: Principal,
    /// Served without response verification (`<id>.raw.<domain>`).
    pub raw: bool,
}

/// A page the gateway answers itself: an HTML error page with its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: StatusCode,
    /// The machine-readable name, as `x-ic-error-cause` carries it (the API's own causes
    /// pass through as they came).
    pub cause: String,
    pub title: &'static str,
    pub details: String,
}

impl GatewayError {
    fn new(
        status: StatusCode,
        cause: impl Into<String>,
        title: &'static str,
        details: impl Into<String>,
    ) -> Self {
        GatewayError {
            status,
            cause: cause.into(),
            title,
            details: details.into(),
        }
    }
}

impl From<ApiError> for GatewayError {
    fn from(e: ApiError) -> Self {
        GatewayError::new(
            e.status,
            e.cause,
            "The boundary could not pass this request on",
            e.details,
        )
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let page = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
             <body><h1>{title}</h1>\n<p>Cause: <code id=\"cause\">{cause}</code></p>\n\
             <pre id=\"details\" style=\"white-space: pre-wrap\">{details}</pre>\n</body></html>\n",
            title = self.title,
            cause = escape(&self.cause),
            details = escape(&self.details),
        );
        let mut r = (
            self.status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page,
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&self.cause) {
            r.headers_mut().insert(proxy::ERROR_CAUSE, v);
        }
        r
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Which canister a request's host (and query) names, if any. `domains` are the
/// gateway's domains; `localhost` is always one.
pub fn target(
    host: &str,
    query: Option<&str>,
    domains: &[String],
) -> Result<Option<Target>, GatewayError> {
    let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
    let suffixes = domains
        .iter()
        .map(String::as_str)
        .chain(std::iter::once("localhost"));
    for domain in suffixes {
        if host == domain {
            return match canister_param(query) {
                Some(id) => parse_canister(id).map(|canister| {
                    Some(Target {
                        canister,
                        raw: false,
                    })
                }),
                None => Ok(None),
            };
        }
        let Some(prefix) = host.strip_suffix(domain).and_then(|p| p.strip_suffix('.')) else {
            continue;
        };
        let (label, raw) = match prefix.strip_suffix(".raw") {
            Some(label) => (label, true),
            None => (prefix, false),
        };
        return parse_canister(label).map(|canister| Some(Target { canister, raw }));
    }
    Ok(None)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal is never a canister's host.
        return host;
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn canister_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("canisterId="))
}

fn parse_canister(label: &str) -> Result<Principal, GatewayError> {
    Principal::from_text(label).map_err(|e| {
        GatewayError::new(
            StatusCode::BAD_REQUEST,
            "canister_id_invalid",
            "This address names no canister",
            format!("`{label}` is not a canister id: {e}"),
        )
    })
}

/// The agent's transport: this boundary's API router, called in process. Requests carry
/// [`proxy::Internal`], so the per-client limit (already applied to the browser) is not
/// applied again to the gateway itself.
#[derive(Debug)]
struct InProcess {
    api: Router,
}

#[async_trait::async_trait]
impl ic_agent::agent::HttpService for InProcess {
    async fn call<'a>(
        &'a self,
        request: &'a (dyn Fn() -> Result<axum::http::Request<Bytes>, AgentError> + Send + Sync),
        _max_retries: usize,
        size_limit: Option<usize>,
    ) -> Result<axum::http::Response<Bytes>, AgentError> {
        let mut request = request()?.map(Body::from);
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 0))));
        request.extensions_mut().insert(proxy::Internal);
        let response = match self.api.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let limit = size_limit.unwrap_or(usize::MAX);
        let body = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|_| AgentError::ResponseSizeExceededLimit())?
            .to_bytes();
        Ok(axum::http::Response::from_parts(parts, body))
    }
}

/// The gateway's state: the boundary it routes through and its agent.
pub struct Gateway {
    boundary: Arc<Boundary>,
    agent: Agent,
    domains: Vec<String>,
}

impl Gateway {
    pub fn new(boundary: Arc<Boundary>, domains: Vec<String>) -> Result<Arc<Gateway>, AgentError> {
        let agent = Agent::builder()
            .with_url("http://boundary.internal")
            .with_arc_http_middleware(Arc::new(InProcess {
                api: proxy::router(boundary.clone()),
            }))
            // Every browser's page is one request at a time through this agent.
            .with_max_concurrent_requests(4096)
            .build()?;
        Ok(Arc::new(Gateway {
            boundary,
            agent,
            domains: domains
                .into_iter()
                .map(|d| d.trim_matches('.').to_ascii_lowercase())
                .collect(),
        }))
    }

    /// One page: the client's limit, the body, the canister's answer, checked.
    async fn page(
        &self,
        target: Target,
        peer: SocketAddr,
        request: Request,
    ) -> Result<Response, GatewayError> {
        self.boundary
            .limits
            .client(peer.ip())
            .map_err(ApiError::from)?;
        self.follow_root_key()?;
        let (parts, body) = request.into_parts();
        let body = proxy::read_body(&self.boundary, body).await?;
        let url = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let request = canister_http::request(
            parts.method,
            &url,
            request_headers(&parts.headers),
            body.to_vec(),
        );
        let mode = if target.raw {
            canister_http::Mode::Raw
        } else {
            canister_http::Mode::Verified
        };
        let fetched = canister_http::fetch(&self.agent, &target.canister, request, mode)
            .await
            .map_err(|e| fetch_error(&target, &url, e))?;
        Ok(page_response(&target, fetched))
    }

    /// The agent checks against the root key of the registry version in force.
    fn follow_root_key(&self) -> Result<(), GatewayError> {
        let table = self.boundary.table();
        let Some(key) = table.root_key.as_ref() else {
            return Err(GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry_unavailable",
                "The boundary does not know this network yet",
                "no verified registry version with a root key yet",
            ));
        };
        if self.agent.read_root_key() != *key {
            self.agent.set_root_key(key.clone());
        }
        Ok(())
    }
}

/// Headers that describe one connection, not the request: never passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "host"
    )
}

fn request_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| !hop_by_hop(n))
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The body as it goes out: whole, or its first chunk and then each checked chunk as it
/// arrives. A chunk that cannot be had or a body whose hash does not match ends the stream
/// with an error, which breaks the transfer (no final chunk on HTTP/1.1, a reset on
/// HTTP/2): the client never takes a forged body for a whole one.
fn page_body(canister: String, first: Vec<u8>, rest: Option<canister_http::stream::Rest>) -> Body {
    let Some(rest) = rest else {
        return Body::from(first);
    };
    let chunks = futures_util::stream::try_unfold((Some(first), rest), move |(first, mut rest)| {
        let canister = canister.clone();
        async move {
            if let Some(first) = first {
                return Ok(Some((bytes::Bytes::from(first), (None, rest))));
            }
            match rest.next().await {
                Ok(Some(chunk)) => Ok(Some((bytes::Bytes::from(chunk), (None, rest)))),
                Ok(None) => Ok(None),
                Err(e) => {
                    tracing::warn!("gateway: a streamed page of {canister} broken off: {e}");
                    Err(e)
                }
            }
        }
    });
    Body::from_stream(chunks)
}

fn page_response(target: &Target, fetched: canister_http::Fetched) -> Response {
    let body = page_body(target.canister.to_text(), fetched.body, fetched.rest);
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(fetched.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    for (name, value) in &fetched.headers {
        // A header the canister wrote that HTTP cannot carry is dropped, not fatal.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if !hop_by_hop(&name) {
            h.append(name, value);
        }
    }
    let how = match fetched.verification {
        canister_http::Verification::Verified { version } => format!("verified (v{version})"),
        canister_http::Verification::Update => "update (certified reply)".to_string(),
        canister_http::Verification::Unverified => "raw (not verified)".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&how) {
        h.insert(VERIFICATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&target.canister.to_text()) {
        h.insert(CANISTER_ID, v);
    }
    r
}

/// What the browser is told when there is no page to show.
fn fetch_error(target: &Target, url: &str, e: canister_http::FetchError) -> GatewayError {
    use canister_http::FetchError as F;
    let details = e.to_string();
    match e {
        F::Verification { .. } | F::NoVerifiedBody { .. } | F::Stream { .. } => GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "response_verification_failed",
            "The canister's answer did not verify",
            format!(
                "{details}\n\nA node answered {url} for {} with content the subnet did not \
                 certify. It was not shown. Reloading may reach an honest node.",
                target.canister
            ),
        ),
        F::Decode { .. } => GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "canister_response_invalid",
            "The canister's answer is not an HTTP response",
            details,
        ),
        F::Agent { source, .. } => agent_error(*source, details),
        F::Encode(_) | F::Clock => GatewayError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "The gateway failed",
            details,
        ),
    }
}

/// The network's failure, told as the API would: the API's own error passes through with
/// its status and cause; a canister's reject and a bad node answer are named.
fn agent_error(source: AgentError, details: String) -> GatewayError {
    match source {
        AgentError::HttpError(p) => {
            let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let text = String::from_utf8_lossy(&p.content);
            let cause = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or("replica_error");
            GatewayError::new(
                status,
                cause,
                "The network could not answer",
                text.trim().to_string(),
            )
        }
        AgentError::CertifiedReject { .. } | AgentError::UncertifiedReject { .. } => {
            GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "canister_reject",
                "The canister refused the request",
                details,
            )
        }
        _ => GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "replica_error",
            "A node's answer could not be used",
            details,
        ),
    }
}

/// The boundary's router with the gateway in front: requests for a canister's host (other
/// than `/api/...`) are pages; everything else is the API.
pub fn app(gateway: Arc<Gateway>) -> Router {
    proxy::router(gateway.boundary.clone())
        .layer(axum::middleware::from_fn_with_state(gateway, dispatch))
}

async fn dispatch(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let host = request
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    match target(&host, request.uri().query(), &gw.domains) {
        Ok(Some(t)) => gw
            .page(t, peer, request)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Ok(None) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "rwlgt-iiaaa-aaaaa-aaaaa-cai";

    fn t(host: &str, query: Option<&str>) -> Result<Option<Target>, GatewayError> {
        target(host, query, &["icp.local".to_string()])
    }

    #[test]
    fn hosts_name_canisters() {
        let c = Principal::from_text(ID).unwrap();
        let verified = Some(Target {
            canister: c,
            raw: false,
        });
        let raw = Some(Target {
            canister: c,
            raw: true,
        });
        assert_eq!(t(&format!("{ID}.icp.local"), None).unwrap(), verified);
        assert_eq!(t(&format!("{ID}.ICP.local:8443"), None).unwrap(), verified);
        assert_eq!(t(&format!("{ID}.icp.local."), None).unwrap(), verified);
        assert_eq!(t(&format!("{ID}.raw.icp.local"), None).unwrap(), raw);
        assert_eq!(t(&format!("{ID}.localhost:4943"), None).unwrap(), verified);
        assert_eq!(t(&format!("{ID}.raw.localhost"), None).unwrap(), raw);
        let q = format!("a=1&canisterId={ID}");
        assert_eq!(t("localhost:4943", Some(&q)).unwrap(), verified);
        assert_eq!(t("icp.local", Some(&q)).unwrap(), verified);
    }

    #[test]
    fn other_hosts_are_the_api() {
        for host in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost",
            "icp.local",
            "example.org",
            "notlocalhost",
        ] {
            assert_eq!(t(host, None).unwrap(), None, "{host}");
        }
        // A domain that merely ends like ours is not ours.
        assert_eq!(t(&format!("{ID}.evilicp.local"), None).unwrap(), None);
    }

    #[test]
    fn a_label_that_is_no_canister_is_refused() {
        for host in ["nope.icp.local", "a.b.icp.local", "x.raw.localhost"] {
            let e = t(host, None).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{host}");
            assert_eq!(e.cause, "canister_id_invalid");
        }
        let e = t("localhost", Some("canisterId=%3Cscript%3E")).unwrap_err();
        assert_eq!(e.cause, "canister_id_invalid");
    }

    #[test]
    fn the_error_page_escapes_what_it_quotes() {
        let r = GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "x",
            "T",
            "<script>alert(1)</script>",
        );
        let page = body_text(r.into_response().into_body());
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
    }

    fn body_text(b: Body) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(b.collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
