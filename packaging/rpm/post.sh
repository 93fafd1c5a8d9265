# acme-nginx %post: directories, the renewal timer, a first enrollment when configured.
install -d -m 0711 /var/lib/acme-nginx
install -d -m 0755 /var/lib/acme-nginx/challenge
for d in pre.d post.d deploy.d; do install -d -m 0755 /etc/acme-nginx/hooks/$d; done
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    systemctl enable --now acme-nginx-renew.timer >/dev/null 2>&1 || :
fi
# Agreeing to the terms is enough: an email is optional.
if grep -Eq '^[[:space:]]*agree_tos[[:space:]]*=[[:space:]]*true' /etc/acme-nginx/config.toml 2>/dev/null; then
    acme-nginx enroll --non-interactive || echo "acme-nginx: the first enrollment failed; run 'acme-nginx enroll' to retry" >&2
else
    echo "acme-nginx: to get certificates for your nginx server blocks, run: acme-nginx enroll --agree-tos (--email you@example.org is optional)"
fi
exit 0
