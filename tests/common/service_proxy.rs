//! A stand-in for a Kubernetes Service in front of several `spillway run` replicas on
//! loopback: each connection to the listening port goes to the next replica in turn, skipping
//! one that refuses (a killed replica), as kube-proxy spreads connections over a Service's
//! ready endpoints. Bytes pass through untouched (TLS end to end).

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

pub struct ServiceProxy {
    targets: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServiceProxy {
    /// Listens on `127.0.0.1:port`, forwarding to the replicas on `targets` (ports).
    pub async fn start(port: u16, targets: Vec<u16>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|err| panic!("bind the service port {port}: {err}"));
        let targets = Arc::new(Mutex::new(targets));
        let shared = Arc::clone(&targets);
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let ports = shared.lock().unwrap().clone();
                next = next.wrapping_add(1);
                tokio::spawn(async move {
                    for i in 0..ports.len() {
                        let port = ports[(next + i) % ports.len()];
                        if let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", port)).await {
                            let _ = client.set_nodelay(true);
                            let _ = upstream.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { targets, task }
    }

    /// Replaces the endpoints (a replica joined or left).
    pub fn set_targets(&self, targets: Vec<u16>) {
        *self.targets.lock().unwrap() = targets;
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
