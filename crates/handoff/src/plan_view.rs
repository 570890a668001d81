//! `handoff plan` and the measured side of `report` / `history`: a
//! deployment's predicted steps with a capacity chart, strategies side by
//! side, and the prediction beside what was measured.

use handoff_api::types::{DeploymentView, PlanBody, PlanView};
use handoff_controller::predict::{fmt_ms, Comparison, Prediction};

use crate::client::Client;

pub fn plan(c: &Client, service: &str, body: PlanBody, json: bool) -> anyhow::Result<()> {
    let v: PlanView = c.json(
        "POST",
        &format!("/services/{service}/plan"),
        Some(serde_json::to_string(&body)?),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "plan for {}: {} → {} (a dry run: nothing changes)\n",
        v.service, v.from, v.to
    );
    for p in &v.plans {
        print_plan(p);
        println!();
    }
    if v.plans.len() > 1 {
        side_by_side(&v.plans);
    }
    Ok(())
}

fn heading(p: &Prediction) -> String {
    match (p.strategy.as_str(), p.batch_size) {
        ("in-place", Some(b)) => format!(
            "in-place, {} instances in {} batch{} of {b}",
            p.desired,
            p.batches,
            if p.batches == 1 { "" } else { "es" }
        ),
        (s, _) => format!("{s}, {} instances", p.desired),
    }
}

fn print_plan(p: &Prediction) {
    println!("{}", heading(p));
    // What a user waits for first: when the new revision alone serves.
    // Blue/green's retention comes after that and is said apart.
    if p.strategy == "blue-green" {
        println!(
            "  the new revision serves alone at {}; blue is then retained {} for an instant rollback (done at {})",
            fmt_ms(p.serving_ms),
            fmt_ms(p.timings.retention_ms),
            fmt_ms(p.duration_ms)
        );
    } else {
        println!(
            "  the new revision serves alone at {}",
            fmt_ms(p.serving_ms)
        );
    }
    if let Some(why) = &p.batch_choice {
        println!("  batch: {why}");
    }
    println!(
        "  {:>3}  {:>9}  {:>9}  {:<14} step",
        "#", "at", "takes", "in service"
    );
    let top = p.desired.max(1);
    for s in &p.steps {
        println!(
            "  {:>3}  {:>9}  {:>9}  {:<14} {}",
            s.n,
            fmt_ms(s.at_ms),
            fmt_ms(s.ms),
            format!(
                "{}/{} {}",
                s.in_service_min,
                p.desired,
                bar(s.in_service_min, top, 4)
            ),
            s.message
        );
        for b in &s.basis {
            println!("  {:>41} {b}", "");
        }
    }
    let (until, note) = if p.strategy == "blue-green" {
        (
            p.serving_ms,
            format!(
                "until the cut-over; then blue is retained for {}",
                fmt_ms(p.timings.retention_ms)
            ),
        )
    } else {
        (p.duration_ms, String::new())
    };
    println!(
        "  capacity {}  ({} in service over {}{}{})",
        chart(&p.capacity, until, top, 40),
        p.desired,
        fmt_ms(until),
        if note.is_empty() { "" } else { ", " },
        note
    );
    if p.strategy == "blue-green" {
        println!(
            "  total {} (of which blue's retention {})",
            fmt_ms(p.duration_ms),
            fmt_ms(p.timings.retention_ms)
        );
    } else {
        println!("  total {}", fmt_ms(p.duration_ms));
    }
    println!(
        "  capacity floor {}/{} ({}%)",
        p.capacity_floor,
        p.desired,
        p.capacity_floor * 100 / top
    );
    println!("  mixed versions {}", fmt_ms(p.mixed_window_ms));
    println!(
        "  instances at peak {} ({} extra)",
        p.peak_instances, p.extra_instances
    );
    println!("  rollback: {}", p.rollback.summary);
}

