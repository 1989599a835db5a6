//! Hostile input, property-based: generated and mutated inputs for every parser a tenant or a
//! broker can feed. Two kinds of target:
//! - pure parsers (label selectors, quantities, names, cron expressions, the config file and
//!   ScaledObject manifests, Prometheus answers, partition lists) called directly;
//! - each broker's answer parsing end to end: the scaler polls through a mutating HTTP proxy in
//!   front of the real broker (RabbitMQ's management API, NATS's monitoring endpoint,
//!   Prometheus's query API and a text exposition), which serves the broker's real answer
//!   truncated, with bytes flipped, JSON nodes dropped or replaced, or replaced by garbage.
//!
//! Every property asserts no panic and a clear error for what is rejected; the broker ones also
//! assert that an answer no parser could read is an error, never a value, and that a dropped or
//! mistyped field never turns a backlog into a silent 0. Each target prints how many cases it
//! ran. `PROPTEST_CASES` sets the count (CI runs the default below; `make fuzz` runs many more).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use spillway::api::selector::Selector;
use spillway::config;
use spillway::formula::Formula;
use spillway::names;
use spillway::quantity::{MAX_UNITS, format_quantity};
use spillway::scalers::cron::CronSchedule;
use spillway::scalers::kafka::parse_partition_limitation;
use spillway::scalers::nats::{NatsJetStreamScaler, NatsJetStreamTrigger};
use spillway::scalers::prometheus::{
    PrometheusScaler, PrometheusTrigger, interpret_query, parse_scrape,
};
use spillway::scalers::rabbitmq::{RabbitMqScaler, RabbitMqTrigger};
use spillway::scalers::{Reading, Scaler, ScalerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Cases per pure target unless `PROPTEST_CASES` says otherwise.
const PURE_CASES: u32 = 2_000;
/// Cases per broker target (each is a poll over loopback) unless `PROPTEST_CASES` says otherwise.
const BROKER_CASES: u32 = 300;

/// Runs `test` on `cases` inputs from `strategy` (or `PROPTEST_CASES`), prints the count, and
/// fails with the shrunk input on the first failure or panic.
fn check<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let mut runner = TestRunner::new(Config {
        cases,
        // Findings become named regression tests here, not files next to the sources.
        failure_persistence: None,
        ..Config::default()
    });
    match runner.run(&strategy, test) {
        Ok(()) => println!("hostile input: {name}: {cases} cases, 0 failures"),
        Err(err) => panic!("hostile input: {name}: {err}"),
    }
}

/// Text that is sometimes valid and mostly not: arbitrary Unicode, or `tokens` joined.
fn text_from(tokens: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(select(tokens), 0..max).prop_map(|t| t.concat()),
    ]
}

fn error_is_clear(what: &str, input: &str, message: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !message.trim().is_empty(),
        "{what}: {input:?} was refused without a message"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pure parsers
// ---------------------------------------------------------------------------------------------

#[test]
fn label_selectors_parse_or_refuse_clearly() {
    const TOKENS: &[&str] = &[
        "app",
        "tier",
        "example.com/team",
        "a-b.c_d",
        "x",
        "=",
        "==",
        "!=",
        " in ",
        " notin ",
        "(",
        ")",
        ",",
        "!",
        " ",
        "1",
        "",
        "é",
        "\u{0}",
        "/",
        "-",
        "in",
        "notin",
        "\t",
    ];
    let labels = prop::collection::btree_map(
        select(&["app", "tier", "x", "example.com/team"][..]).prop_map(str::to_owned),
        select(&["", "1", "web", "x"][..]).prop_map(str::to_owned),
        0..4,
    );
    check(
        "label selector",
        PURE_CASES,
        (text_from(TOKENS, 14), labels),
        |(text, labels): (String, BTreeMap<String, String>)| {
            match Selector::parse(&text) {
                Ok(selector) => {
                    // A selector that parsed must answer for any label set without panicking.
                    let _ = selector.matches(&labels);
                }
                Err(err) => error_is_clear("selector", &text, &err.to_string())?,
            }
            Ok(())
        },
    );
}

/// `advanced.scalingModifiers.formula`, a tenant's program run in the process that serves every
/// team: compiled or refused with a message, and a compiled one evaluates to a number, nil or
/// a clear error for any inputs (nil included), never a panic or a blown stack.
#[test]
fn formulas_compile_and_run_or_refuse_clearly() {
    const TOKENS: &[&str] = &[
        "kafka",
        "rabbit",
        "lag",
        "1",
        "2.5",
        "0",
        "1e3",
        "nil",
        "true",
        "false",
        "+",
        "-",
        "*",
        "/",
        "%",
        "**",
        "^",
        "??",
        "?",
        ":",
        "?:",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ";",
        "#",
        "==",
        "!=",
        "<",
        ">=",
        "&&",
        "||",
        "!",
        "not ",
        " and ",
        " or ",
        " in ",
        "let x = ",
        "x",
        "max(",
        "min(",
        "count(",
        "filter(",
        "map(",
        "sum(",
        "mean(",
        "median(",
        "abs(",
        "ceil(",
        "float(",
        "int(",
        "len(",
        "first(",
        "all(",
        "one(",
        ".",
        "..",
        "|",
        "'s'",
        " ",
        "(((((((((",
        ")))))))))",
        "-----",
        "\u{0}",
        "é",
    ];
    let names: Vec<String> = ["kafka", "rabbit", "lag"].map(str::to_owned).to_vec();
    let inputs = prop::collection::vec(
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(Some),
            (-1e6f64..1e6).prop_map(Some),
        ],
        3,
    );
    check(
        "scalingModifiers formula",
        PURE_CASES,
        (text_from(TOKENS, 40), inputs),
        |(text, inputs): (String, Vec<Option<f64>>)| {
            match Formula::compile(&text, &names) {
                Ok(formula) => match formula.evaluate(&inputs) {
                    Ok(_) => {}
                    Err(err) => error_is_clear("formula run", &text, &err.to_string())?,
                },
                Err(err) => error_is_clear("formula", &text, &err.to_string())?,
            }
            Ok(())
        },
    );
}

