//! `scoreland report`: one self-contained HTML file of charts over the warehouse's newest
//! nights, per model: the newest night's score histogram, deciles and tier mix, its top
//! influential factors, rows and null rate over the nights, and PSI drift with its 0.1 and
//! 0.25 bands; and the quality gate's newest results per pipeline (the `checks` table). Inline
//! SVG and CSS only: no script, nothing fetched (a Content-Security-Policy
//! forbids it), readable at a laptop's width and in print.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::ArrayWriter;
use scoreland_sink::{AsOf, SinkError, Warehouse};
use serde_json::{Map, Value};

/// The summary of one model on one night (a row of `summary`).
type Row = Map<String, Value>;

/// Builds the report over the newest `nights` score dates.
pub async fn render(warehouse: &Warehouse, nights: usize) -> Result<String, SinkError> {
    let summary = rows(warehouse, "SELECT * FROM summary ORDER BY score_date").await?;
    // The checks of each pipeline's newest run that has any (a warehouse without checks has
    // no table).
    let checks = if warehouse.delta_table("checks", None).await?.is_some() {
        rows(
            warehouse,
            "SELECT c.pipeline, CAST(c.night AS VARCHAR) AS night, c.\"check\", c.level, \
             c.value, c.bound, c.status, c.run_id FROM checks c \
             JOIN (SELECT pipeline, max(run_id) AS run_id FROM checks GROUP BY pipeline) n \
             ON c.pipeline = n.pipeline AND c.run_id = n.run_id \
             ORDER BY c.pipeline, c.\"check\"",
        )
        .await?
    } else {
        Vec::new()
    };
    // A warehouse may have no drift table yet; any other failure is the report's.
    let drift = if warehouse.delta_table("drift", None).await?.is_some() {
        rows(
            warehouse,
            "SELECT model, dataset_id, psi, status, CAST(computed_at AS VARCHAR) AS computed_at \
             FROM drift ORDER BY computed_at",
        )
        .await?
    } else {
        Vec::new()
    };
    let mut dates: Vec<String> = summary
        .iter()
        .filter_map(|r| text(r, "score_date"))
        .collect();
    dates.sort();
    dates.dedup();
    let keep: Vec<String> = dates
        .iter()
        .rev()
        .take(nights.max(1))
        .rev()
        .cloned()
        .collect();
    // One section per (dataset, model), its nights in date order.
    let mut models: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
    for r in &summary {
        if text(r, "score_date").is_some_and(|d| keep.contains(&d)) {
            let key = (
                text(r, "dataset_id").unwrap_or_default(),
                text(r, "model").unwrap_or_default(),
            );
            models.entry(key).or_default().push(r);
        }
    }
    let newest = keep.last().cloned().unwrap_or_else(|| "no night".into());
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Scores report — {newest}</title><style>{STYLE}</style></head><body>\
         <header><h1>Scores report</h1><p>Newest night <b>{newest}</b>; {} night(s) shown; \
         {} model(s). Written {} by scoreland {}.</p></header>",
        keep.len(),
        models.len(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        env!("CARGO_PKG_VERSION"),
    );
    if models.is_empty() {
        html.push_str(
            "<p class=\"empty\">The warehouse has no summary rows yet: run a pipeline first.</p>",
        );
    }
    html.push_str(&checks_section(&checks));
    for ((dataset, model), nights) in &models {
        let Some(last) = nights.last() else { continue };
        let night = text(last, "score_date").unwrap_or_default();
        let _ = write!(
            html,
            "<section><h2>{}</h2><p class=\"sub\">dataset {} · newest night {} · {} rows</p><div class=\"grid\">",
            esc(model),
            esc(dataset),
            esc(&night),
            num(last, "rows").unwrap_or(0.0)
        );
        let buckets: Vec<(String, f64)> = (0..10)
            .map(|i| {
                let key = format!("hist_{:02}_{:02}", i * 10, i * 10 + 10);
                (
                    format!("{}–{}", i * 10, i * 10 + 10),
                    num(last, &key).unwrap_or(0.0),
                )
            })
            .collect();
        html.push_str(&bars(
            &format!("Score histogram, {night}"),
            &buckets,
            "score",
            "rows",
        ));
        let deciles: Vec<(String, f64)> = [
            ("p10", "score_p10"),
            ("p20", "score_p20"),
            ("p30", "score_p30"),
            ("p40", "score_p40"),
            ("p50", "score_median"),
            ("p60", "score_p60"),
            ("p70", "score_p70"),
            ("p80", "score_p80"),
            ("p90", "score_p90"),
        ]
        .iter()
        .map(|(l, k)| (l.to_string(), num(last, k).unwrap_or(0.0)))
        .collect();
        html.push_str(&bars(
            &format!("Score deciles, {night}"),
            &deciles,
            "decile",
            "score (0–100)",
        ));
        let tiers: Vec<(String, f64)> = ["low", "medium", "high"]
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    num(last, &format!("tier_{t}")).unwrap_or(0.0),
                )
            })
            .collect();
        html.push_str(&bars(&format!("Tier mix, {night}"), &tiers, "tier", "rows"));
        let factors: Vec<(String, f64)> = text(last, "top_factors")
            .unwrap_or_default()
            .split(',')
            .filter_map(|f| {
                let (name, n) = f.rsplit_once(':')?;
                Some((name.to_string(), n.trim().parse().ok()?))
            })
            .collect();
        html.push_str(&bars(
            &format!("Top influential factors, {night}"),
            &factors,
            "factor",
            "rows naming it",
        ));
        let over = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(String, f64)> {
            nights
                .iter()
                .filter_map(|r| Some((text(r, "score_date")?, f(r)?)))
                .collect()
        };
        html.push_str(&line(
            &format!("Rows per night, to {night}"),
            &over(&|r| num(r, "rows")),
            "score date",
            "rows",
            &[],
        ));
        html.push_str(&line(
            &format!("Null rate per night, to {night}"),
            &over(&|r| {
                let rows = num(r, "rows")?;
                (rows > 0.0).then(|| {
                    100.0
                        * (num(r, "identity_nulls").unwrap_or(0.0)
                            + num(r, "score_nulls").unwrap_or(0.0))
                        / (2.0 * rows)
                })
            }),
            "score date",
            "% of identity and score values null",
            &[],
        ));
        let psi: Vec<(String, f64)> = drift
            .iter()
            .filter(|d| text(d, "model").as_deref() == Some(model.as_str()))
            .filter(|d| text(d, "dataset_id").as_deref() == Some(dataset.as_str()))
            .filter_map(|d| {
                let when = text(d, "computed_at")?;
                Some((when.get(..10)?.to_string(), num(d, "psi")?))
            })
            .collect();
        let psi: Vec<(String, f64)> = psi
            .iter()
            .rev()
            .take(nights.len().max(1))
            .rev()
            .cloned()
            .collect();
        html.push_str(&line(
            &format!("PSI drift against the previous run, to {night}"),
            &psi,
            "run date",
            "PSI",
            &[(0.1, "0.1 watch"), (0.25, "0.25 shifted")],
        ));
        html.push_str("</div></section>");
    }
    html.push_str("</body></html>\n");
    Ok(html)
}

