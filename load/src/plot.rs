//! One picture per run (SVG, plotters): latency percentiles over time, offered against
//! achieved throughput, the service's backlog, its memory. Healthy looks like four flat
//! lines with the achieved rate on top of the offered one.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::record::SecondView;
use crate::watch::Sample;

type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    unit: &str,
    x_max: f64,
    series: &[Series],
) -> Result<(), String> {
    let y_max = series
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max.max(1.0), 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc(unit)
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws the run into `path`.
///
/// # Errors
/// The file cannot be written.
#[allow(clippy::cast_precision_loss)]
pub fn draw(
    path: &Path,
    title: &str,
    timeline: &[SecondView],
    samples: &[Sample],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (1100, 1400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((4, 1));
    let x_max = timeline
        .len()
        .max(samples.last().map_or(0, |s| s.second.ceil() as usize)) as f64;
    let per_second = |pick: fn(&SecondView) -> Option<f64>| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter_map(|s| pick(s).map(|v| (s.second as f64 + 0.5, v)))
            .collect()
    };
    panel(
        &panels[0],
        "Latency from the scheduled start (POST /orders → 202)",
        "ms",
        x_max,
        &[
            ("p50", BLUE, per_second(|s| s.edge_ms.p50)),
            ("p95", RGBColor(230, 140, 0), per_second(|s| s.edge_ms.p95)),
            ("p99", RED, per_second(|s| s.edge_ms.p99)),
        ],
    )?;
    panel(
        &panels[1],
        "Throughput: offered and achieved",
        "requests/s",
        x_max,
        &[
            (
                "offered",
                RGBColor(150, 150, 150),
                per_second(|s| Some(s.offered as f64)),
            ),
            ("achieved", GREEN, per_second(|s| Some(s.completed as f64))),
            ("failed", RED, per_second(|s| Some(s.failed as f64))),
        ],
    )?;
    let sampled = |pick: fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter_map(|s| pick(s).map(|v| (s.second, v)))
            .collect()
    };
    panel(
        &panels[2],
        "Backlog (the service's own metrics)",
        "count",
        x_max,
        &[
            (
                "orders placed, not terminal",
                BLUE,
                sampled(|s| s.orders_in_flight),
            ),
            (
                "bus messages uncommitted",
                RGBColor(230, 140, 0),
                sampled(|s| s.uncommitted_messages),
            ),
            ("dead letters pending", RED, sampled(|s| s.dead_letters)),
        ],
    )?;
    panel(
        &panels[3],
        "Memory (resident set of the watched processes)",
        "MiB",
        x_max,
        &[("RSS", MAGENTA, sampled(|s| s.rss_mib))],
    )?;
    root.present().map_err(|e| e.to_string())
}
