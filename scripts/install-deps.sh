#!/usr/bin/env bash
# Installs what building spillway and running its local services need, when missing:
# Debian packages (brokers, Java, Maven, C toolchain for librdkafka) and the Kafka jars.
# Idempotent: a machine that has everything is left alone in about a second.
SERVICE_NAME=install-deps
source "$(dirname "$0")/lib.sh"

# command or file that proves a package is there -> Debian package
declare -A NEED=(
  [/usr/lib/rabbitmq/bin/rabbitmq-server]=rabbitmq-server
  [/usr/sbin/nats-server]=nats-server
  [/usr/bin/prometheus]=prometheus
  [/usr/bin/promtool]=prometheus
  [/usr/bin/mvn]=maven
  [/usr/bin/cmake]=cmake
  [/usr/bin/pkg-config]=pkg-config
  [/usr/bin/curl]=curl
  [/usr/bin/openssl]=openssl
  [/usr/bin/g++]=g++
  [/usr/include/openssl/ssl.h]=libssl-dev
  [/usr/include/sasl/sasl.h]=libsasl2-dev
  [/usr/include/x86_64-linux-gnu/curl/curl.h]=libcurl4-openssl-dev
  [/usr/include/zlib.h]=zlib1g-dev
  # A second load generator beside benches/support/http_load.rs (benches/api_floor.rs).
  [/usr/bin/wrk]=wrk
)

missing=()
for path in "${!NEED[@]}"; do
  [[ -e $path ]] || missing+=("${NEED[$path]}")
done
if ! command -v java >/dev/null; then missing+=(openjdk-17-jre-headless); fi

if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}); run this script as root or install them"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
fi

java_major=$(java -XshowSettings:properties -version 2>&1 | awk -F= '/java.specification.version/ {gsub(/ /, "", $2); print $2}')
((java_major >= 17)) || die "Kafka 4 needs Java 17 or newer; found Java $java_major"
command -v cargo >/dev/null || die "cargo not found: install Rust (1.85 or newer) with rustup"
# Go builds the Kubernetes control plane of the end-to-end tests (scripts/k8s.sh), once.
command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || die "go not found: the control plane of the end-to-end tests is built with Go 1.24 or newer"

"$REPO_ROOT/scripts/kafka.sh" install
# The fault proxy of tests/e2e_faults.rs, built with Go once (83 s from empty Go caches).
"$REPO_ROOT/scripts/toxiproxy.sh" install
# helm, for the chart's test only, is built by scripts/test.sh alongside the Rust tests.
log "dependencies present"
