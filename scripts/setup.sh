#!/usr/bin/env bash
# One idempotent setup used by `npm start`, `npm test`, `npm run demo` and CI.
# Installs: npm dependencies, HAProxy (Debian package), Consul 1.8.7 (project-local, .tools/bin).
# A second run changes nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

# --- npm dependencies -------------------------------------------------------
# Reinstall only when package-lock.json changed since the last install.
stamp=node_modules/.dfp-lock-stamp
if [[ ! -f $stamp ]] || ! cmp -s package-lock.json "$stamp"; then
  say "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error >&2
  cp package-lock.json "$stamp"
fi

# --- HAProxy ----------------------------------------------------------------
haproxy_bin=${HAPROXY_BIN:-haproxy}
haproxy_ok() { "$haproxy_bin" -v 2>/dev/null | grep -Eq 'HAProxy version 2\.([6-9]|[1-9][0-9])|HAProxy version [3-9]\.'; }
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
consul_version=1.8.7
consul_deb=consul_1.8.7+dfsg1-2+b3_amd64.deb
consul_sha=e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9
tools=.tools/bin
consul_ok() { [[ -x $tools/consul ]] && "$tools/consul" version 2>/dev/null | head -1 | grep -qx "Consul v$consul_version"; }
if [[ -n ${CONSUL_BIN:-} ]]; then
  "$CONSUL_BIN" version | head -1 | grep -q "Consul v" || { say "CONSUL_BIN=$CONSUL_BIN is not a Consul binary"; exit 1; }
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
    got=$(ls "$tmp"/dl/consul_*.deb)
  fi
  dpkg-deb --fsys-tarfile "$got" | tar -x -C "$tmp" ./usr/bin/consul
  install -m 0755 "$tmp/usr/bin/consul" "$tools/consul.tmp.$$"
  mv -f "$tools/consul.tmp.$$" "$tools/consul"
  consul_ok || { say "installed Consul does not report v$consul_version"; exit 1; }
  say "Consul $consul_version installed at $tools/consul"
fi
