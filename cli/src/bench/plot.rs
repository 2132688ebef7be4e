//! `shmpipe bench --plot FILE.svg`: the run's results as one SVG (plotters, SVG backend only).
//!
//! - Latency (when measured): one curve per transport, the one-way latency (log scale) against
//!   the percentile, read from each run's HdrHistogram. The percentile axis is in "nines"
//!   (x = -log10(1 - q): 90% at 1, 99% at 2, 99.9% at 3, ...) up to the rarest iteration
//!   measured, so the tail is as wide as the median.
//! - Throughput (when measured): one horizontal bar per transport and message size, msgs/s on a
//!   log scale, grouped by size, coloured by family (ours, raw baseline, in-process, another
//!   crate); fanout rows are labelled with their subscriber count ("64 B shm-bcast-block x4").
//! - Fanout latency (when measured): as the latency chart, one curve per transport and
//!   subscriber count, every subscriber's one-way latencies (send timestamp to arrival) together.
//!
//! Crossover results are not plotted (the table shows them).

use super::{Family, Row, Scenario};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const WIDTH: u32 = 1100;
const LATENCY_HEIGHT: u32 = 560;
/// Right of the latency chart: its legend.
const LEGEND_WIDTH: u32 = 230;
/// Pixels per throughput bar, and around them.
const BAR_ROW: u32 = 18;
const THROUGHPUT_EXTRA: u32 = 130;

/// Colours of the throughput bars, and the line width of latency curves, by family.
fn family_style(f: Family) -> (RGBColor, &'static str) {
    match f {
        Family::Ours => (RGBColor(0x1f, 0x77, 0xb4), "shmpipe transport"),
        Family::Raw => (RGBColor(0x7f, 0x7f, 0x7f), "raw baseline (libc/std)"),
        Family::Inproc => (RGBColor(0x2c, 0xa0, 0x2c), "in-process (two threads)"),
        Family::Crate => (RGBColor(0xff, 0x7f, 0x0e), "other crate (ipmpsc)"),
    }
}

/// Distinct colours for the latency curves.
const CURVE_COLOURS: [RGBColor; 12] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0xaa, 0x66, 0x00),
];

fn err(e: impl std::fmt::Display) -> String {
    format!("plotting: {e}")
}

/// "1.5 µs"-style label of a value in ns.
fn ns_label(ns: f64) -> String {
    let (v, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    format!("{} {unit}", trim(v))
}

/// "2.5M"-style label of a rate.
fn rate_label(r: f64) -> String {
    let (v, unit) = if r >= 1e9 {
        (r / 1e9, "G")
    } else if r >= 1e6 {
        (r / 1e6, "M")
    } else if r >= 1e3 {
        (r / 1e3, "k")
    } else {
        (r, "")
    };
    format!("{}{unit}", trim(v))
}

/// At most 3 significant digits, no trailing zeroes.
fn trim(v: f64) -> String {
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The percentile at `nines` (x = -log10(1 - q)), as a label: 0 → "0%", 2 → "99%".
fn percentile_label(nines: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-nines));
    let digits = (nines.ceil() as usize).saturating_sub(2).min(6);
    let s = format!("{p:.digits$}");
    format!("{s}%")
}