/// The newest checks of each pipeline, as a table (nothing when there are none).
fn checks_section(checks: &[Row]) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let mut html = String::from(
        "<section><h2>Quality checks</h2><p class=\"sub\">each pipeline's newest checked run</p>\
         <table class=\"checks\"><thead><tr><th>pipeline</th><th>night</th><th>check</th>\
         <th>value</th><th>bound</th><th>level</th><th>status</th></tr></thead><tbody>",
    );
    for r in checks {
        let status = text(r, "status").unwrap_or_default();
        let value = num(r, "value").map_or_else(|| "—".to_string(), |v| format!("{v:.4}"));
        let _ = write!(
            html,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            // The class is one of the statuses scoreland writes, never the table's text.
            match status.as_str() {
                "pass" | "warn" | "fail" | "overridden" | "skipped" => status.as_str(),
                _ => "unknown",
            },
            esc(&text(r, "pipeline").unwrap_or_default()),
            esc(&text(r, "night").unwrap_or_default()),
            esc(&text(r, "check").unwrap_or_default()),
            esc(&value),
            esc(&text(r, "bound").unwrap_or_default()),
            esc(&text(r, "level").unwrap_or_default()),
            esc(&status),
        );
    }
    html.push_str("</tbody></table></section>");
    html
}

async fn rows(warehouse: &Warehouse, sql: &str) -> Result<Vec<Row>, SinkError> {
    let out = warehouse
        .query(&["summary", "drift", "checks"], AsOf::Published, sql)
        .await?;
    let batches: Vec<&RecordBatch> = out.batches.iter().collect();
    let mut writer = ArrayWriter::new(Vec::new());
    writer
        .write_batches(&batches)
        .and_then(|()| writer.finish())
        .map_err(|e| SinkError::Query {
            message: e.to_string(),
        })?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let parsed: Vec<Row> = serde_json::from_slice(&bytes).map_err(|e| SinkError::Query {
        message: e.to_string(),
    })?;
    Ok(parsed)
}

