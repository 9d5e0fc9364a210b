//! Charts drawn as inline SVG by the server: line charts over a time window and bar charts. No
//! chart library in the browser; the markup is small (one polyline per series) and is replaced
//! whole by the live updates.

use maud::{html, Markup};

/// Plot area size in SVG user units (the SVG scales to its container).
const W: f64 = 560.0;
const H: f64 = 150.0;
/// Left margin for the axis labels, top/bottom margins.
const ML: f64 = 58.0;
const MT: f64 = 8.0;
const MB: f64 = 20.0;

/// Series colours, in order.
pub const COLOURS: [&str; 4] = ["#2f7ed8", "#e4572e", "#29a35a", "#8e44ad"];

/// One line of a chart: label and (time ms, value) points, oldest first.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Points.
    pub points: Vec<(u64, f64)>,
}

/// A line chart of `series` over the `window_ms` ending at `now_ms`. `fmt` formats values for
/// the axis and the legend (the legend shows each series' latest value).
pub fn line_chart(
    id: &str,
    title: &str,
    series: &[Series<'_>],
    now_ms: u64,
    window_ms: u64,
    fmt: fn(f64) -> String,
) -> Markup {
    let t0 = now_ms.saturating_sub(window_ms);
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let top = nice_max(max);
    let x = |t: u64| ML + (t.saturating_sub(t0) as f64 / window_ms.max(1) as f64) * W;
    let y = |v: f64| MT + H - (v / top).clamp(0.0, 1.0) * H;
    let polyline = |pts: &[(u64, f64)]| {
        let mut s = String::with_capacity(pts.len() * 14);
        for &(t, v) in pts.iter().filter(|p| p.0 >= t0) {
            s.push_str(&format!("{:.1},{:.1} ", x(t), y(v)));
        }
        s
    };
    let vb = format!("0 0 {} {}", ML + W + 4.0, MT + H + MB);
    html! {
        figure.chart #(id) {
            figcaption {
                (title)
                @for (i, s) in series.iter().enumerate() {
                    span.legend style={ "color:" (COLOURS[i % COLOURS.len()]) } {
                        "■ " (s.label) " "
                        b { (s.points.last().map_or_else(|| "-".to_owned(), |p| fmt(p.1))) }
                    }
                }
            }
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(vb) role="img" aria-label=(title) {
                @for frac in [0.0, 0.5, 1.0] {
                    line.grid x1=(ML) x2=(ML + W) y1=(y(top * frac)) y2=(y(top * frac)) {}
                    text.axis x=(ML - 4.0) y=(y(top * frac) + 4.0) text-anchor="end" { (fmt(top * frac)) }
                }
                text.axis x=(ML) y=(MT + H + 15.0) { (format!("-{} min", window_ms / 60_000)) }
                text.axis x=(ML + W) y=(MT + H + 15.0) text-anchor="end" { "now" }
                @for (i, s) in series.iter().enumerate() {
                    polyline fill="none" stroke=(COLOURS[i % COLOURS.len()]) stroke-width="1.6"
                        points=(polyline(&s.points)) {}
                }
            }
        }
    }
}

/// A horizontal bar chart: one bar per `(label, value)`, scaled to the largest.
pub fn bar_chart(id: &str, title: &str, bars: &[(String, f64)], fmt: fn(f64) -> String) -> Markup {
    let max = nice_max(bars.iter().map(|b| b.1).fold(0.0_f64, f64::max));
    let row = 22.0;
    let label_w = 80.0;
    let bar_w = 400.0;
    let h = row * bars.len().max(1) as f64 + 4.0;
    let vb = format!("0 0 {} {h}", label_w + bar_w + 90.0);
    html! {
        figure.chart #(id) {
            figcaption { (title) }
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(vb) role="img" aria-label=(title) {
                @for (i, (label, v)) in bars.iter().enumerate() {
                    @let yy = i as f64 * row + 2.0;
                    text.axis x=(label_w - 6.0) y=(yy + 15.0) text-anchor="end" { (label) }
                    rect x=(label_w) y=(yy) height=(row - 6.0)
                        width=(format!("{:.1}", (v / max).clamp(0.0, 1.0) * bar_w))
                        fill=(COLOURS[0]) {}
                    text.axis x=(label_w + bar_w + 6.0) y=(yy + 15.0) { (fmt(*v)) }
                }
            }
        }
    }
}

/// A round axis maximum at or above `v` (1, 2 or 5 × a power of ten; 1 for 0).
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(1000.0), 1000.0);
    }

    #[test]
    fn line_chart_draws_each_series_in_the_window() {
        let s = [Series {
            label: "in",
            points: vec![(0, 5.0), (60_000, 10.0), (120_000, 0.0)],
        }];
        let m = line_chart("c", "msgs", &s, 120_000, 60_000, |v| format!("{v}")).into_string();
        assert!(m.contains("<svg"), "{m}");
        // The point before the window is left out; two remain.
        let pts = m
            .split("points=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        assert_eq!(pts.split_whitespace().count(), 2, "{pts}");
        let b = bar_chart("b", "shards", &[("0".into(), 3.0)], |v| format!("{v}")).into_string();
        assert!(b.contains("<rect"), "{b}");
    }
}
