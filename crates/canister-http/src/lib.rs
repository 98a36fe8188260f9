//! The HTTP gateway protocol, client side: what a gateway does between a browser and a
//! canister.
//!
//! 1. The request becomes a `http_request` query (asking for certificate version 2).
//! 2. If the canister answers `upgrade = true`, the request is sent again as the update
//!    `http_request_update`; its answer is certified by the call's own certificate, which
//!    the agent checks.
//! 3. A query's answer is checked with `ic-response-verification` against the root key the
//!    agent holds; only the verified body is returned. [`Mode::Raw`] skips this step, as a
//!    gateway's `raw` domain does, and says so in [`Fetched::verification`].
//!
//! A failed check is an error ([`FetchError::Verification`]): there is no way to get the
//! body of an answer that did not verify in verified mode.
//!
//! A large body comes in chunks (the answer's streaming strategy): [`Fetched::rest`] fetches
//! the others, checked as they pass against the hash the certificate holds ([`stream`]).
//!
//! ```no_run
//! # async fn f(agent: ic_agent::Agent) -> Result<(), canister_http::FetchError> {
//! let canister = ic_principal::Principal::from_text("rwlgt-iiaaa-aaaaa-aaaaa-cai").unwrap();
//! let request = canister_http::get("/index.html");
//! let page = canister_http::fetch(&agent, &canister, request, canister_http::Mode::Verified).await?;
//! assert!(matches!(page.verification, canister_http::Verification::Verified { .. }));
//! # Ok(()) }
//! ```

pub mod stream;

use candid::{Decode, Encode};
use ic_agent::{Agent, AgentError};
use ic_http_certification::{HttpRequest, HttpResponse};
use ic_principal::Principal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use ic_http_certification::Method;

/// How far a certificate's time may be from ours (gateways allow five minutes).
pub const MAX_CERT_AGE: Duration = Duration::from_secs(300);

/// Whether the answer must verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Verified,
    /// No response verification (a gateway's `raw` domain): the body is what one node said.
    Raw,
}

/// What vouches for a [`Fetched`] body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Response verification accepted it (version 1 certifies the body, 2 also the status
    /// and chosen headers).
    Verified { version: u16 },
    /// An `http_request_update` answer: certified as the call's reply.
    Update,
    /// Not checked ([`Mode::Raw`]).
    Unverified,
}

/// A canister's HTTP answer.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, or its first chunk when `rest` is set.
    pub body: Vec<u8>,
    /// The chunks still to come of a streamed body.
    pub rest: Option<stream::Rest>,
    pub verification: Verification,
}

/// Why a canister's page could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("encoding the HTTP request as Candid: {0}")]
    Encode(candid::Error),
    #[error("{canister}'s `{method}` failed: {source}")]
    Agent {
        canister: Principal,
        method: &'static str,
        source: Box<AgentError>,
    },
    #[error("{canister}'s `{method}` answer is no HttpResponse: {source}")]
    Decode {
        canister: Principal,
        method: &'static str,
        source: candid::Error,
    },
    #[error("the answer for {path} from {canister} failed response verification: {source}")]
    Verification {
        canister: Principal,
        path: String,
        source: Box<ic_response_verification::ResponseVerificationError>,
    },
    #[error("the answer for {path} from {canister} verified but carries no body")]
    NoVerifiedBody { canister: Principal, path: String },
    #[error("the streamed answer for {path} from {canister}: {why}")]
    Stream {
        canister: Principal,
        path: String,
        why: String,
    },
    #[error("the system clock is before 1970")]
    Clock,
}

/// A streamed body whose other chunks must be had before it can be checked (version 2
/// hashes the body with the status and headers) is held up to this size.
pub const MAX_BUFFERED_BODY: usize = 16 << 20;

/// A `GET` of `url` (a path with an optional query) and no headers.
pub fn get(url: &str) -> HttpRequest<'static> {
    request(Method::GET, url, Vec::new(), Vec::new())
}

/// An HTTP request as the canister will see it.
pub fn request(
    method: Method,
    url: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> HttpRequest<'static> {
    HttpRequest::builder()
        .with_method(method)
        .with_url(url)
        .with_headers(headers)
        .with_body(body)
        .with_certificate_version(2)
        .build()
}

