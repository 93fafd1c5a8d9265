#!/usr/bin/env bash
# The demo: a local pebble (ACME CA, with pebble-challtestsrv resolving every name to 127.0.0.1)
# and a local nginx master, both on loopback ports in a temporary directory, then acme-nginx
# doing its main job against them. Everything it starts is stopped by pid on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
tb=${ACME_NGINX_TESTBED:-$repo/.testbed}

"$here/setup.sh" --demo
# The debug build: the demo's own run takes seconds either way, an optimized build of every
# dependency (AWS-LC's C code included) takes minutes more, and `tests/run.sh` reuses this one.
(cd "$repo" && cargo build --quiet)
bin="${CARGO_TARGET_DIR:-$repo/target}/debug/acme-nginx"

work=$(mktemp -d /tmp/acme-nginx-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 2; }

# pebble's own HTTPS certificate, from a throwaway CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=demo CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$work/pebble.key" -out "$work/pebble.csr" 2>/dev/null
openssl x509 -req -in "$work/pebble.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1') -out "$work/pebble.pem" 2>/dev/null

http_port=$(free_port); https_port=$(free_port); acme_port=$(free_port); mgmt_port=$(free_port)
dns_port=$(free_port); dns_mgmt=$(free_port)

# nginx: one plain-HTTP server block with no challenge location: enroll includes its snippet.
mkdir -p "$work/nginx/www" "$work/nginx/tmp"
echo "hello from the demo" > "$work/nginx/www/index.html"
user_line=""; [ "$(id -u)" = 0 ] && user_line="user www-data;"
cat > "$work/nginx/nginx.conf" <<CONF
$user_line
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp;
    server {
        listen 127.0.0.1:$http_port;
        server_name demo.acme-nginx.test www.demo.acme-nginx.test;
        root $work/nginx/www;
    }
}
CONF
cp "$work/nginx/nginx.conf" "$work/nginx.conf.orig"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" -g 'daemon off;' &
pids+=($!)

"$tb/root/usr/bin/pebble-challtestsrv" -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dnsserver "127.0.0.1:$dns_port" \
  -management "127.0.0.1:$dns_mgmt" -http01 "" -https01 "" -tlsalpn01 "" -doh "" > "$work/dns.log" 2>&1 &
pids+=($!)
cat > "$work/pebble.json" <<CONF
{"pebble": {"listenAddress": "127.0.0.1:$acme_port", "managementListenAddress": "127.0.0.1:$mgmt_port",
  "certificate": "$work/pebble.pem", "privateKey": "$work/pebble.key",
  "httpPort": $http_port, "tlsPort": $(free_port), "ocspResponderURL": "", "externalAccountBindingRequired": false}}
CONF
PEBBLE_VA_NOSLEEP=1 "$tb/root/usr/bin/pebble" -config "$work/pebble.json" -dnsserver "127.0.0.1:$dns_port" > "$work/pebble.log" 2>&1 &
pids+=($!)
wait_port "$http_port"; wait_port "$acme_port"; wait_port "$mgmt_port"

# The CA validates http-01 on nginx's port here (80 on a real host).
export ACME_NGINX_DIRECTORY="https://127.0.0.1:$acme_port/dir" ACME_NGINX_CA_FILE="$work/ca.pem" ACME_NGINX_HTTP_PORT="$http_port"
enroll=("$bin" enroll --non-interactive --agree-tos --email demo@example.org
        --nginx-conf "$work/nginx/nginx.conf" --nginx-prefix "$work/nginx" --state-dir "$work/state"
        --config-file /dev/null --challenge-snippet "$work/nginx/snippets/acme-challenge.conf"
        --hooks-dir "$work/hooks" --https-port "$https_port" --redirect
        --dns-resolver "127.0.0.1:$dns_port")   # CAA and the public-address preflight ask pebble's DNS
echo "== local pebble at $ACME_NGINX_DIRECTORY, nginx master $(cat "$work/nginx/nginx.pid") on 127.0.0.1:$http_port"
echo "== acme-nginx scan"
"$bin" scan --nginx-conf "$work/nginx/nginx.conf" --nginx-prefix "$work/nginx"
echo "== acme-nginx enroll"
time "${enroll[@]}"
echo "== what enroll changed in nginx.conf"
diff -u "$work/nginx.conf.orig" "$work/nginx/nginx.conf" || true
echo "== what nginx serves now on https://127.0.0.1:$https_port (SNI demo.acme-nginx.test)"
curl -sk "https://127.0.0.1:$mgmt_port/roots/0" > "$work/root.pem"
echo | openssl s_client -connect "127.0.0.1:$https_port" -servername demo.acme-nginx.test -CAfile "$work/root.pem" 2>/dev/null \
  | grep -E "^(subject|issuer)=|Verify return code"
echo "== plain HTTP now redirects:"
curl -s -o /dev/null -w "%{http_code} -> %{redirect_url}\n" -H "Host: demo.acme-nginx.test" "http://127.0.0.1:$http_port/"
echo "== a second enroll has nothing to do"
"${enroll[@]}"
echo "== demo done; nginx master is still $(cat "$work/nginx/nginx.pid")"
