//! Credentials: read from files (a mounted Kubernetes Secret, a Vault agent file) and never
//! printed. `Debug` and `Display` of a [`SecretString`] show `<redacted>`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A secret value held in memory. Compare and use it only through [`SecretString::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one call that sends it to a broker.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from, as written in a config file or trigger: `{file: /path}`.
/// The file's content, with one trailing newline removed, is the secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSource {
    pub file: PathBuf,
}

/// A secret could not be read. Names the file, never the content.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot read secret file {path}: {cause}")]
pub struct SecretError {
    pub path: PathBuf,
    pub cause: String,
}

impl SecretSource {
    pub fn read(&self) -> Result<SecretString, SecretError> {
        read_secret_file(&self.file)
    }
}

fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|err| SecretError {
        path: path.to_owned(),
        cause: err.to_string(),
    })?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    Ok(SecretString::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = SecretString::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn reads_file_without_trailing_newline() {
        let path = std::env::temp_dir().join(format!("spillway-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = SecretSource { file: path.clone() }.read().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.expose(), "s3cret");
    }

    #[test]
    fn missing_file_names_path_only() {
        let err = SecretSource {
            file: "/nonexistent/pw".into(),
        }
        .read()
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read secret file /nonexistent/pw: ")
        );
    }
}
