//! Where the platform is, who we are, and how hard to try.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::auth::Credentials;
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
            row_count_check: RowCountCheck::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