/// `n` of `of` as a bar `width` cells wide.
fn bar(n: usize, of: usize, width: usize) -> String {
    let full = (n * width).div_ceil(of.max(1)).min(width);
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

/// The capacity step function as a sparkline of in service ÷ desired (a
/// full cell is 100 % or more): each column shows the lowest capacity in
/// its span, so a dip never hides between samples.
pub fn chart(points: &[(u64, usize)], until: u64, desired: usize, width: usize) -> String {
    const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = desired.max(1);
    let at = |t: u64| points.iter().rev().find(|p| p.0 <= t).map_or(0, |p| p.1);
    let span = until.max(1);
    (0..width)
        .map(|i| {
            let (a, b) = (
                span * i as u64 / width as u64,
                span * (i as u64 + 1) / width as u64,
            );
            let low = points
                .iter()
                .filter(|p| p.0 > a && p.0 < b)
                .map(|p| p.1)
                .chain([at(a)])
                .min()
                .unwrap_or(0);
            LEVELS[(low * 8).div_ceil(top).min(8)]
        })
        .collect()
}

fn side_by_side(plans: &[Prediction]) {
    let col = 16;
    let row = |name: &str, f: &dyn Fn(&Prediction) -> String| {
        print!("  {name:<22}");
        for p in plans {
            print!("{:<col$}", f(p));
        }
        println!();
    };
    println!("side by side:");
    row("", &|p| p.strategy.clone());
    row("new revision serves", &|p| {
        format!("at {}", fmt_ms(p.serving_ms))
    });
    row("total", &|p| fmt_ms(p.duration_ms));
    row("capacity floor", &|p| {
        format!(
            "{}/{} ({}%)",
            p.capacity_floor,
            p.desired,
            p.capacity_floor * 100 / p.desired.max(1)
        )
    });
    row("mixed versions", &|p| fmt_ms(p.mixed_window_ms));
    row("extra instances", &|p| p.extra_instances.to_string());
    row("rollback", &|p| match p.rollback.flip_ms {
        Some(f) => format!("flip ~{}", fmt_ms(f)),
        None => format!("~{}", fmt_ms(p.rollback.redeploy_ms)),
    });
}

/// Predicted beside measured, for `report`.
pub fn print_comparison(c: &Comparison) {
    println!("predicted beside measured:");
    println!("  {:>3}  {:>9}  {:>9}  step", "#", "predicted", "measured");
    for s in &c.steps {
        println!(
            "  {:>3}  {:>9}  {:>9}  {}",
            s.n,
            fmt_ms(s.predicted_ms),
            s.measured_ms.map_or("—".to_string(), fmt_ms),
            s.message
        );
    }
    println!(
        "  {:>3}  {:>9}  {:>9}  total",
        "",
        fmt_ms(c.predicted_ms),
        fmt_ms(c.measured_ms)
    );
    for line in &c.callouts {
        println!("  ! {line}");
    }
}

/// One line per deployment with its headline figures.
pub fn print_history(list: &[DeploymentView]) {
    println!(
        "{:<12} {:<22} {:<12} {:<12} {:>9} {:>9} {:>7} {:>9} {:>8} {:>5}",
        "id",
        "revisions",
        "strategy",
        "status",
        "took",
        "predicted",
        "floor",
        "mixed",
        "requests",
        "5xx"
    );
    for d in list {
        let r = d.report.as_ref();
        let (req, e5) = r.map_or((0, 0), |r| {
            r.per_revision
                .iter()
                .fold((0, 0), |(a, b), x| (a + x.requests, b + x.errors_5xx))
        });
        let dash = || "—".to_string();
        println!(
            "{:<12} {:<22} {:<12} {:<12} {:>9} {:>9} {:>7} {:>9} {:>8} {:>5}",
            d.id,
            format!("{} → {}", d.from, d.to),
            d.strategy.as_str(),
            d.status.as_str(),
            r.map_or_else(dash, |r| fmt_ms(r.duration_ms)),
            d.plan.as_ref().map_or_else(dash, |p| fmt_ms(p.duration_ms)),
            r.map_or_else(dash, |r| format!("{}/{}", r.capacity_floor, r.desired)),
            r.map_or_else(dash, |r| fmt_ms(r.mixed_window_ms)),
            req,
            e5
        );
        if let Some(why) = &d.reason {
            println!("{:<12} {why}", "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_shows_every_dip() {
        // 4 in service, a 100 ms dip to 2 at 1 s, on a 10 s line of 10.
        let c = chart(&[(0, 4), (1000, 2), (1100, 4)], 10_000, 4, 10);
        assert_eq!(c, "█▄████████");
        assert_eq!(chart(&[(0, 0), (500, 3)], 1000, 3, 2), " █");
        assert_eq!(bar(2, 4, 4), "██░░");
        assert_eq!(bar(8, 4, 4), "████");
    }
}
