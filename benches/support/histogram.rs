//! Histogram arithmetic the benches share: quantiles of the observations a Prometheus
//! histogram gained between two scrapes of spillway's `/metrics`.

/// The q-quantile of the observations between two cumulative histograms, interpolated within
/// its bucket (as Prometheus' histogram_quantile does).
pub fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let earlier = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - earlier)
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, cumulative) in counts {
        if cumulative >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = cumulative - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, cumulative);
    }
    None
}