#[test]
fn cron_expressions_parse_or_refuse_clearly_and_next_is_after_now() {
    const FIELDS: &[&str] = &[
        "*",
        "*/5",
        "1-5",
        "0",
        "59",
        "60",
        "23",
        "24",
        "31",
        "32",
        "1,2",
        "MON",
        "jan",
        "sun-sat",
        "?",
        "L",
        "-1",
        "99999999999999999999",
        "*/0",
        "5-1",
        "1-5/2",
        "0/15",
        "@daily",
        "",
        "1-",
        ",",
        "**",
        "7",
        "feb",
        "12",
        "13",
    ];
    let expression = prop_oneof![
        any::<String>(),
        prop::collection::vec(select(FIELDS), 0..7).prop_map(|f| f.join(" ")),
    ];
    let zones = select(
        &[
            chrono_tz::Tz::UTC,
            chrono_tz::Tz::America__New_York,
            chrono_tz::Tz::Australia__Lord_Howe,
            chrono_tz::Tz::Pacific__Chatham,
        ][..],
    );
    // Now anywhere from 1970 to 2100, where DST transitions and leap days fall.
    let now = 0i64..4_102_444_800;
    check(
        "cron expression",
        PURE_CASES,
        (expression, zones, now),
        |(expression, zone, now)| {
            match CronSchedule::parse(&expression) {
                Ok(schedule) => {
                    let now: DateTime<Utc> = DateTime::from_timestamp(now, 0).unwrap();
                    if let Some(next) = schedule.next_after(zone, now) {
                        prop_assert!(next > now, "{expression:?} in {zone}: next {next} <= {now}");
                    }
                }
                Err(err) => error_is_clear("cron", &expression, &err)?,
            }
            Ok(())
        },
    );
}

/// Reads a canonical DecimalSI quantity back into milli-units.
fn quantity_milli(text: &str) -> Option<i128> {
    let (number, factor) = match text.char_indices().last()? {
        (i, 'm') => (&text[..i], 1),
        (i, 'k') => (&text[..i], 1_000_000),
        (i, 'M') => (&text[..i], 1_000_000_000),
        (i, 'G') => (&text[..i], 1_000_000_000_000),
        (i, 'T') => (&text[..i], 1_000_000_000_000_000),
        (i, 'P') => (&text[..i], 1_000_000_000_000_000_000),
        (i, 'E') => (&text[..i], 1_000_000_000_000_000_000_000),
        _ => (text, 1000),
    };
    let digits = number.strip_prefix('-').unwrap_or(number);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    number.parse::<i128>().ok().map(|n| n * factor)
}

#[test]
fn quantities_read_back_within_a_milli_unit_and_never_hide_a_backlog() {
    let value = prop_oneof![
        any::<f64>(),
        -1e6f64..1e6,
        0.0f64..0.01,
        select(
            &[
                0.0,
                -0.0,
                1e-300,
                0.0005,
                0.0015,
                9.2e15,
                9.3e15,
                f64::INFINITY,
                f64::MAX
            ][..]
        ),
    ];
    check("quantity", PURE_CASES, value, |value: f64| {
        let quantity = match format_quantity(value) {
            Ok(quantity) => quantity,
            Err(err) => {
                prop_assert!(value.is_nan(), "{value} refused: {err}");
                return Ok(());
            }
        };
        let milli = quantity_milli(&quantity.text);
        prop_assert!(
            milli.is_some(),
            "{value} gave a non-canonical {:?}",
            quantity.text
        );
        let milli = milli.unwrap();
        if value.abs() >= MAX_UNITS as f64 {
            prop_assert!(quantity.capped);
            prop_assert_eq!(milli.abs(), i128::from(MAX_UNITS) * 1000);
            return Ok(());
        }
        prop_assert!(!quantity.capped, "{value} capped below the limit");
        let exact = value * 1000.0;
        let slack = 1e-9 * exact.abs().max(1.0);
        prop_assert!(
            milli as f64 >= exact - slack && (milli as f64) - exact < 1.0 + slack,
            "{value} served as {}",
            quantity.text
        );
        if value > 0.0 {
            prop_assert!(milli > 0, "a backlog of {value} was served as 0");
        }
        Ok(())
    });
}