fn text(r: &Row, k: &str) -> Option<String> {
    match r.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

fn num(r: &Row, k: &str) -> Option<f64> {
    match r.get(k)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 560.0;
const H: f64 = 250.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 58.0;

/// A round upper bound for the axis and its five ticks.
fn axis_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let step = 10f64.powf(max.log10().floor());
    let m = (max / step).ceil() * step;
    if m < max { m + step } else { m }
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The frame of a chart: title, y axis with ticks and gridlines, axis titles.
fn frame(title: &str, y_max: f64, x_title: &str, y_title: &str, points: usize) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<figure class=\"chart\"><svg viewBox=\"0 0 {W} {H}\" role=\"img\" data-points=\"{points}\" \
         aria-label=\"{t}\"><title>{t}</title><text class=\"title\" x=\"{LEFT}\" y=\"20\">{t}</text>",
        t = esc(title)
    );
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = TOP + plot_h - plot_h * i as f64 / 4.0;
        let _ = write!(
            s,
            "<line class=\"gridline\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{:.1}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
         <text class=\"axis-title\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text class=\"axis-title\" transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        TOP + plot_h,
        W - RIGHT,
        TOP + plot_h,
        TOP + plot_h,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 6.0,
        esc(x_title),
        TOP + plot_h / 2.0,
        esc(y_title)
    );
    s
}

