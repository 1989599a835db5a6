//! `spillway import-keda` run as users run it, on KEDA's own documented examples
//! (`tests/fixtures/keda/`, copied verbatim from kedacore/keda-docs v2.20, one file per
//! example): for every broker spillway supports, each object imports or is refused with the
//! reason this table expects. Every imported object then passes spillway's own checks (the
//! controller's, as `spillway plan` runs them) and is created on the real kube-apiserver in a
//! fresh namespace, whose CRD schema and CEL rules are the real check. `--from-cluster` reads
//! KEDA objects created through KEDA's own CRDs (kedacore/keda `config/crd/bases`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::k8s;
use serde_json::Value;
use spillway::plan::{PlanSource, parse_scaled_objects};

/// One documented example and what the import must make of it: the objects imported, and for
/// each refused object a phrase its reasons must contain.
struct Example {
    file: &'static str,
    imported: &'static [&'static str],
    refused: &'static [(&'static str, &'static str)],
}

const EXAMPLES: &[Example] = &[
    Example {
        file: "kafka-scaledobject.yaml",
        imported: &["ScaledObject default/kafka-scaledobject"],
        refused: &[],
    },
    Example {
        file: "kafka-sasl-tls-trigger-authentication.yaml",
        imported: &[],
        refused: &[
            (
                "TriggerAuthentication default/keda-trigger-auth-kafka-credential",
                "parameter username is not a credential any spillway trigger reads from a Secret",
            ),
            (
                "ScaledObject default/kafka-scaledobject",
                "TriggerAuthentication default/keda-trigger-auth-kafka-credential is refused",
            ),
        ],
    },
    Example {
        file: "kafka-gssapi.yaml",
        imported: &[],
        refused: &[
            (
                "TriggerAuthentication default/keda-trigger-auth-kafka-credential",
                "parameter keytab is not a credential",
            ),
            (
                "ScaledObject default/kafka-scaledobject",
                "TriggerAuthentication default/keda-trigger-auth-kafka-credential is refused",
            ),
        ],
    },
    Example {
        file: "kafka-msk-iam.yaml",
        imported: &[],
        refused: &[
            (
                "TriggerAuthentication default/keda-trigger-auth-kafka-credential",
                "parameter awsSecretAccessKey is not a credential",
            ),
            (
                "ScaledObject default/kafka-scaledobject",
                "apache-kafka is not supported by spillway",
            ),
        ],
    },
    Example {
        file: "rabbitmq-amqp-host-vhost.yaml",
        imported: &[],
        refused: &[
            (
                "TriggerAuthentication default/keda-trigger-auth-rabbitmq-conn",
                "parameter vhostName is not a credential",
            ),
            (
                "ScaledObject default/rabbitmq-scaledobject",
                "TriggerAuthentication default/keda-trigger-auth-rabbitmq-conn is refused",
            ),
        ],
    },
    Example {
        file: "rabbitmq-http-host.yaml",
        imported: &[
            "TriggerAuthentication default/keda-trigger-auth-rabbitmq-conn",
            "ScaledObject default/rabbitmq-scaledobject",
        ],
        refused: &[],
    },
    Example {
        file: "rabbitmq-http-two-triggers.yaml",
        imported: &[
            "TriggerAuthentication default/keda-trigger-auth-rabbitmq-conn",
            "ScaledObject default/rabbitmq-scaledobject",
        ],
        refused: &[],
    },
    Example {
        file: "rabbitmq-http-regex.yaml",
        imported: &[
            "TriggerAuthentication default/keda-trigger-auth-rabbitmq-conn",
            "ScaledObject default/rabbitmq-scaledobject",
        ],
        refused: &[],
    },
    Example {
        file: "rabbitmq-deliver-get-rate.yaml",
        imported: &["TriggerAuthentication default/keda-trigger-auth-rabbitmq-conn"],
        refused: &[(
            "ScaledObject default/rabbitmq-scaledobject",
            "\"DeliverGetRate\" is not supported by spillway",
        )],
    },
    Example {
        file: "rabbitmq-scaling-modifiers.yaml",
        imported: &["TriggerAuthentication default/keda-trigger-auth-rabbitmq-conn"],
        refused: &[(
            "ScaledObject default/rabbitmq-scaledobject",
            "\"PublishedToDeliveredRatio\" is not supported by spillway",
        )],
    },
    Example {
        file: "nats-jetstream-scaledobject.yaml",
        imported: &["ScaledObject nats-jetstream/nats-jetstream-scaledobject"],
        refused: &[],
    },
    Example {
        file: "cron-scaledobject.yaml",
        imported: &["ScaledObject default/cron-scaledobject"],
        refused: &[],
    },
    Example {
        file: "cron-with-cpu.yaml",
        imported: &["ScaledObject default/cron-scaledobject"],
        refused: &[],
    },
    Example {
        file: "cpu-scaledobject.yaml",
        imported: &["ScaledObject default/cpu-scaledobject"],
        refused: &[],
    },
    Example {
        file: "cpu-container.yaml",
        imported: &["ScaledObject default/cpu-scaledobject"],
        refused: &[],
    },
    Example {
        file: "memory-scaledobject.yaml",
        imported: &["ScaledObject default/memory-scaledobject"],
        refused: &[],
    },
    Example {
        file: "memory-container.yaml",
        imported: &["ScaledObject default/memory-scaledobject"],
        refused: &[],
    },
    Example {
        file: "prometheus-deploy-guide.yaml",
        imported: &["ScaledObject http-app-scaledobject"],
        refused: &[],
    },
    Example {
        file: "prometheus-scaledobject.yaml",
        imported: &[],
        refused: &[(
            "ScaledObject default/prometheus-scaledobject",
            "serverAddress",
        )],
    },
    Example {
        file: "prometheus-bearer.yaml",
        imported: &["TriggerAuthentication default/keda-prom-creds"],
        refused: &[("ScaledObject keda/prometheus-scaledobject", "serverAddress")],
    },
    Example {
        file: "prometheus-gcp-cluster-trigger-authentication.yaml",
        imported: &[],
        refused: &[
            (
                "ClusterTriggerAuthentication google-workload-identity-auth",
                "spec.podIdentity: not supported by spillway",
            ),
            (
                "ScaledObject google-managed-prometheus-scaler",
                "ClusterTriggerAuthentication google-workload-identity-auth is refused",
            ),
        ],
    },
    Example {
        file: "trigger-authentication-spec.yaml",
        imported: &[],
        refused: &[(
            "TriggerAuthentication default/<no name",
            "spec.hashiCorpVault: not supported by spillway",
        )],
    },
];

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keda")
        .join(file)
}