#[test]
fn names_and_path_segments_are_checked_without_panics() {
    const TOKENS: &[&str] = &[
        "a", "z", "0", "-", ".", "/", "..", "%2F", "A", "é", " ", "\u{0}",
    ];
    let dns_label = regex::Regex::new("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$").unwrap();
    check(
        "names",
        PURE_CASES,
        text_from(TOKENS, 70),
        |name: String| {
            match names::check_dns1123_label(&name) {
                Ok(()) => prop_assert!(dns_label.is_match(&name), "{name:?} passed as a label"),
                Err(err) => error_is_clear("label", &name, &err)?,
            }
            match names::check_dns1123_subdomain(&name) {
                Ok(()) => prop_assert!(
                    name.len() <= 253 && name.split('.').all(|part| dns_label.is_match(part)),
                    "{name:?} passed as a subdomain"
                ),
                Err(err) => error_is_clear("subdomain", &name, &err)?,
            }
            match names::check_path_segment(&name) {
                Ok(()) => prop_assert!(
                    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%']),
                    "{name:?} passed as a path segment"
                ),
                Err(err) => error_is_clear("path segment", &name, &err)?,
            }
            Ok(())
        },
    );
}

#[test]
fn partition_lists_parse_or_refuse_clearly() {
    const TOKENS: &[&str] = &[
        "1",
        "0",
        "-",
        ",",
        " ",
        "2147483648",
        "-1",
        "9",
        "a",
        "--",
        "5-3",
    ];
    check(
        "partition limitation",
        PURE_CASES,
        text_from(TOKENS, 12),
        |text: String| {
            match parse_partition_limitation(&text) {
                Ok(partitions) => prop_assert!(
                    partitions.iter().all(|p| *p >= 0),
                    "{text:?} gave negative partitions {partitions:?}"
                ),
                Err(err) => error_is_clear("partitions", &text, &err)?,
            }
            Ok(())
        },
    );
}