/// A bar chart of labelled values.
fn bars(title: &str, data: &[(String, f64)], x_title: &str, y_title: &str) -> String {
    if data.is_empty() {
        return format!(
            "<figure class=\"chart none\"><figcaption>{}: no data</figcaption></figure>",
            esc(title)
        );
    }
    let y_max = axis_max(data.iter().map(|(_, v)| *v).fold(0.0, f64::max));
    let mut s = frame(title, y_max, x_title, y_title, data.len());
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / data.len() as f64;
    for (i, (label, v)) in data.iter().enumerate() {
        let h = plot_h * v / y_max;
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let _ = write!(
            s,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{}: {}</title></rect>\
             <text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_h - h,
            slot * 0.7,
            esc(label),
            fmt_tick(*v),
            x + slot * 0.35,
            TOP + plot_h + 14.0,
            esc(&short(label, slot))
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// A line chart over dates, with optional horizontal bands (value, label).
fn line(
    title: &str,
    data: &[(String, f64)],
    x_title: &str,
    y_title: &str,
    bands: &[(f64, &str)],
) -> String {
    if data.is_empty() {
        return format!(
            "<figure class=\"chart none\"><figcaption>{}: no data yet (needs a run with a \
             baseline)</figcaption></figure>",
            esc(title)
        );
    }
    let top = data
        .iter()
        .map(|(_, v)| *v)
        .chain(bands.iter().map(|(b, _)| b * 1.2))
        .fold(0.0, f64::max);
    let y_max = axis_max(top);
    let mut s = frame(title, y_max, x_title, y_title, data.len());
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y_of = |v: f64| TOP + plot_h - plot_h * v / y_max;
    for (b, label) in bands {
        let _ = write!(
            s,
            "<line class=\"band\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"band-label\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            W - RIGHT - 2.0,
            y_of(*b) - 3.0,
            esc(label),
            y = y_of(*b)
        );
    }
    let step = if data.len() > 1 {
        plot_w / (data.len() - 1) as f64
    } else {
        0.0
    };
    let x_of = |i: usize| {
        if data.len() > 1 {
            LEFT + step * i as f64
        } else {
            LEFT + plot_w / 2.0
        }
    };
    let path: Vec<String> = data
        .iter()
        .enumerate()
        .map(|(i, (_, v))| format!("{:.1},{:.1}", x_of(i), y_of(*v)))
        .collect();
    let _ = write!(
        s,
        "<polyline class=\"line\" points=\"{}\"/>",
        path.join(" ")
    );
    let every = data.len().div_ceil(6).max(1);
    for (i, (label, v)) in data.iter().enumerate() {
        let _ = write!(
            s,
            "<circle class=\"dot\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>{}: {}</title></circle>",
            x_of(i),
            y_of(*v),
            esc(label),
            fmt_tick(*v)
        );
        if i % every == 0 || i + 1 == data.len() {
            // The end labels stay inside the chart.
            let anchor = match i {
                0 if data.len() > 1 => "start",
                _ if i + 1 == data.len() && data.len() > 1 => "end",
                _ => "middle",
            };
            let _ = write!(
                s,
                "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
                x_of(i),
                TOP + plot_h + 14.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg></figure>");
    s
}

/// A label cut to what fits under a bar.
fn short(label: &str, slot: f64) -> String {
    let fits = ((slot / 6.5) as usize).max(3);
    if label.chars().count() <= fits {
        label.to_string()
    } else {
        let cut: String = label.chars().take(fits.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2433;\
margin:0 auto;max-width:1200px;padding:16px 20px;background:#fff}h1{font-size:22px;margin:0 0 4px}\
h2{font-size:18px;margin:24px 0 2px}header p,.sub{color:#556;margin:0 0 8px}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px}\
figure{margin:0;border:1px solid #e3e6ee;border-radius:6px;padding:6px;break-inside:avoid}\
figure.none{color:#778;padding:16px}svg{width:100%;height:auto;display:block}\
.title{font-size:13px;font-weight:600;fill:#1d2433}.tick,.label{font-size:10px;fill:#556}\
.axis-title{font-size:11px;fill:#334}.gridline{stroke:#edf0f5}.axis{stroke:#99a}\
.bar{fill:#3b6fd8}.line{fill:none;stroke:#3b6fd8;stroke-width:2}.dot{fill:#3b6fd8}\
.band{stroke:#d9822b;stroke-dasharray:5 4}.band-label{font-size:10px;fill:#b5651d}\
section{break-inside:avoid-page}\
table.checks{border-collapse:collapse;font-size:13px}table.checks td,table.checks th{border-bottom:1px solid #e3e6ee;\
padding:3px 10px;text-align:left}tr.warn td{background:#fff6e6}tr.fail td,tr.overridden td{background:#fdeaea}\
@media print{body{max-width:none;padding:0}.grid{grid-template-columns:repeat(2,1fr)}\
figure{border-color:#ccc}}";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Check names carry model names from the platform's data, and a `checks` table can be
    /// written by anyone with the warehouse: nothing of them becomes markup.
    #[test]
    fn a_hostile_checks_table_stays_text() {
        let row = |check: &str, status: &str| -> Row {
            json!({"pipeline": "demo<script>", "night": "2026-12-05", "check": check,
                   "level": "error", "value": 1.5, "bound": "<= 1", "status": status})
            .as_object()
            .cloned()
            .unwrap()
        };
        let html = checks_section(&[
            row("model_rows.<img src=x onerror=alert(1)>", "fail"),
            row("drift.m", "pass\" onmouseover=\"x"),
        ]);
        assert!(
            !html.contains("<img") && !html.contains("<script"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        // A status scoreland does not write is no class name.
        assert!(html.contains("<tr class=\"unknown\">"), "{html}");
        assert!(!html.contains("class=\"pass\" onmouseover"), "{html}");
        assert!(checks_section(&[]).is_empty());
    }
}
