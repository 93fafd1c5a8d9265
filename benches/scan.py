#!/usr/bin/env python3
"""Benchmark: `acme-nginx scan --json` against crossplane on a generated tree of --files included
files holding --servers server blocks in all (default 1,000 and 10,000), measured side by side in
one run. Prints wall time (median of --runs) and peak RSS of each, and the ratio.
Targets (issue 3): scan under 100 ms and 50 MiB, at least 30 times faster than crossplane.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "testbed"))
from testbed import REPO, run_rss  # noqa: E402

BIN = os.path.join(REPO, "target", "release", "acme-nginx")

SERVER = """server {{
    listen 80;
    listen [::]:80;
    server_name s{n}.example.org www.s{n}.example.org;
    root /srv/www/s{n};
    index index.html;
    location / {{ try_files $uri $uri/ =404; }}
    location ^~ /.well-known/acme-challenge/ {{ alias /var/lib/acme-challenge/; default_type text/plain; }}
    location ~ \\.php$ {{ include fastcgi_params; fastcgi_pass unix:/run/php/php-fpm.sock; }}
    location = /health {{ return 200 "ok"; }}
}}
"""


def generate(root, files, servers):
    os.makedirs(f"{root}/sites")
    with open(f"{root}/fastcgi_params", "w") as f:
        f.write("fastcgi_param QUERY_STRING $query_string;\n")
    with open(f"{root}/nginx.conf", "w") as f:
        f.write("user www-data;\nevents { }\nhttp {\n    include sites/*.conf;\n}\n")
    per = servers // files
    n = 0
    for i in range(files):
        with open(f"{root}/sites/site{i:05d}.conf", "w") as f:
            for _ in range(per):
                f.write(SERVER.format(n=n))
                n += 1
    return n


def measure(argv, runs):
    walls, rss = [], []
    for _ in range(runs):
        w, m, rc, out, err = run_rss(argv)
        if rc != 0:
            sys.exit(f"{argv[0]} failed: {err.decode()[-500:]}")
        walls.append(w)
        rss.append(m)
    return statistics.median(walls), max(rss), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    crossplane = shutil.which("crossplane")
    root = tempfile.mkdtemp(prefix="acme-nginx-scan-bench.")
    try:
        n = generate(root, args.files, args.servers)
        conf = f"{root}/nginx.conf"
        ours_w, ours_rss, out = measure([BIN, "--json", "scan", "--nginx-conf", conf, "--nginx-bin", "/nonexistent"], args.runs)
        found = out.count(b'"acme_challenge_dir"')
        assert found == n, f"scan found {found} server blocks, generated {n}"
        print(f"tree: {args.files} files, {n} server blocks")
        print(f"acme-nginx scan --json: {ours_w * 1000:8.1f} ms  {ours_rss / 1024:6.1f} MiB peak RSS (median of {args.runs})")
        if crossplane:
            their_w, their_rss, _ = measure([crossplane, "parse", conf], max(1, args.runs // 2))
            print(f"crossplane parse:       {their_w * 1000:8.1f} ms  {their_rss / 1024:6.1f} MiB peak RSS")
            print(f"ratio crossplane / acme-nginx: {their_w / ours_w:.1f}x  (target >= 30x)")
        else:
            print("crossplane not installed (pip install crossplane): no ratio")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
