//! Data Access: a batch's files, a file's parts (both directory shapes, paged), and
//! downloads with `Range`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Data Access

pub(super) fn links_origin(st: &AppState, quirk: Option<&ListingQuirk>) -> String {
    match quirk {
        Some(ListingQuirk::Foreign(origin)) => origin.trim_end_matches('/').to_string(),
        Some(ListingQuirk::Relative) => String::new(),
        _ => st.base_url.clone(),
    }
}

/// An empty listing page whose `next` link is new each time and serves `next_query` again.
pub(super) fn empty_page(base: &str, next_query: &str) -> Response {
    static HOPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let hop = HOPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!({
        "data": [],
        "_page": {"count": 0},
        "_links": {"next": {"href": format!("{base}?{next_query}&hop={hop}")}},
    }))
    .into_response()
}

pub(super) fn da_not_found(what: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "DAS-1404-404",
        "Not Found",
        &format!("{what} not found"),
    )
}

pub(super) async fn batch_files(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    quirk: Option<Extension<ListingQuirk>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(batch) = st.batch(&sandbox, &id) else {
        return da_not_found(&format!("batch '{id}'"));
    };
    let limit = match st.page_limit(q.get("limit")) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let start = match q.get("start").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "DAS-1400-400",
                "Bad Request",
                "start must be a non-negative integer",
            );
        }
    };
    let quirk = quirk.map(|Extension(q)| q);
    let origin = links_origin(&st, quirk.as_ref());
    let created = batch.created().to_string();
    let view_id = format!("{}v", &batch.dataset_id);
    let files = if matches!(batch.status(), "success" | "active") {
        &batch.files[..]
    } else {
        &[]
    };
    let data: Vec<Value> = files
        .iter()
        .skip(start)
        .take(limit)
        .map(|f| {
            json!({
                "dataSetFileId": f.id,
                "dataSetViewId": view_id,
                "version": "1.0.0",
                "created": created,
                "updated": created,
                "records": f.records().to_string(),
                "size": f.size().to_string(),
                "isValid": false,
                "_links": {"self": {"href": format!("{origin}{DA_PREFIX}/files/{}", f.id)}},
            })
        })
        .collect();
    let base = format!("{origin}{DA_PREFIX}/batches/{id}/files");
    if matches!(quirk, Some(ListingQuirk::Empty)) {
        return empty_page(&base, &format!("start={start}&limit={limit}"));
    }
    let mut links = Map::new();
    let next_start = match quirk {
        Some(ListingQuirk::RepeatNext) => Some(start),
        _ if start + data.len() < files.len() => Some(start + data.len()),
        _ => None,
    }
    .map(|n| match quirk {
        Some(ListingQuirk::Overlap) => n.saturating_sub(1).max(start),
        _ => n,
    });
    if let Some(n) = next_start {
        links.insert(
            "next".into(),
            json!({"href": format!("{base}?start={n}&limit={limit}")}),
        );
    }
    links.insert(
        "page".into(),
        json!({"href": format!("{base}?start={{start}}&limit={{limit}}"), "templated": true}),
    );
    axum::Json(json!({
        "data": data,
        "_page": {"limit": limit, "count": data.len()},
        "_links": links,
    }))
    .into_response()
}

