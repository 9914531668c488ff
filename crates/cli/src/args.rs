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
