//! The HTTP client for Platform calls: the four AEP headers, the origin rule, token renewal on
//! 401, error bodies in every AEP style, and bounded retries with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::auth::TokenCache;
use crate::config::{DownloadOptions, PlatformConfig, check_url_security};
use crate::error::IngestError;

/// A client for one platform org and sandbox. Cheap to clone; clones share the token cache.
#[derive(Debug, Clone)]
pub struct AepClient {
    pub(crate) http: reqwest::Client,
    pub(crate) config: Arc<PlatformConfig>,
    pub(crate) options: DownloadOptions,
    tokens: TokenCache,
    pub(crate) retries: Arc<AtomicU64>,
    pub(crate) jitter: Arc<AtomicU64>,
}

impl AepClient {
    pub fn new(config: PlatformConfig, options: DownloadOptions) -> Result<Self, IngestError> {
        config.validate()?;
        crate::config::check_concurrency(options.concurrency).map_err(|message| {
            IngestError::Config {
                field: "concurrency",
                message,
            }
        })?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("scoreland/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.stall_timeout)
            // One TCP connection per part in flight. Over HTTP/2 the gateway may put every
            // parallel part on one connection, whose flow-control window (hyper's default is
            // 5 MiB) then caps the whole batch at one connection's throughput; separate
            // HTTP/1.1 connections each get a window of their own (docs/benchmarks.md).
            .http1_only()
            // Redirects could carry the token elsewhere; AEP does not redirect these calls.
            .redirect(reqwest::redirect::Policy::none());
        if is_loopback(&config.platform_url) && is_loopback(&config.ims_url) {
            // A proxy from HTTP_PROXY/HTTPS_PROXY must never see the token or the client secret
            // meant for a platform on this machine.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| IngestError::Config {
            field: "http client",
            message: e.to_string(),
        })?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        Ok(AepClient {
            http,
            config: Arc::new(config),
            options,
            tokens: TokenCache::new(),
            retries: Arc::new(AtomicU64::new(0)),
            jitter: Arc::new(AtomicU64::new(seed | 1)),
        })
    }

    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }

    /// Retries made so far by this client and its clones.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// A Platform URL from a path such as `/data/foundation/catalog/batches`.
    pub(crate) fn url(&self, path: &str) -> Result<Url, IngestError> {
        self.config
            .platform_url
            .join(path)
            .map_err(|e| IngestError::Config {
                field: "platform_url",
                message: e.to_string(),
            })
    }

    /// Every URL we send the token to must be on the platform origin (hrefs in listings are
    /// followed only after this check).
    pub(crate) fn check_origin(&self, url: &Url) -> Result<(), IngestError> {
        check_url_security(url)?;
        if url.origin() != self.config.platform_url.origin() {
            return Err(IngestError::ForeignOrigin {
                url: url.to_string(),
                expected: self.config.platform_url.origin().ascii_serialization(),
            });
        }
        Ok(())
    }

    /// One request with the AEP headers; renews the token and repeats once after a 401 (or a
    /// 403 `403010`, token missing). Non-success statuses become [`IngestError::Status`].
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        extra: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, IngestError> {
        self.check_origin(url)?;
        let cfg = &self.config;
        let attempt = |token: &str| {
            let req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token)
                .header("x-api-key", cfg.credentials.api_key())
                .header("x-gw-ims-org-id", &cfg.org_id)
                .header("x-sandbox-name", &cfg.sandbox)
                .header("accept", "application/json");
            extra(req).send()
        };
        let method_name = method_name(&method);
        let transport = |source: reqwest::Error| IngestError::Http {
            method: method_name,
            url: url.to_string(),
            source: source.without_url(),
        };
        let (token, generation) = self
            .tokens
            .get(&self.http, &cfg.ims_url, &cfg.credentials)
            .await?;
        let resp = attempt(token.expose()).await.map_err(transport)?;
        let resp = match self.refused_token(resp, method_name, url).await? {
            Ok(resp) => return Ok(resp),
            Err(()) => {
                tracing::info!(url = %url, "token refused; renewing it once");
                self.tokens.invalidate(generation).await;
                let (token, _) = self
                    .tokens
                    .get(&self.http, &cfg.ims_url, &cfg.credentials)
                    .await?;
                attempt(token.expose()).await.map_err(transport)?
            }
        };
        match self.refused_token(resp, method_name, url).await? {
            Ok(resp) => Ok(resp),
            Err(()) => Err(IngestError::Status {
                method: method_name,
                url: url.to_string(),
                status: 401,
                code: Some("401013".into()),
                message: "the token was refused again right after renewal".into(),
                retry_after: None,
            }),
        }
    }

    /// `Ok(Ok(resp))` for a success, `Ok(Err(()))` when the token was refused, and the error
    /// for any other failure status.
    async fn refused_token(
        &self,
        resp: Response,
        method: &'static str,
        url: &Url,
    ) -> Result<Result<Response, ()>, IngestError> {
        let status = resp.status();
        if status.is_success() || status == StatusCode::PARTIAL_CONTENT {
            return Ok(Ok(resp));
        }
        if status == StatusCode::UNAUTHORIZED {
            return Ok(Err(()));
        }
        let err = status_error(resp, method, url).await;
        if let IngestError::Status {
            status: 403,
            code: Some(code),
            ..
        } = &err
            && code == "403010"
        {
            return Ok(Err(()));
        }
        Err(err)
    }

    /// GET a JSON document, with retries.
    pub(crate) async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T, IngestError> {
        self.with_retry(url.as_str(), |_| {
            self.call_json(Method::GET, url, None, &[])
        })
        .await
    }

    /// One request with an optional JSON body and extra headers (which replace the defaults,
    /// e.g. `accept`), without retries: the caller decides what may be repeated. An empty
    /// answer (204) reads as `null`.
    pub(crate) async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        headers: &[(&'static str, &str)],
    ) -> Result<T, IngestError> {
        let name = method_name(&method);
        let mut replaced = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(v) {
                replaced.insert(*k, v);
            }
        }
        let resp = self
            .send(method, url, |r| {
                let r = r.headers(replaced.clone());
                match body {
                    Some(b) => r
                        .header("content-type", "application/json")
                        .body(b.to_string()),
                    None => r,
                }
            })
            .await?;
        let body = read_capped(resp, name, url).await?;
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &body
        };
        serde_json::from_slice(body).map_err(|source| IngestError::Json {
            url: url.to_string(),
            source,
        })
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "REQUEST",
    }
}

