//! `spillway serve --no-auth` as a child process of a test: a config file on free ports, the
//! process (killed when the test ends, passed or failed), and the wait for its health.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the server when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A started server and where it listens.
pub struct Started {
    pub server: Server,
    pub config: PathBuf,
    /// The metrics API (HTTPS; plain HTTP gets health only).
    pub port: u16,
    /// spillway's own `/metrics`.
    pub metrics_port: u16,
}

/// Writes a config polling every second with `scaled_objects` (YAML list items, indented
/// by 2) on two free ports, and starts spillway on it.
pub async fn start(name: &str, scaled_objects: &str) -> Started {
    let (port, metrics_port) = (super::free_port(), super::free_port());
    let config = std::env::temp_dir().join(format!("{}.yaml", super::unique_name(name)));
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\npollingInterval: 1\nscaledObjects:\n{scaled_objects}"
        ),
    )
    .unwrap();
    let server = spawn(&config, port, None).await;
    Started {
        server,
        config,
        port,
        metrics_port,
    }
}

/// Starts `spillway serve --no-auth --config <config>` (logging at `log_level` when given)
/// and waits until `/healthz` on `port` answers over plain HTTP.
pub async fn spawn(config: &Path, port: u16, log_level: Option<&str>) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
    command
        .env(super::ALLOW_LOOPBACK.0, super::ALLOW_LOOPBACK.1)
        .args(["serve", "--no-auth", "--config"])
        .arg(config)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(level) = log_level {
        command.env("RUST_LOG", level);
    }
    let server = Server(command.spawn().expect("start spillway serve"));
    let client = reqwest::Client::new();
    let health = super::eventually(
        "spillway serve to answer /healthz over plain HTTP",
        Duration::from_secs(30),
        || async {
            // `Connection: close`: spillway ends the probe's connection itself, so a test that
            // counts connections next does not find the probe still holding a place.
            let response = client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .header("connection", "close")
                .send()
                .await
                .ok()?;
            response.text().await.ok()
        },
    )
    .await;
    assert_eq!(health, "ok");
    server
}
