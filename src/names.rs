//! Kubernetes name rules (DNS-1123 labels and subdomains, path segment names), shared by the
//! config file's validation and the API server's checks of the names in a request path, so a
//! name the config accepts is always one a request can ask for.
//!
//! Each check returns why a name is refused, worded like apimachinery's validation messages.

/// The longest DNS-1123 label: namespaces.
pub const MAX_LABEL_LEN: usize = 63;
/// The longest DNS-1123 subdomain: object names, API groups.
pub const MAX_SUBDOMAIN_LEN: usize = 253;

/// A namespace (or any DNS-1123 label): lowercase alphanumerics and `-`, alphanumeric at both
/// ends, at most 63 characters.
pub fn check_dns1123_label(name: &str) -> Result<(), String> {
    check_length(name, MAX_LABEL_LEN)?;
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !name.chars().all(|c| alnum(c) || c == '-')
        || !name.starts_with(alnum)
        || !name.ends_with(alnum)
    {
        return Err(format!(
            "{name:?} must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// An object name or API group (a DNS-1123 subdomain): dot-separated DNS-1123 labels, at most
/// 253 characters in all.
pub fn check_dns1123_subdomain(name: &str) -> Result<(), String> {
    check_length(name, MAX_SUBDOMAIN_LEN)?;
    if name
        .split('.')
        .any(|part| check_dns1123_label(part).is_err())
    {
        return Err(format!(
            "{name:?} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A name used as one segment of a request path (a metric name is the `resource` of the
/// request): not `.` or `..`, no `/` or `%` (apimachinery's `IsValidPathSegmentName`), no
/// control characters, at most 253 characters.
pub fn check_path_segment(name: &str) -> Result<(), String> {
    check_length(name, MAX_SUBDOMAIN_LEN)?;
    if name == "." || name == ".." {
        return Err(format!("may not be {name:?}"));
    }
    if let Some(c) = name.chars().find(|&c| c == '/' || c == '%') {
        return Err(format!("may not contain {c:?}"));
    }
    if name.chars().any(char::is_control) {
        return Err("may not contain control characters".into());
    }
    Ok(())
}

/// Not empty and at most `max` bytes (all valid names are ASCII, so bytes are characters).
fn check_length(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > max {
        return Err(format!(
            "must be no more than {max} characters, got {}",
            name.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_subdomains_and_segments() {
        let long_label = "a".repeat(64);
        let long_name = format!("{}.{}", "a".repeat(63), "b".repeat(190));
        let cases: &[(&str, bool, bool, bool)] = &[
            // name, label, subdomain, segment
            ("default", true, true, true),
            ("team-a", true, true, true),
            ("apps.example.com", false, true, true),
            ("s0-kafka-orders", true, true, true),
            ("Default", false, false, true),
            ("-a", false, false, true),
            ("a-", false, false, true),
            ("a..b", false, false, true),
            ("", false, false, false),
            (".", false, false, false),
            ("..", false, false, false),
            ("a/b", false, false, false),
            ("a%2Fb", false, false, false),
            ("a\nb", false, false, false),
            (&long_label, false, false, true),
            (&long_name, false, false, false),
        ];
        for &(name, label, subdomain, segment) in cases {
            assert_eq!(check_dns1123_label(name).is_ok(), label, "label {name:?}");
            assert_eq!(
                check_dns1123_subdomain(name).is_ok(),
                subdomain,
                "subdomain {name:?}"
            );
            assert_eq!(
                check_path_segment(name).is_ok(),
                segment,
                "segment {name:?}"
            );
        }
    }
}
