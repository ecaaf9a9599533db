#!/bin/sh
# Install what a fresh machine lacks for `make dev` and `make test`: the system
# packages the platform builds and runs with. Python packages go into .venv (Makefile);
# Go builds and Kafka jars are cached under ~/.cache/fintech-operator by the stack code.
set -eu
missing=""
command -v go >/dev/null 2>&1 || missing="$missing golang-go"
command -v java >/dev/null 2>&1 || missing="$missing openjdk-17-jre-headless"
command -v mvn >/dev/null 2>&1 || missing="$missing maven"
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$missing postgresql"
command -v runuser >/dev/null 2>&1 || missing="$missing util-linux"
# Argo CD runs health checks in Lua 5.1; the tests run ours with the same language version.
command -v lua5.1 >/dev/null 2>&1 || missing="$missing lua5.1"
# `bootstrap.sh node` (make image, make cluster-test): the container engine, the base image's
# debootstrap and the CNI plugins `stack node` needs.
if [ "${1:-}" = node ]; then
  command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
  command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
  command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
  [ -x /usr/lib/cni/bridge ] || missing="$missing containernetworking-plugins"
fi
if [ -z "$missing" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: missing system packages:$missing; install them (as root) and retry" >&2
  exit 1
fi
echo "bootstrap: installing$missing (first time only)" >&2
mkdir -p /etc/postgresql-common/createcluster.d
# Our platform runs its own PostgreSQL; the package's default cluster would take port 5432.
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/fintech-operator.conf
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