/// Line-level mutations of a YAML document: what a hurried edit or an attacker produces.
#[derive(Debug, Clone)]
enum YamlMutation {
    DropLine(Index),
    DuplicateLine(Index),
    ReplaceValue(Index, &'static str),
    Indent(Index, bool),
    Truncate(Index),
    Insert(Index, String),
}

const NASTY_SCALARS: &[&str] = &[
    "-1",
    "0",
    "1e400",
    "~",
    "[]",
    "{}",
    "{",
    "'",
    "\"",
    "99999999999999999999999",
    "NaN",
    ".nan",
    ".inf",
    "-.inf",
    "0x10",
    "!!binary aGVsbG8=",
    "&a x",
    "*a",
    "true",
    "''",
    "\u{0}",
    "é",
    "2147483648",
    "-2147483649",
    "1.5",
    "- x",
    "? x",
    "|",
    ">",
    "!!str 5",
    "<<: {}",
];

fn yaml_mutations() -> impl Strategy<Value = Vec<YamlMutation>> {
    let one = prop_oneof![
        any::<Index>().prop_map(YamlMutation::DropLine),
        any::<Index>().prop_map(YamlMutation::DuplicateLine),
        (any::<Index>(), select(NASTY_SCALARS)).prop_map(|(i, v)| YamlMutation::ReplaceValue(i, v)),
        (any::<Index>(), any::<bool>()).prop_map(|(i, d)| YamlMutation::Indent(i, d)),
        any::<Index>().prop_map(YamlMutation::Truncate),
        (any::<Index>(), any::<String>()).prop_map(|(i, s)| YamlMutation::Insert(i, s)),
    ];
    prop::collection::vec(one, 1..4)
}

fn mutate_yaml(text: &str, mutations: &[YamlMutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for mutation in mutations {
        if lines.is_empty() {
            break;
        }
        match mutation {
            YamlMutation::DropLine(i) => {
                lines.remove(i.index(lines.len()));
            }
            YamlMutation::DuplicateLine(i) => {
                let at = i.index(lines.len());
                lines.insert(at, lines[at].clone());
            }
            YamlMutation::ReplaceValue(i, value) => {
                let at = i.index(lines.len());
                if let Some((key, _)) = lines[at].split_once(": ") {
                    lines[at] = format!("{key}: {value}");
                } else {
                    lines[at] = format!("{}{value}", lines[at]);
                }
            }
            YamlMutation::Indent(i, deeper) => {
                let at = i.index(lines.len());
                lines[at] = if *deeper {
                    format!("  {}", lines[at])
                } else {
                    lines[at].trim_start().to_owned()
                };
            }
            YamlMutation::Truncate(i) => {
                let at = i.index(lines.len());
                lines.truncate(at);
            }
            YamlMutation::Insert(i, text) => {
                let at = i.index(lines.len());
                lines.insert(at, text.clone());
            }
        }
    }
    lines.join("\n")
}

const CONFIG: &str = "server:\n  listen: 127.0.0.1:7443\npollingInterval: 5\nscaledObjects:\n  - name: orders\n    namespace: shop\n    minReplicaCount: 0\n    maxReplicaCount: 12\n    triggers:\n      - kafka:\n          bootstrapServers: 127.0.0.1:9092\n          consumerGroup: orders\n          topic: orders\n          lagThreshold: 10\n          offsetResetPolicy: earliest\n      - rabbitmq:\n          host: http://127.0.0.1:15672/\n          queueName: jobs\n          mode: MessageRate\n          value: 2.5\n      - prometheus:\n          serverAddress: http://127.0.0.1:9090\n          query: sum(rate(http_requests_total[1m]))\n          threshold: 100\n      - cron:\n          timezone: Europe/Paris\n          start: '0 8 * * 1-5'\n          end: '0 18 * * 1-5'\n          desiredReplicas: 3\n";

#[test]
fn config_files_parse_or_refuse_with_a_location_and_round_trip() {
    let path = Path::new("spillway.yaml");
    config::Config::parse(path, CONFIG).expect("the seed config is valid");
    check(
        "config file",
        PURE_CASES,
        yaml_mutations(),
        |mutations: Vec<YamlMutation>| {
            let text = mutate_yaml(CONFIG, &mutations);
            match config::Config::parse(path, &text) {
                Ok(parsed) => {
                    // What was accepted must survive its own serialization unchanged.
                    let again = config::Config::parse(path, &parsed.to_yaml());
                    prop_assert!(again.is_ok(), "{text:?} re-parses as {again:?}");
                    prop_assert_eq!(again.unwrap(), parsed);
                }
                Err(err) => {
                    let message = err.to_string();
                    error_is_clear("config", &text, &message)?;
                    prop_assert!(
                        message.contains("spillway.yaml"),
                        "{message:?} does not say which file"
                    );
                }
            }
            Ok(())
        },
    );
}

fn manifest_seeds() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut seeds: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("deploy/examples")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("example");
            (path, text)
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn scaled_object_manifests_convert_or_refuse_clearly() {
    let seeds = manifest_seeds();
    for (path, text) in &seeds {
        spillway::plan::parse_scaled_objects(path, text)
            .unwrap_or_else(|err| panic!("the example {} is valid: {err}", path.display()));
    }
    check(
        "ScaledObject manifest",
        PURE_CASES,
        (any::<Index>(), yaml_mutations()),
        |(seed, mutations)| {
            let (path, text) = seed.get(&seeds);
            let text = mutate_yaml(text, &mutations);
            if let Err(err) = spillway::plan::parse_scaled_objects(path, &text) {
                error_is_clear("manifest", &text, &err.to_string())?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Broker answers: JSON mutation shared by the pure and the end-to-end targets
// ---------------------------------------------------------------------------------------------

/// What a replaced JSON node becomes.
#[derive(Debug, Clone)]
enum Replacement {
    Null,
    Bool(bool),
    Number(Value),
    Text(String),
    EmptyArray,
    EmptyObject,
    Deep(usize),
}

impl Replacement {
    fn value(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Number(n) => n.clone(),
            Self::Text(t) => Value::String(t.clone()),
            Self::EmptyArray => json!([]),
            Self::EmptyObject => json!({}),
            Self::Deep(depth) => {
                let mut value = json!(1);
                for _ in 0..*depth {
                    value = json!([value]);
                }
                value
            }
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, Self::Number(_))
    }
}

/// One mutation of a broker's answer.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    FlipByte(Index, u8),
    Splice(Index, Vec<u8>),
    ReplaceNode(Index, Replacement),
    DropNode(Index),
    Garbage(Vec<u8>),
    Empty,
    /// An extra field nested this deep at the start of the answer (not generated: one case).
    DeepField(usize),
}

impl Mutation {
    /// A node dropped or given a value of another type: the value must be an error, not 0.
    fn removes_a_field(&self) -> bool {
        match self {
            Self::DropNode(_) => true,
            Self::ReplaceNode(_, with) => !with.is_number(),
            _ => false,
        }
    }
}

fn mutations() -> impl Strategy<Value = Mutation> {
    let number = prop_oneof![
        select(&[-1i64, 0, 1, i64::MAX, i64::MIN][..]).prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        select(&[1e308, -1e308, 0.5, -0.0, 1e-320, 4.5e15][..]).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
    ];
    let replacement = prop_oneof![
        Just(Replacement::Null),
        any::<bool>().prop_map(Replacement::Bool),
        number.prop_map(Replacement::Number),
        any::<String>().prop_map(Replacement::Text),
        Just(Replacement::EmptyArray),
        Just(Replacement::EmptyObject),
        // Deep, yet within serde_json's limit of 128 so the proxy can still judge the JSON;
        // far deeper nesting has its own test below.
        (20usize..100).prop_map(Replacement::Deep),
    ];
    // Structure-aware edits weigh most: they reach past the JSON parser into the reading.
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Splice(i, b)),
        3 => (any::<Index>(), replacement).prop_map(|(i, r)| Mutation::ReplaceNode(i, r)),
        3 => any::<Index>().prop_map(Mutation::DropNode),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Mutation::Garbage),
        1 => Just(Mutation::Empty),
    ]
}

/// Counts the nodes of `value` below the root, in pre-order.
fn node_count(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(|v| 1 + node_count(v)).sum(),
        Value::Object(map) => map.values().map(|v| 1 + node_count(v)).sum(),
        _ => 0,
    }
}

