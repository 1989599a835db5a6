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

/// Why a string is not a `resource.Quantity`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a Kubernetes quantity (a number with an optional suffix such as m, k, M, Ki, Mi, Gi or e3)"
)]
pub struct QuantityParseError;

/// The value of a `resource.Quantity` string: a signed decimal number with a decimal (`n`, `u`,
/// `m`, `k`, `M`, `G`, `T`, `P`, `E`), binary (`Ki` .. `Ei`) or exponent (`e3`, `E-2`) suffix,
/// as the API server accepts them.
pub fn parse_quantity(text: &str) -> Result<f64, QuantityParseError> {
    const SUFFIXES: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((text, 1.0));
    let plain = |n: &str| {
        let digits = n.strip_prefix(['+', '-']).unwrap_or(n);
        !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.chars().filter(|c| *c == '.').count() <= 1
            && digits != "."
    };
    // An exponent suffix (`1e3`) is part of the number; a plain `E` was taken as exa above.
    let value = if plain(number) {
        number.parse::<f64>().map_err(|_| QuantityParseError)? * scale
    } else if scale == 1.0
        && let Some((mantissa, exponent)) = number.split_once(['e', 'E'])
        && plain(mantissa)
        && plain(exponent)
        && !exponent.contains('.')
    {
        number.parse::<f64>().map_err(|_| QuantityParseError)?
    } else {
        return Err(QuantityParseError);
    };
    // Dividing keeps `50m` exactly 0.05 where multiplying by 1e-3 would not.
    let value = if scale < 1.0 {
        number.parse::<f64>().map_err(|_| QuantityParseError)? / (1.0 / scale).round()
    } else {
        value
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(QuantityParseError)
    }
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

    #[test]
    fn quantities_parse_as_the_api_server_reads_them() {
        for (text, value) in [
            ("500m", 0.5),
            ("0.5", 0.5),
            ("2", 2.0),
            ("1k", 1000.0),
            ("512Mi", 512.0 * 1048576.0),
            ("1Gi", 1073741824.0),
            ("1e3", 1000.0),
            ("5E-2", 0.05),
            ("50m", 0.05),
            ("+3", 3.0),
            ("2E", 2e18),
        ] {
            assert_eq!(parse_quantity(text), Ok(value), "{text}");
        }
        for text in [
            "", "m", "Mi", "1.2.3", "abc", "1 Gi", "1Kb", "1e", "e3", ".", "1e1.5", "--1",
        ] {
            assert_eq!(parse_quantity(text), Err(QuantityParseError), "{text:?}");
        }
    }
}
