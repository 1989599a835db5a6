//! The Kubernetes client every cluster-facing part shares (authentication reviews, the
//! controller): from an explicit kubeconfig, or inferred (in-cluster service account, then
//! `KUBECONFIG`, then `~/.kube/config`); and what a failed request says ([`ApiFailure`]).

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

/// What a failed request to the API server says about the object asked for: an answer
/// (it does not exist, spillway may not read it) or only that no answer could be had now.
/// Callers act on an answer and wait out the rest: an overloaded or restarting API server
/// must never look like a deleted object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFailure {
    /// 404: the object does not exist.
    NotFound,
    /// Any other 4xx but 401, 408 and 429: forbidden, or a request the server rejects. Asking
    /// again gets the same answer.
    Refused,
    /// No answer: connection refused or reset, a timeout, TLS, 401 (spillway's own token is
    /// being rotated), 408, 429 (throttled), 5xx, or a body that could not be decoded.
    Unavailable,
}

impl ApiFailure {
    pub fn of(err: &kube::Error) -> Self {
        match err {
            kube::Error::Api(status) => Self::of_code(status.code),
            _ => Self::Unavailable,
        }
    }

    /// The class of an HTTP status code of a failed request.
    pub fn of_code(code: u16) -> Self {
        match code {
            404 => Self::NotFound,
            401 | 408 | 429 => Self::Unavailable,
            400..=499 => Self::Refused,
            _ => Self::Unavailable,
        }
    }

    /// True for an answer about the object; false when asking again later may answer.
    pub fn is_definite(self) -> bool {
        !matches!(self, Self::Unavailable)
    }
}

/// Where kube-apiserver listens: the addresses of the `kubernetes` Service's EndpointSlices in
/// `default` (kube-apiserver keeps them itself). The destination policy refuses them as it
/// refuses the Service's own address.
pub async fn api_server_endpoint_addresses(
    client: &kube::Client,
) -> Result<Vec<std::net::IpAddr>, kube::Error> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    let listed = slices
        .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await?;
    Ok(listed
        .items
        .iter()
        .flat_map(|slice| &slice.endpoints)
        .flat_map(|endpoint| &endpoint.addresses)
        .filter_map(|address| address.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_about_the_object_are_definite() {
        let cases = [
            (404, ApiFailure::NotFound),
            (403, ApiFailure::Refused),
            (400, ApiFailure::Refused),
            (422, ApiFailure::Refused),
            (401, ApiFailure::Unavailable),
            (408, ApiFailure::Unavailable),
            (429, ApiFailure::Unavailable),
            (500, ApiFailure::Unavailable),
            (502, ApiFailure::Unavailable),
            (503, ApiFailure::Unavailable),
            (504, ApiFailure::Unavailable),
        ];
        for (code, class) in cases {
            assert_eq!(ApiFailure::of_code(code), class, "HTTP {code}");
            assert_eq!(
                class.is_definite(),
                class != ApiFailure::Unavailable,
                "HTTP {code}"
            );
        }
    }
}
