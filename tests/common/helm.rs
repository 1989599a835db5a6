//! A real `helm` (built by scripts/helm.sh) run against the local control plane, with its own
//! config, cache and data under target/helm (never the user's).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary scripts/helm.sh built (`make test` builds it first); SPILLWAY_HELM overrides.
pub fn helm_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let path = match std::env::var_os("SPILLWAY_HELM") {
            Some(path) => PathBuf::from(path),
            None => {
                let output = Command::new(repo().join("scripts/helm.sh"))
                    .arg("path")
                    .output()
                    .expect("run scripts/helm.sh path");
                assert!(output.status.success(), "scripts/helm.sh path: {output:?}");
                PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
            }
        };
        assert!(
            path.is_file(),
            "no helm at {}: run scripts/helm.sh install",
            path.display()
        );
        path
    })
}

/// Runs helm with its own config, cache and data under target/helm and no kubeconfig but the
/// one passed.
pub fn helm(args: &[&str]) -> Output {
    let home = repo().join("target/helm");
    Command::new(helm_binary())
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .current_dir(repo())
        .output()
        .expect("run helm")
}

/// [`helm`], stdout, or a panic with what helm said.
pub fn helm_ok(args: &[&str]) -> String {
    let output = helm(args);
    assert!(
        output.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A values file holding `values` (JSON is YAML), in target/, removed when dropped.
pub struct ValuesFile(PathBuf);

impl ValuesFile {
    pub fn new(values: &serde_json::Value) -> Self {
        let path = repo()
            .join("target")
            .join(format!("{}.yaml", super::unique_name("helm-values")));
        std::fs::write(&path, values.to_string()).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}
