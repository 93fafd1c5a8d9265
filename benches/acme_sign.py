#!/usr/bin/env python3
"""Benchmark: `acme-nginx csr` + `sign` side by side with uacme and lego, on local pebbles + nginx.

For one name and for a ten-name certificate (median of --runs) it prints wall time, peak RSS and
the ratio acme-nginx / peer, measured in the same run against the same pebble:
  - uacme 1.7 (Debian 12) against Debian 12's pebble 2.4, since uacme 1.7 cannot parse the
    dns-account-01 challenges pebble 2.10 offers; acme-nginx runs against the same pebble 2.4;
  - lego (sid) against pebble 2.10; acme-nginx runs against the same pebble 2.10.
Also the time of `acme-nginx --version`. Prepare with `tests/testbed/setup.sh --bench` (root).
uacme trusts only the system CA store, so it runs in a private mount namespace (unshare -m)
where the store is a bundle holding the test CA; the system's store is not changed.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "testbed"))
from testbed import REPO, TESTBED, Testbed, run_rss  # noqa: E402

BIN = os.path.join(REPO, "target", "release", "acme-nginx")
LEGO = os.path.join(TESTBED, "root", "usr", "bin", "lego")

UACME_HOOK = """#!/bin/sh
# uacme hook: METHOD TYPE IDENT TOKEN AUTH
[ "$2" = http-01 ] || exit 1
case "$1" in
  begin) printf '%s' "$5" > "{webroot}/$4" ;;
  done|failed) rm -f "{webroot}/$4" ;;
esac
"""


class Ours:
    name = "acme-nginx"

    def __init__(self, tb, work):
        self.tb, self.work = tb, work
        self.env = dict(os.environ, ACME_NGINX_DIRECTORY=tb.directory, ACME_NGINX_CA_FILE=tb.ca_file)
        self.state = f"{work}/acme.json"
        subprocess.run([BIN, "account", "register", "--agree-tos", "--state", self.state], env=self.env,
                       check=True, capture_output=True)

    def issue(self, names, tag):
        doms = sum((["--domain", d] for d in names), [])
        key, csr, cert = (f"{self.work}/{tag}.key", f"{self.work}/{tag}.csr", f"{self.work}/{tag}.pem")
        w1, m1, rc1, _, e1 = run_rss([BIN, "csr", *doms, "--key-out", key, "--out", csr], env=self.env)
        w2, m2, rc2, _, e2 = run_rss([BIN, "sign", "--state", self.state, "--csr", csr, "--out", cert,
                                      "--webroot", self.tb.webroot], env=self.env)
        if rc1 or rc2:
            sys.exit(f"acme-nginx failed: {(e1 + e2).decode()[-600:]}")
        return w1 + w2, max(m1, m2)


class Uacme:
    name = "uacme"

    def __init__(self, tb, work):
        self.tb = tb
        bundle = f"{work}/bundle.pem"
        with open(bundle, "w") as out:
            for src in ("/etc/ssl/certs/ca-certificates.crt", tb.ca_file):
                if os.path.exists(src):
                    out.write(open(src).read())
        self.bundle, self.hook, self.confdir = bundle, f"{work}/uacme-hook.sh", f"{work}/uacme"
        with open(self.hook, "w") as f:
            f.write(UACME_HOOK.replace("{webroot}", tb.webroot))
        os.chmod(self.hook, 0o755)
        _, _, rc, _, err = run_rss(self.argv("new"))
        if rc:
            sys.exit(f"uacme account failed: {err.decode()[-400:]}")

    def argv(self, *a):
        inner = " ".join(["uacme", "-c", self.confdir, "-a", self.tb.directory, "-y", "-t", "EC", "-h", self.hook, *a])
        return ["unshare", "-m", "sh", "-c",
                f"mount --bind {self.bundle} /etc/ssl/certs/ca-certificates.crt && exec {inner}"]

    def issue(self, names, tag):
        w, m, rc, _, err = run_rss(self.argv("issue", *names))
        if rc:
            sys.exit(f"uacme failed: {err.decode()[-600:]}")
        return w, m


class Lego:
    name = "lego"

    def __init__(self, tb, work):
        self.tb, self.path = tb, f"{work}/lego"
        # lego writes WEBROOT/.well-known/acme-challenge/TOKEN; nginx aliases that path to tb.webroot.
        self.root = f"{work}/lego-webroot"
        os.makedirs(f"{self.root}/.well-known")
        os.symlink(tb.webroot, f"{self.root}/.well-known/acme-challenge")
        self.env = dict(os.environ, LEGO_CA_CERTIFICATES=tb.ca_file)

    def issue(self, names, tag):
        doms = sum((["-d", d] for d in names), [])
        w, m, rc, _, err = run_rss([LEGO, "--server", self.tb.directory, "--email", "bench@example.org",
                                    "--accept-tos", "--path", self.path, "--key-type", "ec256", "--http",
                                    "--http.webroot", self.root, *doms, "run"], env=self.env)
        if rc:
            sys.exit(f"lego failed: {err.decode()[-600:]}")
        return w, m


def measure(client, n, runs, prefix):
    walls, rss = [], []
    for r in range(runs):
        w, m = client.issue([f"{prefix}{n}-{r}-{i}.bench.test" for i in range(n)], f"{prefix}{n}{r}")
        walls.append(w)
        rss.append(m)
    return statistics.median(walls), max(rss)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--lego-runs", type=int, default=1, help="lego sleeps 5 s per authorization")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)

    rows = []
    setups = [("pebble 2.4", "pebble24", Uacme, args.runs), ("pebble 2.10", "root", Lego, args.lego_runs)]
    for label, pebble, Peer, peer_runs in setups:
        if Peer is Uacme and (not shutil.which("uacme") or not os.path.exists(f"{TESTBED}/pebble24/usr/bin/pebble")):
            print("skipping uacme: run tests/testbed/setup.sh --bench")
            continue
        if Peer is Lego and not os.path.exists(LEGO):
            print("skipping lego: run tests/testbed/setup.sh --bench")
            continue
        with Testbed(pebble=pebble) as tb:
            work = tempfile.mkdtemp(dir=tb.dir)
            ours, peer = Ours(tb, work), Peer(tb, work)
            for n in (1, 10):
                o = measure(ours, n, args.runs, "o")
                p = measure(peer, n, peer_runs, "p")
                rows.append((label, n, o, Peer.name, p))

    versions = []
    for _ in range(20):
        t = time.perf_counter()
        subprocess.run([BIN, "--version"], capture_output=True, check=True)
        versions.append(time.perf_counter() - t)

    print(f"\n{'CA':<12} {'names':>5}  {'acme-nginx':>10} {'RSS':>7}   {'peer':<6} {'time':>8} {'RSS':>7}  {'ratio':>6}")
    for label, n, (ow, orss), peer, (pw, prss) in rows:
        print(f"{label:<12} {n:>5}  {ow:>9.3f}s {orss / 1024:>6.1f}M   {peer:<6} {pw:>7.3f}s {prss / 1024:>6.1f}M  {ow / pw:>6.3f}")
    print(f"\nacme-nginx --version: median {statistics.median(versions) * 1000:.1f} ms over 20 runs")
    print("ratio = acme-nginx wall time / peer wall time, same pebble, same nginx, same run (target <= 0.5)")


if __name__ == "__main__":
    main()