/// Replaces (`Some`) or removes (`None`) the `target`-th node below `value`.
fn edit_node(value: &mut Value, target: &mut usize, with: &Option<Value>) -> bool {
    let children: Vec<String> = match value {
        Value::Array(items) => (0..items.len()).map(|i| i.to_string()).collect(),
        Value::Object(map) => map.keys().cloned().collect(),
        _ => return false,
    };
    for key in children {
        if *target == 0 {
            match (value, with) {
                (Value::Array(items), Some(new)) => {
                    items[key.parse::<usize>().unwrap()] = new.clone()
                }
                (Value::Array(items), None) => {
                    items.remove(key.parse::<usize>().unwrap());
                }
                (Value::Object(map), Some(new)) => {
                    map.insert(key, new.clone());
                }
                (Value::Object(map), None) => {
                    map.remove(&key);
                }
                _ => unreachable!(),
            }
            return true;
        }
        *target -= 1;
        let child = match value {
            Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            Value::Object(map) => map.get_mut(&key).unwrap(),
            _ => unreachable!(),
        };
        if edit_node(child, target, with) {
            return true;
        }
    }
    false
}

fn mutate(body: &[u8], mutation: &Mutation) -> Vec<u8> {
    let mut out = body.to_vec();
    match mutation {
        Mutation::Truncate(i) if !out.is_empty() => out.truncate(i.index(out.len())),
        Mutation::FlipByte(i, b) if !out.is_empty() => {
            let at = i.index(out.len());
            out[at] ^= b | 1;
        }
        Mutation::Splice(i, bytes) => {
            let at = i.index(out.len() + 1);
            out.splice(at..at, bytes.iter().copied());
        }
        Mutation::ReplaceNode(i, _) | Mutation::DropNode(i) => {
            if let Ok(mut value) = serde_json::from_slice::<Value>(body) {
                let count = node_count(&value);
                if count > 0 {
                    let with = match mutation {
                        Mutation::ReplaceNode(_, r) => Some(r.value()),
                        _ => None,
                    };
                    edit_node(&mut value, &mut i.index(count), &with);
                    out = serde_json::to_vec(&value).unwrap();
                }
            }
        }
        Mutation::Garbage(bytes) => out = bytes.clone(),
        Mutation::DeepField(depth) => {
            if let Some(at) = out.iter().position(|b| *b == b'{') {
                let field = format!("\"deep\":{}{},", "[".repeat(*depth), "]".repeat(*depth));
                out.splice(at + 1..at + 1, field.bytes());
            }
        }
        Mutation::Empty => out.clear(),
        _ => {}
    }
    out
}

#[test]
fn prometheus_query_answers_read_as_a_number_or_a_clear_error() {
    const SEEDS: &[&str] = &[
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"x"},"value":[1733222400.123,"42"]}]}}"#,
        r#"{"status":"success","data":{"resultType":"scalar","result":[1733222400.123,"7.5"]}}"#,
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
    ];
    check(
        "Prometheus query parser",
        PURE_CASES,
        (select(SEEDS), mutations(), any::<bool>()),
        |(seed, mutation, ignore_null)| {
            let body = mutate(seed.as_bytes(), &mutation);
            let text = String::from_utf8_lossy(&body);
            match interpret_query(&text, ignore_null) {
                Ok(value) => prop_assert!(value.is_finite(), "{text:?} read as {value}"),
                Err(problem) => error_is_clear("query answer", &text, &format!("{problem:?}"))?,
            }
            Ok(())
        },
    );
}

