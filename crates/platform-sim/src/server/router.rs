//! The routes, the header gate every platform route passes (`Authorization`, `x-api-key`,
//! `x-gw-ims-org-id`, `x-sandbox-name`), the error bodies, and the admin routes that script
//! faults from another process.

use super::*;

pub(super) fn router(state: Arc<AppState>) -> Router {
    let platform = Router::new()
        .route("/data/foundation/catalog/batches", get(list_batches))
        .route("/data/foundation/catalog/batches/{id}", get(get_batch))
        .route(
            "/data/foundation/catalog/dataSets",
            get(list_datasets).post(create_dataset),
        )
        .route("/data/foundation/catalog/dataSets/{id}", get(get_dataset))
        .route(
            "/data/foundation/schemaregistry/tenant/schemas/{id}",
            get(get_schema),
        )
        .route(
            "/data/foundation/schemaregistry/tenant/descriptors",
            get(get_descriptors),
        )
        .route(
            "/data/foundation/dataset/datasets/{id}/labels",
            get(get_labels),
        )
        .route(
            "/data/foundation/export/batches/{id}/files",
            get(batch_files),
        )
        .route("/data/foundation/export/files/{id}", get(files))
        .route(
            "/data/foundation/flowservice/connectionSpecs/{id}/configs",
            get(flows::dataset_configs),
        )
        .route(
            "/data/foundation/flowservice/{kind}",
            get(flows::list).post(flows::create),
        )
        .route(
            "/data/foundation/flowservice/{kind}/{id}",
            get(flows::get_one)
                .patch(flows::patch_flow)
                .delete(flows::delete),
        )
        .route(
            "/data/foundation/flowservice/{kind}/{id}/action",
            post(flows::flow_action),
        )
        .route(
            "/data/core/activation/disflowprovider/adhocrun",
            post(flows::adhoc_run),
        )
        .route(
            "/data/core/ups/segment/jobs",
            get(profile::list_segment_jobs).post(profile::create_segment_job),
        )
        .route(
            "/data/core/ups/segment/jobs/bulk-get",
            post(profile::bulk_get_segment_jobs),
        )
        .route(
            "/data/core/ups/segment/jobs/{id}",
            get(profile::get_segment_job).delete(profile::cancel_segment_job),
        )
        .route(
            "/data/core/ups/export/jobs",
            get(profile_export::list_export_jobs).post(profile_export::create_export_job),
        )
        .route(
            "/data/core/ups/export/jobs/{id}",
            get(profile_export::get_export_job).delete(profile_export::cancel_export_job),
        )
        .route(
            "/data/core/ups/config/schedules",
            get(profile::list_schedules).post(profile::create_schedule),
        )
        .route(
            "/data/core/ups/config/schedules/{id}",
            get(profile::get_schedule)
                .patch(profile::patch_schedule)
                .delete(profile::delete_schedule),
        )
        .route(
            "/data/foundation/connectors/landingzone/credentials",
            get(flows::dlz_credentials).post(flows::dlz_credentials),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), header_gate));
    Router::new()
        .route("/ims/token/v3", post(ims_token))
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route(
            "/__sim/faults",
            post(admin_push_faults).delete(admin_clear_faults),
        )
        .merge(platform)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), fault_layer))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Error bodies

pub(super) fn gateway_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error_code": code, "message": message})),
    )
        .into_response()
}

/// The simulator's clock, in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "type": format!("http://ns.adobe.com/aep/errors/{code}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        })),
    )
        .into_response()
}

pub(super) async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "SIM-0404-404",
        "Not Found",
        "no such route",
    )
}

pub(super) fn fault_response(
    status: u16,
    retry_after: Option<&str>,
    style: ErrorBodyStyle,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match style {
        ErrorBodyStyle::Empty => status.into_response(),
        ErrorBodyStyle::Gateway => gateway_error(
            status,
            &format!("{}000", status.as_u16()),
            status.canonical_reason().unwrap_or("error"),
        ),
        ErrorBodyStyle::Problem => {
            let title = if status == StatusCode::TOO_MANY_REQUESTS {
                "RequestRateTooLarge"
            } else {
                status.canonical_reason().unwrap_or("error")
            };
            problem(
                status,
                &format!("SIM-1000-{}", status.as_u16()),
                title,
                "scripted fault",
            )
        }
    };
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Header gate on every platform route: `Authorization`, `x-api-key`, `x-gw-ims-org-id` and
// `x-sandbox-name`, as every Experience Platform API asks

#[derive(Debug, Clone)]
pub(crate) struct SandboxName(pub(crate) String);

pub(super) async fn header_gate(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header_str("authorization") else {
        return gateway_error(StatusCode::FORBIDDEN, "403010", "Oauth token is missing.");
    };
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "));
    let valid = token.is_some_and(|t| {
        st.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(t)
            .is_some_and(|exp| Instant::now() < *exp)
    });
    if !valid {
        return gateway_error(
            StatusCode::UNAUTHORIZED,
            "401013",
            "Oauth token is not valid",
        );
    }
    let info = &st.platform.info;
    match header_str("x-api-key") {
        None => return gateway_error(StatusCode::FORBIDDEN, "403000", "Api Key is required"),
        Some(k) if k != info.client_id => {
            return gateway_error(StatusCode::FORBIDDEN, "403003", "Api Key is invalid");
        }
        Some(_) => {}
    }
    match header_str("x-gw-ims-org-id") {
        None => return gateway_error(StatusCode::BAD_REQUEST, "400003", "Missing header"),
        Some(o) if o != info.org_id => {
            return gateway_error(StatusCode::FORBIDDEN, "403025", "Profile is not valid");
        }
        Some(_) => {}
    }
    let sandbox = match header_str("x-sandbox-name") {
        None => return gateway_error(StatusCode::BAD_REQUEST, "400003", "Missing header"),
        Some(s) => s.to_string(),
    };
    if !st.platform.sandboxes.contains_key(&sandbox) {
        return problem(
            StatusCode::FORBIDDEN,
            "SBX-1003-403",
            "Sandbox validation error",
            &format!("sandbox '{sandbox}' does not exist in this organization"),
        );
    }
    req.extensions_mut().insert(SandboxName(sandbox));
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Admin (scripting faults from another process)

pub(super) async fn admin_push_faults(
    State(st): State<Arc<AppState>>,
    axum::Json(specs): axum::Json<Vec<FaultSpec>>,
) -> StatusCode {
    for spec in specs {
        st.faults.push(spec);
    }
    StatusCode::NO_CONTENT
}

pub(super) async fn admin_clear_faults(State(st): State<Arc<AppState>>) -> StatusCode {
    st.faults.clear();
    StatusCode::NO_CONTENT
}
