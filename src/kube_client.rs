//! The Kubernetes client every cluster-facing part shares (authentication reviews, the
//! controller): from an explicit kubeconfig, or inferred (in-cluster service account, then
//! `KUBECONFIG`, then `~/.kube/config`).

use std::path::{Path, PathBuf};

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("cannot read kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes cluster found (not in a pod, no KUBECONFIG, no ~/.kube/config): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client for the cluster `kubeconfig` names, or the inferred one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let read = |source| KubeClientError::ReadKubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(read)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(read)?
        }
        None => kube::Config::infer().await?,
    };
    tracing::info!(cluster = %config.cluster_url, "using Kubernetes cluster");
    Ok(kube::Client::try_from(config)?)
}