/// Ask `canister` for `request`'s answer and check it as `mode` says.
pub async fn fetch(
    agent: &Agent,
    canister: &Principal,
    request: HttpRequest<'static>,
    mode: Mode,
) -> Result<Fetched, FetchError> {
    let arg = Encode!(&request).map_err(FetchError::Encode)?;
    let reply = agent
        .query(canister, "http_request")
        .with_arg(arg)
        .call()
        .await
        .map_err(|source| agent_error(canister, "http_request", source))?;
    let (response, stream) = decode_answer(canister, &reply)?;
    if response.upgrade() == Some(true) {
        return update(agent, canister, request).await;
    }
    if let Some((method, token)) = stream {
        return streamed(agent, canister, request, response, method, token, mode).await;
    }
    match mode {
        Mode::Raw => Ok(Fetched::as_answered(&response, Verification::Unverified)),
        Mode::Verified => verify(agent, canister, request, response),
    }
}

/// The callback method and first token of an answer that streams its body.
type Stream = (String, ic_utils::interfaces::http_request::Token);

/// An `http_request` answer, decoded once: the response as the verifier takes it, and its
/// streaming callback if it has one (a callback on another canister is refused: the gateway
/// asks only the canister it was sent to).
fn decode_answer(
    canister: &Principal,
    reply: &[u8],
) -> Result<(HttpResponse<'static>, Option<Stream>), FetchError> {
    use ic_utils::interfaces::http_request::{
        HttpRequestStreamingCallbackAny, HttpResponse as AnyResponse, StreamingStrategy, Token,
    };
    let decode = |source| decode_error(canister, "http_request", source);
    let any =
        Decode!(reply, AnyResponse<Token, HttpRequestStreamingCallbackAny>).map_err(decode)?;
    let stream = match any.streaming_strategy {
        None => None,
        Some(StreamingStrategy::Callback(c)) if c.callback.0.principal == *canister => {
            Some((c.callback.0.method, c.token))
        }
        Some(StreamingStrategy::Callback(c)) => {
            return Err(FetchError::Stream {
                canister: *canister,
                path: String::new(),
                why: format!(
                    "its streaming callback is on another canister ({})",
                    c.callback.0.principal
                ),
            })
        }
    };
    let status = ic_http_certification::StatusCode::from_u16(any.status_code).map_err(|e| {
        decode(candid::Error::msg(format!(
            "status code {}: {e}",
            any.status_code
        )))
    })?;
    let headers = any
        .headers
        .into_iter()
        .map(|h| (h.0.into_owned(), h.1.into_owned()))
        .collect();
    let mut response = HttpResponse::builder()
        .with_status_code(status)
        .with_headers(headers)
        .with_body(any.body);
    if let Some(upgrade) = any.upgrade {
        response = response.with_upgrade(upgrade);
    }
    Ok((response.build(), stream))
}

/// A body in chunks: in verified mode, a version 1 answer is checked as it streams; any
/// other is gathered (up to [`MAX_BUFFERED_BODY`]) and verified whole.
async fn streamed(
    agent: &Agent,
    canister: &Principal,
    request: HttpRequest<'static>,
    response: HttpResponse<'static>,
    method: String,
    token: ic_utils::interfaces::http_request::Token,
    mode: Mode,
) -> Result<Fetched, FetchError> {
    let path = url_path(request.url());
    let broken = |why: String| FetchError::Stream {
        canister: *canister,
        path: path.clone(),
        why,
    };
    // The raw domain checks nothing, so it reads no certificate either.
    let header = match mode {
        Mode::Raw => None,
        Mode::Verified => response
            .headers()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("ic-certificate"))
            .map(|(_, v)| stream::parse_header(v))
            .transpose()
            .map_err(|e| broken(format!("IC-Certificate: {e}")))?,
    };
    let (expected, verification) = match (mode, header) {
        (Mode::Raw, _) => (None, Verification::Unverified),
        (Mode::Verified, Some(h)) if h.version == 1 => (
            Some(stream::check_v1(agent, canister, &h, &path).map_err(broken)?),
            Verification::Verified { version: 1 },
        ),
        (Mode::Verified, _) => {
            let first = response.body().to_vec();
            let rest = stream::Rest::new(agent, *canister, method, token, &first, None, path);
            let body = rest.collect(first, MAX_BUFFERED_BODY).await?;
            let whole = HttpResponse::builder()
                .with_status_code(response.status_code())
                .with_headers(response.headers().to_vec())
                .with_body(body)
                .build();
            return verify(agent, canister, request, whole);
        }
    };
    let first = response.body().to_vec();
    let rest = stream::Rest::new(agent, *canister, method, token, &first, expected, path);
    Ok(Fetched {
        status: response.status_code().as_u16(),
        headers: response.headers().to_vec(),
        body: first,
        rest: Some(rest),
        verification,
    })
}

