//! spillway's Prometheus alert rules (`deploy/prometheus/`): promtool accepts them, its unit
//! tests (input series -> expected alerts) pass, every alert is labelled, annotated and tested
//! both firing and silent, and the PrometheusRule holds the same groups as the plain file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_norway::Value;

const RULES: &str = "deploy/prometheus/spillway-rules.yaml";
const PROMETHEUS_RULE: &str = "deploy/prometheus/prometheusrule.yaml";
const UNIT_TESTS: &str = "deploy/prometheus/tests";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_norway::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not YAML: {err}", path.display()))
}

/// promtool from PATH, else where Debian's prometheus package puts it.
fn promtool() -> PathBuf {
    let on_path = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return PathBuf::from("promtool");
    }
    let debian = PathBuf::from("/usr/bin/promtool");
    assert!(
        debian.exists(),
        "promtool is not installed; run scripts/install-deps.sh"
    );
    debian
}

/// Runs promtool with `args`; panics with its whole output unless it succeeds.
fn run_promtool(args: &[&Path]) -> Output {
    let output = Command::new(promtool())
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("promtool {args:?}:\n{text}");
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        output.status
    );
    output
}

/// The unit test files, sorted.
fn unit_test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(UNIT_TESTS))
        .expect("deploy/prometheus/tests")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no unit tests in {UNIT_TESTS}");
    files
}

/// Every alerting rule of a `groups:` list.
fn alerts(groups: &Value) -> Vec<&Value> {
    groups
        .as_sequence()
        .expect("groups is a list")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules is a list"))
        .filter(|r| r.get("alert").is_some())
        .collect()
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

#[test]
fn promtool_accepts_the_rules() {
    let output = run_promtool(&[Path::new("check"), Path::new("rules"), &repo(RULES)]);
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let count = alerts(&read_yaml(&repo(RULES))["groups"]).len();
    assert!(
        said.contains(&format!("SUCCESS: {count} rules found")),
        "{said}"
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let files = unit_test_files();
    let mut args: Vec<&Path> = vec![Path::new("test"), Path::new("rules")];
    args.extend(files.iter().map(PathBuf::as_path));
    run_promtool(&args);
}

/// A unit test that expects the wrong alert must make promtool fail, or a passing run above
/// would prove nothing.
#[test]
fn a_wrong_expectation_makes_promtool_fail() {
    let dir = std::env::temp_dir().join(format!(
        "spillway-alert-rules-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo(RULES), dir.join("rules.yaml")).unwrap();
    // Fallback off all along, yet the test expects the alert.
    std::fs::write(
        dir.join("wrong.yaml"),
        "rule_files: [rules.yaml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: 'spillway_scaled_object_fallback{namespace=\"shop\",scaled_object=\"orders\"}'\n        values: '0x10'\n    alert_rule_test:\n      - eval_time: 10m\n        alertname: SpillwayFallbackActive\n        exp_alerts:\n          - exp_labels: {severity: warning, namespace: shop, scaled_object: orders}\n",
    )
    .unwrap();
    let output = Command::new(promtool())
        .args(["test", "rules"])
        .arg(dir.join("wrong.yaml"))
        .output()
        .expect("run promtool");
    std::fs::remove_dir_all(&dir).unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "promtool passed a wrong test:\n{said}"
    );
    assert!(said.contains("SpillwayFallbackActive"), "{said}");
}

#[test]
fn the_prometheusrule_holds_the_same_groups() {
    let plain = read_yaml(&repo(RULES));
    let resource = read_yaml(&repo(PROMETHEUS_RULE));
    assert_eq!(resource["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(resource["kind"], "PrometheusRule");
    assert!(resource["metadata"]["name"].is_string());
    assert!(resource["metadata"]["namespace"].is_string());
    let (groups, spec_groups) = (&plain["groups"], &resource["spec"]["groups"]);
    assert!(groups.is_sequence(), "{RULES} has no groups");
    // Rule by rule first, so a difference names the alert.
    let (ours, theirs) = (alerts(groups), alerts(spec_groups));
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(
            a,
            b,
            "{} differs between the two files",
            text(&a["alert"], "alert")
        );
    }
    assert_eq!(ours.len(), theirs.len(), "alert counts differ");
    assert_eq!(
        groups, spec_groups,
        "groups differ between {RULES} and {PROMETHEUS_RULE}"
    );
}

#[test]
fn every_alert_is_labelled_annotated_and_tested_firing_and_silent() {
    let rules = read_yaml(&repo(RULES));
    let alerts = alerts(&rules["groups"]);
    let names: Vec<&str> = alerts.iter().map(|a| text(&a["alert"], "alert")).collect();
    for want in [
        "SpillwayBacklogGrowingAtMaxReplicas",
        "SpillwayKafkaLagSecondsHigh",
        "SpillwayScalerErrors",
        "SpillwayTriggerStale",
        "SpillwayFallbackActive",
        "SpillwayMetricsAPIDown",
        "SpillwayAPIServiceUnavailable",
        "SpillwayAPILatencyHigh",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for alert in &alerts {
        let name = text(&alert["alert"], "alert");
        let severity = text(&alert["labels"]["severity"], &format!("{name} severity"));
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        for annotation in ["summary", "description", "runbook"] {
            let value = text(
                &alert["annotations"][annotation],
                &format!("{name} annotation {annotation}"),
            );
            assert!(value.trim().len() > 10, "{name}: {annotation} is too short");
        }
        assert!(alert["expr"].is_string(), "{name}: no expr");
    }

    // Which alerts the unit tests expect to fire, and which they check stay silent.
    let (mut firing, mut silent) = (Vec::new(), Vec::new());
    for file in unit_test_files() {
        let tests = read_yaml(&file);
        let rule_files = tests["rule_files"].as_sequence().expect("rule_files");
        assert!(
            rule_files.iter().any(|f| f == "../spillway-rules.yaml"),
            "{} does not test {RULES}",
            file.display()
        );
        for group in tests["tests"].as_sequence().expect("tests") {
            for case in group["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = text(&case["alertname"], "alertname").to_owned();
                assert!(
                    names.contains(&name.as_str()),
                    "{} tests {name}, which no rule defines",
                    file.display()
                );
                let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
                if expected == 0 {
                    silent.push(name);
                } else {
                    firing.push(name);
                }
            }
        }
    }
    for name in &names {
        assert!(
            firing.iter().any(|f| f == name),
            "no unit test expects {name} to fire"
        );
        assert!(
            silent.iter().any(|s| s == name),
            "no unit test expects {name} to stay silent"
        );
    }
}
