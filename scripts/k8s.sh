#!/usr/bin/env bash
# A Kubernetes control plane without kubelet or Docker: etcd, kube-apiserver (with its
# aggregator) and kube-controller-manager, all on 127.0.0.1, built from the Go module proxy.
# usage: scripts/k8s.sh install|start|stop|status|restart COMPONENT|kubectl ARGS...
#
# `restart etcd|kube-apiserver|kube-controller-manager` stops one component (SIGTERM, SIGKILL
# after 5 s) and starts it again with the same flags, the others left running: the
# fault-matrix tests (tests/e2e_faults.rs) restart the API server and etcd under load.
#
# One Go binary (scripts/k8s/controlplane) holds all of them plus kubectl; it is built once
# per version and source hash into ~/.cache/spillway/k8s-<version>-<hash>/ and reused, since
# the first build takes tens of minutes on 2 cores. Certificates (cluster CA, serving,
# front-proxy, service-account keys, client certificates) and kubeconfigs are generated
# under target/services/k8s/pki once and kept across restarts.
#
# How the aggregator reaches spillway on loopback: Endpoints/EndpointSlices refuse loopback
# addresses, but the aggregator's default service resolver turns a Service of type
# ExternalName into https://<externalName>:<APIService port> without looking at endpoints,
# so an ExternalName Service `localhost` plus an APIService pointing at it with spillway's
# port lands on 127.0.0.1. The TLS server name the aggregator checks is
# <service>.<namespace>.svc, which the generated spillway serving certificate carries.
SERVICE_NAME=k8s
source "$(dirname "$0")/lib.sh"

