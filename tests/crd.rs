//! The CRDs as shipped (ScaledObject, TriggerAuthentication, ClusterTriggerAuthentication):
//! `deploy/crd.yaml` is exactly what `spillway crd` prints, and each schema is one the API
//! server accepts as structural (every node typed, nothing left to resolve, unknown fields
//! preserved nowhere by accident).

use std::path::Path;

use serde_json::Value;
use spillway::controller::crd::{crd_yaml, crds};

/// Schema locations (JSON-pointer-like, `items` for array items) where
/// `x-kubernetes-preserve-unknown-fields` is intended: only KEDA's credential sources that a
/// TriggerAuthentication declares so its rules can refuse them by name (left out, the API
/// server would prune them silently).
const PRESERVE_UNKNOWN_FIELDS: &[&str] = &[
    "/spec/env/items",
    "/spec/configMapTargetRef/items",
    "/spec/boundServiceAccountToken/items",
    "/spec/hashiCorpVault",
    "/spec/azureKeyVault",
    "/spec/awsSecretManager",
    "/spec/gcpSecretManager",
    "/spec/podIdentity",
];

/// The formats the API server knows for CRD schemas; any other earns a warning on every apply.
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "date-time",
    "date",
    "duration",
    "byte",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "uuid",
];

#[test]
fn deploy_crd_yaml_is_what_spillway_crd_prints() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crd.yaml");
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crd_yaml();
    if shipped != generated {
        let line = shipped
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || shipped.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "deploy/crd.yaml differs from the generated CRD (first at line {line}); \
             regenerate it with `cargo run -- crd > deploy/crd.yaml`"
        );
    }
}

#[test]
fn the_crd_subcommand_prints_the_definition() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("crd")
        .output()
        .expect("run spillway crd");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), crd_yaml());
    // The YAML is the CustomResourceDefinitions again, one document each.
    use serde::Deserialize;
    let parsed: Vec<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = serde_norway::Deserializer::from_str(&crd_yaml())
        .map(|document| Deserialize::deserialize(document).unwrap())
        .collect();
    assert_eq!(parsed, crds());
    let names: Vec<&str> = parsed
        .iter()
        .map(|c| c.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "scaledobjects.spillway.dev",
            "triggerauthentications.spillway.dev",
            "clustertriggerauthentications.spillway.dev"
        ]
    );
}

#[test]
fn the_schema_is_structural() {
    for crd in crds() {
        schema_is_structural(&crd);
    }
}

fn schema_is_structural(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) {
    for version in &crd.spec.versions {
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("every version has a schema"),
        )
        .unwrap();
        let mut problems = Vec::new();
        check_node(&schema, "", false, &mut problems);
        check_metadata(&schema, &mut problems);
        assert!(
            problems.is_empty(),
            "{} version {} is not structural:\n{}",
            crd.spec.names.kind,
            version.name,
            problems.join("\n")
        );
    }
}

/// Only `metadata.name` and `metadata.generateName` may be restricted.
fn check_metadata(root: &Value, problems: &mut Vec<String>) {
    let Some(metadata) = root.pointer("/properties/metadata") else {
        return;
    };
    for key in metadata.as_object().unwrap().keys() {
        if !matches!(key.as_str(), "type" | "properties") {
            problems.push(format!("/metadata: {key} is not allowed"));
        }
    }
    if let Some(properties) = metadata.get("properties").and_then(Value::as_object) {
        for name in properties.keys() {
            if !matches!(name.as_str(), "name" | "generateName") {
                problems.push(format!(
                    "/metadata: only name and generateName may be restricted, not {name}"
                ));
            }
        }
    }
}

