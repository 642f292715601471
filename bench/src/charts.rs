//! SVG charts of a run's figures, written beside its JSON: delivery rate
//! against `max_in_flight` with the bare call's line, publish ratios per
//! payload and concurrency, RSS over time during the burst, memory a
//! handler link at scale. Plain SVG
//! text: a chart library would be the heaviest dependency of the crate.

use std::fmt::Write as _;
use std::path::Path;

use crate::Report;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
/// Room for the axes' labels and the title.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// Writes every chart whose figures `report` holds into `dir`; returns the
/// files written.
pub(crate) fn write_all(report: &Report, dir: &Path) -> std::io::Result<Vec<String>> {
    let mut written = Vec::new();
    let mut put = |name: &str, svg: Option<String>| -> std::io::Result<()> {
        if let Some(svg) = svg {
            let path = dir.join(name);
            std::fs::write(&path, svg)?;
            written.push(path.display().to_string());
        }
        Ok(())
    };
    put("bench-delivery.svg", delivery(report))?;
    put("bench-publish.svg", publish(report))?;
    put("bench-rss.svg", rss(report))?;
    put("bench-links.svg", links(report))?;
    Ok(written)
}

/// Delivery rate through the provider and the bare call's, per
/// `max_in_flight`.
fn delivery(report: &Report) -> Option<String> {
    let levels = [1, 16, 128];
    let provider: Option<Vec<f64>> = levels
        .iter()
        .map(|m| report.value(&format!("delivery max_in_flight {m}")))
        .collect();
    let bare: Option<Vec<f64>> = levels
        .iter()
        .map(|m| report.value(&format!("bare call 16 B c{m}, alongside")))
        .collect();
    let labels: Vec<String> = levels.iter().map(|m| m.to_string()).collect();
    Some(lines(
        "Core delivery to a no-op handle-message",
        "max_in_flight (calls at once)",
        "messages per second",
        &labels,
        &[
            ("through the provider", provider?),
            ("bare wRPC call", bare?),
        ],
    ))
}

/// `publish` as a ratio to the bare call, per payload and concurrency, and
/// confirmed publish as a ratio to the same work without the provider.
fn publish(report: &Report) -> Option<String> {
    let mut bars = Vec::new();
    for label in ["16 B", "16 KiB"] {
        for c in [1, 16, 128] {
            let ratio = report.value(&format!("publish {label} c{c} / bare"))?;
            bars.push((format!("{label} c{c}"), ratio));
        }
    }
    for c in [1, 16, 128] {
        let name = format!("confirmed publish 16 B c{c} / bare call then bare JetStream");
        if let Some(ratio) = report.value(&name) {
            bars.push((format!("JS c{c}"), ratio));
        }
    }
    Some(columns(
        "publish through the provider, as a ratio to its floor",
        &bars,
        0.9,
    ))
}

/// The provider's RSS while a burst goes into a slow handler.
fn rss(report: &Report) -> Option<String> {
    let samples = report.samples.get("rss during the burst")?;
    Some(xy(
        "Provider RSS during a burst into a 20 ms handler",
        "seconds since the burst began",
        "RSS (MiB)",
        samples,
    ))
}

/// Resident memory a handler link, per link count, through the provider
/// and for the bare client's subscriptions (`--only links`).
fn links(report: &Report) -> Option<String> {
    let series = [
        (
            "provider, a component each",
            "links, a component each: RSS a link",
        ),
        (
            "provider, one component",
            "links, one component: RSS a link",
        ),
        (
            "bare client",
            "subscriptions, bare client: RSS a subscription",
        ),
    ];
    let counts: Vec<usize> = [100, 1_000, 10_000]
        .into_iter()
        .filter(|n| {
            series
                .iter()
                .all(|(_, figure)| report.value(&format!("{n} {figure}")).is_some())
        })
        .collect();
    if counts.is_empty() {
        return None;
    }
    let values = |figure: &str| -> Vec<f64> {
        counts
            .iter()
            .filter_map(|n| report.value(&format!("{n} {figure}")))
            .collect()
    };
    let labels: Vec<String> = counts.iter().map(usize::to_string).collect();
    let lines_of: Vec<(&str, Vec<f64>)> = series
        .iter()
        .map(|(name, figure)| (*name, values(figure)))
        .collect();
    Some(lines(
        "Resident memory a handler link (one subscription each)",
        "handler links (subscriptions)",
        "KiB a link",
        &labels,
        &lines_of,
    ))
}

