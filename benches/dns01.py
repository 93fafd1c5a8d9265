#!/usr/bin/env python3
"""Benchmark: one wildcard certificate through dns-01 with RFC 2136 (TSIG) against a local BIND,
acme-nginx next to lego's `rfc2136` provider, on the same pebble 2.10 and the same BIND, in the
same run. It prints the median wall time, the peak RSS and the ratio acme-nginx / lego.

acme-nginx runs `enroll` for a `server_name *.example.test;` block: the order, the records, its
check of every authoritative server, and then the install, `nginx -t`, the reload and the TLS
check (more work than lego, which only obtains). lego runs `run --dns rfc2136` with its
propagation check through the same (non-caching) resolver. Prepare with
`tests/testbed/setup.sh --bench` (root).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "testbed"))
from testbed import REPO, TESTBED, Testbed, free_port, run_rss, sh, wait_port  # noqa: E402

BIN = os.path.join(REPO, "target", "release", "acme-nginx")
LEGO = os.path.join(TESTBED, "root", "usr", "bin", "lego")
KEY = "acme-update"


def start_bind(d, procs):
    """An authoritative named for example.test and a recursive, non-caching one in front."""
    key = sh("tsig-keygen", "-a", "hmac-sha256", KEY).stdout.decode()
    secret = key.split('"')[3]
    with open(f"{d}/key", "w") as f:
        f.write(key)
    auth, rec = free_port(), free_port()
    with open(f"{d}/zone", "w") as f:
        f.write("$ORIGIN example.test.\n$TTL 60\n@ SOA ns1 h 1 60 60 600 60\n@ NS ns1\nns1 A 127.0.0.1\n"
                "@ A 127.0.0.1\n* A 127.0.0.1\n")
    os.makedirs(f"{d}/r")
    confs = {
        d: f'options {{ directory "{d}"; listen-on port {auth} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};'
           f' pid-file "{d}/pid"; session-keyfile "{d}/s.key"; recursion no; dnssec-validation no; notify no; }};\n'
           f'controls {{ }};\ninclude "{d}/key";\n'
           f'zone "example.test" {{ type primary; file "{d}/zone"; allow-update {{ key "{KEY}"; }}; }};\n',
        f"{d}/r": f'options {{ directory "{d}/r"; listen-on port {rec} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};'
                  f' pid-file "{d}/r/pid"; session-keyfile "{d}/r/s.key"; recursion yes; allow-recursion {{ any; }};'
                  f' dnssec-validation no; max-cache-ttl 0; max-ncache-ttl 0; }};\ncontrols {{ }};\n'
                  f'zone "example.test" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {auth}; }}; }};\n',
    }
    for where, conf in confs.items():
        with open(f"{where}/named.conf", "w") as f:
            f.write(conf)
        log = open(f"{where}/named.log", "w")
        p = subprocess.Popen(["named", "-g", "-c", f"{where}/named.conf"], stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        wait_port(auth if where == d else rec, p, "named")
    # wait for the zone
    for _ in range(200):
        if sh("dig", "+short", "@127.0.0.1", "-p", str(rec), "example.test", "SOA").stdout.strip():
            break
    return auth, rec, secret


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(LEGO):
        sys.exit("lego is missing: run tests/testbed/setup.sh --bench")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    work = tempfile.mkdtemp(prefix="acme-nginx-dns-bench.")
    os.chmod(work, 0o755)
    procs = []
    try:
        auth, rec, secret = start_bind(work, procs)
        body = "server { listen 127.0.0.1:{port}; server_name *.example.test; location / { return 200; } }\n"
        with Testbed(nginx_http=body, dns_server=f"127.0.0.1:{rec}") as tb:
            ours_w, ours_m, lego_w, lego_m = [], [], [], []
            for r in range(args.runs):
                state = f"{work}/state{r}"
                w, m, rc, _, err = run_rss(
                    [BIN, "--directory", tb.directory, "--ca-file", tb.ca_file, "enroll", "--non-interactive",
                     "--agree-tos", "--nginx-conf", tb.nginx_conf, "--nginx-prefix", f"{tb.dir}/nginx",
                     "--state-dir", state, "--config-file", "/dev/null", "--hooks-dir", f"{work}/hooks",
                     "--https-port", str(free_port()), "--dns", "rfc2136", "--dns-server", f"127.0.0.1:{auth}",
                     "--dns-tsig-key", f"{work}/key", "--dns-resolver", f"127.0.0.1:{rec}",
                     "--dns-authoritative-port", str(auth)])
                if rc:
                    sys.exit(f"acme-nginx enroll failed: {err.decode()[-800:]}")
                ours_w.append(w)
                ours_m.append(m)
                env = dict(os.environ, LEGO_CA_CERTIFICATES=tb.ca_file, RFC2136_NAMESERVER=f"127.0.0.1:{auth}",
                           RFC2136_TSIG_KEY=KEY, RFC2136_TSIG_SECRET=secret, RFC2136_TSIG_ALGORITHM="hmac-sha256.",
                           RFC2136_POLLING_INTERVAL="1", RFC2136_PROPAGATION_TIMEOUT="60")
                w, m, rc, _, err = run_rss(
                    [LEGO, "--server", tb.directory, "--email", "bench@example.org", "--accept-tos",
                     "--path", f"{work}/lego{r}", "--key-type", "ec256", "--dns", "rfc2136",
                     "--dns.resolvers", f"127.0.0.1:{rec}", "--dns.propagation-disable-ans",
                     "-d", "*.example.test", "run"], env=env)
                if rc:
                    sys.exit(f"lego failed: {err.decode()[-800:]}")
                lego_w.append(w)
                lego_m.append(m)
            ow, lw = statistics.median(ours_w), statistics.median(lego_w)
            print(f"one wildcard certificate by dns-01 (RFC 2136, TSIG) against BIND, median of {args.runs}:")
            print(f"  acme-nginx enroll  {ow:6.2f} s  peak RSS {max(ours_m) / 1024:5.1f} MiB")
            print(f"  lego run           {lw:6.2f} s  peak RSS {max(lego_m) / 1024:5.1f} MiB")
            print(f"  ratio acme-nginx / lego: {ow / lw:.2f} (goal <= 0.5)")
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