#[test]
fn text_expositions_parse_or_refuse_clearly() {
    const LINES: &[&str] = &[
        "# HELP jobs Pending jobs.\n",
        "# TYPE jobs gauge\n",
        "jobs{queue=\"a\"} 3\n",
        "jobs{queue=\"b\",x=\"\\\"\"} 1e3 1733222400000\n",
        "jobs NaN\n",
        "jobs +Inf\n",
        "jobs{queue=\"a\"\n",
        "jobs{=\"a\"} 1\n",
        "jobs{queue=\"a\"} \n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n",
        "# TYPE s summary\ns{quantile=\"0.5\"} 1\n",
        "{} 1\n",
        " ",
        "\u{0}",
        "jobs 1 2 3\n",
        "jobs{queue=\"é\"} -0\n",
    ];
    check(
        "text exposition",
        PURE_CASES,
        text_from(LINES, 10),
        |body: String| {
            if let Err(problem) = parse_scrape(&body) {
                error_is_clear("exposition", &body, &format!("{problem:?}"))?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Broker answers end to end: a mutating proxy in front of the real brokers
// ---------------------------------------------------------------------------------------------

/// What the proxy served during one case.
#[derive(Default)]
struct Served {
    /// Answers that were JSON from the broker: whether any of them still parsed after mutation.
    json_answers: usize,
    json_still_valid: usize,
}

/// A broker's answer as the proxy keeps it: status, content type, body.
type Answer = (u16, String, Vec<u8>);

/// An HTTP proxy on loopback in front of one broker: each answer is the broker's real answer
/// (fetched once per path and kept, so cases are fast and comparable) after the case's mutation.
struct MutatingProxy {
    address: String,
    mutation: Arc<Mutex<Option<Mutation>>>,
    served: Arc<Mutex<Served>>,
}

impl MutatingProxy {
    async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let address = listener.local_addr().expect("proxy address").to_string();
        let mutation: Arc<Mutex<Option<Mutation>>> = Arc::default();
        let served: Arc<Mutex<Served>> = Arc::default();
        let answers: Arc<tokio::sync::Mutex<HashMap<String, Answer>>> = Arc::default();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let (m, s) = (mutation.clone(), served.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (m, s, answers, client, upstream) = (
                    m.clone(),
                    s.clone(),
                    answers.clone(),
                    client.clone(),
                    upstream.clone(),
                );
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut socket).await else {
                        return;
                    };
                    let mut lines = head.lines();
                    let target = lines
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .unwrap_or("/")
                        .to_owned();
                    let authorization = lines
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_owned());
                    let (status, content_type, body) = {
                        let mut cache = answers.lock().await;
                        if !cache.contains_key(&target) {
                            let mut request = client.get(format!("{upstream}{target}"));
                            if let Some(auth) = &authorization {
                                request = request.header("authorization", auth);
                            }
                            let Ok(response) = request.send().await else {
                                return;
                            };
                            let status = response.status().as_u16();
                            let content_type = response
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("application/octet-stream")
                                .to_owned();
                            let body = response.bytes().await.unwrap_or_default().to_vec();
                            cache.insert(target.clone(), (status, content_type, body));
                        }
                        cache[&target].clone()
                    };
                    let mutation = m.lock().unwrap().clone();
                    let body = match &mutation {
                        Some(mutation) => mutate(&body, mutation),
                        None => body,
                    };
                    if content_type.contains("json") {
                        let mut served = s.lock().unwrap();
                        served.json_answers += 1;
                        // Clients decode text lossily, so a byte that breaks UTF-8 inside a
                        // string still leaves JSON; and syntax is what counts (a number out of
                        // f64's range in a field nobody reads is still JSON to the scaler).
                        let text = String::from_utf8_lossy(&body);
                        if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() {
                            served.json_still_valid += 1;
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            address,
            mutation,
            served,
        }
    }

    fn set(&self, mutation: Option<Mutation>) {
        *self.mutation.lock().unwrap() = mutation;
        *self.served.lock().unwrap() = Served::default();
    }
}

async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 65_536 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Polls `scaler` once per case through `proxy` and checks the outcome against the mutation.
fn check_broker<S: Scaler>(
    name: &str,
    runtime: &tokio::runtime::Runtime,
    proxy: &MutatingProxy,
    triggers: &[S::Trigger],
) {
    let poll = |triggers: &[S::Trigger]| -> Vec<Result<Reading, ScalerError>> {
        runtime.block_on(async {
            let scaler = S::connect(&triggers[0]).expect("the scaler builds");
            tokio::time::timeout(Duration::from_secs(20), scaler.poll(triggers))
                .await
                .expect("a poll over a mutated answer ends")
        })
    };
    proxy.set(None);
    let baseline: Vec<f64> = poll(triggers)
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|err| panic!("{name}: the unmutated answer reads: {err}"))
                .value
        })
        .collect();
    assert!(
        baseline.iter().all(|v| *v > 0.0),
        "{name}: the baseline has a backlog: {baseline:?}"
    );
    println!("hostile input: {name}: baseline {baseline:?}");
    check(name, BROKER_CASES, mutations(), |mutation: Mutation| {
        proxy.set(Some(mutation.clone()));
        let results = poll(triggers);
        let served = std::mem::take(&mut *proxy.served.lock().unwrap());
        for (result, base) in results.iter().zip(&baseline) {
            match result {
                Ok(reading) => {
                    prop_assert!(reading.value.is_finite(), "read {}", reading.value);
                    prop_assert!(
                        served.json_answers == 0 || served.json_still_valid > 0,
                        "no answer was JSON any more, yet it read {}",
                        reading.value
                    );
                    if mutation.removes_a_field() && *base > 0.0 {
                        prop_assert!(
                            reading.value != 0.0,
                            "a backlog of {base} read as a silent 0"
                        );
                    }
                }
                Err(err) => error_is_clear(name, &format!("{mutation:?}"), &err.to_string())?,
            }
        }
        Ok(())
    });
    // Nesting far past any parser's recursion limit, in a field nobody reads: an error or the
    // right value, never a stack overflow that takes the process down.
    proxy.set(Some(Mutation::DeepField(1_000_000)));
    for (result, base) in poll(triggers).iter().zip(&baseline) {
        if let Ok(reading) = result {
            assert_eq!(
                reading.value, *base,
                "{name}: a deep unread field changed the value"
            );
        }
    }
    println!("hostile input: {name}: 1,000,000-deep field read without a crash");
}

