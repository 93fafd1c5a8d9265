"""A local pebble (+ pebble-challtestsrv DNS) and nginx on loopback for the benchmarks.

Used as a context manager; everything started is stopped by pid on exit.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTBED = os.environ.get("ACME_NGINX_TESTBED", os.path.join(REPO, ".testbed"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


def run_rss(argv, env=None, cwd=None):
    """Runs a command; returns (wall seconds, peak RSS KiB, returncode, stdout, stderr)."""
    start = time.perf_counter()
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out_f, stderr=err_f)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0)
    err_f.seek(0)
    return wall, usage.ru_maxrss, proc.returncode, out_f.read(), err_f.read()


class Testbed:
    def __init__(self, nginx_http=None, nonce_reject=5, pebble="root", dns_server=None):
        """pebble: "root" for pebble 2.10 from sid, "pebble24" for Debian 12's pebble 2.4;
        dns_server: the DNS pebble resolves and validates with (default: challtestsrv)."""
        self.dns_server = dns_server
        self.pebble_bin = os.path.join(TESTBED, pebble, "usr", "bin")
        self.nginx_http = nginx_http
        self.nonce_reject = nonce_reject
        self.procs = []

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="acme-nginx-bench.")
        os.chmod(self.dir, 0o755)
        d = self.dir
        # pebble's HTTPS certificate from a throwaway CA
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-days", "2", "-subj", "/CN=bench CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
        sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-subj", "/CN=localhost", "-keyout", f"{d}/pebble.key", "-out", f"{d}/pebble.csr")
        with open(f"{d}/ext", "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        sh("openssl", "x509", "-req", "-in", f"{d}/pebble.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
           "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext", "-out", f"{d}/pebble.pem")
        self.ca_file = f"{d}/ca.pem"
        self.http_port = free_port()
        # nginx
        os.makedirs(f"{d}/nginx/acme")
        self.webroot = f"{d}/nginx/acme"
        self.nginx_conf = f"{d}/nginx/nginx.conf"
        user = "user www-data;" if os.getuid() == 0 else ""
        body = self.nginx_http or (
            f"server {{ listen 127.0.0.1:{self.http_port}; server_name _;\n"
            f"  location /.well-known/acme-challenge/ {{ alias {self.webroot}/; default_type text/plain; }} }}\n")
        body = body.replace("{port}", str(self.http_port)).replace("{dir}", f"{d}/nginx")
        with open(self.nginx_conf, "w") as f:
            f.write(f"{user}\nworker_processes 1;\npid {d}/nginx/nginx.pid;\nerror_log {d}/nginx/error.log;\n"
                    f"events {{ worker_connections 256; }}\nhttp {{ access_log off; client_body_temp_path {d}/nginx/tmp;\n"
                    f"{body}\n}}\n")
        self._spawn(["nginx", "-p", f"{d}/nginx", "-c", self.nginx_conf, "-e", f"{d}/nginx/error.log",
                     "-g", "daemon off;"], self.http_port, "nginx")
        dns, dns_mgmt = free_port(), free_port()
        self._spawn([f"{TESTBED}/root/usr/bin/pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                     "-dnsserver", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{dns_mgmt}",
                     "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""], dns_mgmt, "challtestsrv")
        port, mgmt = free_port(), free_port()
        with open(f"{d}/pebble.json", "w") as f:
            f.write(f'{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{mgmt}",'
                    f'"certificate": "{d}/pebble.pem", "privateKey": "{d}/pebble.key", "httpPort": {self.http_port},'
                    f'"tlsPort": {free_port()}, "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}')
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT=str(self.nonce_reject))
        self._spawn([f"{self.pebble_bin}/pebble", "-config", f"{d}/pebble.json", "-dnsserver",
                     self.dns_server or f"127.0.0.1:{dns}"], port, "pebble", env=env)
        wait_port(mgmt, self.procs[-1], "pebble management")
        self.directory = f"https://127.0.0.1:{port}/dir"
        self.management = f"https://127.0.0.1:{mgmt}"
        return self

    def _spawn(self, argv, port, what, env=None):
        log = open(os.path.join(self.dir, what + ".log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        wait_port(port, p, what)

    def nginx_pid(self):
        return self.procs[0].pid

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
