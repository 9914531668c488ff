//! The outermost layer: scripted faults, latency and bandwidth, and the re-streamed bodies
//! that cut, stall, pace or drip a response.

use super::*;

// ---------------------------------------------------------------------------------------------
// Faults, latency and bandwidth: the outermost layer

#[derive(Debug, Clone)]
pub(super) enum ListingQuirk {
    RepeatNext,
    Foreign(String),
    Overlap,
    Empty,
    Markers,
    Relative,
}

/// Download quirks, for the `download` handler.
#[derive(Debug, Clone, Copy)]
pub(super) enum RangeQuirk {
    Short(u64),
    Ignore,
}

/// Catalog quirks.
#[derive(Debug, Clone, Copy)]
pub(super) struct IgnoreStart;

pub(super) async fn fault_layer(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = Route::classify(req.uri().path(), req.uri().query());
    if let Some(r) = route {
        *st.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(r)
            .or_default() += 1;
    }
    let fault = route.and_then(|r| st.faults.take(r));
    if !st.config.latency.is_zero() {
        tokio::time::sleep(st.config.latency).await;
    }
    let mut shape = Shape {
        rate: st.config.bandwidth_per_connection,
        ..Shape::default()
    };
    match fault {
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => return fault_response(status, retry_after.as_deref(), body),
        Some(Fault::Latency { delay }) => tokio::time::sleep(delay).await,
        Some(Fault::ExpireTokens) => st.expire_tokens(),
        Some(Fault::RepeatNextLink) => {
            req.extensions_mut().insert(ListingQuirk::RepeatNext);
        }
        Some(Fault::ForeignHrefs { origin }) => {
            req.extensions_mut().insert(ListingQuirk::Foreign(origin));
        }
        Some(Fault::OverlappingCursor) => {
            req.extensions_mut().insert(ListingQuirk::Overlap);
        }
        Some(Fault::EmptyPage) => {
            req.extensions_mut().insert(ListingQuirk::Empty);
        }
        Some(Fault::MarkerFiles) => {
            req.extensions_mut().insert(ListingQuirk::Markers);
        }
        Some(Fault::RelativeHrefs) => {
            req.extensions_mut().insert(ListingQuirk::Relative);
        }
        Some(Fault::CatalogIgnoresStart) => {
            req.extensions_mut().insert(IgnoreStart);
        }
        Some(Fault::ShortRange { max_bytes }) => {
            req.extensions_mut().insert(RangeQuirk::Short(max_bytes));
        }
        Some(Fault::IgnoreRange) => {
            req.extensions_mut().insert(RangeQuirk::Ignore);
        }
        Some(Fault::ResetMidBody { after_bytes }) => shape.cut = Some((after_bytes, true)),
        Some(Fault::TruncateBody { after_bytes }) => shape.cut = Some((after_bytes, false)),
        Some(Fault::StallMidBody { after_bytes, delay }) => {
            shape.stall = Some((after_bytes, delay))
        }
        Some(Fault::Bandwidth { bytes_per_sec }) => shape.rate = Some(bytes_per_sec),
        Some(Fault::Drip { bytes, every }) => shape.drip = Some((bytes.max(1), every)),
        Some(Fault::ResponseCap { after }) => shape.cap = Some(after),
        None => {}
    }
    let resp = next.run(req).await;
    if shape.is_plain() {
        return resp;
    }
    shape_body(resp, shape)
}

/// How a response body is re-streamed.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Shape {
    /// Bytes to send, then end (false) or reset (true).
    cut: Option<(u64, bool)>,
    /// Bytes to send, then a pause.
    stall: Option<(u64, Duration)>,
    /// Bytes per second.
    rate: Option<u64>,
    /// So many bytes every so often.
    drip: Option<(u64, Duration)>,
    /// Reset once the body has taken this long.
    cap: Option<Duration>,
}

impl Shape {
    fn is_plain(&self) -> bool {
        self.cut.is_none()
            && self.stall.is_none()
            && self.rate.is_none()
            && self.drip.is_none()
            && self.cap.is_none()
    }
}

/// Bytes read from a part file at a time. Each read is a trip to tokio's blocking pool, so larger
/// reads leave more of the machine to the client under test.
pub(super) const PART_READ: usize = 256 * 1024;

/// Re-streams a response body, cutting it short, stalling it once, pacing it, dripping it or
/// resetting it after a time.
pub(super) fn shape_body(resp: Response, shape: Shape) -> Response {
    let Shape {
        cut,
        stall,
        rate,
        drip,
        cap,
    } = shape;
    use axum::body::HttpBody as _;
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    if cut.is_some() || cap.is_some() {
        // The connection dies with this body; say so, as a server closing it would.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let chunk = match (drip, rate) {
        (Some((bytes, _)), _) => (bytes as usize).min(PART_READ),
        // About twenty pauses a second keep pacing smooth without tiny writes; at most one read
        // of a part file (see `PART_READ`) at a time.
        (None, Some(r)) => ((r / 20) as usize).clamp(1024, PART_READ),
        (None, None) => PART_READ,
    };
    struct Shaper {
        inner: axum::body::BodyDataStream,
        buf: Bytes,
        sent: u64,
        started: Instant,
        stall: Option<(u64, Duration)>,
        done: bool,
    }
    let shaper = Shaper {
        inner: body.into_data_stream(),
        buf: Bytes::new(),
        sent: 0,
        started: Instant::now(),
        stall,
        done: false,
    };
    let stream = futures::stream::unfold(shaper, move |mut s| async move {
        if s.done {
            return None;
        }
        if let Some(after) = cap
            && s.started.elapsed() >= after
        {
            s.done = true;
            let err = std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated gateway time limit",
            );
            return Some((Err(err), s));
        }
        if let Some((_, every)) = drip {
            tokio::time::sleep(every).await;
        }
        if s.buf.is_empty() {
            match s.inner.next().await {
                Some(Ok(b)) => s.buf = b,
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(std::io::Error::other(e)), s));
                }
                None => return None,
            }
        }
        let mut n = s.buf.len().min(chunk);
        if let Some((limit, reset)) = cut {
            let remaining = limit.saturating_sub(s.sent);
            if remaining == 0 {
                s.done = true;
                // Let the server flush the head and the bytes sent so far before the cut: ended
                // at once, hyper may drop its unflushed buffer with the connection, and the
                // client sees no response at all instead of a short one.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if reset {
                    let err = std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "simulated connection reset",
                    );
                    return Some((Err(err), s));
                }
                return None;
            }
            n = n.min(remaining as usize);
        }
        if let Some((at, delay)) = s.stall {
            if s.sent >= at {
                s.stall = None;
                tokio::time::sleep(delay).await;
            } else {
                n = n.min((at - s.sent) as usize);
            }
        }
        let piece = s.buf.split_to(n);
        s.sent += n as u64;
        if let Some(r) = rate {
            let due = s.started + Duration::from_secs_f64(s.sent as f64 / r.max(1) as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        Some((Ok(piece), s))
    });
    Response::from_parts(parts, Body::from_stream(stream))
}
