//! How a plan prints: the settings, a table of the triggers, a table of the steps, and the
//! summary; numbers without needless decimals.

use std::fmt::{self, Write as _};

use super::steps::Plan;

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.object, self.settings)?;
        writeln!(f)?;
        let rows: Vec<Vec<String>> = self
            .triggers
            .iter()
            .map(|t| {
                vec![
                    super::input::metric_label(&t.metric).to_owned(),
                    t.metric.clone(),
                    t.value.map_or("-".into(), format_number),
                    format_number(t.target),
                    match t.active {
                        Some(true) => "yes".into(),
                        Some(false) => "no".into(),
                        None => "-".into(),
                    },
                    t.ratio.map_or("-".into(), format_ratio),
                    match t.within_tolerance {
                        Some(true) => format!("within {}", self.tolerance),
                        Some(false) => format!("outside {}", self.tolerance),
                        None => "-".into(),
                    },
                    t.proposal.map_or("-".into(), |p| p.to_string()),
                    t.why.clone(),
                ]
            })
            .collect();
        write_table(
            f,
            &[
                ("TRIGGER", false),
                ("METRIC", false),
                ("VALUE", true),
                ("TARGET", true),
                ("ACTIVE", false),
                ("USAGE RATIO", true),
                ("TOLERANCE", false),
                ("PROPOSAL", true),
                ("WHY", false),
            ],
            &rows,
        )?;
        writeln!(f)?;
        let rows: Vec<Vec<String>> = self
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.name.to_owned(),
                    s.replicas.map_or("-".into(), |n| n.to_string()),
                    s.why.clone(),
                ]
            })
            .collect();
        write_table(
            f,
            &[("STEP", false), ("REPLICAS", true), ("WHY", false)],
            &rows,
        )?;
        writeln!(f)?;
        writeln!(f, "{}", self.summary)
    }
}

/// Columns as wide as their widest cell; the last column is not padded.
fn write_table(
    f: &mut fmt::Formatter<'_>,
    headers: &[(&str, bool)],
    rows: &[Vec<String>],
) -> fmt::Result {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    let header: Vec<String> = headers.iter().map(|(h, _)| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let (width, right) = (widths[i], headers[i].1);
            if i + 1 == row.len() {
                line.push_str(cell);
            } else if right {
                let _ = write!(line, "{cell:>width$}  ");
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Whole numbers without a fraction, others with up to three decimals.
pub(super) fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

pub(super) fn format_ratio(ratio: f64) -> String {
    if ratio.is_finite() {
        format_number((ratio * 1000.0).round() / 1000.0)
    } else {
        "inf".into()
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::input::TriggerValue;
    use crate::plan::input::tests::{ORDERS, source};
    use crate::plan::plan;

    #[test]
    fn plans_print_a_table_and_a_summary() {
        let mut s = source(ORDERS).unwrap();
        s.set_values(&[
            TriggerValue {
                index: 0,
                value: 450.0,
            },
            TriggerValue {
                index: 1,
                value: 30.0,
            },
        ])
        .unwrap();
        s.input.current_replicas = Some(2);
        let text = plan(&s.input).to_string();
        // ceil(450 / 100) = 5, ceil(30 / 20) = 2; max(2 × 2, 4) = 4 from 2.
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("s0 "))
            .unwrap()
            .split_whitespace()
            .collect();
        // TRIGGER METRIC VALUE TARGET ACTIVE USAGE-RATIO TOLERANCE PROPOSAL: 450 / (100 × 2) = 2.25.
        assert_eq!(
            row[..10],
            [
                "s0",
                "s0-kafka-orders",
                "450",
                "100",
                "yes",
                "2.25",
                "outside",
                "[0.9,",
                "1.1]",
                "5"
            ],
            "{text}"
        );
        assert!(text.contains("ceil(450 / 100) = 5"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("result") && l.contains(" 4  from 2 to 4")),
            "{text}"
        );
        assert!(
            text.ends_with("it goes on toward 5 in the next syncs (every 15 s).\n"),
            "{text}"
        );
    }
}
