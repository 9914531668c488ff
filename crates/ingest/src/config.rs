//! Where the platform is, who we are, and how hard to try.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::auth::{Credentials, Secret};
use crate::error::IngestError;

/// The AEP endpoints and identity used for every call.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Platform gateway, e.g. `https://platform.adobe.io`.
    pub platform_url: Url,
    /// IMS, e.g. `https://ims-na1.adobelogin.com`.
    pub ims_url: Url,
    pub org_id: String,
    pub sandbox: String,
    pub credentials: Credentials,
}

impl PlatformConfig {
    pub const DEFAULT_PLATFORM_URL: &'static str = "https://platform.adobe.io";
    pub const DEFAULT_IMS_URL: &'static str = "https://ims-na1.adobelogin.com";
    pub const DEFAULT_SCOPES: &'static str =
        "openid,AdobeID,read_organizations,additional_info.projectedProductContext,session";

    /// Checks the URLs (https, or http to loopback only) and the required fields.
    pub fn validate(&self) -> Result<(), IngestError> {
        check_url_security(&self.platform_url)?;
        check_url_security(&self.ims_url)?;
        if self.org_id.trim().is_empty() {
            return Err(IngestError::Config {
                field: "org_id",
                message: "is empty; give the IMS organization, which ends in @AdobeOrg".into(),
            });
        }
        if self.sandbox.trim().is_empty() {
            return Err(IngestError::Config {
                field: "sandbox",
                message: "is empty; give the sandbox name (e.g. prod)".into(),
            });
        }
        self.credentials.validate()
    }
}

/// Where the platform is and who we are, as a pipeline file or the command line gives it: the
/// one construction of a [`PlatformConfig`], so `validate`, `run`, `batches` and `download`
/// apply the same rules. Errors name the field as written here (`client_id`, `platform_url`);
/// each caller says where that field came from (`source.client_id`, `--client-id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformSettings {
    #[serde(default = "default_platform_url")]
    pub platform_url: String,
    #[serde(default = "default_ims_url")]
    pub ims_url: String,
    pub org_id: String,
    pub sandbox: String,
    /// OAuth server-to-server credentials.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub scopes: Option<String>,
    /// A static token instead of client credentials (testing).
    #[serde(default)]
    pub access_token: Option<Secret>,
    #[serde(default)]
    pub api_key: Option<String>,
}

fn default_platform_url() -> String {
    PlatformConfig::DEFAULT_PLATFORM_URL.into()
}
fn default_ims_url() -> String {
    PlatformConfig::DEFAULT_IMS_URL.into()
}

impl PlatformSettings {
    /// Checks everything that can be checked without the network: URLs (https, or http to
    /// loopback only), required fields, and a complete set of credentials.
    pub fn build(&self) -> Result<PlatformConfig, IngestError> {
        let url = |field: &'static str, v: &str| {
            Url::parse(v.trim()).map_err(|e| IngestError::Config {
                field,
                message: format!("{v:?} is not a URL: {e}"),
            })
        };
        let config_err = |field: &'static str, message: &str| IngestError::Config {
            field,
            message: message.into(),
        };
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let secret_set = |v: &Option<Secret>| v.as_ref().is_some_and(|s| !s.is_empty());
        let oauth = (set(&self.client_id), secret_set(&self.client_secret));
        let token = (secret_set(&self.access_token), set(&self.api_key));
        let credentials = match (oauth, token) {
            ((false, false), (true, true)) => Credentials::StaticToken {
                api_key: self.api_key.clone().unwrap_or_default(),
                token: self.access_token.clone().unwrap_or_else(|| Secret::new("")),
            },
            ((true, true), (false, false)) => Credentials::OAuth {
                client_id: self.client_id.clone().unwrap_or_default(),
                client_secret: self
                    .client_secret
                    .clone()
                    .unwrap_or_else(|| Secret::new("")),
                scopes: self
                    .scopes
                    .clone()
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| PlatformConfig::DEFAULT_SCOPES.into()),
            },
            ((true, false), _) => {
                return Err(config_err(
                    "client_secret",
                    "is missing; client_id needs it",
                ));
            }
            ((false, true), _) => {
                return Err(config_err(
                    "client_id",
                    "is missing; client_secret needs it",
                ));
            }
            (_, (true, false)) => {
                return Err(config_err("api_key", "is missing; access_token needs it"));
            }
            (_, (false, true)) => {
                return Err(config_err("access_token", "is missing; api_key needs it"));
            }
            ((true, true), (true, true)) => {
                return Err(config_err(
                    "credentials",
                    "give client_id and client_secret (OAuth) or access_token and api_key, not both",
                ));
            }
            ((false, false), (false, false)) => {
                return Err(config_err(
                    "credentials",
                    "none given: client_id and client_secret (OAuth server-to-server), or access_token and api_key",
                ));
            }
        };
        let config = PlatformConfig {
            platform_url: url("platform_url", &self.platform_url)?,
            ims_url: url("ims_url", &self.ims_url)?,
            org_id: self.org_id.trim().to_string(),
            sandbox: self.sandbox.trim().to_string(),
            credentials,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Plain http is allowed only to loopback, where nothing crosses a network.
pub(crate) fn check_url_security(url: &Url) -> Result<(), IngestError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            if crate::client::is_loopback(url) {
                Ok(())
            } else {
                Err(IngestError::InsecureUrl {
                    url: url.to_string(),
                })
            }
        }
        other => Err(IngestError::Config {
            field: "url",
            message: format!("{url} has scheme '{other}'; use https://"),
        }),
    }
}

