//! IMS: the OAuth server-to-server token endpoint.

use super::*;

// ---------------------------------------------------------------------------------------------
// IMS

pub(super) async fn ims_token(
    State(st): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    // IMS accepts the parameters in the form body (recommended) or the query string.
    let mut params: HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    for (k, v) in query {
        params.entry(k).or_insert(v);
    }
    let oauth = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            axum::Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            );
        }
        None => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing grant_type parameter",
            );
        }
    }
    let info = &st.platform.info;
    match params.get("client_id") {
        None => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing client_id parameter",
            );
        }
        Some(id) if *id != info.client_id => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "invalid client_id parameter",
            );
        }
        Some(_) => {}
    }
    if params.get("client_secret") != Some(&info.client_secret) {
        return oauth(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "invalid client_secret parameter",
        );
    }
    let n = st.token_counter.fetch_add(1, Ordering::Relaxed);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ n.rotate_left(32);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let token = format!(
        "eyJhbGciOiJSUzI1NiJ9.sim{:016x}{:016x}.{:016x}",
        rng.random::<u64>(),
        rng.random::<u64>(),
        rng.random::<u64>()
    );
    let lifetime = st.config.token_lifetime;
    st.tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone(), Instant::now() + lifetime);
    axum::Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime.as_secs(),
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Entra ID

/// An Entra ID (Azure AD) application the simulator's token endpoint accepts, for storage
/// tests with a service principal: its tenant, client id and secret.
#[derive(Debug, Clone)]
pub struct EntraApp {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
}

/// `POST /{tenant}/oauth2/v2.0/token` (client credentials), as Entra ID answers a service
/// principal: a bearer token for Azure Storage (`aud` `https://storage.azure.com`, `iss`
/// `https://sts.windows.net/{tenant}/`) that azurite's `--oauth basic` accepts. It is not
/// signed: azurite's basic check does not verify signatures, and nothing else reads it.
pub(super) async fn entra_token(
    State(st): State<Arc<AppState>>,
    UrlPath(tenant): UrlPath<String>,
    body: Bytes,
) -> Response {
    use base64::Engine as _;
    let params: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let refuse = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            axum::Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    let Some(app) = &st.config.entra_app else {
        return refuse(
            StatusCode::NOT_FOUND,
            "invalid_tenant",
            "no Entra ID application here",
        );
    };
    if tenant != app.tenant {
        return refuse(StatusCode::BAD_REQUEST, "invalid_tenant", "unknown tenant");
    }
    if params.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "client_credentials only",
        );
    }
    if params.get("client_id") != Some(&app.client_id)
        || params.get("client_secret") != Some(&app.client_secret)
    {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let now = chrono::Utc::now().timestamp();
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let token = format!(
        "{}.{}.{}",
        b64(&json!({"typ": "JWT", "alg": "RS256"})),
        b64(&json!({
            "aud": "https://storage.azure.com",
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
            "appid": app.client_id, "tid": tenant, "sub": app.client_id,
        })),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"simulated")
    );
    axum::Json(json!({"token_type": "Bearer", "expires_in": 3600, "access_token": token}))
        .into_response()
}