K8S_VERSION="${SPILLWAY_K8S_VERSION:-v1.34.4}"
SRC="$REPO_ROOT/scripts/k8s/controlplane"
# Bump when install()'s build command changes, so cached binaries of the old recipe are not reused.
BUILD_RECIPE=2
SRC_HASH=$( (cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" && echo "$BUILD_RECIPE") | sha256sum | cut -c1-12)
BIN_DIR="$CACHE_DIR/k8s-$K8S_VERSION-$SRC_HASH"
BIN="$BIN_DIR/controlplane"

DIR="$(service_dir k8s)"
PKI="$DIR/pki"

# The namespace and Service name spillway is registered under; its serving certificate is
# made for <name>.<namespace>.svc.
SPILLWAY_NS=spillway-system
SPILLWAY_SVC=spillway

install() {
  command -v openssl >/dev/null || die "openssl is not installed; run scripts/install-deps.sh"
  if [[ -x $BIN ]]; then
    return 0
  fi
  command -v go >/dev/null || die "go is not installed (needed once to build the control plane)"
  mkdir -p "$BIN_DIR"
  log "building etcd, kube-apiserver, kube-controller-manager and kubectl $K8S_VERSION (first time only: tens of minutes on 2 cores)"
  local start=$SECONDS
  # GOFLAGS=-mod=mod: go.sum is committed, but the module cache of a fresh machine is empty.
  # The version is stamped as k8s.io/kubernetes' own build does, so /version and kubectl
  # report the real release instead of v0.0.0-master.
  local major=${K8S_VERSION#v} minor
  minor=${major#*.}
  minor=${minor%%.*}
  major=${major%%.*}
  local v=k8s.io/component-base/version
  local ldflags="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=$major -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  (cd "$SRC" && GOFLAGS=-mod=mod go build -trimpath -ldflags="$ldflags" -o "$BIN.tmp" .) ||
    die "control plane build failed"
  mv "$BIN.tmp" "$BIN"
  log "built $BIN in $((SECONDS - start))s"
}

# sign NAME SUBJECT CA [SAN...]: a key and a certificate signed by CA (a prefix under $PKI).
sign() {
  local name=$1 subject=$2 ca=$3
  shift 3
  [[ -f $PKI/$name.crt ]] && return 0
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if (($#)); then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      local sans=() s
      for s in "$@"; do
        if [[ $s =~ ^[0-9.]+$ || $s == *:* ]]; then sans+=("IP:$s"); else sans+=("DNS:$s"); fi
      done
      echo "subjectAltName=$(
        IFS=,
        echo "${sans[*]}"
      )"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subject" \
    -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

ca() {
  local name=$1 cn=$2
  [[ -f $PKI/$name.crt ]] && return 0
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "/CN=$cn" \
    -days 3650 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$PKI/$name.crt" 2>/dev/null
}

# kubeconfig NAME: a kubeconfig for the client certificate NAME.
kubeconfig() {
  local name=$1
  cat >"$DIR/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: spillway-test
  cluster:
    server: https://127.0.0.1:$K8S_APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: $name
  context: {cluster: spillway-test, user: $name}
current-context: $name
EOF
}

pki() {
  mkdir -p "$PKI"
  ca ca spillway-test-cluster-ca
  ca front-proxy-ca spillway-test-front-proxy-ca
  # A CA of nobody's: client certificates it signs must be refused by spillway.
  ca stranger-ca spillway-test-stranger-ca
  sign apiserver "/CN=kube-apiserver" ca localhost 127.0.0.1 ::1 kubernetes \
    kubernetes.default kubernetes.default.svc 10.96.0.1
  sign front-proxy-client "/CN=front-proxy-client" front-proxy-ca
  sign admin "/O=system:masters/CN=spillway-test-admin" ca
  sign controller-manager "/CN=system:kube-controller-manager" ca
  # spillway's identity towards kube-apiserver (TokenReview, SubjectAccessReview, its
  # controller) and its serving certificate for the aggregator.
  sign spillway-client "/CN=spillway" ca
  sign spillway-serving "/CN=$SPILLWAY_SVC.$SPILLWAY_NS.svc" ca localhost 127.0.0.1 ::1 \
    "$SPILLWAY_SVC.$SPILLWAY_NS.svc" "$SPILLWAY_SVC.$SPILLWAY_NS.svc.cluster.local"
  # A user with no rights at all, and one the stranger CA vouches for.
  sign nobody "/CN=spillway-test-nobody" ca
  sign stranger "/CN=spillway-test-admin" stranger-ca
  if [[ ! -f $PKI/sa.key ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  local n
  for n in admin controller-manager spillway-client nobody; do kubeconfig "$n"; done
  mkdir -p "$DIR/bin"
  printf '#!/bin/sh\nexec %q kubectl "$@"\n' "$BIN" >"$DIR/bin/kubectl"
  chmod +x "$DIR/bin/kubectl"
}

admin_curl() {
  curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$K8S_APISERVER_PORT$1"
}
apiserver_ready() { [[ $(admin_curl /readyz) == ok ]]; }
etcd_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$K8S_ETCD_PORT/health" | grep -q '"health":"true"'; }
controller_manager_ready() {
  [[ $(curl -ksS --max-time 2 "https://127.0.0.1:$K8S_CONTROLLER_MANAGER_PORT/healthz") == ok ]]
}

# start_component NAME READY_CHECK ARGS...: runs `controlplane NAME ARGS...` in the
# background with its own log and pid file, then waits for READY_CHECK.
start_component() {
  local name=$1 ready=$2
  shift 2
  local pidfile="$DIR/$name.pid" logfile="$DIR/$name.log"
  if pid_alive "$pidfile"; then
    log "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  log "starting $name (log: $logfile)"
  : >"$logfile"
  nohup "$BIN" "$name" "$@" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_until "${SPILLWAY_START_TIMEOUT:-90}" "$name" "$logfile" "$ready" ||
    die "$name did not become ready; see $logfile"
}

start() {
  install
  pki
  if ! pid_alive "$DIR/etcd.pid"; then
    require_port_free "$K8S_ETCD_PORT" "etcd client"
    require_port_free "$K8S_ETCD_PEER_PORT" "etcd peer"
  fi
  # --unsafe-no-fsync: a throwaway test store; fsync would dominate on shared disks.
  start_component etcd etcd_ready --name spillway-test --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-cluster "spillway-test=http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --listen-metrics-urls "" --unsafe-no-fsync --log-level warn
  pid_alive "$DIR/kube-apiserver.pid" || require_port_free "$K8S_APISERVER_PORT" "kube-apiserver"
  # --endpoint-reconciler-type=none: the `kubernetes` Service would otherwise get the
  # loopback advertise address as an endpoint, which validation refuses.
  start_component kube-apiserver apiserver_ready \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$K8S_APISERVER_PORT" \
    --etcd-servers "http://127.0.0.1:$K8S_ETCD_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
    --authorization-mode RBAC --allow-privileged \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=false
  pid_alive "$DIR/kube-controller-manager.pid" ||
    require_port_free "$K8S_CONTROLLER_MANAGER_PORT" "kube-controller-manager"
  # Controllers use their own service accounts (as kubeadm sets it up), so the HPA
  # controller reads metrics with its real RBAC role, which spillway's authorizer checks.
  start_component kube-controller-manager controller_manager_ready \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$K8S_CONTROLLER_MANAGER_PORT" \
    --controllers deployment,replicaset,horizontalpodautoscaling,garbagecollector,serviceaccount,serviceaccount-token,namespace,statefulset \
    --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --horizontal-pod-autoscaler-sync-period "${SPILLWAY_HPA_SYNC_PERIOD:-2s}" \
    --horizontal-pod-autoscaler-downscale-stabilization "${SPILLWAY_HPA_DOWNSCALE_STABILIZATION:-10s}" \
    --leader-elect=false
  log "ready: $("$BIN" kube-apiserver --version 2>/dev/null || echo "kube-apiserver $K8S_VERSION") on https://127.0.0.1:$K8S_APISERVER_PORT (kubeconfig: $DIR/admin.kubeconfig)"
}

stop() {
  stop_pid "$DIR/kube-controller-manager.pid" kube-controller-manager
  stop_pid "$DIR/kube-apiserver.pid" kube-apiserver
  stop_pid "$DIR/etcd.pid" etcd
  wait_port_closed "$K8S_CONTROLLER_MANAGER_PORT" kube-controller-manager
  wait_port_closed "$K8S_APISERVER_PORT" kube-apiserver
  wait_port_closed "$K8S_ETCD_PORT" etcd
}

# restart COMPONENT: one component down and up again; the rest keep running.
restart() {
  local component=${1:-} port
  case "$component" in
  etcd) port=$K8S_ETCD_PORT ;;
  kube-apiserver) port=$K8S_APISERVER_PORT ;;
  kube-controller-manager) port=$K8S_CONTROLLER_MANAGER_PORT ;;
  *) die "usage: $0 restart etcd|kube-apiserver|kube-controller-manager" ;;
  esac
  pid_alive "$DIR/$component.pid" || die "$component is not running; use start"
  # kube-apiserver drains for tens of seconds on SIGTERM; a restart gives it 5 s (a kubelet
  # would give a static pod its grace period), then SIGKILL.
  stop_pid "$DIR/$component.pid" "$component" "${SPILLWAY_K8S_RESTART_GRACE:-5}"
  wait_port_closed "$port" "$component"
  [[ $component == etcd ]] && wait_port_closed "$K8S_ETCD_PEER_PORT" "etcd (peer)"
  # start() skips what is running and waits for the restarted component's readiness.
  start
}

status() {
  local c
  for c in etcd kube-apiserver kube-controller-manager; do
    if pid_alive "$DIR/$c.pid"; then echo "$c: running"; else echo "$c: stopped"; fi
  done
}

case "${1:-}" in
install | start | stop | status) "$1" ;;
restart)
  shift
  restart "$@"
  ;;
kubectl)
  shift
  exec "$BIN" kubectl --kubeconfig "$DIR/admin.kubeconfig" "$@"
  ;;
*) die "usage: $0 install|start|stop|status|restart COMPONENT|kubectl ARGS..." ;;
esac