/// Retry 429, 5xx, connection faults and cut bodies with exponential backoff and full jitter,
/// bounded by attempts and by total time.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(300),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What to do when the staged rows differ from Catalog's `metrics.outputRecordCount`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowCountCheck {
    #[default]
    Fail,
    Warn,
}

/// The most parts downloaded at once: each holds one of tokio's blocking threads (512 at most)
/// for its writer, and the rest of the pool is kept for verifying and flushing parts.
pub const MAX_CONCURRENCY: usize = 256;

/// Whether `c` parts at once is allowed; if not, why (each caller names where `c` came from).
pub fn check_concurrency(c: usize) -> Result<(), String> {
    if (1..=MAX_CONCURRENCY).contains(&c) {
        Ok(())
    } else {
        Err(format!("must be from 1 to {MAX_CONCURRENCY}"))
    }
}

#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Parts downloaded at once, 1 to [`MAX_CONCURRENCY`]. The default, 16, is the largest the
    /// download benchmark keeps within 1.25× of its limit (docs/benchmarks.md).
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// A body that sends nothing for this long is abandoned (and resumed on retry).
    pub stall_timeout: Duration,
    /// A body slower than this many bytes per second over a whole `min_speed_window` is
    /// abandoned and resumed (as curl's `--speed-limit`/`--speed-time`): a connection that
    /// dribbles a few bytes now and then never trips `stall_timeout`. 0 turns it off.
    pub min_speed: u64,
    pub min_speed_window: Duration,
    /// Bytes of staging's disk that a download must leave free.
    pub keep_free: u64,
    pub row_count_check: RowCountCheck,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            // Chosen by the download benchmark (docs/benchmarks.md).
            concurrency: 16,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            min_speed: 16 * 1024,
            min_speed_window: Duration::from_secs(30),
            keep_free: 0,
            row_count_check: RowCountCheck::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PlatformSettings {
        PlatformSettings {
            platform_url: default_platform_url(),
            ims_url: default_ims_url(),
            org_id: "x@AdobeOrg".into(),
            sandbox: "prod".into(),
            client_id: None,
            client_secret: None,
            scopes: None,
            access_token: None,
            api_key: None,
        }
    }

    fn field_of(s: &PlatformSettings) -> &'static str {
        match s.build() {
            Err(IngestError::Config { field, .. }) => field,
            Err(IngestError::InsecureUrl { .. }) => "insecure",
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn credentials_must_be_a_complete_set() {
        let token_only = PlatformSettings {
            access_token: Some(Secret::new("t")),
            ..settings()
        };
        assert_eq!(field_of(&token_only), "api_key");
        let id_only = PlatformSettings {
            client_id: Some("id".into()),
            ..settings()
        };
        assert_eq!(field_of(&id_only), "client_secret");
        assert_eq!(field_of(&settings()), "credentials");
        let both = PlatformSettings {
            client_id: Some("id".into()),
            client_secret: Some(Secret::new("s")),
            access_token: Some(Secret::new("t")),
            api_key: Some("k".into()),
            ..settings()
        };
        assert_eq!(field_of(&both), "credentials");
        let ok = PlatformSettings {
            access_token: Some(Secret::new("t")),
            api_key: Some("k".into()),
            ..settings()
        };
        assert!(ok.build().is_ok());
        let plain = PlatformSettings {
            platform_url: "http://platform.example.com".into(),
            ..ok.clone()
        };
        assert_eq!(field_of(&plain), "insecure");
        let bad_url = PlatformSettings {
            ims_url: "not a url".into(),
            ..ok
        };
        assert_eq!(field_of(&bad_url), "ims_url");
    }

    #[test]
    fn an_explicit_default_port_is_the_same_origin() {
        let a = Url::parse("https://platform.adobe.io:443/data/x").unwrap();
        let b = Url::parse("https://platform.adobe.io").unwrap();
        assert_eq!(a.origin(), b.origin());
    }

    #[test]
    fn http_only_to_loopback() {
        let ok = |s: &str| check_url_security(&Url::parse(s).unwrap()).is_ok();
        assert!(ok("https://platform.adobe.io"));
        assert!(ok("http://127.0.0.1:8080"));
        assert!(ok("http://[::1]:8080"));
        assert!(ok("http://localhost:1"));
        assert!(!ok("http://platform.adobe.io"));
        assert!(!ok("http://10.0.0.1"));
        assert!(!ok("ftp://127.0.0.1"));
    }
}