/// An empty chart with its title and axis labels; `y_max` sets the scale
/// of the y axis, which gets five gridlines.
fn frame(title: &str, x_label: &str, y_label: &str, y_max: f64) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        WIDTH / 2.0,
        escape(title),
        LEFT + plot_width() / 2.0,
        HEIGHT - 12.0,
        escape(x_label),
        TOP + plot_height() / 2.0,
        escape(y_label),
    );
    for step in 0..=5 {
        let value = y_max * f64::from(step) / 5.0;
        let y = y_of(value, y_max);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(value)
        );
    }
    svg
}

/// Lines over categorical x positions, one per series, with a legend.
fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    labels: &[String],
    series: &[(&str, Vec<f64>)],
) -> String {
    let y_max = nice_max(series.iter().flat_map(|(_, v)| v.iter().copied()));
    let mut svg = frame(title, x_label, y_label, y_max);
    let x_at = |i: usize| LEFT + plot_width() * (i as f64 + 0.5) / labels.len() as f64;
    for (i, label) in labels.iter().enumerate() {
        x_tick(&mut svg, x_at(i), label);
    }
    for (n, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (x_at(i), y_of(*v, y_max)))
            .collect();
        polyline(&mut svg, colour, &points);
        for (x, y) in &points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{colour}\"/>"
            );
        }
        legend(&mut svg, n, name, colour);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One column per figure, with a dashed line at `target`.
fn columns(title: &str, bars: &[(String, f64)], target: f64) -> String {
    let y_max = nice_max(bars.iter().map(|(_, v)| *v).chain([target]));
    let mut svg = frame(title, "payload and concurrency", "x of the floor", y_max);
    let slot = plot_width() / bars.len() as f64;
    for (i, (label, value)) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let y = y_of(*value, y_max);
        let colour = if label.starts_with("JS") {
            COLOURS[1]
        } else {
            COLOURS[0]
        };
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{value:.2}</text>\
             <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            slot * 0.7,
            TOP + plot_height() - y,
            x + slot * 0.35,
            y - 4.0,
            x + slot * 0.35,
            TOP + plot_height() + 16.0,
            escape(label)
        );
    }
    let y = y_of(target, y_max);
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#d62728\" \
         stroke-dasharray=\"6 4\"/>",
        WIDTH - RIGHT
    );
    legend(&mut svg, 0, "publish / bare call", COLOURS[0]);
    legend(&mut svg, 1, "JS: confirmed / call + JetStream", COLOURS[1]);
    legend(&mut svg, 2, &format!("target {target}x"), "#d62728");
    svg.push_str("</svg>\n");
    svg
}

/// A line through `(x, y)` points on linear axes.
fn xy(title: &str, x_label: &str, y_label: &str, points: &[(f64, f64)]) -> String {
    let y_max = nice_max(points.iter().map(|(_, y)| *y));
    let x_max = points.iter().map(|(x, _)| *x).fold(0.0, f64::max).max(1e-9);
    let mut svg = frame(title, x_label, y_label, y_max);
    let x_of = |x: f64| LEFT + plot_width() * x / x_max;
    for step in 0..=4 {
        let x = x_max * f64::from(step) / 4.0;
        x_tick(&mut svg, x_of(x), &short(x));
    }
    let line: Vec<(f64, f64)> = points
        .iter()
        .map(|(x, y)| (x_of(*x), y_of(*y, y_max)))
        .collect();
    polyline(&mut svg, COLOURS[0], &line);
    svg.push_str("</svg>\n");
    svg
}

/// A label under the x axis at `x`.
fn x_tick(svg: &mut String, x: f64, label: &str) {
    let _ = writeln!(
        svg,
        "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        TOP + plot_height() + 18.0,
        escape(label)
    );
}

/// A line through points already in the chart's coordinates.
fn polyline(svg: &mut String, colour: &str, points: &[(f64, f64)]) {
    let points: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
}

fn legend(svg: &mut String, n: usize, name: &str, colour: &str) {
    let y = TOP + 14.0 + 16.0 * n as f64;
    let x = WIDTH - RIGHT - 220.0;
    let _ = writeln!(
        svg,
        "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
         <text x=\"{}\" y=\"{y}\">{}</text>",
        y - 10.0,
        x + 18.0,
        escape(name)
    );
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

fn y_of(value: f64, y_max: f64) -> f64 {
    TOP + plot_height() * (1.0 - value / y_max)
}

/// A round number above every value: 1, 2 or 5 times a power of ten.
fn nice_max(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.filter(|v| v.is_finite()).fold(0.0, f64::max);
    if max <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|candidate| *candidate >= max * 1.05)
        .unwrap_or(10.0 * power)
}

/// `45000` as `45k`, `0.9` as `0.9`.
fn short(value: f64) -> String {
    if value >= 1000.0 {
        format!("{}k", (value / 1000.0 * 10.0).round() / 10.0)
    } else {
        format!("{}", (value * 100.0).round() / 100.0)
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
