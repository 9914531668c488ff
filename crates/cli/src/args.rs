//! Parsers for human-friendly argument values: durations (`30s`), sizes (`1GiB`) and rates
//! (`25MiB/s`).

use std::time::Duration;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 30s or 50ms: {e}"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("'{s}' is not a size like 512MiB or 2GiB: {e}"))
}

pub fn parse_rate(s: &str) -> Result<u64, String> {
    let size = s.strip_suffix("/s").unwrap_or(s);
    size.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("'{s}' is not a rate like 25MiB/s: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations() {
        assert_eq!(parse_rate("25MiB/s").unwrap(), 25 * 1024 * 1024);
        assert_eq!(parse_rate("1000").unwrap(), 1000);
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
    }
}

/// `--warehouse` (or `SCORELAND_WAREHOUSE`): where the tables are, for every command that reads
/// or tidies them.
#[derive(Debug, Clone, clap::Args)]
pub struct WarehouseArg {
    /// Warehouse URL or path.
    #[arg(
        long = "warehouse",
        env = "SCORELAND_WAREHOUSE",
        default_value = "warehouse"
    )]
    pub url: String,
}

impl WarehouseArg {
    /// The warehouse for reading (nothing is written to check it).
    pub fn open(&self) -> Result<scoreland_sink::Warehouse, crate::Failure> {
        self.config().open().map_err(crate::usage)
    }

    /// The warehouse for writing: checked to be writable first.
    pub async fn build(&self) -> Result<scoreland_sink::Warehouse, crate::Failure> {
        self.config().build().await.map_err(crate::usage)
    }

    fn config(&self) -> scoreland_sink::SinkConfig {
        scoreland_sink::SinkConfig {
            url: self.url.clone(),
            options: Default::default(),
            single_writer: false,
        }
    }
}
