#!/usr/bin/env bash
# Helm, for the chart deploy/helm/spillway and its test (tests/helm_chart.rs: `helm lint`,
# `helm template`, an install into the local control plane). Built from the Go module proxy
# (helm.sh/helm/v4, cmd/helm) in a throwaway module once per version into
# ~/.cache/spillway/helm-<version>-<recipe>/.
# usage: scripts/helm.sh install|path
SERVICE_NAME=helm
source "$(dirname "$0")/lib.sh"

HELM_VERSION="${SPILLWAY_HELM_VERSION:-v4.3.2}"
# Bump when install()'s build command changes, so cached binaries of the old recipe are not reused.
BUILD_RECIPE=1
BIN_DIR="$CACHE_DIR/helm-$HELM_VERSION-$BUILD_RECIPE"
BIN="$BIN_DIR/helm"

# ready: the binary runs and reports the version it was built as.
ready() {
  [[ -x $BIN ]] && [[ $("$BIN" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]]
}

install() {
  if ready; then
    return 0
  fi
  command -v go >/dev/null || die "go is not installed (needed once to build Helm)"
  mkdir -p "$BIN_DIR"
  log "building Helm $HELM_VERSION from the Go module proxy (first time only)"
  local start=$SECONDS
  # A module of our own that requires only Helm, so the build uses exactly the versions
  # Helm's go.mod names; -mod=mod lets go fill in go.sum on a machine with an empty cache.
  local module="$BIN_DIR/module.tmp"
  rm -rf "$module"
  mkdir -p "$module"
  local major=${HELM_VERSION%%.*}
  local package="helm.sh/helm/$major/cmd/helm"
  local v="helm.sh/helm/$major/internal/version"
  (
    cd "$module" &&
      go mod init spillway.local/helm-build >/dev/null 2>&1 &&
      GOFLAGS=-mod=mod go get "$package@$HELM_VERSION" &&
      CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
        -ldflags "-s -w -X $v.version=$HELM_VERSION -X $v.gitTreeState=clean" \
        -o "$BIN.tmp" "$package"
  ) || die "Helm build failed"
  rm -rf "$module"
  mv "$BIN.tmp" "$BIN"
  ready || die "the built $BIN does not report version $HELM_VERSION"
  log "built $BIN in $((SECONDS - start))s"
}

case "${1:-}" in
install) install ;;
# Where the binary is (tests read it from here or from SPILLWAY_HELM).
path) echo "$BIN" ;;
*) die "usage: $0 install|path" ;;
esac
