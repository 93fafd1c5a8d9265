# acme-nginx %preun: on erase (not upgrade), stop and disable the units.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now acme-nginx-renew.timer acme-nginx-watch.service >/dev/null 2>&1 || :
fi
exit 0
