//! Kubernetes `resource.Quantity` strings for metric values, in the canonical DecimalSI form
//! the apiserver itself prints: integers plain or with an exact k/M/G/T/P/E suffix, fractions
//! in milli-units.
//!
//! The HPA reads `MilliValue()`, an `i64` of thousandths, so that is the precision and the range
//! we can carry: finer values are rounded up (a tiny backlog must not read as zero) and larger
//! ones are capped rather than wrapped.

/// The largest value the HPA can read back: `i64::MAX` milli-units, whole units only.
pub const MAX_UNITS: i64 = i64::MAX / 1000;

/// Why a value has no quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// NaN has no quantity; serving a made-up number would scale on it.
    #[error("the value is not a number")]
    NotANumber,
}

/// A value as a canonical quantity string and whether it had to be capped to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    /// The string to serve, e.g. `"1500m"`, `"12k"`, `"42"`.
    pub text: String,
    /// True when the value was beyond what the HPA can read and was capped at the limit.
    pub capped: bool,
}

/// Formats `value` as a canonical DecimalSI quantity.
pub fn format_quantity(value: f64) -> Result<Quantity, QuantityError> {
    if value.is_nan() {
        return Err(QuantityError::NotANumber);
    }
    // `MAX_UNITS as f64` rounds up to the next representable value, so `>=` keeps every
    // value served uncapped within range.
    if value.abs() >= MAX_UNITS as f64 {
        let units = if value > 0.0 { MAX_UNITS } else { -MAX_UNITS };
        return Ok(Quantity {
            text: format_milli(i128::from(units) * 1000),
            capped: true,
        });
    }
    let milli = if value.fract() == 0.0 {
        // Whole numbers are exact in an f64; scaling them by 1000 first could round.
        value as i128 * 1000
    } else {
        // Round up to the next milli-unit, as the HPA's own MilliValue() does, but not for the
        // binary noise of a decimal (0.1 * 1000 = 100.00000000000001 is 100m, not 101m).
        let scaled = value * 1000.0;
        let nearest = scaled.round();
        if nearest != 0.0 && (scaled - nearest).abs() <= 1e-9 * nearest.abs() {
            nearest as i128
        } else {
            scaled.ceil() as i128
        }
    };
    Ok(Quantity {
        text: format_milli(milli),
        capped: false,
    })
}

/// Canonical text of a whole number of milli-units.
fn format_milli(milli: i128) -> String {
    if milli == 0 {
        return "0".to_owned();
    }
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut units = milli / 1000;
    // The largest suffix that keeps the value exact, as the apiserver prints it.
    const SUFFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    let mut suffix = 0;
    while suffix + 1 < SUFFIXES.len() && units % 1000 == 0 {
        units /= 1000;
        suffix += 1;
    }
    format!("{units}{}", SUFFIXES[suffix])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_as_canonical_quantities() {
        let cases: &[(f64, &str, bool)] = &[
            (0.0, "0", false),
            (-0.0, "0", false),
            (2.0, "2", false),
            (1.5, "1500m", false),
            (0.5, "500m", false),
            (1000.0, "1k", false),
            (1500.0, "1500", false),
            (12_000.0, "12k", false),
            (3_000_000.0, "3M", false),
            (45.0, "45", false),
            (0.0004, "1m", false),
            (0.1, "100m", false),
            (1.1, "1100m", false),
            (2.675, "2675m", false),
            (0.1 + 0.2, "300m", false),
            (1.0004, "1001m", false),
            (1e15, "1P", false),
            (9e15, "9P", false),
            (4_503_599_627_370_497.0, "4503599627370497", false),
            (0.001, "1m", false),
            // Found by tests/hostile_input.rs: the noise tolerance once read these as 0.
            (1e-300, "1m", false),
            (1e-10, "1m", false),
            (-1e-300, "0", false),
            (-1.5, "-1500m", false),
            (-2000.0, "-2k", false),
            (1e30, "9223372036854775", true),
            (f64::INFINITY, "9223372036854775", true),
            (f64::NEG_INFINITY, "-9223372036854775", true),
            (9_223_372_036_854_776.0, "9223372036854775", true),
            (9_223_372_036_854_774.0, "9223372036854774", false),
            (9.223372036854776e18, "9223372036854775", true),
        ];
        for &(value, text, capped) in cases {
            let q = format_quantity(value).unwrap();
            assert_eq!((q.text.as_str(), q.capped), (text, capped), "value {value}");
        }
    }

    #[test]
    fn nan_has_no_quantity() {
        assert_eq!(format_quantity(f64::NAN), Err(QuantityError::NotANumber));
    }
}
