#!/usr/bin/env bash
# Install the Debian packages of the binaries robustdx starts for real, when any is missing.
#
#   deploy/bin/install-tools.sh GROUP...      GROUP: monitoring | postgres | chromium
#
#   monitoring  prometheus, promtool, prometheus-alertmanager, prometheus-pushgateway (make up, tests/deploy)
#   postgres    initdb, pg_ctl, postgres of PostgreSQL (the Postgres-backed Prefect/MLflow test)
#   chromium    chromium (the Prefect UI rendered headless in tests/e2e/test_stack.py)
#
# Why a script and not product code: installing system packages is set-up, done once as root (CI runs as
# root on a fresh Debian 12 image); `robustdx stack up` and the tests only look the binaries up and name
# this script when one is missing. `apt-get update` runs only when the first install fails (a stale or
# empty package index), which keeps the common case fast. Exit 0 when everything asked for is present.
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }

packages_of() {
  case "$1" in
    monitoring) echo "prometheus prometheus-alertmanager prometheus-pushgateway" ;;
    postgres) echo "postgresql" ;;
    chromium) echo "chromium" ;;
    *) return 1 ;;
  esac
}

binaries_of() {
  case "$1" in
    monitoring) echo "prometheus promtool prometheus-alertmanager prometheus-pushgateway" ;;
    postgres) echo "initdb pg_ctl postgres" ;;
    chromium) echo "chromium" ;;
  esac
}

# PostgreSQL's server binaries live outside PATH on Debian (/usr/lib/postgresql/<major>/bin)
has_binary() {
  command -v "$1" >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  usage
  [ $# -eq 0 ] && exit 2 || exit 0
fi

missing_packages=()
for group in "$@"; do
  if ! pkgs=$(packages_of "$group"); then
    echo "install-tools.sh: unknown group '$group' (monitoring, postgres or chromium)" >&2
    exit 2
  fi
  for bin in $(binaries_of "$group"); do
    if ! has_binary "$bin"; then
      read -r -a more <<<"$pkgs"
      missing_packages+=("${more[@]}")
      break
    fi
  done
done

[ ${#missing_packages[@]} -eq 0 ] && exit 0
install=(apt-get install -y --no-install-recommends "${missing_packages[@]}")
if [ "$(id -u)" -ne 0 ]; then
  echo "install-tools.sh: missing Debian packages: ${missing_packages[*]}; run as root: sudo apt-get update && sudo ${install[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${install[@]}" >/tmp/robustdx-install-tools.log 2>&1; then
  apt-get update >>/tmp/robustdx-install-tools.log 2>&1 || true
  if ! "${install[@]}" >>/tmp/robustdx-install-tools.log 2>&1; then
    tail -n 30 /tmp/robustdx-install-tools.log >&2
    echo "install-tools.sh: \`${install[*]}\` failed after apt-get update" >&2
    exit 1
  fi
fi
echo "install-tools.sh: installed ${missing_packages[*]}"
