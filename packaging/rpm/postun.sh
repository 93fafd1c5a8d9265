# acme-nginx %postun: rpm has no purge; the state stays in /var/lib/acme-nginx.
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi
exit 0
