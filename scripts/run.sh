#!/usr/bin/env bash
# `make run`: starts the local brokers and shows where they listen.
# It grows into the live view of what spillway would scale as the scalers land.
SERVICE_NAME=run
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

cargo build --locked --bin spillway 2>&1 | grep -vE '^\s+(Compiling|Downloaded|Downloading)' >&2
scripts/services.sh up
echo
scripts/services.sh status
echo
echo "endpoints ($SERVICES_DIR/endpoints.env):"
sed 's/^/  /' "$SERVICES_DIR/endpoints.env"
echo
echo "stop them with: make services-down"
