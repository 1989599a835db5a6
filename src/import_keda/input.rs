//! Reading KEDA objects as `kubectl apply -f` takes them: files of one or more YAML documents
//! or JSON, directories (their `.yaml`, `.yml` and `.json` files, in name order, not
//! recursively), stdin, and `List`s as `kubectl get -o yaml` writes them. Documents of other
//! kinds (the Secrets and Deployments KEDA's examples carry) are listed as ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

use super::{ImportError, KEDA_API_VERSION, KedaKind, KedaObject};

/// The KEDA objects of some input, and the documents left alone (with why).
#[derive(Debug, Default)]
pub struct Documents {
    pub objects: Vec<KedaObject>,
    pub ignored: Vec<String>,
}

impl Documents {
    fn extend(&mut self, other: Documents) {
        self.objects.extend(other.objects);
        self.ignored.extend(other.ignored);
    }
}

/// Reads `paths` in order: `-` is stdin, a directory its manifest files.
pub fn read_paths(paths: &[PathBuf]) -> Result<Documents, ImportError> {
    let mut documents = Documents::default();
    for path in paths {
        if path.as_os_str() == "-" {
            let text =
                std::io::read_to_string(std::io::stdin()).map_err(|source| ImportError::Read {
                    path: path.clone(),
                    source,
                })?;
            documents.extend(parse("<stdin>", &text)?);
        } else if path.is_dir() {
            for file in manifest_files(path)? {
                documents.extend(read_file(&file)?);
            }
        } else {
            documents.extend(read_file(path)?);
        }
    }
    Ok(documents)
}

fn read_file(path: &Path) -> Result<Documents, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

/// The manifest files directly in `dir`, sorted by name.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let read_error = |source| ImportError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The documents of `text` (YAML documents, or one JSON value), `source` naming it in messages.
pub fn parse(source: &str, text: &str) -> Result<Documents, ImportError> {
    let parse_error = |message: String| ImportError::Parse {
        source_name: source.to_owned(),
        message,
    };
    let mut values = Vec::new();
    for (number, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|err| parse_error(format!("document {}: {err}", number + 1)))?;
        values.push((number + 1, value));
    }
    let mut documents = Documents::default();
    for (number, value) in values {
        let at = format!("{source} document {number}");
        collect(&at, value, &mut documents).map_err(parse_error)?;
    }
    Ok(documents)
}

/// Sorts one document into `documents`: a KEDA object, a `List`'s items, or ignored.
fn collect(at: &str, value: Value, documents: &mut Documents) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    if !value.is_object() {
        return Err(format!(
            "{at}: not an object (a Kubernetes manifest is a map)"
        ));
    }
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some_and(Value::is_array) {
        for (i, item) in value["items"].as_array().into_iter().flatten().enumerate() {
            collect(&format!("{at} item {i}"), item.clone(), documents)?;
        }
        return Ok(());
    }
    match KedaKind::of(&kind).filter(|_| api_version == KEDA_API_VERSION) {
        Some(kind) => documents.objects.push(KedaObject {
            kind,
            source: at.to_owned(),
            value,
            problems: Vec::new(),
        }),
        None => {
            let name = value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("<no name>");
            let api_version = if api_version.is_empty() {
                "<no apiVersion>".to_owned()
            } else {
                api_version
            };
            let kind = if kind.is_empty() {
                "<no kind>".to_owned()
            } else {
                kind
            };
            documents.ignored.push(format!(
                "{at}: {api_version} {kind} {name} (not a {KEDA_API_VERSION} ScaledObject, ScaledJob, TriggerAuthentication or ClusterTriggerAuthentication)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_json_and_lists_are_read_and_other_kinds_ignored() {
        let yaml = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\napiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: a}\n---\n";
        let documents = parse("a.yaml", yaml).unwrap();
        assert_eq!(documents.objects.len(), 1);
        assert_eq!(documents.objects[0].source, "a.yaml document 2");
        assert!(documents.ignored[0].starts_with("a.yaml document 1: v1 Secret s"));
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication", "metadata": {"name": "t"}},
            {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "metadata": {"name": "j"}}]}"#;
        let documents = parse("b.json", json).unwrap();
        let kinds: Vec<KedaKind> = documents.objects.iter().map(|o| o.kind).collect();
        assert_eq!(
            kinds,
            [KedaKind::TriggerAuthentication, KedaKind::ScaledJob]
        );
        assert_eq!(documents.objects[1].source, "b.json document 1 item 1");
    }

    #[test]
    fn malformed_input_is_an_error_naming_the_document() {
        let err = parse("c.yaml", "apiVersion: v1\n---\n- a\n- b\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.yaml: c.yaml document 2: not an object (a Kubernetes manifest is a map)"
        );
        let err = parse("d.yaml", "a: [\n").unwrap_err();
        assert!(err.to_string().starts_with("d.yaml: document 1:"), "{err}");
    }
}
