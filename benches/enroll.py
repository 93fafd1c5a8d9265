#!/usr/bin/env python3
"""Benchmark: end-to-end `acme-nginx enroll` (order, install, nginx -t, reload, TLS check) of one
server block and of ten, side by side with uacme doing the ACME part of the same work (one
`uacme issue` per block, http-01 through the same nginx webroot; uacme installs nothing and
reloads nothing), and with certbot's webroot authenticator when certbot is installed
(`pip install certbot`). All run against the same local pebble 2.4 (uacme 1.7 cannot parse
pebble 2.10's dns-account-01) in the same run. Prints wall times, peak RSS and ratios.
Prepare with `tests/testbed/setup.sh --bench`.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "testbed"))
from testbed import REPO, TESTBED, Testbed, free_port, run_rss  # noqa: E402

BIN = os.path.join(REPO, "target", "release", "acme-nginx")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from acme_sign import UACME_HOOK  # noqa: E402


def blocks(n, prefix):
    return "".join(
        f"server {{ listen 127.0.0.1:{{port}}; server_name {prefix}{i}.enroll.bench;\n"
        f"  location /.well-known/acme-challenge/ {{ alias {{dir}}/acme/; default_type text/plain; }} }}\n"
        for i in range(n))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    certbot = shutil.which("certbot")
    rows = []
    for n in (1, 10):
        ours, ours_rss, uacme_t, uacme_rss, cb_t, cb_rss = [], [], [], [], [], []
        for r in range(args.runs):
            body = blocks(n, f"o{r}-") + blocks(n, f"u{r}-") + blocks(n, f"c{r}-")
            with Testbed(nginx_http=body, pebble="pebble24") as tb:
                os.makedirs(f"{tb.dir}/nginx/acme", exist_ok=True)
                state = tempfile.mkdtemp(dir=tb.dir)
                env = dict(os.environ, ACME_NGINX_DIRECTORY=tb.directory, ACME_NGINX_CA_FILE=tb.ca_file,
                           ACME_NGINX_HTTP_PORT=str(tb.http_port))
                names = [f"o{r}-{i}.enroll.bench" for i in range(n)]
                w, m, rc, out, err = run_rss(
                    [BIN, "enroll", "--non-interactive", "--agree-tos", "--nginx-conf", tb.nginx_conf,
                     "--nginx-prefix", f"{tb.dir}/nginx", "--state-dir", state, "--config-file", "/dev/null",
                     "--hooks-dir", f"{tb.dir}/hooks", "--https-port", str(free_port()), *names], env=env)
                if rc != 0:
                    sys.exit(f"acme-nginx enroll failed: {err.decode()[-800:]}")
                ours.append(w)
                ours_rss.append(m)
                if shutil.which("uacme"):
                    work = tempfile.mkdtemp(dir=tb.dir)
                    bundle = f"{work}/bundle.pem"
                    with open(bundle, "w") as f:
                        f.write(open("/etc/ssl/certs/ca-certificates.crt").read() + open(tb.ca_file).read())
                    hook = f"{work}/hook.sh"
                    with open(hook, "w") as f:
                        f.write(UACME_HOOK.replace("{webroot}", f"{tb.dir}/nginx/acme"))
                    os.chmod(hook, 0o755)

                    def uacme(*a):
                        inner = " ".join(["uacme", "-c", f"{work}/u", "-a", tb.directory, "-y", "-t", "EC", "-h", hook, *a])
                        return ["unshare", "-m", "sh", "-c", f"mount --bind {bundle} /etc/ssl/certs/ca-certificates.crt && exec {inner}"]
                    run_rss(uacme("new"))
                    total, peak = 0.0, 0
                    for i in range(n):
                        w, m, rc, _, err = run_rss(uacme("issue", f"u{r}-{i}.enroll.bench"))
                        if rc != 0:
                            sys.exit(f"uacme failed: {err.decode()[-500:]}")
                        total += w
                        peak = max(peak, m)
                    uacme_t.append(total)
                    uacme_rss.append(peak)
                if certbot:
                    cbdir = tempfile.mkdtemp(dir=tb.dir)
                    webroot = f"{cbdir}/webroot"
                    os.makedirs(f"{webroot}/.well-known")
                    os.symlink(f"{tb.dir}/nginx/acme", f"{webroot}/.well-known/acme-challenge")
                    cenv = dict(os.environ, REQUESTS_CA_BUNDLE=tb.ca_file)
                    total, peak = 0.0, 0
                    for i in range(n):
                        w, m, rc, _, err = run_rss(
                            [certbot, "certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
                             "--server", tb.directory, "--config-dir", f"{cbdir}/c", "--work-dir", f"{cbdir}/w",
                             "--logs-dir", f"{cbdir}/l", "--webroot", "-w", webroot, "-d", f"c{r}-{i}.enroll.bench"], env=cenv)
                        if rc != 0:
                            print(f"certbot failed: {err.decode()[-400:]}")
                            break
                        total += w
                        peak = max(peak, m)
                    else:
                        cb_t.append(total)
                        cb_rss.append(peak)
        rows.append((n, ours, ours_rss, uacme_t, uacme_rss, cb_t, cb_rss))

    print(f"\n{'blocks':>6}  {'acme-nginx':>10} {'RSS':>7}  {'uacme':>8} {'RSS':>7} {'ratio':>6}  {'certbot':>8} {'RSS':>7} {'ratio':>6}")
    for n, o, orss, u, urss, c, crss in rows:
        om = statistics.median(o)
        um = statistics.median(u) if u else None
        cm = statistics.median(c) if c else None
        cell = lambda t, rss: f"{t:>7.3f}s {max(rss) / 1024:>6.1f}M {om / t:>6.3f}" if t else f"{'-':>8} {'-':>7} {'-':>6}"
        print(f"{n:>6}  {om:>9.3f}s {max(orss) / 1024:>6.1f}M  {cell(um, urss)}  {cell(cm, crss)}")
    print("acme-nginx: order + install + nginx -t + reload + TLS verification; peers: the ACME part only")
    print("ratio = acme-nginx / peer wall time (lower is better); targets: 1 block < 0.5 s, 10 blocks < 1.5 s, RSS < 20 MiB")


if __name__ == "__main__":
    main()
