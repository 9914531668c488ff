//! The simulated profile store (`<platform>/profiles/`): Real-Time Customer Profile records as
//! the Profile union schema exports them, for segment and export jobs. Deterministic for a seed.
//!
//! Each profile has an `identityMap` with identities in several namespaces (one marked
//! primary), `segmentMembership.ups.<segmentId>` entries in every status with
//! `lastQualificationTime` in the formats seen in the wild (`…Z`, `+0000`,
//! `2021-03-10 10:03:08`, and some that do not parse), Customer AI scores under
//! `_<tenant>.CustomerAI.<instance>`, and a few attributes. One profile in ten has events only:
//! an identity and nothing else (what `emptyProfiles` selects).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::SimError;

/// Where the store lives in a platform directory.
pub const PROFILES_DIR: &str = "profiles";
const PER_FILE: u64 = 100_000;
pub const STATUSES: [&str; 3] = ["realized", "existing", "exited"];
pub const MODELS: [&str; 2] = ["churn_risk", "purchase_propensity"];

#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// The platform directory (made by `generate`); the store goes into `profiles/` under it.
    pub platform: PathBuf,
    pub profiles: u64,
    pub segments: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileSummary {
    pub profiles: u64,
    pub segments: Vec<String>,
    pub files: Vec<PathBuf>,
}

/// The segment ids of a store with `n` segments (UUID-shaped, fixed for `seed`).
pub fn segment_ids(n: u32, seed: u64) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5e6);
    (0..n)
        .map(|_| {
            format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                rng.random::<u32>(),
                rng.random::<u16>(),
                rng.random::<u16>() & 0xfff,
                rng.random::<u16>() & 0xfff,
                rng.random::<u64>() & 0xffff_ffff_ffff
            )
        })
        .collect()
}

/// The four `lastQualificationTime` shapes, and a broken one.
fn qualification_time(rng: &mut impl Rng, base: i64) -> String {
    let t = chrono::DateTime::from_timestamp(base - rng.random_range(0..30 * 86_400), 0)
        .unwrap_or_default();
    match rng.random_range(0..20) {
        0..=9 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        10..=14 => t.format("%Y-%m-%dT%H:%M:%S+0000").to_string(),
        15..=18 => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        _ => "not a time".to_string(),
    }
}

/// One profile, as the store keeps it.
pub(crate) fn profile(i: u64, segments: &[String], tenant: &str, seed: u64) -> Value {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9) ^ i);
    let ecid = format!("{:038}", (i as u128) * 7_919 + 1_000_000_007);
    let email = format!("person{i}@example.com");
    // The primary identity: ECID for most, Email for one in four of those that have one.
    let events_only = i.is_multiple_of(10);
    let email_primary = i.is_multiple_of(4) && !events_only;
    let mut identity_map = json!({
        "ECID": [{"id": ecid, "primary": !email_primary, "authenticatedState": "ambiguous"}],
    });
    if events_only {
        // Events only: one identity, no attributes, no memberships.
        return json!({"_id": format!("p{i}"), "identityMap": identity_map});
    }
    identity_map["Email"] =
        json!([{"id": email, "primary": email_primary, "authenticatedState": "authenticated"}]);
    if i.is_multiple_of(3) {
        identity_map["Phone"] =
            json!([{"id": format!("+1555{:07}", i % 10_000_000), "primary": false}]);
    }
    let base = 1_796_000_000; // late 2026
    let mut ups = serde_json::Map::new();
    for (k, s) in segments.iter().enumerate() {
        // Each profile is in a few segments; membership thins out with the segment index.
        if rng.random_range(0..(segments.len() as u64 + k as u64 + 3)) >= 4 {
            continue;
        }
        let status = STATUSES[rng.random_range(0..STATUSES.len())];
        let mut m = json!({
            "status": status,
            "lastQualificationTime": qualification_time(&mut rng, base),
            "version": format!("{}", rng.random_range(1..20)),
        });
        if k % 5 == 0 {
            m["payload"] =
                json!({"payloadType": "number", "payloadNumberValue": rng.random_range(0..1000)});
        } else if k % 5 == 1 {
            m["payload"] = json!({"payloadType": "boolean", "payloadBooleanValue": true});
        }
        ups.insert(s.clone(), m);
    }
    let mut cai = serde_json::Map::new();
    for model in MODELS {
        if rng.random_range(0..10) < 8 {
            let score: f64 = rng.random_range(0.0..1.0);
            cai.insert(
                model.into(),
                json!({
                    "score": (score * 1e6).round() / 1e6,
                    "percentile": (score * 100.0) as i64,
                    "propensityType": "high",
                    "scoreDate": "2026-11-29",
                }),
            );
        }
    }
    let mut p = json!({
        "_id": format!("p{i}"),
        "identityMap": identity_map,
        "segmentMembership": {"ups": ups},
        "person": {"name": {"firstName": format!("First{i}"), "lastName": format!("Last{}", i % 997)}},
        "personalEmail": {"address": email},
    });
    p[tenant_field(tenant)] = json!({"CustomerAI": cai});
    p
}

/// The tenant's top-level XDM field (`_acmeretail`), whether `platform.json` writes the tenant
/// with its underscore or without.
pub fn tenant_field(tenant: &str) -> String {
    if tenant.starts_with('_') {
        tenant.to_string()
    } else {
        format!("_{tenant}")
    }
}

