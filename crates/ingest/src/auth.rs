//! Credentials and the IMS token cache.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::IngestError;

/// A string that never prints: `Debug` shows `Secret(***)` and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for the one place it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

/// Read from configuration like a plain string.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Written as `***`: a secret never reaches a file we write.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How we prove who we are.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// OAuth server-to-server: client credentials exchanged at IMS for a token.
    OAuth {
        client_id: String,
        client_secret: Secret,
        scopes: String,
    },
    /// A token obtained elsewhere (testing); never renewed.
    StaticToken { api_key: String, token: Secret },
}

impl Credentials {
    /// The `x-api-key` header: the client id.
    pub fn api_key(&self) -> &str {
        match self {
            Credentials::OAuth { client_id, .. } => client_id,
            Credentials::StaticToken { api_key, .. } => api_key,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), IngestError> {
        let missing = |field: &'static str| IngestError::Config {
            field,
            message: "is empty".into(),
        };
        match self {
            Credentials::OAuth {
                client_id,
                client_secret,
                ..
            } => {
                if client_id.trim().is_empty() {
                    return Err(missing("client_id"));
                }
                if client_secret.is_empty() {
                    return Err(missing("client_secret"));
                }
            }
            Credentials::StaticToken { api_key, token } => {
                if api_key.trim().is_empty() {
                    return Err(missing("api_key"));
                }
                if token.is_empty() {
                    return Err(missing("access_token"));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: Secret,
    renew_at: Instant,
    generation: u64,
}

/// Hands out a valid token, renewing it ahead of expiry and on demand after a 401. Concurrent
/// callers share one renewal.
#[derive(Debug, Clone)]
pub(crate) struct TokenCache {
    inner: Arc<Mutex<Option<CachedToken>>>,
}

/// Renew this long before IMS says the token expires (aepp uses 500 s).
const RENEW_MARGIN: Duration = Duration::from_secs(300);

/// A token is renewed at least this often, whatever `expires_in` says (IMS gives 24 hours).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds (server-to-server); the legacy JWT exchange used milliseconds.
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenCache {
    pub(crate) fn new() -> Self {
        TokenCache {
            inner: Arc::new(Mutex::new(None)),
        }
    }

    /// A token and its generation (pass the generation to [`Self::invalidate`] after a 401).
    pub(crate) async fn get(
        &self,
        http: &reqwest::Client,
        ims: &url::Url,
        credentials: &Credentials,
    ) -> Result<(Secret, u64), IngestError> {
        let mut guard = self.inner.lock().await;
        if let Some(t) = guard.as_ref()
            && (Instant::now() < t.renew_at
                || matches!(credentials, Credentials::StaticToken { .. }))
        {
            return Ok((t.token.clone(), t.generation));
        }
        let generation = guard.as_ref().map(|t| t.generation + 1).unwrap_or(0);
        let (token, lifetime) = match credentials {
            Credentials::StaticToken { token, .. } => (token.clone(), MAX_TOKEN_LIFETIME),
            Credentials::OAuth {
                client_id,
                client_secret,
                scopes,
            } => fetch_token(http, ims, client_id, client_secret, scopes).await?,
        };
        // `expires_in` comes from the network: a huge value must not overflow the clock.
        let now = Instant::now();
        let renew_in = lifetime
            .saturating_sub(RENEW_MARGIN.min(lifetime / 2))
            .min(MAX_TOKEN_LIFETIME);
        let renew_at = now.checked_add(renew_in).unwrap_or(now);
        *guard = Some(CachedToken {
            token: token.clone(),
            renew_at,
            generation,
        });
        Ok((token, generation))
    }

    /// Forget the token of `generation` (it was refused); a newer one is kept.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut guard = self.inner.lock().await;
        if let Some(t) = guard.as_mut()
            && t.generation == generation
        {
            t.renew_at = Instant::now();
        }
    }
}

async fn fetch_token(
    http: &reqwest::Client,
    ims: &url::Url,
    client_id: &str,
    client_secret: &Secret,
    scopes: &str,
) -> Result<(Secret, Duration), IngestError> {
    let url = ims.join("/ims/token/v3").map_err(|e| IngestError::Config {
        field: "ims_url",
        message: e.to_string(),
    })?;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", client_secret.expose()),
        ("scope", scopes),
    ];
    let resp = http
        .post(url.clone())
        .form(&form)
        .send()
        .await
        .map_err(|source| IngestError::Http {
            method: "POST",
            url: url.to_string(),
            source: source.without_url(),
        })?;
    let status = resp.status();
    let retry_after = crate::client::retry_after_header(&resp);
    let body = crate::client::read_capped(resp, "POST", &url).await?;
    if !status.is_success() {
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(IngestError::Status {
                method: "POST",
                url: url.to_string(),
                status: status.as_u16(),
                code: None,
                message: "IMS is unavailable".into(),
                retry_after,
            });
        }
        let err: OAuthError = serde_json::from_slice(&body).unwrap_or_default();
        return Err(IngestError::Auth {
            status: status.as_u16(),
            error: err.error,
            description: err.error_description,
        });
    }
    let token: TokenResponse =
        serde_json::from_slice(&body).map_err(|source| IngestError::Json {
            url: url.to_string(),
            source,
        })?;
    Ok((
        Secret::new(token.access_token),
        Duration::from_secs(token.expires_in),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials::OAuth {
            client_id: "id".into(),
            client_secret: Secret::new("hunter2"),
            scopes: "openid".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
    }
}
