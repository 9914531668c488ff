//! The Data Landing Zone: its credentials (a SAS for a real Azure Blob server, session
//! credentials for a bucket on a real S3 server, or a `file://` directory).

use super::*;

#[derive(Deserialize)]
pub(crate) struct DlzQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    action: Option<String>,
}

/// `GET|POST /data/foundation/connectors/landingzone/credentials?type=dlz_destination`: a SAS
/// for the destination container, as a `file://` URI to the export root's `dlz` directory.
pub(crate) async fn dlz_credentials(
    State(st): State<Arc<AppState>>,
    Query(q): Query<DlzQuery>,
) -> Response {
    if q.kind.as_deref() != Some("dlz_destination") && q.kind.as_deref() != Some("user_drop_zone") {
        return bad_request("type must be dlz_destination or user_drop_zone");
    }
    let mut g = st.flows.lock();
    let refresh = q.action.as_deref() == Some("refresh");
    if refresh || g.dlz_generation == 0 {
        g.dlz_generation += 1;
    }
    // A scripted expiry hands out a token that expired an hour ago, once; a refresh is good.
    let expired = !refresh && std::mem::take(&mut g.dlz_expire_next);
    let expiry = if expired {
        chrono::Utc::now() - chrono::Duration::hours(1)
    } else {
        chrono::Utc::now() + chrono::Duration::days(7)
    };
    let body = match (&st.config.export_dlz_aws, &st.config.export_dlz) {
        (Some(aws), _) => {
            let expiry = if expired {
                expiry
            } else {
                chrono::Utc::now()
                    + chrono::Duration::from_std(aws.lifetime)
                        .unwrap_or(chrono::Duration::hours(12))
            };
            let generation = g.dlz_generation;
            json!({
                "credentials": {
                    "awsAccessKeyId": format!("ASIASIMDLZ{generation:06}"),
                    "awsSecretAccessKey": format!("sim-secret-{:x}", generation * 104_729),
                    "awsSessionToken": format!("sim-session-{generation}"),
                },
                "dlzPath": {"bucketName": aws.bucket, "dlzFolder": aws.folder},
                "dlzProvider": "Amazon S3",
                "expiryTime": expiry.timestamp(),
                // Not AEP's: where the simulator's bucket is served.
                "endpoint": aws.endpoint,
            })
        }
        (None, Some(dlz)) => {
            let token = dlz.sas(expiry, g.dlz_generation);
            json!({
                "containerName": dlz.container,
                "SASToken": token,
                "storageAccountName": dlz.account,
                "SASUri": format!("{}/{}?{token}", dlz.endpoint.trim_end_matches('/'), dlz.container),
                "expiryDate": expiry.format("%Y-%m-%d").to_string(),
            })
        }
        (None, None) => {
            let token = format!(
                "sv=2020-10-02&si=dlz-{}&sr=c&sp=racwdlm&sig=sim{:x}",
                g.dlz_generation,
                g.dlz_generation * 7919
            );
            let dir = st.config.export_root.join("dlz");
            json!({
                "containerName": "dlz-destination",
                "SASToken": token,
                "storageAccountName": "simdlz",
                "SASUri": format!("file://{}?{token}", dir.display()),
                "expiryDate": expiry.format("%Y-%m-%d").to_string(),
            })
        }
    };
    axum::Json(body).into_response()
}

/// A Data Landing Zone on a real Azure Blob server (azurite): its container, and the account
/// key that signs the SAS tokens handed out.
#[derive(Debug, Clone)]
pub struct DlzServer {
    /// The account's blob endpoint, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: String,
    pub account: String,
    pub key: String,
    pub container: String,
}

impl DlzServer {
    /// A service SAS for the container (read and list), signed with the account key
    /// (string-to-sign of service version 2020-12-06 and later).
    fn sas(&self, expiry: chrono::DateTime<chrono::Utc>, generation: u64) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let version = "2021-08-06";
        let se = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        // The start time differs per generation, so a refreshed token is a new token.
        let st = (chrono::Utc::now() - chrono::Duration::minutes(5 + generation as i64))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let resource = format!("/blob/{}/{}", self.account, self.container);
        let to_sign = format!("rl\n{st}\n{se}\n{resource}\n\n\n\n{version}\nc\n\n\n\n\n\n\n");
        let key = base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .unwrap_or_default();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        format!(
            "sv={version}&st={}&se={}&sr=c&sp=rl&sig={}",
            enc(&st),
            enc(&se),
            enc(&sig)
        )
    }

    pub(super) fn store(&self) -> Result<Arc<dyn ObjectStore>, String> {
        let store = object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(&self.account)
            .with_access_key(&self.key)
            .with_container_name(&self.container)
            .with_endpoint(self.endpoint.clone())
            .with_allow_http(true)
            .build()
            .map_err(|e| format!("the Data Landing Zone's container: {e}"))?;
        Ok(Arc::new(store))
    }
}

/// A Data Landing Zone on AWS: a bucket on a real S3 server (moto), handed out as session
/// credentials that expire after `lifetime`.
#[derive(Debug, Clone)]
pub struct DlzAws {
    pub endpoint: String,
    pub bucket: String,
    /// The landing zone's folder in the bucket (`dlzFolder`).
    pub folder: String,
    pub lifetime: std::time::Duration,
}

impl DlzAws {
    /// The store exports are written to (the simulator writes as the platform: any key).
    pub(super) fn store(&self) -> Result<Arc<dyn ObjectStore>, String> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("sim")
            .with_secret_access_key("sim")
            .build()
            .map_err(|e| format!("the Data Landing Zone's bucket: {e}"))?;
        Ok(Arc::new(store))
    }
}