/// Checks one schema node and its subschemas. `in_junctor` is true inside anyOf, oneOf, allOf
/// or not, where types, defaults and descriptions are forbidden.
fn check_node(node: &Value, at: &str, in_junctor: bool, problems: &mut Vec<String>) {
    let Some(object) = node.as_object() else {
        problems.push(format!("{at}: a schema must be an object"));
        return;
    };
    let here = if at.is_empty() { "/" } else { at };
    macro_rules! problem {
        ($($message:tt)*) => { problems.push(format!("{here}: {}", format!($($message)*))) };
    }
    for forbidden in ["$ref", "$defs", "definitions", "$schema", "$id"] {
        if object.contains_key(forbidden) {
            problem!("{forbidden} is left (subschemas must be inlined)");
        }
    }
    let int_or_string = object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if preserve && !PRESERVE_UNKNOWN_FIELDS.contains(&at) {
        problem!("x-kubernetes-preserve-unknown-fields where no unknown fields are intended");
    }
    if in_junctor {
        for forbidden in [
            "type",
            "description",
            "default",
            "nullable",
            "additionalProperties",
        ] {
            if object.contains_key(forbidden) {
                problem!("{forbidden} inside anyOf/oneOf/allOf/not");
            }
        }
    } else if !int_or_string && !preserve {
        match object.get("type").and_then(Value::as_str) {
            Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
            Some(other) => problem!("unknown type {other:?}"),
            None => problem!("no type"),
        }
    }
    if object.contains_key("properties") && object.contains_key("additionalProperties") {
        problem!("properties and additionalProperties together");
    }
    if let Some(format) = object.get("format").and_then(Value::as_str)
        && !KNOWN_FORMATS.contains(&format)
    {
        problem!("format {format:?} is unknown to the API server");
    }
    if let Some(values) = object.get("enum").and_then(Value::as_array) {
        let kind = object.get("type").and_then(Value::as_str);
        for value in values {
            let fits = match kind {
                Some("string") => value.is_string(),
                Some("integer") => value.is_i64() || value.is_u64(),
                Some("number") => value.is_number(),
                Some("boolean") => value.is_boolean(),
                _ => true,
            };
            if !fits {
                problem!("enum value {value} is not a {kind:?}");
            }
        }
    }
    if let Some(rules) = object
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules {
            if !rule.get("rule").is_some_and(Value::is_string) {
                problem!("validation without a rule: {rule}");
            }
            if !rule.get("message").is_some_and(Value::is_string) {
                problem!("validation without a message: {rule}");
            }
        }
    }
    if object.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let keys = object
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let required = node
            .pointer("/items/required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if keys.is_empty() || !keys.iter().all(|k| required.contains(k)) {
            problem!("a map list needs keys that every item requires");
        }
    }
    // A field named inside a junctor must also be specified outside it.
    let outer: Vec<&String> = object
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    for junctor in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = object.get(junctor).and_then(Value::as_array) {
            let int_or_string_pattern = int_or_string
                && junctor == "anyOf"
                && branches
                    == &vec![
                        serde_json::json!({"type": "integer"}),
                        serde_json::json!({"type": "string"}),
                    ];
            for (i, branch) in branches.iter().enumerate() {
                if int_or_string_pattern {
                    continue;
                }
                for name in branch
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    if !outer.contains(&name) {
                        problem!("{junctor}[{i}] names {name}, which is not a property");
                    }
                }
                check_node(branch, &format!("{at}/{junctor}[{i}]"), true, problems);
            }
        }
    }
    if let Some(not) = object.get("not") {
        check_node(not, &format!("{at}/not"), true, problems);
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            check_node(property, &format!("{at}/{name}"), in_junctor, problems);
        }
    }
    if let Some(items) = object.get("items") {
        check_node(items, &format!("{at}/items"), in_junctor, problems);
    }
    if let Some(additional) = object.get("additionalProperties")
        && additional.is_object()
    {
        check_node(
            additional,
            &format!("{at}/additionalProperties"),
            in_junctor,
            problems,
        );
    }
}

#[test]
fn the_structural_check_catches_what_the_api_server_refuses() {
    let problems = |schema: Value| {
        let mut problems = Vec::new();
        check_node(&schema, "", false, &mut problems);
        problems
    };
    let ok = serde_json::json!({"type": "object", "properties": {
        "size": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        "count": {"type": "integer", "format": "int32"}
    }});
    assert_eq!(problems(ok), Vec::<String>::new());
    let cases = [
        (
            serde_json::json!({"type": "object", "properties": {"a": {"description": "x"}}}),
            "/a: no type",
        ),
        (
            serde_json::json!({"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}}),
            "/a: $ref is left",
        ),
        (
            serde_json::json!({"type": "object", "properties": {"a": {"type": "integer", "format": "uint64"}}}),
            "/a: format \"uint64\"",
        ),
        (
            serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            "/: x-kubernetes-preserve-unknown-fields",
        ),
        (
            serde_json::json!({"type": "object", "properties": {"a": {"type": "string"}},
                "anyOf": [{"properties": {"b": {"type": "string"}}}]}),
            "anyOf[0] names b",
        ),
        (
            serde_json::json!({"type": "object", "anyOf": [{"type": "object"}]}),
            "/anyOf[0]: type inside",
        ),
        (
            serde_json::json!({"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"], "items": {"type": "object"}}),
            "a map list needs keys",
        ),
    ];
    for (schema, expected) in cases {
        let found = problems(schema.clone());
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{schema}: expected {expected:?}, got {found:?}"
        );
    }
}