/// Writes the profile store into `<platform>/profiles/`, replacing one that is there.
pub fn generate_profiles(opts: &ProfileOptions) -> Result<ProfileSummary, SimError> {
    let info: crate::PlatformInfo = {
        let path = opts.platform.join("platform.json");
        let text = std::fs::read(&path).map_err(|e| SimError::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|source| SimError::Json { path, source })?
    };
    let dir = opts.platform.join(PROFILES_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| SimError::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| SimError::io(&dir, e))?;
    let segments = segment_ids(opts.segments, opts.seed);
    let mut files = Vec::new();
    let mut i = 0u64;
    while i < opts.profiles {
        let path = dir.join(format!("profiles-{:05}.jsonl", files.len()));
        let file = std::fs::File::create(&path).map_err(|e| SimError::io(&path, e))?;
        let mut w = BufWriter::new(file);
        let end = (i + PER_FILE).min(opts.profiles);
        for k in i..end {
            serde_json::to_writer(&mut w, &profile(k, &segments, &info.tenant, opts.seed))
                .map_err(|e| SimError::Generate(e.to_string()))?;
            w.write_all(b"\n").map_err(|e| SimError::io(&path, e))?;
        }
        w.flush().map_err(|e| SimError::io(&path, e))?;
        files.push(path);
        i = end;
    }
    std::fs::write(
        dir.join("segments.json"),
        serde_json::to_vec_pretty(&segments).unwrap_or_default(),
    )
    .map_err(|e| SimError::io(&dir, e))?;
    Ok(ProfileSummary {
        profiles: opts.profiles,
        segments,
        files,
    })
}

/// What a segment job finds for `segments` (`*`: all): total profiles, and per segment the
/// qualified profiles (realized or existing), by status and by the primary identity's namespace.
#[derive(Debug, Clone, Default)]
pub struct SegmentMetrics {
    pub total: u64,
    pub qualified: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, BTreeMap<String, u64>>,
    pub by_namespace: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The namespace of a profile's primary identity.
pub fn primary_namespace(p: &Value) -> Option<&str> {
    p["identityMap"].as_object()?.iter().find_map(|(ns, ids)| {
        ids.as_array()?
            .iter()
            .any(|id| id["primary"] == true)
            .then_some(ns.as_str())
    })
}

/// Streams the store once to count a segment job's metrics; `None` when there is no store.
pub fn segment_metrics(platform: &Path, segments: &[String]) -> Option<SegmentMetrics> {
    let all = segments.iter().any(|s| s == "*");
    let mut m = SegmentMetrics::default();
    for_each_profile(platform, |p| {
        m.total += 1;
        let Some(ups) = p
            .pointer("/segmentMembership/ups")
            .and_then(Value::as_object)
        else {
            return;
        };
        for (seg, entry) in ups {
            if !all && !segments.contains(seg) {
                continue;
            }
            let status = entry["status"].as_str().unwrap_or("");
            *m.by_status
                .entry(seg.clone())
                .or_default()
                .entry(status.to_string())
                .or_default() += 1;
            if status == "realized" || status == "existing" {
                *m.qualified.entry(seg.clone()).or_default() += 1;
                let ns = primary_namespace(p).unwrap_or("unknown");
                *m.by_namespace
                    .entry(seg.clone())
                    .or_default()
                    .entry(ns.to_string())
                    .or_default() += 1;
            }
        }
    })
    .ok()?;
    Some(m)
}

/// Calls `f` with each profile of the store, in order, reading one line at a time.
pub fn for_each_profile(platform: &Path, mut f: impl FnMut(&Value)) -> Result<(), SimError> {
    let dir = platform.join(PROFILES_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| SimError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for path in files {
        let file = std::fs::File::open(&path).map_err(|e| SimError::io(&path, e))?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| SimError::io(&path, e))?;
            let v: Value = serde_json::from_str(&line).map_err(|source| SimError::Json {
                path: path.clone(),
                source,
            })?;
            f(&v);
        }
    }
    Ok(())
}

/// Every profile of a store, in order (for the simulator's jobs, and for tests' truth).
pub fn read_profiles(platform: &Path) -> Result<Vec<Value>, SimError> {
    let mut out = Vec::new();
    for_each_profile(platform, |p| out.push(p.clone()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_deterministic_and_varied() {
        let segs = segment_ids(5, 3);
        assert_eq!(segs, segment_ids(5, 3));
        let a = profile(7, &segs, "acme", 3);
        assert_eq!(a, profile(7, &segs, "acme", 3));
        let events_only = profile(10, &segs, "acme", 3);
        assert!(events_only.get("segmentMembership").is_none());
        // Over many profiles: every status and every time format turns up.
        let all: Vec<Value> = (0..400).map(|i| profile(i, &segs, "acme", 3)).collect();
        let memberships: Vec<&Value> = all
            .iter()
            .filter_map(|p| p.pointer("/segmentMembership/ups")?.as_object())
            .flat_map(|m| m.values())
            .collect();
        for s in STATUSES {
            assert!(memberships.iter().any(|m| m["status"] == s), "{s}");
        }
        let times: Vec<&str> = memberships
            .iter()
            .filter_map(|m| m["lastQualificationTime"].as_str())
            .collect();
        assert!(times.iter().any(|t| t.ends_with('Z')));
        assert!(times.iter().any(|t| t.ends_with("+0000")));
        assert!(times.iter().any(|t| t.len() == 19 && t.contains(' ')));
        assert!(times.contains(&"not a time"));
        // Exactly one primary identity per profile.
        for p in &all {
            let primaries = p["identityMap"]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|ids| ids.as_array().unwrap())
                .filter(|id| id["primary"] == true)
                .count();
            assert_eq!(primaries, 1, "{p}");
        }
    }
}
