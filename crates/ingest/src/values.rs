//! Durations and sizes as settings write them (`"10m"`, `"5GiB"`), parsed once where they are
//! read: pipeline files deserialize them, the CLI's flags parse them with `FromStr`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration such as `"30s"`, `"10m"`, `"2h"` or `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration like \"10m\" or \"2h\": {e}"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size in bytes such as `"16KiB"` or `"5GiB"`; a rate may end in `/s` (`"16KiB/s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .trim_end_matches("/s")
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("{s:?} is not a size like \"16KiB\" or \"5GiB\": {e}"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize::b(self.0).display().iec())
    }
}

macro_rules! as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

as_string!(HumanDuration);
as_string!(Size);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_written_and_round_trip() {
        let d: HumanDuration = " 10m ".parse().unwrap();
        assert_eq!(d.0, Duration::from_secs(600));
        assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        assert!("soon".parse::<HumanDuration>().is_err());
        assert_eq!("16KiB/s".parse::<Size>().unwrap(), Size(16 * 1024));
        assert_eq!(
            "5GiB"
                .parse::<Size>()
                .unwrap()
                .to_string()
                .parse::<Size>()
                .unwrap(),
            Size(5 << 30)
        );
        assert!("lots".parse::<Size>().unwrap_err().contains("\"lots\""));
    }
}
