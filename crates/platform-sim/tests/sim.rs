//! The simulator answered as AEP does (docs/simulator.md lists where it differs), and the
//! generator's output.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use reqwest::StatusCode;
use scoreland_platform_sim::{
    ErrorBodyStyle, Fault, GenerateOptions, GenerateSummary, Route, SimConfig, SimHandle,
};
use serde_json::Value;

/// reqwest's `json` feature is left off (it would rebuild object_store and DataFusion).
trait JsonValue {
    async fn json_value(self) -> Result<Value, String>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<Value, String> {
        let bytes = self.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    sim: SimHandle,
    summary: GenerateSummary,
    http: reqwest::Client,
    token: String,
}

async fn env_with(rows: u64, parts: u32, config: SimConfig) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p");
    let summary = scoreland_platform_sim::generate(&GenerateOptions {
        out: out.clone(),
        rows,
        parts,
        batches: 3,
        seed: 11,
        ..Default::default()
    })
    .unwrap();
    let sim = scoreland_platform_sim::serve_dir(&out, config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // A fresh connection per request: faults cut connections on purpose, and a pooled
    // connection the server just closed would make the next request fail at random.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let info = &sim.platform().info;
    let resp: Value = http
        .post(format!("{}/ims/token/v3", sim.ims_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", info.client_id.as_str()),
            ("client_secret", info.client_secret.as_str()),
            ("scope", "openid,AdobeID,read_organizations"),
        ])
        .send()
        .await
        .unwrap()
        .json_value()
        .await
        .unwrap();
    let token = resp["access_token"].as_str().unwrap().to_string();
    Env {
        _tmp: tmp,
        sim,
        summary,
        http,
        token,
    }
}

async fn env() -> Env {
    env_with(300, 3, SimConfig::default()).await
}

impl Env {
    fn req(&self, url: &str) -> reqwest::RequestBuilder {
        let info = &self.sim.platform().info;
        self.http
            .get(url)
            .header("Authorization", format!("Bearer {}", self.token))
            .header("x-api-key", &info.client_id)
            .header("x-gw-ims-org-id", &info.org_id)
            .header("x-sandbox-name", "prod")
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }
    async fn json(&self, path: &str) -> Value {
        let resp = self.req(&self.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.json_value().await.unwrap()
    }
    fn newest_scoring(&self) -> &scoreland_platform_sim::generate::GeneratedBatch {
        self.summary
            .batches
            .iter()
            .filter(|b| b.created_client == "acp_foundation_push" && b.status == "success")
            .max_by_key(|b| b.created)
            .unwrap()
    }
}

mod seed_001 {
    use super::*;