/// A file holding secret text for `*FromSecret` fields; removed on drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(content: &str) -> Self {
        let path = std::env::temp_dir().join(common::unique_name("spillway-hostile"));
        std::fs::write(&path, content).expect("write a secret file");
        Self(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn rabbitmq_management_answers_never_read_as_a_silent_zero() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_connection, _channel, queue) =
        runtime.block_on(common::rabbitmq::queue_with_messages("hostile", 7));
    let upstream = url::Url::parse(&common::endpoint("SPILLWAY_RABBITMQ_HTTP")).unwrap();
    let origin = format!(
        "http://{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap()
    );
    let proxy = runtime.block_on(MutatingProxy::start(&origin));
    let secret = SecretFile::new(&format!(
        "http://{}:{}@{}/%2f",
        upstream.username(),
        upstream.password().unwrap_or(""),
        proxy.address
    ));
    let trigger: RabbitMqTrigger = serde_json::from_value(json!({
        "hostFromSecret": {"file": secret.0},
        "queueName": queue,
        "value": 5,
    }))
    .unwrap();
    // The management API's figures lag the publishes by a few seconds.
    runtime.block_on(common::eventually(
        "the management API to count 7 messages",
        Duration::from_secs(30),
        || async {
            let response = reqwest::get(format!(
                "{}/api/queues/%2f/{queue}",
                common::endpoint("SPILLWAY_RABBITMQ_HTTP").trim_end_matches('/')
            ))
            .await
            .ok()?;
            let body: Value = response.json().await.ok()?;
            (body["messages"] == json!(7)).then_some(())
        },
    ));
    check_broker::<RabbitMqScaler>("RabbitMQ management answer", &runtime, &proxy, &[trigger]);
}

#[test]
fn nats_monitoring_answers_never_read_as_a_silent_zero() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stream, _consumers) =
        runtime.block_on(common::nats::TestStream::create("hostile", &["workers"], 9));
    let monitor = common::endpoint("SPILLWAY_NATS_MONITOR");
    let proxy = runtime.block_on(MutatingProxy::start(&monitor));
    let trigger: NatsJetStreamTrigger = serde_json::from_value(json!({
        "natsServerMonitoringEndpoint": proxy.address,
        "stream": stream.name,
        "consumer": "workers",
        "lagThreshold": 5,
    }))
    .unwrap();
    check_broker::<NatsJetStreamScaler>("NATS monitoring answer", &runtime, &proxy, &[trigger]);
    runtime.block_on(stream.delete());
}

#[test]
fn prometheus_answers_never_read_as_a_silent_zero() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = common::endpoint("SPILLWAY_PROMETHEUS_URL");
    let proxy = runtime.block_on(MutatingProxy::start(&upstream));
    let query: PrometheusTrigger = serde_json::from_value(json!({
        "serverAddress": format!("http://{}", proxy.address),
        "query": "vector(42)",
        "threshold": 10,
        "ignoreNullValues": false,
    }))
    .unwrap();
    check_broker::<PrometheusScaler>("Prometheus query answer", &runtime, &proxy, &[query]);
    let scrape: PrometheusTrigger = serde_json::from_value(json!({
        "scrapeUrl": format!("http://{}/metrics", proxy.address),
        "metricName": "prometheus_build_info",
        "threshold": 10,
    }))
    .unwrap();
    check_broker::<PrometheusScaler>("Prometheus exposition", &runtime, &proxy, &[scrape]);
}

