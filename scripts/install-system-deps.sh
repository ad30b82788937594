#!/usr/bin/env bash
# Install the Debian packages the real-service tests need, only those that are missing.
# As root this runs apt-get; otherwise it says what is missing (tests then skip, or fail
# under CI=true, naming the missing service).
set -euo pipefail

# binary -> Debian package
declare -A NEED=(
  [nginx]=nginx
  [prometheus-blackbox-exporter]=prometheus-blackbox-exporter
  [prometheus]=prometheus
  [promtool]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [amtool]=prometheus-alertmanager
  [pebble]=pebble
  [pebble-challtestsrv]=pebble
  [certspotter]=certspotter
)

missing=()
for bin in "${!NEED[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/usr/bin/$bin" ]; then
    missing+=("${NEED[$bin]}")
  fi
done

# PostgreSQL keeps its server binaries off PATH, in /usr/lib/postgresql/<version>/bin.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi

# de-duplicate (one package can provide several binaries)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 0
fi

echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