/// The path of a request URL, percent-decoded, without its query (what version 1 looks up).
fn url_path(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

impl Fetched {
    /// The answer as the canister gave it, vouched for by `verification`.
    fn as_answered(response: &HttpResponse<'_>, verification: Verification) -> Fetched {
        Fetched {
            status: response.status_code().as_u16(),
            headers: response.headers().to_vec(),
            body: response.body().to_vec(),
            rest: None,
            verification,
        }
    }
}

/// The update path: the canister asked for its request to go through consensus.
async fn update(
    agent: &Agent,
    canister: &Principal,
    request: HttpRequest<'static>,
) -> Result<Fetched, FetchError> {
    let update = HttpRequest::builder()
        .with_method(request.method().clone())
        .with_url(request.url())
        .with_headers(request.headers().to_vec())
        .with_body(request.body().to_vec())
        .build_update();
    let arg = Encode!(&update).map_err(FetchError::Encode)?;
    let reply = agent
        .update(canister, "http_request_update")
        .with_arg(arg)
        .call_and_wait()
        .await
        .map_err(|source| agent_error(canister, "http_request_update", source))?;
    let response = Decode!(&reply, HttpResponse<'static>)
        .map_err(|source| decode_error(canister, "http_request_update", source))?;
    Ok(Fetched::as_answered(&response, Verification::Update))
}

fn verify(
    agent: &Agent,
    canister: &Principal,
    request: HttpRequest<'static>,
    response: HttpResponse<'static>,
) -> Result<Fetched, FetchError> {
    let path = request.url().to_string();
    // Version 1 certifies the body only, so the canister's headers go with it (as on the
    // IC); from version 2 on only what was certified is served.
    let headers = response.headers().to_vec();
    let status = response.status_code().as_u16();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| FetchError::Clock)?;
    let info = ic_response_verification::verify_request_response_pair(
        request,
        response,
        canister.as_slice(),
        now.as_nanos(),
        MAX_CERT_AGE.as_nanos(),
        &agent.read_root_key(),
        ic_response_verification::MIN_VERIFICATION_VERSION,
    )
    .map_err(|source| FetchError::Verification {
        canister: *canister,
        path: path.clone(),
        source: Box::new(source),
    })?;
    let verified = info.response.ok_or(FetchError::NoVerifiedBody {
        canister: *canister,
        path,
    })?;
    let (status, headers) = match verified.status_code {
        Some(status) if info.verification_version >= 2 => (status, verified.headers),
        _ => (status, headers),
    };
    Ok(Fetched {
        status,
        headers,
        body: verified.body,
        rest: None,
        verification: Verification::Verified {
            version: info.verification_version,
        },
    })
}

fn agent_error(canister: &Principal, method: &'static str, source: AgentError) -> FetchError {
    FetchError::Agent {
        canister: *canister,
        method,
        source: Box::new(source),
    }
}

fn decode_error(canister: &Principal, method: &'static str, source: candid::Error) -> FetchError {
    FetchError::Decode {
        canister: *canister,
        method,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_utils::interfaces::http_request::{
        CallbackStrategy, HttpRequestStreamingCallback, HttpResponse as Answer, StreamingStrategy,
    };

    fn answer(callback_on: Principal) -> Vec<u8> {
        let a: Answer<u64, HttpRequestStreamingCallback<u64>> = Answer {
            status_code: 200,
            headers: Vec::new(),
            body: b"first".to_vec(),
            streaming_strategy: Some(StreamingStrategy::Callback(CallbackStrategy {
                callback: candid::Func {
                    principal: callback_on,
                    method: "next_chunk".into(),
                }
                .into(),
                token: 1,
            })),
            upgrade: None,
        };
        Encode!(&a).unwrap()
    }

    #[test]
    fn a_streaming_callback_must_be_the_canisters_own() {
        let me = Principal::from_slice(&[1; 10]);
        let (response, stream) = decode_answer(&me, &answer(me)).unwrap();
        assert_eq!(response.body(), b"first");
        let (method, _) = stream.unwrap();
        assert_eq!(method, "next_chunk");
        let other = Principal::from_slice(&[2; 10]);
        let e = decode_answer(&me, &answer(other)).unwrap_err().to_string();
        assert!(e.contains("on another canister"), "{e}");
    }

    #[test]
    fn paths_are_decoded_as_version_1_looks_them_up() {
        assert_eq!(url_path("/a%20b/c.txt?x=%41#top"), "/a b/c.txt");
        assert_eq!(url_path("/100%"), "/100%");
    }
}