fn import_keda(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("import-keda")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run spillway import-keda")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `Kind namespace/name` (or `Kind name`) of an output document.
fn display(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    match object["metadata"]["namespace"].as_str() {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The refusals of a `--check` or stderr report, by object: `(object, reasons)`.
fn refusals(report: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for line in report.lines() {
        if let Some(object) = line
            .strip_prefix("refused ")
            .and_then(|l| l.strip_suffix(':'))
            .or_else(|| line.strip_suffix(": refused"))
        {
            found.push((object.to_owned(), String::new()));
        } else if let Some(reason) = line.strip_prefix("  ! ") {
            let last = found.last_mut().expect("a reason follows its object");
            last.1.push_str(reason);
            last.1.push('\n');
        }
    }
    found
}

/// Each documented example imports or is refused as [`EXAMPLES`] says, through the real
/// binary; what it writes passes spillway's own checks and the real API server's.
#[tokio::test]
async fn keda_s_documented_examples_import_or_are_refused_with_the_reason() {
    let client = k8s::admin().await;
    for object in k8s::deploy_manifest("crd.yaml") {
        k8s::apply(&client, object).await;
    }
    k8s::wait_crd_established(&client, k8s::SCALED_OBJECT_CRD, Duration::from_secs(30)).await;
    let mut checked = 0;
    for example in EXAMPLES {
        let path = fixture(example.file);
        let path = path.to_str().unwrap();
        // Without --skip-refused a refusal writes nothing and fails; with it, the rest is written.
        let strict = import_keda(&["-f", path]);
        let output = import_keda(&["-f", path, "--skip-refused"]);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "{}: {stderr}", example.file);
        if example.refused.is_empty() {
            assert!(
                strict.status.success(),
                "{}: {}",
                example.file,
                text(&strict.stderr)
            );
            assert_eq!(text(&strict.stdout), stdout, "{}", example.file);
        } else {
            assert!(!strict.status.success(), "{} has refusals", example.file);
            assert_eq!(
                text(&strict.stdout),
                "",
                "{}: nothing written",
                example.file
            );
        }
        let written = k8s::yaml_documents(&stdout, "import-keda");
        let names: Vec<String> = written.iter().map(display).collect();
        assert_eq!(
            names, example.imported,
            "{}: imported\n{stderr}",
            example.file
        );
        let refused = refusals(&stderr);
        assert_eq!(
            refused.len(),
            example.refused.len(),
            "{}: refused {refused:?}",
            example.file
        );
        for ((object, reasons), (expected, phrase)) in refused.iter().zip(example.refused) {
            assert!(
                object.starts_with(expected),
                "{}: {object} is not {expected}",
                example.file
            );
            assert!(
                reasons.contains(phrase),
                "{}: {object}'s reasons lack {phrase:?}:\n{reasons}",
                example.file
            );
        }
        // `--check` reports the same objects and writes no YAML.
        let check = import_keda(&["-f", path, "--check", "--skip-refused"]);
        let report = text(&check.stdout);
        assert!(check.status.success(), "{}", example.file);
        assert!(
            !report.contains("apiVersion:"),
            "{}: --check writes nothing",
            example.file
        );
        for name in example.imported {
            assert!(
                report.contains(&format!("{name}: imported")),
                "{}: {report}",
                example.file
            );
        }
        assert_eq!(refusals(&report).len(), example.refused.len(), "{report}");

        let namespace = k8s::namespace(&client, "import-keda-").await;
        for mut object in written {
            if object["kind"] == "ScaledObject" {
                let yaml = serde_norway::to_string(&object).unwrap();
                let parsed = parse_scaled_objects(Path::new(example.file), &yaml)
                    .unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", example.file));
                PlanSource::from_scaled_object(&parsed[0])
                    .unwrap_or_else(|e| panic!("{}: spillway's checks: {e}", example.file));
            }
            // Paused: a controller another test runs never acts on these.
            if object["kind"] == "ScaledObject" {
                object["spec"]["paused"] = true.into();
            }
            if object["kind"] == "ClusterTriggerAuthentication" {
                let unique = format!(
                    "{}-{namespace}",
                    object["metadata"]["name"].as_str().unwrap()
                );
                object["metadata"]["name"] = unique.into();
            } else {
                object["metadata"]["namespace"] = namespace.clone().into();
            }
            let name = display(&object);
            k8s::try_apply(&client, object)
                .await
                .unwrap_or_else(|e| panic!("{}: the API server refuses {name}: {e}", example.file));
            checked += 1;
        }
        delete_namespace(&client, &namespace).await;
    }
    // Every object the table says imports: a change that drops one fails here.
    let expected: usize = EXAMPLES.iter().map(|e| e.imported.len()).sum();
    assert_eq!(checked, expected, "objects created on the API server");
}

/// The differences are spelled out: KEDA's defaults where spillway's differ, and what is left
/// out, so nothing changes without a word.
#[test]
fn check_lists_keda_defaults_written_out_and_what_differs() {
    let rabbit = fixture("rabbitmq-http-host.yaml");
    let prometheus = fixture("prometheus-deploy-guide.yaml");
    let output = import_keda(&[
        "-f",
        rabbit.to_str().unwrap(),
        "-f",
        prometheus.to_str().unwrap(),
        "--check",
    ]);
    let report = text(&output.stdout);
    assert!(output.status.success(), "{report}{}", text(&output.stderr));
    for expected in [
        "TriggerAuthentication default/keda-trigger-auth-rabbitmq-conn: imported\n  = nothing differs",
        "ScaledObject default/rabbitmq-scaledobject: imported",
        "HPA: spillway owns spillway-rabbitmq-scaledobject; KEDA's keda-hpa-rabbitmq-scaledobject stays",
        "ScaledObject http-app-scaledobject: imported",
        "spec.triggers[0].metadata.ignoreNullValues: true written out: KEDA's default",
        "ignored ", // the example's Secret
        "3 imported, 0 refused, 1 ignored",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in\n{report}"
        );
    }
    // The YAML says the same in comments and writes the defaults.
    let output = import_keda(&["-f", prometheus.to_str().unwrap()]);
    let yaml = text(&output.stdout);
    assert!(
        yaml.contains("# differs: spec.triggers[0].metadata.ignoreNullValues"),
        "{yaml}"
    );
    let so = &k8s::yaml_documents(&yaml, "import-keda")[0];
    assert_eq!(
        so["spec"]["triggers"][0]["prometheus"]["ignoreNullValues"],
        true
    );
    assert_eq!(so["spec"]["pollingInterval"], 30);
    assert_eq!(so["spec"]["cooldownPeriod"], 300);
    assert_eq!(so["spec"]["minReplicaCount"], 1);
}

/// Directories, stdin and `-o` work as `kubectl apply -f` users expect; a file that is not YAML
/// is an error that writes nothing.
#[test]
fn directories_stdin_and_an_output_directory() {
    let dir = std::env::temp_dir().join(common::unique_name("import-keda-"));
    std::fs::create_dir_all(dir.join("in")).unwrap();
    for file in ["cron-scaledobject.yaml", "nats-jetstream-scaledobject.yaml"] {
        std::fs::copy(fixture(file), dir.join("in").join(file)).unwrap();
    }
    let out = dir.join("out");
    let output = import_keda(&[
        "-f",
        dir.join("in").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "scaledobject-default-cron-scaledobject.yaml",
            "scaledobject-nats-jetstream-nats-jetstream-scaledobject.yaml"
        ]
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["import-keda", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let json = r#"{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "from-stdin", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"name": "worker"}, "triggers": [{"type": "rabbitmq", "metadata": {"host": "amqp://rabbit:5672/", "queueName": "jobs", "queueLength": "5"}}]}}"#;
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), json.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let so = &k8s::yaml_documents(&text(&output.stdout), "import-keda")[0];
    assert_eq!(so["spec"]["triggers"][0]["rabbitmq"]["mode"], "QueueLength");
    assert_eq!(so["spec"]["triggers"][0]["rabbitmq"]["value"], 5.0);

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: keda.sh/v1alpha1\nkind: [\n").unwrap();
    let out = dir.join("not-written");
    let output = import_keda(&["-f", bad.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("bad.yaml"),
        "{}",
        text(&output.stderr)
    );
    assert!(!out.exists(), "nothing is written");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// KEDA's own CRDs, applied once (cluster-scoped, used by no other test; applying is idempotent).
async fn install_keda_crds(client: &kube::Client) {
    for plural in [
        "scaledobjects",
        "triggerauthentications",
        "clustertriggerauthentications",
    ] {
        let path = fixture(&format!("crds/keda.sh_{plural}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        for object in k8s::yaml_documents(&text, "import-keda") {
            k8s::apply(client, object).await;
        }
        k8s::wait_crd_established(
            client,
            &format!("{plural}.keda.sh"),
            Duration::from_secs(30),
        )
        .await;
    }
}

/// `--from-cluster -n` reads what KEDA users have in the cluster: the TriggerAuthentication and
/// ScaledObject of KEDA's RabbitMQ example import; an authentication naming a Secret that does
/// not exist, and a ScaledObject naming an authentication that does not exist, are refused
/// with the reason; no Secret value is ever printed.
#[tokio::test]
async fn from_cluster_reads_keda_objects_and_checks_their_secrets() {
    let client = k8s::admin().await;
    install_keda_crds(&client).await;
    let namespace = k8s::namespace(&client, "import-keda-cluster-").await;
    const SECRET_VALUE: &str = "http://guest:s3cr3t-never-printed@rabbit:15672/";
    k8s::apply(
        &client,
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "keda-rabbitmq-secret", "namespace": namespace},
            "stringData": {"host": SECRET_VALUE}}),
    )
    .await;
    let example = std::fs::read_to_string(fixture("rabbitmq-http-host.yaml")).unwrap();
    for mut object in k8s::yaml_documents(&example, "import-keda") {
        if object["apiVersion"] == "keda.sh/v1alpha1" {
            object["metadata"]["namespace"] = namespace.clone().into();
            k8s::apply(&client, object).await;
        }
    }
    let broken = [
        serde_json::json!({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": {"name": "missing-secret", "namespace": namespace},
            "spec": {"secretTargetRef": [{"parameter": "host", "name": "no-such-secret", "key": "host"}]}}),
        serde_json::json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "names-a-missing-auth", "namespace": namespace},
            "spec": {"scaleTargetRef": {"name": "worker"}, "triggers": [{"type": "rabbitmq",
                "metadata": {"protocol": "http", "queueName": "q", "mode": "QueueLength", "value": "20"},
                "authenticationRef": {"name": "not-there"}}]}}),
    ];
    for object in broken {
        k8s::apply(&client, object).await;
    }
    let kubeconfig = k8s::k8s_dir().join("admin.kubeconfig");
    let args = [
        "--from-cluster",
        "-n",
        &namespace,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    let strict = import_keda(&args);
    assert!(!strict.status.success(), "two objects are refused");
    let output = import_keda(&[&args[..], &["--skip-refused"]].concat());
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"),
        "a Secret value was printed"
    );
    let names: Vec<String> = k8s::yaml_documents(&stdout, "import-keda")
        .iter()
        .map(display)
        .collect();
    assert_eq!(
        names,
        [
            format!("TriggerAuthentication {namespace}/keda-trigger-auth-rabbitmq-conn"),
            format!("ScaledObject {namespace}/rabbitmq-scaledobject"),
        ]
    );
    let refused = refusals(&stderr);
    let reasons = |object: &str| {
        refused
            .iter()
            .find(|(o, _)| o == object)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{object} not refused: {stderr}"))
    };
    assert!(
        reasons(&format!("TriggerAuthentication {namespace}/missing-secret"))
            .contains(&format!("Secret {namespace}/no-such-secret does not exist")),
        "{stderr}"
    );
    assert!(
        reasons(&format!("ScaledObject {namespace}/names-a-missing-auth")).contains(&format!(
            "TriggerAuthentication {namespace}/not-there does not exist"
        )),
        "{stderr}"
    );
    // What was read from the cluster applies to it as spillway's objects.
    for mut object in k8s::yaml_documents(&stdout, "import-keda") {
        if object["kind"] == "ScaledObject" {
            object["spec"]["paused"] = true.into();
        }
        let name = display(&object);
        k8s::try_apply(&client, object)
            .await
            .unwrap_or_else(|e| panic!("the API server refuses {name}: {e}"));
    }
    delete_namespace(&client, &namespace).await;
}

async fn delete_namespace(client: &kube::Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    kube::Api::<Namespace>::all(client.clone())
        .delete(name, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("delete namespace {name}: {e}"));
}