/// Draws the results in `rows` into a new SVG file at `path`.
pub(super) fn write(path: &Path, rows: &[Row]) -> Result<(), String> {
    let latency: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Latency && r.distribution.is_some())
        .collect();
    let fanout: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Fanout && r.distribution.is_some())
        .collect();
    let mut throughput: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            matches!(
                r.scenario,
                Scenario::Throughput | Scenario::Mpmc | Scenario::Fanout
            ) && r.msgs_per_s.is_some_and(|r| r > 0.0)
        })
        .collect();
    // Grouped by size, each group in the report's transport order (sort is stable).
    throughput.sort_by_key(|r| (r.size, r.scenario as u8));
    if latency.is_empty() && throughput.is_empty() && fanout.is_empty() {
        return Err("plotting: no latency or throughput result to plot".into());
    }
    let lat_h = if latency.is_empty() { 0 } else { LATENCY_HEIGHT };
    let fan_h = if fanout.is_empty() { 0 } else { LATENCY_HEIGHT };
    let thr_h = if throughput.is_empty() {
        0
    } else {
        THROUGHPUT_EXTRA + BAR_ROW * throughput.len() as u32
    };
    let root = SVGBackend::new(path, (WIDTH, lat_h + fan_h + thr_h)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, rest) = root.split_vertically(lat_h);
    let (middle, bottom) = rest.split_vertically(fan_h);
    if !latency.is_empty() {
        latency_chart(
            &top,
            &latency,
            "One-way latency (round trip / 2) by percentile, 8-byte ping-pong, warm-up excluded",
        )?;
    }
    if !fanout.is_empty() {
        latency_chart(
            &middle,
            &fanout,
            "Fanout: one-way latency (send timestamp to arrival) by percentile, 64 B, all subscribers",
        )?;
    }
    if !throughput.is_empty() {
        throughput_chart(&bottom, &throughput)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn latency_chart(area: &Area, rows: &[&Row], caption: &str) -> Result<(), String> {
    // Each curve: (nines, one-way ns) from the histogram's quantile iteration, which steps
    // finer towards the tail; the last point (q = 1, the max) is put at 1 - 1/n.
    let curves: Vec<(&Row, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|row| {
            let l = row.distribution.as_ref().expect("filtered");
            let cap = (l.len().max(1) as f64).log10();
            let pts = l
                .histogram()
                .iter_quantiles(4)
                .map(|v| {
                    let q = v.quantile_iterated_to();
                    let x = if q >= 1.0 {
                        cap
                    } else {
                        (-(1.0 - q).log10()).min(cap)
                    };
                    (x.max(0.0), (v.value_iterated_to() as f64).max(1.0))
                })
                .collect();
            (*row, pts)
        })
        .collect();
    let x_max = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(1.0f64, f64::max);
    let (lo, hi) = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold((f64::MAX, 1.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (plot_area, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (lo * 0.8..hi * 1.25).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(x_max.ceil() as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| ns_label(*y))
        .x_desc("percentile")
        .y_desc("one-way latency")
        .draw()
        .map_err(err)?;
    // The legend beside the chart (inside, it would hide curves): a line sample, the transport
    // and its p50 / p99 / p99.9 / max.
    let text = |size| TextStyle::from(("sans-serif", size).into_font());
    legend_area
        .draw(&Text::new("p50 / p99 / p99.9 / max", (34, 50), text(12)))
        .map_err(err)?;
    for (i, (row, pts)) in curves.into_iter().enumerate() {
        let colour = CURVE_COLOURS[i % CURVE_COLOURS.len()];
        let width = if row.transport.family() == Family::Ours {
            3
        } else {
            1
        };
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(width)))
            .map_err(err)?;
        let y = 74 + 34 * i as i32;
        let [p50, p99, p999, max] = row.latency.unwrap_or_default();
        let values = [p50, p99, p999, max].map(|v| ns_label(v as f64)).join(" / ");
        legend_area
            .draw(&PathElement::new(
                [(4, y + 6), (28, y + 6)],
                colour.stroke_width(width),
            ))
            .and_then(|()| legend_area.draw(&Text::new(row.label(), (34, y), text(13))))
            .and_then(|()| legend_area.draw(&Text::new(values, (34, y + 15), text(11))))
            .map_err(err)?;
    }
    Ok(())
}

fn throughput_chart(area: &Area, rows: &[&Row]) -> Result<(), String> {
    let rates: Vec<f64> = rows.iter().map(|r| r.msgs_per_s.unwrap_or(1.0)).collect();
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, 1.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    // Whole decades, with room right of the longest bar for its value.
    let x_lo = 10f64.powf((lo / 2.0).log10().floor());
    let x_hi = 10f64.powf((hi * 4.0).log10().ceil());
    let names: Vec<String> = rows
        .iter()
        .map(|r| match r.scenario {
            Scenario::Mpmc => format!(
                "{} B {} {}x{}",
                r.size,
                r.transport.name(),
                super::mpmc::PRODUCERS,
                super::mpmc::CONSUMERS
            ),
            _ => format!("{} B {}", r.size, r.label()),
        })
        .collect();
    let n = rows.len();
    let (plot_area, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(
            "Throughput: messages per second, one stream between two processes (log scale)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(150)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (0..n).into_segmented())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            // Top to bottom in report order: segment 0 is at the bottom of the axis.
            SegmentValue::CenterOf(i) if *i < n => names[n - 1 - *i].clone(),
            _ => String::new(),
        })
        .x_label_formatter(&|x| rate_label(*x))
        .x_desc("msgs/s")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    for (i, (row, &rate)) in rows.iter().zip(&rates).enumerate() {
        let seg = n - 1 - i;
        let (colour, _) = family_style(row.transport.family());
        let mut bar = Rectangle::new(
            [
                (x_lo, SegmentValue::Exact(seg)),
                (rate, SegmentValue::Exact(seg + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(2, 2, 0, 0);
        chart.draw_series(std::iter::once(bar)).map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {}", rate_label(rate)),
                (rate, SegmentValue::CenterOf(seg)),
                TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            )))
            .map_err(err)?;
    }
    // Beside the chart, a legend of the families present.
    let mut shown = Vec::new();
    for row in rows {
        let f = row.transport.family();
        if shown.contains(&f) {
            continue;
        }
        let y = 50 + 22 * shown.len() as i32;
        shown.push(f);
        let (colour, what) = family_style(f);
        legend_area
            .draw(&Rectangle::new([(4, y), (22, y + 12)], colour.filled()))
            .and_then(|()| {
                legend_area.draw(&Text::new(
                    what,
                    (28, y),
                    TextStyle::from(("sans-serif", 12).into_font()),
                ))
            })
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert_eq!(ns_label(65.0), "65 ns");
        assert_eq!(ns_label(20_800.0), "20.8 µs");
        assert_eq!(rate_label(9_600_000.0), "9.6M");
        assert_eq!(rate_label(1e6), "1M");
    }
}