// ---------------------------------------------------------------------------------------------
// Kafka answers: the decoders of every response spillway's Kafka client reads
// ---------------------------------------------------------------------------------------------

/// Decodes `bytes` as each response the Kafka client reads, at every version it may negotiate.
fn decode_every_kafka_response(bytes: &[u8]) {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Decodable;
    fn each<T: Decodable>(bytes: &[u8], versions: std::ops::RangeInclusive<i16>) {
        for version in versions {
            let mut buf = bytes::Bytes::copy_from_slice(bytes);
            let _ = T::decode(&mut buf, version);
        }
    }
    each::<ResponseHeader>(bytes, 0..=1);
    each::<ApiVersionsResponse>(bytes, 0..=4);
    each::<MetadataResponse>(bytes, 0..=13);
    each::<FindCoordinatorResponse>(bytes, 0..=6);
    each::<OffsetFetchResponse>(bytes, 0..=9);
    each::<ListOffsetsResponse>(bytes, 0..=10);
    each::<SaslHandshakeResponse>(bytes, 0..=1);
    each::<SaslAuthenticateResponse>(bytes, 0..=2);
    each::<FetchResponse>(bytes, 4..=17);
}

#[test]
fn kafka_answers_decode_or_refuse_without_a_crash() {
    // Found here: kafka-protocol 0.18 sized a Vec from an array count before reading it, so
    // these 8 bytes (throttle time, then a broker array of i32::MAX) asked for 206 GB and the
    // process aborted. vendor/kafka-protocol refuses the count.
    decode_every_kafka_response(&[0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
    decode_every_kafka_response(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let seeds = kafka_seed_answers();
    check(
        "Kafka answer decoders",
        PURE_CASES,
        (any::<Index>(), mutations()),
        |(seed, mutation)| {
            let seed: &Vec<u8> = seed.get(&seeds);
            decode_every_kafka_response(&mutate(seed, &mutation));
            Ok(())
        },
    );
}

/// Valid encodings of the answers the client reads, to mutate from.
fn kafka_seed_answers() -> Vec<Vec<u8>> {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    fn encode<T: Encodable>(message: &T, version: i16) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        message.encode(&mut buf, version).expect("encode a seed");
        buf.to_vec()
    }
    let topic = TopicName(StrBytes::from_static_str("orders"));
    let metadata = MetadataResponse::default()
        .with_brokers(vec![
            metadata_response::MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(19092),
        ])
        .with_topics(vec![
            metadata_response::MetadataResponseTopic::default()
                .with_name(Some(topic.clone()))
                .with_partitions(
                    (0..4)
                        .map(|p| {
                            metadata_response::MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(1))
                                .with_replica_nodes(vec![BrokerId(1)])
                                .with_isr_nodes(vec![BrokerId(1)])
                        })
                        .collect(),
                ),
        ]);
    let offsets = ListOffsetsResponse::default().with_topics(vec![
        list_offsets_response::ListOffsetsTopicResponse::default()
            .with_name(topic.clone())
            .with_partitions(
                (0..4)
                    .map(|p| {
                        list_offsets_response::ListOffsetsPartitionResponse::default()
                            .with_partition_index(p)
                            .with_offset(100 + i64::from(p))
                    })
                    .collect(),
            ),
    ]);
    let committed = OffsetFetchResponse::default().with_groups(vec![
        offset_fetch_response::OffsetFetchResponseGroup::default()
            .with_group_id(GroupId(StrBytes::from_static_str("orders-consumer")))
            .with_topics(vec![
                offset_fetch_response::OffsetFetchResponseTopics::default()
                    .with_name(topic.clone())
                    .with_partitions(vec![
                        offset_fetch_response::OffsetFetchResponsePartitions::default()
                            .with_partition_index(0)
                            .with_committed_offset(42),
                    ]),
            ]),
    ]);
    let coordinators = FindCoordinatorResponse::default().with_coordinators(vec![
        find_coordinator_response::Coordinator::default()
            .with_key(StrBytes::from_static_str("orders-consumer"))
            .with_node_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("127.0.0.1"))
            .with_port(19092),
    ]);
    vec![
        encode(&metadata, 1),
        encode(&metadata, 12),
        encode(&offsets, 1),
        encode(&offsets, 8),
        encode(&committed, 8),
        encode(&coordinators, 4),
        encode(&ApiVersionsResponse::default(), 3),
    ]
}