pub(super) async fn files(
    State(st): State<Arc<AppState>>,
    Extension(SandboxName(sandbox)): Extension<SandboxName>,
    quirk: Option<Extension<ListingQuirk>>,
    range_quirk: Option<Extension<RangeQuirk>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let file = st.with_batches(&sandbox, |all| {
        all.filter(|b| matches!(b.status(), "success" | "active"))
            .flat_map(|b| b.files.iter())
            .find(|f| f.id == id)
            .cloned()
    });
    let Some(file) = file else {
        return da_not_found(&format!("dataSetFile '{id}'"));
    };
    if let Some(name) = q.get("path") {
        // Names are looked up exactly; nothing the client sends becomes a filesystem path.
        let Some(part) = file.parts.iter().find(|p| &p.name == name) else {
            return da_not_found(&format!("file '{name}' in dataSetFile '{id}'"));
        };
        return download(
            &part.path,
            &part.name,
            part.length,
            &headers,
            range_quirk.map(|Extension(q)| q),
        )
        .await;
    }
    let limit = match st.page_limit(q.get("limit")) {
        Ok(l) => l,
        Err(r) => return r,
    };
    // The listing cursor is the name to start at: opaque to clients, which follow `next`.
    let start_idx = match q.get("start") {
        None => 0,
        Some(name) => file
            .parts
            .partition_point(|p| p.name.as_str() < name.as_str()),
    };
    let quirk = quirk.map(|Extension(q)| q);
    let origin = links_origin(&st, quirk.as_ref());
    let base = format!("{origin}{DA_PREFIX}/files/{id}");
    if matches!(quirk, Some(ListingQuirk::Empty)) {
        let start = q.get("start").map(|s| encode(s)).unwrap_or_default();
        return empty_page(&base, &format!("start={start}&limit={limit}"));
    }
    let page = &file.parts[start_idx.min(file.parts.len())..];
    let page = &page[..page.len().min(limit)];
    let mut data: Vec<Value> = page
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "length": p.length.to_string(),
                "_links": {"self": {"href": format!("{base}?path={}", encode(&p.name))}},
            })
        })
        .collect();
    if matches!(quirk, Some(ListingQuirk::Markers)) {
        for marker in [
            "_SUCCESS",
            "_started_5521860254457337425",
            "_committed_5521860254457337425",
        ] {
            data.push(json!({
                "name": marker,
                "length": "0",
                "_links": {"self": {"href": format!("{base}?path={marker}")}},
            }));
        }
    }
    let mut links = Map::new();
    let next_name = match quirk {
        Some(ListingQuirk::RepeatNext) => page.first().map(|p| p.name.clone()),
        // An inclusive cursor: the next page starts with this page's last entry.
        Some(ListingQuirk::Overlap) if start_idx + page.len() < file.parts.len() => {
            page.last().map(|p| p.name.clone())
        }
        _ => file
            .parts
            .get(start_idx + page.len())
            .map(|p| p.name.clone()),
    };
    if let Some(n) = next_name {
        links.insert(
            "next".into(),
            json!({"href": format!("{base}?start={}&limit={limit}", encode(&n))}),
        );
    }
    links.insert(
        "page".into(),
        json!({"href": format!("{base}?start={{start}}&limit={{limit}}"), "templated": true}),
    );
    axum::Json(json!({
        "data": data,
        "_page": {"limit": limit, "count": data.len()},
        "_links": links,
    }))
    .into_response()
}

pub(super) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A single byte range, as asked for by `Range: bytes=…`.
#[derive(Debug, PartialEq)]
pub(super) enum RangeAsk {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses `Range` against a file of `size` bytes. Malformed or multi-range headers are ignored
/// (the whole file is served, as RFC 9110 allows).
pub(super) fn parse_range(value: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return match b.parse::<u64>() {
            Ok(0) => RangeAsk::Unsatisfiable,
            Ok(_) if size == 0 => RangeAsk::Unsatisfiable,
            Ok(n) => RangeAsk::Part(size.saturating_sub(n), size - 1),
            Err(_) => RangeAsk::Whole,
        };
    }
    let Ok(first) = a.parse::<u64>() else {
        return RangeAsk::Whole;
    };
    let last = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(l) if l >= first => l.min(size.saturating_sub(1)),
            _ => return RangeAsk::Whole,
        }
    };
    if first >= size {
        RangeAsk::Unsatisfiable
    } else {
        RangeAsk::Part(first, last)
    }
}

pub(super) async fn download(
    path: &std::path::Path,
    name: &str,
    size: u64,
    headers: &HeaderMap,
    quirk: Option<RangeQuirk>,
) -> Response {
    let asked = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let range = match (quirk, asked) {
        (Some(RangeQuirk::Ignore), _) => RangeAsk::Whole,
        (Some(RangeQuirk::Short(max)), RangeAsk::Whole) if size > 0 => {
            RangeAsk::Part(0, max.clamp(1, size) - 1)
        }
        (Some(RangeQuirk::Short(max)), RangeAsk::Part(a, b)) => {
            RangeAsk::Part(a, b.min(a.saturating_add(max.max(1) - 1)))
        }
        (_, asked) => asked,
    };
    let content_type = if name.ends_with(".parquet") {
        "application/parquet"
    } else {
        "application/octet-stream"
    };
    let (status, first, len) = match range {
        RangeAsk::Whole => (StatusCode::OK, 0, size),
        RangeAsk::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeAsk::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({
                        "type": "http://ns.adobe.com/aep/errors/DAS-1416-416",
                        "title": "Range Not Satisfiable",
                        "status": 416,
                        "detail": format!("file '{name}' has {size} bytes"),
                    })
                    .to_string(),
                ))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open part");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if first > 0
        && let Err(e) = file.seek(std::io::SeekFrom::Start(first)).await
    {
        tracing::error!(path = %path.display(), error = %e, "cannot seek part");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(len),
        PART_READ,
    ));
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{}/{size}", first + len - 1),
        );
    }
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), RangeAsk::Part(0, 3));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeAsk::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-4"), 10), RangeAsk::Part(6, 9));
        assert_eq!(parse_range(Some("bytes=-40"), 10), RangeAsk::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), RangeAsk::Part(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeAsk::Whole);
    }
}