/// The most of a JSON document or an error body read into memory. Catalog pages and listings
/// are kilobytes; anything near this is not an answer we can use.
pub(crate) const MAX_BODY: u64 = 16 << 20;

/// Reads a whole response body of at most [`MAX_BODY`] bytes.
pub(crate) async fn read_capped(
    mut resp: Response,
    method: &'static str,
    url: &Url,
) -> Result<Vec<u8>, IngestError> {
    let too_large = |size: u64| IngestError::BodyTooLarge {
        url: url.path().to_string(),
        size,
        limit: MAX_BODY,
    };
    if let Some(len) = resp.content_length()
        && len > MAX_BODY
    {
        return Err(too_large(len));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| IngestError::Http {
        method,
        url: url.to_string(),
        source: source.without_url(),
    })? {
        if (body.len() + chunk.len()) as u64 > MAX_BODY {
            return Err(too_large((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether a URL's host is this machine.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Reads an error response in any of AEP's body styles (RFC 7807 problem details, or the
/// older `error_code`/`message` bodies).
pub(crate) async fn status_error(resp: Response, method: &'static str, url: &Url) -> IngestError {
    let status = resp.status();
    let retry_after = retry_after_header(&resp);
    // An error body is only read for its description: a short one is enough.
    let body = read_capped(resp, method, url).await.unwrap_or_default();
    let (code, message) = describe_error_body(&body);
    IngestError::Status {
        method,
        url: url.to_string(),
        status: status.as_u16(),
        code,
        message: message.unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("no description")
                .to_string()
        }),
        retry_after,
    }
}

fn describe_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(200)
            .collect::<String>();
        return (None, (!text.is_empty()).then_some(text));
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    if let Some(code) = s("error_code") {
        return (Some(code), s("message"));
    }
    if let Some(title) = s("title") {
        let code = s("type").and_then(|t| t.rsplit('/').next().map(str::to_string));
        let message = match s("detail") {
            Some(d) => format!("{title}: {d}"),
            None => title,
        };
        return (code, Some(message));
    }
    if let Some(m) = s("errorMessage") {
        return (None, Some(m));
    }
    if let Some(e) = s("error") {
        return (Some(e), s("error_description"));
    }
    if let Some(m) = s("message") {
        return (None, Some(m));
    }
    (None, None)
}

/// The delay a response's `Retry-After` asks for, if it has a usable one.
pub(crate) fn retry_after_header(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// `Retry-After` is integer seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let wait = when.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(wait.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            describe_error_body(br#"{"error_code":"401013","message":"Oauth token is not valid"}"#),
            (
                Some("401013".into()),
                Some("Oauth token is not valid".into())
            )
        );
        assert_eq!(
            describe_error_body(
                br#"{"type":"http://ns.adobe.com/aep/errors/CAT-1400-400","title":"Bad Request","status":400,"detail":"limit"}"#
            ),
            (Some("CAT-1400-400".into()), Some("Bad Request: limit".into()))
        );
        assert_eq!(describe_error_body(b""), (None, None));
        assert_eq!(
            describe_error_body(br#"{"message":"Export job has been marked for cancelling"}"#),
            (
                None,
                Some("Export job has been marked for cancelling".into())
            )
        );
        assert_eq!(
            describe_error_body(br#"{"errorMessage":"stale etag"}"#),
            (None, Some("stale etag".into()))
        );
    }
}
