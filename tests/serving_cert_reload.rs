//! A running `spillway serve` picks up a rotated serving certificate for new connections,
//! without a restart, as cert-manager's renewals need: real TLS sockets, files replaced on disk
//! the way a Secret volume is updated (a rename), and a half-written rotation never served.

mod common;

use std::path::Path;
use std::time::Duration;

/// A new TLS connection's peer certificate (DER), from a fresh client each time.
async fn served_certificate(port: u16) -> Vec<u8> {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = client
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("an HTTPS answer");
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the peer certificate")
        .to_vec()
}

fn pair(name: &str) -> (String, String, Vec<u8>) {
    let made =
        rcgen::generate_simple_self_signed(vec![name.to_owned(), "localhost".into()]).unwrap();
    (
        made.cert.pem(),
        made.signing_key.serialize_pem(),
        made.cert.der().to_vec(),
    )
}

fn replace(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let dir = std::env::temp_dir().join(common::unique_name("serving-cert"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let (first_cert, first_key, first_der) = pair("first.test");
    replace(&cert, &first_cert);
    replace(&key, &first_key);
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let config = dir.join("spillway.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  metricsListen: 127.0.0.1:{metrics_port}\n  tls: {{certFile: {}, keyFile: {}}}\nscaledObjects: []\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let _server = common::serve::spawn(&config, port, None).await;
    assert_eq!(served_certificate(port).await, first_der);

    // Half a rotation (the new certificate, the old key): the old pair stays in service.
    let (second_cert, second_key, second_der) = pair("second.test");
    replace(&cert, &second_cert);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(served_certificate(port).await, first_der);

    // The key arrives: the next new connection gets the new certificate.
    replace(&key, &second_key);
    let served = common::eventually(
        "a new connection to get the rotated certificate",
        Duration::from_secs(10),
        || async {
            let served = served_certificate(port).await;
            (served != first_der).then_some(served)
        },
    )
    .await;
    assert_eq!(served, second_der);
    std::fs::remove_dir_all(&dir).ok();
}
