//! Reading ScaledObject manifests as `kubectl apply` takes them: one or more YAML documents,
//! `spillway.dev/v1alpha1` ScaledObjects only, unknown fields refused with their path.

use std::path::Path;

use serde::Deserialize as _;

use super::input::PlanError;
use crate::controller::crd::{GROUP, ScaledObject, crd};

/// The ScaledObjects of a manifest (one or more YAML documents), as `kubectl apply` would
/// take them: `apiVersion: spillway.dev/v1alpha1`, `kind: ScaledObject`, no unknown fields
/// (kubectl's strict field validation). The spec's rules are checked by
/// [`super::PlanSource::from_scaled_object`].
pub fn parse_scaled_objects(path: &Path, text: &str) -> Result<Vec<ScaledObject>, PlanError> {
    let file_error = |message: String| PlanError::File {
        path: path.display().to_string(),
        message,
    };
    let located = |err: serde_norway::Error| match err.location() {
        Some(l) => {
            let message = err.to_string();
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            format!(
                "{}:{}: {}",
                l.line(),
                l.column(),
                message.strip_suffix(&suffix).unwrap_or(&message)
            )
        }
        None => err.to_string(),
    };
    let api_version = format!("{GROUP}/v1alpha1");
    let schema = crd()
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).expect("a schema serializes"));
    let mut objects = Vec::new();
    let untyped = serde_norway::Deserializer::from_str(text);
    let typed = serde_norway::Deserializer::from_str(text);
    for (number, (untyped, typed)) in untyped.zip(typed).enumerate() {
        let document = number + 1;
        let value = serde_json::Value::deserialize(untyped).map_err(|e| file_error(located(e)))?;
        if value.is_null() {
            continue;
        }
        let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
        // Credentials applied beside the ScaledObjects they serve: nothing to plan.
        if field("apiVersion") == Some(&api_version)
            && matches!(
                field("kind"),
                Some("TriggerAuthentication" | "ClusterTriggerAuthentication")
            )
        {
            continue;
        }
        if field("kind") != Some("ScaledObject") || field("apiVersion") != Some(&api_version) {
            return Err(file_error(format!(
                "document {document} is {} {}, not a ScaledObject of {api_version}",
                field("apiVersion").unwrap_or("<no apiVersion>"),
                field("kind").unwrap_or("<no kind>")
            )));
        }
        let so = ScaledObject::deserialize(typed).map_err(|e| file_error(located(e)))?;
        let written = serde_json::to_value(&so).expect("a ScaledObject serializes");
        if let Some(unknown) = unknown_fields(&value, &written, schema.as_ref(), "")
            .into_iter()
            .next()
        {
            return Err(file_error(format!(
                "document {document}: {unknown}: unknown field"
            )));
        }
        objects.push(so);
    }
    if objects.is_empty() {
        return Err(file_error("holds no ScaledObject".into()));
    }
    Ok(objects)
}

/// Paths of fields set in `given` that the typed object dropped and `schema` (the
/// ScaledObject's, at this path) does not declare: fields spillway does not know. A declared
/// field may be dropped for holding its default (`fallback.behavior: static`,
/// `pausedScaleIn: false`). Triggers deny unknown fields themselves (and accept aliases), so
/// they are skipped.
fn unknown_fields(
    given: &serde_json::Value,
    kept: &serde_json::Value,
    schema: Option<&serde_json::Value>,
    at: &str,
) -> Vec<String> {
    use serde_json::Value;
    match (given, kept) {
        (Value::Object(given), Value::Object(kept)) => given
            .iter()
            .filter(|(_, v)| !v.is_null())
            .flat_map(|(key, value)| {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                let declared = schema.and_then(|s| s.get("properties")?.get(key));
                match kept.get(key) {
                    _ if matches!(path.as_str(), "spec.triggers" | "status") => Vec::new(),
                    None if declared.is_some() => Vec::new(),
                    None => vec![path],
                    Some(kept) => unknown_fields(value, kept, declared, &path),
                }
            })
            .collect(),
        (Value::Array(given), Value::Array(kept)) => given
            .iter()
            .zip(kept)
            .enumerate()
            .flat_map(|(i, (g, k))| {
                unknown_fields(
                    g,
                    k,
                    schema.and_then(|s| s.get("items")),
                    &format!("{at}[{i}]"),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}
