#!/usr/bin/env bash
# One idempotent setup used by `npm start`, `npm test`, `npm run demo` and CI.
# Installs: npm dependencies, HAProxy (Debian package), Consul 1.8.7 (project-local, .tools/bin),
# and Chromium (Debian package) for the dashboard's browser test.
# A second run changes nothing, calls neither apt-get, npm nor the network, and takes well under a second.
#
#   scripts/setup.sh              install what is missing
#   scripts/setup.sh --check      only check; exit 0 when everything is in place, 3 when setup would
#                                 install something (names it on stderr), never installs
#   scripts/setup.sh --no-browser leave Chromium out (checked and installed only for the tests);
#                                 `npm start`, the demo and the benchmarks use it. Combines with --check.
#
# Every check captures a tool's output first and then matches it. Under `set -o pipefail` a pipeline
# whose reader exits early (head, grep's quiet mode) fails by chance: the writer gets SIGPIPE and
# the pipeline's status is 141 although the match succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=false
browser=true
for arg in "$@"; do
  case "$arg" in
    --check) check_only=true ;;
    --no-browser) browser=false ;;
    *) printf 'setup: unknown argument %s (use --check, --no-browser or nothing)\n' "$arg" >&2; exit 2 ;;
  esac
done

say() { printf 'setup: %s\n' "$*" >&2; }
missing=()

# first_line TEXT: the text up to its first newline.
first_line() { printf '%s' "${1%%$'\n'*}"; }

# --- checks (pure: run a tool once, capture, match) ---------------------------
stamp=node_modules/.dfp-lock-stamp
npm_ok() { [[ -f $stamp ]] && cmp -s package-lock.json "$stamp"; }

haproxy_bin=${HAPROXY_BIN:-haproxy}
haproxy_version_re='HAProxy version (2\.([6-9]|[1-9][0-9])|[3-9]\.)'
haproxy_ok() {
  local out
  out=$("$haproxy_bin" -v 2>/dev/null) || return 1
  [[ $(first_line "$out") =~ $haproxy_version_re ]]
}

consul_version=1.8.7
consul_deb=consul_1.8.7+dfsg1-2+b3_amd64.deb
consul_sha=e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9
tools=.tools/bin
# consul_reports BIN EXPECTED_FIRST_LINE_PREFIX
consul_reports() {
  local out
  [[ -x $1 ]] || return 1
  out=$("$1" version 2>/dev/null) || return 1
  [[ $(first_line "$out") == "$2"* ]]
}
consul_ok() {
  if [[ -n ${CONSUL_BIN:-} ]]; then consul_reports "$CONSUL_BIN" "Consul v"; else consul_reports "$tools/consul" "Consul v$consul_version"; fi
}

# Debian's Chromium: /usr/bin/chromium is a wrapper script that runs /usr/lib/chromium/chromium.
# Files are tested, not `chromium --version`: that starts the browser (over a second).
chromium_bin=${CHROMIUM_BIN:-/usr/bin/chromium}
chromium_ok() {
  if [[ -n ${CHROMIUM_BIN:-} ]]; then [[ -x $CHROMIUM_BIN ]]; else [[ -x /usr/bin/chromium && -x /usr/lib/chromium/chromium ]]; fi
}

if $check_only; then
  npm_ok || missing+=("npm dependencies (package-lock.json changed or node_modules missing)")
  haproxy_ok || missing+=("HAProxy >= 2.6 ($haproxy_bin)")
  consul_ok || missing+=("Consul ${CONSUL_BIN:-$tools/consul v$consul_version}")
  if $browser; then chromium_ok || missing+=("Chromium ($chromium_bin; the dashboard's browser test; apt-get install chromium)"); fi
  if ((${#missing[@]})); then
    for m in "${missing[@]}"; do say "missing: $m"; done
    exit 3
  fi
  exit 0
fi

# --- npm dependencies -------------------------------------------------------
# Reinstall only when package-lock.json changed since the last install.
if ! npm_ok; then
  say "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error >&2
  cp package-lock.json "$stamp"
fi

# --- HAProxy ----------------------------------------------------------------
if ! haproxy_ok; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing HAProxy from Debian (apt-get install haproxy)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || true
    apt-get install -y -q --no-install-recommends haproxy >&2
  fi
  if ! haproxy_ok; then
    say "HAProxy >= 2.6 is required and could not be installed automatically."
    say "Install it with:  sudo apt-get install haproxy   (Debian 12 ships 2.6)"
    say "or point HAPROXY_BIN at an HAProxy >= 2.6 binary."
    exit 1
  fi
fi
# The Debian package enables a system service; on hosts with systemd it would hold port 80.
# We never start it, and we do not touch it either: the operator decides.

# --- Consul 1.8.7, project-local ---------------------------------------------
if [[ -n ${CONSUL_BIN:-} ]]; then
  consul_ok || { say "CONSUL_BIN=$CONSUL_BIN is not a Consul binary"; exit 1; }
elif ! consul_ok; then
  mkdir -p "$tools"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  got=""
  if [[ $arch == amd64 ]] && command -v curl >/dev/null; then
    say "downloading Consul $consul_version from the Debian bullseye pool"
    if curl -fsSL --retry 3 --connect-timeout 10 -o "$tmp/consul.deb" "$mirror/pool/main/c/consul/$consul_deb" \
      && echo "$consul_sha  $tmp/consul.deb" | sha256sum -c --status -; then
      got=$tmp/consul.deb
    else
      say "pool download failed or hash mismatch; trying apt with a private bullseye list"
    fi
  fi
  if [[ -z $got ]]; then
    # Private apt state: nothing under /etc/apt or dpkg's database changes. apt verifies the signature.
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/dl"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main" > "$tmp/sources.list"
    opts=(-q -o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Sandbox::User=$(id -un)"
      -o Acquire::Languages=none)
    apt-get "${opts[@]}" update >&2
    (cd "$tmp/dl" && apt-get "${opts[@]}" download "consul=1.8.7+dfsg1-2+b3" >&2)
    debs=("$tmp"/dl/consul_*.deb)
    got=${debs[0]}
  fi
  # Unpack to a file first: no reader in this step exits before its writer is done.
  dpkg-deb --fsys-tarfile "$got" > "$tmp/consul.tar"
  tar -x -C "$tmp" -f "$tmp/consul.tar" ./usr/bin/consul
  install -m 0755 "$tmp/usr/bin/consul" "$tools/consul.tmp.$$"
  mv -f "$tools/consul.tmp.$$" "$tools/consul"
  consul_ok || { say "installed Consul does not report v$consul_version"; exit 1; }
  say "Consul $consul_version installed at $tools/consul"
fi

# --- Chromium, for the dashboard's browser test (test/integration/dashboard.test.ts) --------------
# Debian's package, driven by playwright-core: never a browser Playwright downloads itself.
if $browser && ! chromium_ok; then
  if [[ -z ${CHROMIUM_BIN:-} && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Chromium from Debian (apt-get install chromium) for the dashboard's browser test"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || true
    apt-get install -y -q --no-install-recommends chromium >&2
  fi
  if ! chromium_ok; then
    # Not fatal: the proxy runs without it; only test/integration/dashboard.test.ts needs it (and says so).
    say "Chromium is missing at $chromium_bin: the dashboard's browser test will fail."
    say "Install it with:  sudo apt-get install chromium   (or set CHROMIUM_BIN to a Chromium binary)"
  fi
fi
