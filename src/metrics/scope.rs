//! `/metrics` per caller (`server.metricsAuth: namespaces`): which series one caller may read,
//! and the scrape text cut down to them.
//!
//! A series with a `namespace` label belongs to that namespace's tenants (per-trigger values,
//! backlog, ScaledObject state); every other series is the process's own (requests, polls per
//! broker, connections, token reviews) and tells about every tenant at once, so it goes only
//! to callers allowed cluster-wide. Who may read what is decided above this layer
//! ([`ScrapeAccess`], implemented by the metrics API's access module with TokenReview and
//! SubjectAccessReview); this module only applies the decision to the encoded text, so the
//! filter is pure and tested here.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;

use axum::http::HeaderMap;
use axum::response::Response;

/// The series one caller may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeScope {
    /// Series without a `namespace` label: the process's own.
    pub process_wide: bool,
    /// Namespaces whose series (those with that `namespace` label) the caller reads.
    pub namespaces: HashSet<String>,
}

/// The future a [`ScrapeAccess`] answers with.
pub type ScopeFuture<'a> = Pin<Box<dyn Future<Output = Result<ScrapeScope, Response>> + Send + 'a>>;

/// Decides which series a `/metrics` request may read.
pub trait ScrapeAccess: Send + Sync {
    /// The scope of the caller of a request with `headers`, among `namespaces` (those the
    /// scrape has series of), or the answer that refuses the request (401, 429, 500).
    fn scope<'a>(&'a self, headers: &'a HeaderMap, namespaces: Vec<String>) -> ScopeFuture<'a>;
}

/// The namespaces the samples of `text` (OpenMetrics) are labelled with.
pub fn namespaces_in(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(namespace_of)
        .collect()
}

/// `text` (OpenMetrics) with only the samples `scope` allows: a sample with a `namespace`
/// label when that namespace is in scope, one without when the scope is process-wide. A
/// family's `# HELP`/`# TYPE`/`# UNIT` lines stay only when one of its samples does, so a
/// caller does not even learn which families it may not read; `# EOF` always stays.
pub fn filter(text: &str, scope: &ScrapeScope) -> String {
    let mut out = String::with_capacity(text.len());
    let mut descriptors: Vec<&str> = Vec::new();
    let mut family_shown = false;
    let mut after_sample = false;
    for line in text.lines() {
        if line == "# EOF" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if line.starts_with('#') {
            // A descriptor after a sample starts the next family.
            if after_sample {
                descriptors.clear();
                family_shown = false;
                after_sample = false;
            }
            descriptors.push(line);
            continue;
        }
        after_sample = true;
        let allowed = match namespace_of(line) {
            Some(namespace) => scope.namespaces.contains(&namespace),
            None => scope.process_wide,
        };
        if !allowed {
            continue;
        }
        if !family_shown {
            for descriptor in descriptors.drain(..) {
                out.push_str(descriptor);
                out.push('\n');
            }
            family_shown = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The value of the `namespace` label of one sample line (`name{a="x",namespace="y"} 1`),
/// escapes (`\"`, `\\`, `\n`) undone; `None` without labels or without that label.
fn namespace_of(sample: &str) -> Option<String> {
    let open = sample.find(['{', ' '])?;
    if sample.as_bytes()[open] != b'{' {
        return None;
    }
    let mut rest = &sample[open + 1..];
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.starts_with('}') || rest.is_empty() {
            return None;
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        if name.trim() == "namespace" {
            return Some(value);
        }
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP spillway_trigger_value The value served.
# TYPE spillway_trigger_value gauge
spillway_trigger_value{namespace=\"shop\",scaled_object=\"orders\",trigger=\"s0\"} 12
spillway_trigger_value{namespace=\"bank\",scaled_object=\"ledger\",trigger=\"s0\"} 3
# HELP spillway_api_requests Requests.
# TYPE spillway_api_requests counter
spillway_api_requests_total{route=\"/metrics\",code=\"200\"} 5
# HELP spillway_leader Whether this replica leads.
# TYPE spillway_leader gauge
spillway_leader 1
# HELP spillway_scaled_object_paused Paused.
# TYPE spillway_scaled_object_paused gauge
spillway_scaled_object_paused{scaled_object=\"x\",namespace=\"bank\"} 0
# EOF
";

    fn scope(process_wide: bool, namespaces: &[&str]) -> ScrapeScope {
        ScrapeScope {
            process_wide,
            namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn namespace_labels_are_read_wherever_they_are_and_unescaped() {
        let cases = [
            ("a{namespace=\"shop\"} 1", Some("shop")),
            ("a{x=\"1\",namespace=\"shop\",y=\"2\"} 1", Some("shop")),
            // A label whose value spells `namespace="..."` is not the label.
            (
                "a{query=\"namespace=\\\"bank\\\"\",namespace=\"shop\"} 1",
                Some("shop"),
            ),
            ("a{query=\"namespace=\\\"bank\\\"\"} 1", None),
            ("a{kube_namespace=\"shop\"} 1", None),
            ("a{namespace=\"we\\\\ird\\n\"} 1", Some("we\\ird\n")),
            ("spillway_leader 1", None),
            // Exemplars follow the value; only the label set counts.
            ("a_bucket{le=\"1\"} 3 # {namespace=\"shop\"} 1", None),
            ("a{namespace=\"unterminated} 1", None),
        ];
        for (line, expected) in cases {
            assert_eq!(namespace_of(line).as_deref(), expected, "{line}");
        }
    }

    #[test]
    fn a_scope_keeps_its_namespaces_and_the_process_series_only_when_cluster_wide() {
        let cases: [(ScrapeScope, &[&str], &[&str]); 4] = [
            (
                scope(false, &["shop"]),
                &[
                    "namespace=\"shop\"",
                    "# TYPE spillway_trigger_value gauge",
                    "# EOF",
                ],
                &[
                    "bank",
                    "spillway_api_requests",
                    "spillway_leader",
                    "spillway_scaled_object_paused",
                ],
            ),
            (
                scope(false, &[]),
                &["# EOF"],
                &["namespace=", "spillway_leader", "# HELP"],
            ),
            (
                scope(true, &[]),
                &["spillway_api_requests_total{", "spillway_leader 1", "# EOF"],
                &[
                    "namespace=",
                    "spillway_trigger_value",
                    "spillway_scaled_object_paused",
                ],
            ),
            (
                scope(true, &["shop", "bank"]),
                &[
                    "namespace=\"shop\"",
                    "namespace=\"bank\"",
                    "spillway_leader 1",
                ],
                &[],
            ),
        ];
        for (scope, kept, dropped) in cases {
            let text = filter(SCRAPE, &scope);
            for wanted in kept {
                assert!(text.contains(wanted), "{scope:?} keeps {wanted}:\n{text}");
            }
            for unwanted in dropped {
                assert!(
                    !text.contains(unwanted),
                    "{scope:?} drops {unwanted}:\n{text}"
                );
            }
            assert!(text.ends_with("# EOF\n"), "{text}");
        }
        assert_eq!(filter(SCRAPE, &scope(true, &["shop", "bank"])), SCRAPE);
    }

    #[test]
    fn the_namespaces_of_a_scrape_are_listed_once() {
        assert_eq!(
            namespaces_in(SCRAPE).into_iter().collect::<Vec<_>>(),
            ["bank", "shop"]
        );
    }
}
