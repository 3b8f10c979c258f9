//! `failover-timeline.svg`: the requests of each failover scenario around
//! the failure, one panel per contender and scenario: x = when the request
//! was sent (ms from the failure), y = its round trip (ms), coloured by the
//! backend that answered; requests nobody answered are red crosses on the
//! top edge (the client's 300 ms budget).

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::Scenario;

/// The window shown around the failure (ms).
const FROM_MS: f64 = -50.0;
const TO_MS: f64 = 200.0;
/// The client's budget per request (ms): where unanswered requests go.
const BUDGET_MS: f64 = 300.0;

pub fn plot(path: &Path, scenarios: &[Scenario]) -> anyhow::Result<()> {
    let panels = scenarios.len().max(1);
    let height = 260 * panels as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).context("drawing the timeline")?;
    let areas = root.split_evenly((panels, 1));
    for (area, s) in areas.iter().zip(scenarios) {
        panel(area, s).with_context(|| format!("plotting {} / {}", s.contender, s.scenario))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    s: &Scenario,
) -> anyhow::Result<()> {
    let lost = s
        .timeline
        .iter()
        .filter(|(t, who, _)| *t >= 0.0 && who.is_none())
        .count();
    let title = format!(
        "{}: {} (recovery {:.1} ms, {lost} requests lost)",
        s.contender,
        s.scenario,
        s.recovery_ms.first().copied().unwrap_or(f64::NAN)
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(FROM_MS..TO_MS, 0.0..BUDGET_MS * 1.05)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("request sent, ms from the failure")
        .y_desc("round trip, ms")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (0.0, BUDGET_MS * 1.05)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let window = |t: f64| (FROM_MS..=TO_MS).contains(&t);
    for (name, colour) in [("b1", BLUE), ("b2", GREEN)] {
        chart
            .draw_series(
                s.timeline
                    .iter()
                    .filter(|(t, who, _)| window(*t) && who.as_deref() == Some(name))
                    .map(|(t, _, rtt)| {
                        Circle::new((*t, rtt.unwrap_or(0.0).min(BUDGET_MS)), 2, colour.filled())
                    }),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("answered by {name}"))
            .legend(move |(x, y)| Circle::new((x, y), 3, colour.filled()));
    }
    chart
        .draw_series(
            s.timeline
                .iter()
                .filter(|(t, who, _)| window(*t) && who.is_none())
                .map(|(t, _, _)| Cross::new((*t, BUDGET_MS), 3, RED.stroke_width(1))),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("no answer within 300 ms")
        .legend(|(x, y)| Cross::new((x, y), 3, RED.stroke_width(1)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