    /// The five requests of Adobe's "Download scores" guide, as written.
    #[tokio::test]
    async fn the_five_requests_get_the_documented_shapes() {
        let env = env().await;
        let ds = &env.summary.dataset_id;
        // 1. The newest successful scoring batch.
        let batches = env
            .json(&format!("/data/foundation/catalog/batches?dataSet={ds}&createdClient=acp_foundation_push&status=success&orderBy=desc:created&limit=1"))
            .await;
        let map = batches.as_object().unwrap();
        assert_eq!(map.len(), 1);
        let (id, batch) = map.iter().next().unwrap();
        assert_eq!(id, &env.newest_scoring().id);
        assert_eq!(batch["status"], "success");
        assert_eq!(batch["id"], id.as_str());
        assert_eq!(batch["createdClient"], "acp_foundation_push");
        assert_eq!(batch["inputFormat"]["format"], "parquet");
        assert_eq!(batch["metrics"]["outputRecordCount"], 300);
        assert!(batch["metrics"]["outputByteSize"].as_u64().unwrap() > 0);
        assert_eq!(batch["replay"]["predecessorListingType"], "IMMEDIATE");
        assert_eq!(batch["replay"]["predecessors"].as_array().unwrap().len(), 1);
        assert!(
            batch["relatedObjects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["type"] == "dataSet" && o["id"] == ds.as_str())
        );
        for k in ["created", "started", "completed", "updated"] {
            assert!(batch[k].is_i64(), "{k}");
        }
        // 2. The batch's dataSetFiles.
        let files = env
            .json(&format!("/data/foundation/export/batches/{id}/files"))
            .await;
        let data = files["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["dataSetFileId"], format!("{id}-1"));
        for k in ["created", "updated", "records", "size"] {
            assert!(data[0][k].is_string(), "{k} is a string in AEP");
        }
        assert_eq!(data[0]["isValid"], false);
        assert_eq!(files["_page"]["limit"], 100);
        assert_eq!(files["_page"]["count"], 1);
        assert!(files["_links"].get("next").is_none());
        let href = data[0]["_links"]["self"]["href"].as_str().unwrap();
        assert!(
            href.starts_with(env.sim.base_url()),
            "hrefs are absolute: {href}"
        );
        // 3. The directory of parts.
        let dir: Value = env
            .req(href)
            .send()
            .await
            .unwrap()
            .json_value()
            .await
            .unwrap();
        let parts = dir["data"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        for p in parts {
            assert!(p["name"].as_str().unwrap().starts_with("part-0000"));
            assert!(
                p["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-c000.snappy.parquet")
            );
            assert!(p["length"].is_string());
        }
        // 4./5. One part's bytes, exactly its length, as parquet.
        let part_href = parts[0]["_links"]["self"]["href"].as_str().unwrap();
        let resp = env.req(part_href).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/parquet");
        assert_eq!(resp.headers()["accept-ranges"], "bytes");
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len().to_string(), parts[0]["length"].as_str().unwrap());
        assert_eq!(&body[..4], b"PAR1");
        assert_eq!(&body[body.len() - 4..], b"PAR1");
    }
}

mod catalog {
    use super::*;

    #[tokio::test]
    async fn filters_ordering_and_limits() {
        let env = env().await;
        let ds = &env.summary.dataset_id;
        let all = env
            .json(&format!(
                "/data/foundation/catalog/batches?dataSet={ds}&limit=100"
            ))
            .await;
        assert_eq!(all.as_object().unwrap().len(), env.summary.batches.len());
        let failed = env
            .json(&format!(
                "/data/foundation/catalog/batches?dataSet={ds}&status=failure"
            ))
            .await;
        assert_eq!(failed.as_object().unwrap().len(), 1);
        let not_ok = env
            .json(&format!(
                "/data/foundation/catalog/batches?dataSet={ds}&status=!success"
            ))
            .await;
        assert_eq!(not_ok.as_object().unwrap().len(), 1);
        let other = env
            .json(&format!(
                "/data/foundation/catalog/batches?dataSet={ds}&createdClient=mlops_backfill"
            ))
            .await;
        assert_eq!(other.as_object().unwrap().len(), 1);
        // Ordering: the JSON object's keys come in orderBy order (read from the raw text, as
        // serde_json's map would sort them).
        let ordered = |path: String| {
            let env = &env;
            async move {
                let text = env
                    .req(&env.url(&path))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let v: Value = serde_json::from_str(&text).unwrap();
                let mut entries: Vec<(usize, i64)> = v
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(id, b)| {
                        (
                            text.find(&format!("\"{id}\":")).unwrap(),
                            b["created"].as_i64().unwrap(),
                        )
                    })
                    .collect();
                entries.sort();
                entries.into_iter().map(|(_, c)| c).collect::<Vec<i64>>()
            }
        };
        let created = |v: &Value| -> Vec<i64> {
            let mut c: Vec<i64> = v
                .as_object()
                .unwrap()
                .values()
                .map(|b| b["created"].as_i64().unwrap())
                .collect();
            c.sort();
            c
        };
        let desc = ordered(format!(
            "/data/foundation/catalog/batches?dataSet={ds}&orderBy=desc:created"
        ))
        .await;
        let asc = ordered(format!(
            "/data/foundation/catalog/batches?dataSet={ds}&orderBy=asc:created"
        ))
        .await;
        let mut sorted = asc.clone();
        sorted.sort();
        assert_eq!(asc, sorted);
        assert_eq!(desc, asc.iter().rev().cloned().collect::<Vec<_>>());
        // createdAfter is exclusive; start/limit page.
        let after = env
            .json(&format!(
                "/data/foundation/catalog/batches?dataSet={ds}&createdAfter={}",
                asc[1]
            ))
            .await;
        assert_eq!(after.as_object().unwrap().len(), asc.len() - 2);
        let page = env
            .json(&format!(
                "/data/foundation/catalog/batches?dataSet={ds}&orderBy=asc:created&start=2&limit=2"
            ))
            .await;
        assert_eq!(created(&page), asc[2..4].to_vec());
        // Default limit is 20; 0 and 101 are 400s.
        for bad in ["0", "101", "x"] {
            let resp = env
                .req(&env.url(&format!("/data/foundation/catalog/batches?limit={bad}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "limit={bad}");
        }
        // properties is an allow-list.
        let props = env
            .json(&format!(
                "/data/foundation/catalog/batches?dataSet={ds}&properties=status&limit=1"
            ))
            .await;
        let only: Vec<&String> = props
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(only, vec!["status"]);
    }

    #[tokio::test]
    async fn single_objects_and_replay_chain() {
        let env = env().await;
        let newest = env.newest_scoring();
        let one = env
            .json(&format!("/data/foundation/catalog/batches/{}", newest.id))
            .await;
        let b = &one[&newest.id];
        let pred = b["replay"]["predecessors"][0].as_str().unwrap();
        assert_eq!(Some(pred), newest.replaces.as_deref());
        let older = env
            .json(&format!("/data/foundation/catalog/batches/{pred}"))
            .await;
        assert_eq!(older[pred]["tags"]["acp_successor"][0], newest.id.as_str());
        let ds = env
            .json(&format!(
                "/data/foundation/catalog/dataSets/{}",
                env.summary.dataset_id
            ))
            .await;
        let d = &ds[&env.summary.dataset_id];
        assert_eq!(d["name"], "Customer AI Scores - Acme Retail");
        assert_eq!(
            d["lastSuccessfulBatch"],
            env.summary
                .batches
                .iter()
                .filter(|b| b.status == "success")
                .max_by_key(|b| b.created)
                .unwrap()
                .id
                .as_str()
        );
        let missing = env
            .req(&env.url("/data/foundation/catalog/batches/NOPE"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}

mod data_access {
    use super::*;

    async fn part_href(env: &Env) -> (String, u64) {
        let id = &env.newest_scoring().id;
        let dir = env
            .json(&format!("/data/foundation/export/files/{id}-1"))
            .await;
        let p = &dir["data"][0];
        (
            p["_links"]["self"]["href"].as_str().unwrap().to_string(),
            p["length"].as_str().unwrap().parse().unwrap(),
        )
    }

    #[tokio::test]
    async fn paging_with_page_size_two() {
        let env = env_with(
            50,
            5,
            SimConfig {
                page_size: Some(2),
                ..Default::default()
            },
        )
        .await;
        let id = &env.newest_scoring().id;
        let mut url = env.url(&format!("/data/foundation/export/files/{id}-1"));
        let mut names = Vec::new();
        let mut pages = 0;
        loop {
            let page: Value = env
                .req(&url)
                .send()
                .await
                .unwrap()
                .json_value()
                .await
                .unwrap();
            pages += 1;
            assert!(page["data"].as_array().unwrap().len() <= 2);
            assert_eq!(page["_page"]["limit"], 2);
            names.extend(
                page["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["name"].as_str().unwrap().to_string()),
            );
            match page["_links"]["next"]["href"].as_str() {
                Some(next) => url = next.to_string(),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(names.len(), 5);
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), 5);
    }

    #[tokio::test]
    async fn range_head_and_416() {
        let env = env().await;
        let (href, len) = part_href(&env).await;
        let full = env.req(&href).send().await.unwrap().bytes().await.unwrap();
        let r = env
            .req(&href)
            .header("Range", "bytes=0-99")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes 0-99/{len}").as_str()
        );
        assert_eq!(r.headers()["content-length"], "100");
        assert_eq!(r.bytes().await.unwrap(), full.slice(0..100));
        let r = env
            .req(&href)
            .header("Range", "bytes=-10")
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap(), full.slice(full.len() - 10..));
        let r = env
            .req(&href)
            .header("Range", format!("bytes={len}-"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes */{len}").as_str()
        );
        let info = &env.sim.platform().info;
        let h = env
            .http
            .head(&href)
            .header("Authorization", format!("Bearer {}", env.token))
            .header("x-api-key", &info.client_id)
            .header("x-gw-ims-org-id", &info.org_id)
            .header("x-sandbox-name", "prod")
            .send()
            .await
            .unwrap();
        assert_eq!(h.status(), StatusCode::OK);
        assert_eq!(h.headers()["content-length"], len.to_string().as_str());
        assert_eq!(h.headers()["accept-ranges"], "bytes");
        let unknown = env
            .req(&format!(
                "{}?path=nope.parquet",
                href.split('?').next().unwrap()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    }
}

mod auth {
    use super::*;

    async fn code(resp: reqwest::Response) -> (StatusCode, String) {
        let s = resp.status();
        let v: Value = resp.json_value().await.unwrap_or(Value::Null);
        (
            s,
            v["error_code"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("")
                .to_string(),
        )
    }

    #[tokio::test]
    async fn every_auth_failure_has_its_status_and_code() {
        let env = env().await;
        let info = env.sim.platform().info.clone();
        let url = env.url("/data/foundation/catalog/batches");
        let base = |skip: &str| {
            let mut r = env.http.get(&url);
            for (k, v) in [
                ("Authorization", format!("Bearer {}", env.token)),
                ("x-api-key", info.client_id.clone()),
                ("x-gw-ims-org-id", info.org_id.clone()),
                ("x-sandbox-name", "prod".to_string()),
            ] {
                if k != skip {
                    r = r.header(k, v);
                }
            }
            r
        };
        assert_eq!(
            code(base("Authorization").send().await.unwrap()).await,
            (StatusCode::FORBIDDEN, "403010".into())
        );
        assert_eq!(
            code(base("x-api-key").send().await.unwrap()).await,
            (StatusCode::FORBIDDEN, "403000".into())
        );
        assert_eq!(
            code(base("x-gw-ims-org-id").send().await.unwrap()).await,
            (StatusCode::BAD_REQUEST, "400003".into())
        );
        assert_eq!(
            base("x-sandbox-name").send().await.unwrap().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            code(
                base("x-api-key")
                    .header("x-api-key", "wrong")
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (StatusCode::FORBIDDEN, "403003".into())
        );
        assert_eq!(
            code(
                base("x-gw-ims-org-id")
                    .header("x-gw-ims-org-id", "X@AdobeOrg")
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (StatusCode::FORBIDDEN, "403025".into())
        );
        assert_eq!(
            base("x-sandbox-name")
                .header("x-sandbox-name", "dev")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            code(
                base("Authorization")
                    .header("Authorization", "Bearer forged")
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (StatusCode::UNAUTHORIZED, "401013".into())
        );
        env.sim.expire_tokens();
        assert_eq!(
            code(base("").send().await.unwrap()).await,
            (StatusCode::UNAUTHORIZED, "401013".into())
        );
        // IMS itself: wrong secret, wrong id, wrong grant.
        let ims = format!("{}/ims/token/v3", env.sim.ims_url());
        let post = |f: Vec<(&str, &str)>| env.http.post(&ims).form(&f).send();
        assert_eq!(
            code(
                post(vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", &info.client_id),
                    ("client_secret", "x")
                ])
                .await
                .unwrap()
            )
            .await,
            (StatusCode::UNAUTHORIZED, "invalid_client".into())
        );
        assert_eq!(
            code(
                post(vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", "x"),
                    ("client_secret", "x")
                ])
                .await
                .unwrap()
            )
            .await,
            (StatusCode::BAD_REQUEST, "invalid_client".into())
        );
        assert_eq!(
            code(post(vec![("grant_type", "password")]).await.unwrap()).await,
            (StatusCode::BAD_REQUEST, "unsupported_grant_type".into())
        );
    }

    #[tokio::test]
    async fn tokens_expire_after_their_lifetime() {
        let env = env_with(
            30,
            1,
            SimConfig {
                token_lifetime: std::time::Duration::from_secs(1),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            env.req(&env.url("/data/foundation/catalog/batches"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(
            env.req(&env.url("/data/foundation/catalog/batches"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

mod faults {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn every_fault_kind() {
        let env = env_with(3000, 1, SimConfig::default()).await;
        let id = env.newest_scoring().id.clone();
        let dir = env
            .json(&format!("/data/foundation/export/files/{id}-1"))
            .await;
        let href = dir["data"][0]["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .to_string();
        let len: usize = dir["data"][0]["length"].as_str().unwrap().parse().unwrap();
        let s = &env.sim;

        s.push_fault(
            Route::Download,
            Fault::Status {
                status: 429,
                retry_after: Some("7".into()),
                body: ErrorBodyStyle::Problem,
            },
            1,
        );
        let r = env.req(&href).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "7");
        assert_eq!(
            r.json_value().await.unwrap()["title"],
            "RequestRateTooLarge"
        );

        for status in [500u16, 502, 503] {
            s.push_fault(
                Route::Download,
                Fault::Status {
                    status,
                    retry_after: None,
                    body: ErrorBodyStyle::Empty,
                },
                1,
            );
            let r = env.req(&href).send().await.unwrap();
            assert_eq!(r.status().as_u16(), status);
            assert!(r.headers().get("retry-after").is_none());
        }

        s.push_fault(
            Route::Download,
            Fault::ResetMidBody { after_bytes: 1000 },
            1,
        );
        let r = env.req(&href).send().await.unwrap();
        assert_eq!(r.content_length(), Some(len as u64));
        assert!(r.bytes().await.is_err(), "a reset body is an error");

        s.push_fault(
            Route::Download,
            Fault::TruncateBody { after_bytes: 1000 },
            1,
        );
        let r = env.req(&href).send().await.unwrap();
        assert!(
            r.bytes().await.is_err(),
            "a body cut short of Content-Length is an error"
        );

        s.push_fault(
            Route::Download,
            Fault::Latency {
                delay: Duration::from_millis(300),
            },
            1,
        );
        let t = Instant::now();
        env.req(&href).send().await.unwrap().bytes().await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));

        s.push_fault(
            Route::Download,
            Fault::Bandwidth {
                bytes_per_sec: (len * 2) as u64,
            },
            1,
        );
        let t = Instant::now();
        let body = env.req(&href).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len(), len);
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );

        s.push_fault(
            Route::Download,
            Fault::StallMidBody {
                after_bytes: 1000,
                delay: Duration::from_millis(300),
            },
            1,
        );
        // The stall is where the longest gap between two chunks is, whenever it comes.
        let mut r = env.req(&href).send().await.unwrap();
        let mut chunks: Vec<(Instant, usize)> = Vec::new();
        while let Some(chunk) = r.chunk().await.unwrap() {
            chunks.push((Instant::now(), chunk.len()));
        }
        let stall = (1..chunks.len())
            .max_by_key(|&i| chunks[i].0 - chunks[i - 1].0)
            .expect("more than one chunk");
        assert!(chunks[stall].0 - chunks[stall - 1].0 >= Duration::from_millis(300));
        let before: usize = chunks[..stall].iter().map(|c| c.1).sum();
        let after: usize = chunks[stall..].iter().map(|c| c.1).sum();
        assert_eq!((before, after), (1000, len - 1000), "then the rest, whole");

        s.push_fault(Route::Download, Fault::ExpireTokens, 1);
        assert_eq!(
            env.req(&href).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );

        // Faults can also be scripted over HTTP, from another process.
        let resp = env.http.post(env.url("/__sim/faults"))
            .header("content-type", "application/json")
            .body(serde_json::json!([{"route": "catalog_batches", "fault": {"kind": "status", "status": 500}, "times": 2}]).to_string())
            .send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(s.pending_faults(Route::CatalogBatches), 2);
        s.clear_faults();
        assert_eq!(s.pending_faults(Route::CatalogBatches), 0);
    }

    #[tokio::test]
    async fn wan_settings_pace_every_response() {
        let env = env_with(
            3000,
            1,
            SimConfig {
                latency: Duration::from_millis(50),
                bandwidth_per_connection: Some(100_000),
                ..Default::default()
            },
        )
        .await;
        let id = env.newest_scoring().id.clone();
        let dir = env
            .json(&format!("/data/foundation/export/files/{id}-1"))
            .await;
        let href = dir["data"][0]["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .to_string();
        let len: f64 = dir["data"][0]["length"].as_str().unwrap().parse().unwrap();
        let t = Instant::now();
        env.req(&href).send().await.unwrap().bytes().await.unwrap();
        let expected = 0.05 + len / 100_000.0;
        let took = t.elapsed().as_secs_f64();
        assert!(
            took >= expected * 0.9 && took < expected * 3.0 + 1.0,
            "took {took}, expected about {expected}"
        );
    }
}

mod generator {
    use super::*;
    use arrow::array::{Array, AsArray, StructArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn read_identities(dir: &Path) -> (usize, Vec<Option<String>>, bool) {
        let mut rows = 0;
        let mut ids = Vec::new();
        let mut drift = false;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap();
            let schema = reader.schema().clone();
            let tenant = schema.field(2);
            let arrow::datatypes::DataType::Struct(fields) = tenant.data_type() else {
                panic!()
            };
            let arrow::datatypes::DataType::Struct(cai) = fields[1].data_type() else {
                panic!()
            };
            let arrow::datatypes::DataType::Struct(model) = cai[0].data_type() else {
                panic!()
            };
            drift |= model.iter().any(|f| f.name() == "modelVersion");
            for b in reader.build().unwrap() {
                let b = b.unwrap();
                rows += b.num_rows();
                let t = b.column(2).as_any().downcast_ref::<StructArray>().unwrap();
                let identity = t.column(0).as_any().downcast_ref::<StructArray>().unwrap();
                let id = identity.column(0).as_string::<i32>();
                for i in 0..b.num_rows() {
                    ids.push((!identity.is_null(i)).then(|| id.value(i).to_string()));
                }
            }
        }
        (rows, ids, drift)
    }

    #[test]
    fn output_has_the_promised_shape_and_is_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = |out: &str| GenerateOptions {
            out: tmp.path().join(out),
            rows: 5000,
            parts: 4,
            batches: 4,
            seed: 3,
            ..Default::default()
        };
        let a = scoreland_platform_sim::generate(&opts("a")).unwrap();
        let b = scoreland_platform_sim::generate(&opts("b")).unwrap();
        assert_eq!(
            a.batches.iter().map(|x| &x.id).collect::<Vec<_>>(),
            b.batches.iter().map(|x| &x.id).collect::<Vec<_>>()
        );
        // 4 scoring + 1 failed + 1 other client.
        assert_eq!(a.batches.len(), 6);
        assert_eq!(
            a.batches.iter().filter(|x| x.status == "failure").count(),
            1
        );
        assert_eq!(
            a.batches
                .iter()
                .filter(|x| x.created_client == "mlops_backfill")
                .count(),
            1
        );
        let scoring: Vec<_> = a
            .batches
            .iter()
            .filter(|x| x.created_client == "acp_foundation_push" && x.status == "success")
            .collect();
        for w in scoring.windows(2) {
            assert_eq!(
                w[1].replaces.as_deref(),
                Some(w[0].id.as_str()),
                "each batch replaces its predecessor"
            );
        }
        let dir = |summary: &GenerateSummary, root: &str, id: &str| {
            tmp.path()
                .join(root)
                .join("prod")
                .join(&summary.dataset_id)
                .join(id)
                .join(format!("{id}-1"))
        };
        let newest = scoring.last().unwrap();
        let (rows, ids, drift) = read_identities(&dir(&a, "a", &newest.id));
        assert_eq!(rows, 5000);
        assert!(drift, "the newest batch carries the drift column");
        assert!(
            !read_identities(&dir(&a, "a", &scoring[0].id)).2,
            "the oldest does not"
        );
        let nulls = ids.iter().filter(|i| i.is_none()).count();
        assert!(
            nulls > 0 && nulls < 100,
            "about 0.5 % null identities, got {nulls}"
        );
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for i in ids.iter().flatten() {
            *counts.entry(i).or_default() += 1;
        }
        let repeats = ids.len() - nulls - counts.len();
        assert!(
            (400..=600).contains(&repeats),
            "about 10 % of rows repeat an identity, got {repeats}"
        );
        // Byte for byte the same for the same seed.
        for (x, y) in [("a", "b")] {
            let fa: Vec<_> = std::fs::read_dir(dir(&a, x, &newest.id))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            for f in fa {
                let other = dir(&b, y, &newest.id).join(f.file_name().unwrap());
                assert_eq!(std::fs::read(&f).unwrap(), std::fs::read(other).unwrap());
            }
        }
        // An output directory that already holds a platform is refused.
        assert!(scoreland_platform_sim::generate(&opts("a")).is_err());
    }
}

/// The Schema Registry: a dataset's `schemaRef`, expanded (`xed-full`), describing the rows the
/// simulator serves; the expanded form needs its Accept header, and an unknown schema is 404.
mod schema_registry {
    use super::*;

    #[tokio::test]
    async fn a_datasets_schema_describes_its_rows() {
        let env = env().await;
        let ds = &env.summary.dataset_id;
        let dataset = env
            .json(&format!("/data/foundation/catalog/dataSets/{ds}"))
            .await;
        let id = dataset[ds]["schemaRef"]["id"].as_str().unwrap().to_string();
        let url = env.url(&format!(
            "/data/foundation/schemaregistry/tenant/schemas/{}",
            url_encode(&id)
        ));
        let refused = env.req(&url).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::NOT_ACCEPTABLE);
        let resp = env
            .req(&url)
            .header("Accept", "application/vnd.adobe.xed-full+json; version=1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let schema = resp.json_value().await.unwrap();
        assert_eq!(schema["$id"], id.as_str());
        let identity = &schema["properties"]["_acmeretail"]["properties"]["identity"];
        assert_eq!(identity["properties"]["id"]["meta:xdmType"], "string");
        assert_eq!(schema["properties"]["timestamp"]["format"], "date-time");
        let churn = &schema["properties"]["_acmeretail"]["properties"]["CustomerAI"]["properties"]
            ["churn_risk"];
        assert_eq!(churn["properties"]["scoreDate"]["meta:xdmType"], "date");
        assert_eq!(churn["properties"]["influentialFactors"]["type"], "array");
        assert_eq!(
            schema["properties"]["_acmeretail"]["properties"]["CustomerAI"]["title"],
            "Customer AI"
        );
        let unknown = env
            .req(&env.url(
                "/data/foundation/schemaregistry/tenant/schemas/https%3A%2F%2Fns.adobe.com%2Fnone",
            ))
            .header("Accept", "application/vnd.adobe.xed-full+json; version=1")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    }

    fn url_encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
}
