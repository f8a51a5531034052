#!/bin/bash
# tests/package/in-root.sh - run by tests/package/test-package inside a fresh
# Debian 12 root (chroot, private pid and network namespaces, no systemd):
# install, run as the unit runs sluiced, operate, upgrade, remove, purge.
# Every step prints what it checked; the first failure stops with exit 1.
set -u
cd /root
PKG=$(ls /root/sluice_*_amd64.deb)
BENCH=$(ls /root/sluice-bench_*_amd64.deb)
fail() { echo "FAILED: $*"; exit 1; }
step() { echo "-- $*"; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', wanted '$2'"; }
sluiced_pids() { for c in /proc/[0-9]*/comm; do [ "$(cat "$c" 2>/dev/null)" = sluiced ] && basename "$(dirname "$c")"; done; }

. /root/smtp.sh # smtp_send RCPT SUBJECT

unit_value() { sed -n "s/^$1=//p" /lib/systemd/system/sluiced.service; }


step "dpkg -i $(basename "$PKG")"
dpkg -i "$PKG" || fail "dpkg -i"
dpkg-query -W -f='${Package} ${Version} ${Status}\n' sluice
getent passwd sluice || fail "no user sluice"
getent group sluice || fail "no group sluice"
expect_eq "$(getent passwd sluice | cut -d: -f6,7)" "/var/lib/sluice:/usr/sbin/nologin" "sluice's home and shell"
[ "$(id -u sluice)" -lt 1000 ] || fail "sluice is not a system user"
step "files, owners, modes"
for spec in "root:sluice 640 /etc/sluice/sluice.conf" "root:root 755 /etc/sluice" \
            "root:sluice 750 /etc/sluice/dkim" "root:sluice 750 /etc/sluice/tls" \
            "sluice:sluice 700 /var/spool/sluice" "sluice:sluice 750 /var/log/sluice" \
            "sluice:sluice 750 /var/lib/sluice" "root:root 644 /etc/logrotate.d/sluice" \
            "root:root 644 /lib/systemd/system/sluiced.service" "root:root 755 /usr/sbin/sluiced" \
            "root:root 755 /usr/bin/sluicectl"; do
    set -- $spec
    expect_eq "$(stat -c '%U:%G %a' "$3")" "$1 $2" "$3"
    echo "$1 $2 $3"
done
dpkg-statoverride --list | grep sluice
expect_eq "$(dpkg-query -W -f='${Conffiles}' sluice | awk '{print $1}' | tr '\n' ' ')" \
    "/etc/sluice/sluice.conf /etc/logrotate.d/sluice " "conffiles"
[ -L /etc/systemd/system/multi-user.target.wants/sluiced.service ] || fail "unit not enabled"
echo "enabled: $(readlink /etc/systemd/system/multi-user.target.wants/sluiced.service)"
[ -z "$(sluiced_pids)" ] || fail "sluiced started by the installation"
echo "not started"
! command -v sluice-source >/dev/null || fail "the load tools came with the main package"
ls /usr/share/man/man8/sluiced.8.gz /usr/share/man/man5/sluice.conf.5.gz >/dev/null || fail "man pages"
sluiced --check-config || fail "the shipped configuration does not check"

step "start as the unit's ExecStart: $(unit_value ExecStart) (User=$(unit_value User))"
# The unit's process: its User/Group, capabilities and no new privileges
# (setpriv stands in for systemd), in the directories systemd makes.
AS_UNIT=(setpriv --reuid="$(unit_value User)" --regid="$(unit_value Group)" --init-groups
         --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service
         --bounding-set=-all,+net_bind_service --no-new-privs --)
# systemd's RuntimeDirectory=, LogsDirectory=, StateDirectory= (postinst
# made the last two already)
install -d -o sluice -g sluice -m 0750 /run/sluice
# LimitNOFILE=, or as near as this machine's hard limit allows
nofile=$(unit_value LimitNOFILE)
[ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$nofile" ] || nofile=$(ulimit -Hn)
ulimit -n "$nofile" || fail "ulimit -n $nofile"
umask 0027
"${AS_UNIT[@]}" $(unit_value ExecStart) > /root/sluiced.out 2>&1 &
pid=$!
for i in $(seq 300); do
    (exec 3<>/dev/tcp/127.0.0.1/25) 2>/dev/null && break
    kill -0 $pid 2>/dev/null || { cat /root/sluiced.out; fail "sluiced exited"; }
    sleep 0.2
done
(exec 3<>/dev/tcp/127.0.0.1/25) 2>/dev/null || { cat /root/sluiced.out; fail "nothing on port 25"; }
grep -E "ready|running as" /root/sluiced.out
expect_eq "$(awk '/^Uid:/{print $2 "/" $3}' /proc/$pid/status)" "$(id -u sluice)/$(id -u sluice)" "the daemon's uid"
grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/$pid/status
ls -l /var/lib/sluice/tls /run/sluice

step "one message over SMTP, port 25"
smtp_send someone@example.org first || fail "the message was not accepted"
step "sluicectl status (root, no -s)"
sluicectl status || fail "sluicectl status"
sluicectl --json status | grep -q '"messages":1' || fail "status does not count the message"
for i in $(seq 100); do grep -q '"type":"received"' /var/log/sluice/acct.jsonl 2>/dev/null && break; sleep 0.1; done
grep -c '"type":"received"' /var/log/sluice/acct.jsonl || fail "no received record"

step "logrotate -f /etc/logrotate.d/sluice"
logrotate -v -f /etc/logrotate.d/sluice 2>&1 |
    grep -E "^rotating log|renaming /var/log/sluice/[a-z.]+ to|postrotate|error" || true
[ -s /var/log/sluice/acct.jsonl.1 ] || fail "acct.jsonl not rotated"
grep -q 'someone@example.org' /var/log/sluice/acct.jsonl.1 || fail "the record is not in the rotated file"
smtp_send other@example.org second || fail "the second message was not accepted"
for i in $(seq 100); do grep -q 'other@example.org' /var/log/sluice/acct.jsonl 2>/dev/null && break; sleep 0.1; done
grep -q 'other@example.org' /var/log/sluice/acct.jsonl || fail "the new record is not in the new acct.jsonl"
! grep -q 'other@example.org' /var/log/sluice/acct.jsonl.1 || fail "a new record went to the rotated file"
ls -l /var/log/sluice

step "reload as the unit's ExecReload: $(unit_value ExecReload)"
"${AS_UNIT[@]}" $(unit_value ExecReload) || fail "ExecReload"
sluicectl reload >/dev/null || fail "sluicectl reload as root"
echo "reloaded (as sluice and as root)"

step "stop (SIGTERM, as systemd does)"
kill -TERM $pid
wait $pid
rc=$?
tail -2 /root/sluiced.out
expect_eq "$rc" 0 "sluiced's exit status"
[ ! -e /run/sluice/sluiced.sock ] || fail "control socket left behind"

step "upgrade: dpkg -i again keeps the administrator's configuration"
sed -i 's/127.0.0.1:25/127.0.0.1:2525/' /etc/sluice/sluice.conf
dpkg -i "$PKG" >/dev/null || fail "reinstall"
grep -q '127.0.0.1:2525' /etc/sluice/sluice.conf || fail "the edited configuration was replaced"
expect_eq "$(stat -c '%U:%G %a' /etc/sluice/sluice.conf)" "root:sluice 640" "configuration after upgrade"
echo "kept: $(grep -c 2525 /etc/sluice/sluice.conf) edited line, root:sluice 640"

step "sluice-bench"
dpkg -i "$BENCH" >/dev/null || fail "dpkg -i sluice-bench"
sluice-source --version && sluice-sink --version || fail "load tools"
dpkg --purge sluice-bench >/dev/null || fail "purge sluice-bench"

step "dpkg --remove: binaries go, user, spool and configuration stay"
dpkg --remove sluice >/dev/null || fail "remove"
[ ! -e /usr/sbin/sluiced ] || fail "sluiced left after remove"
getent passwd sluice >/dev/null || fail "remove took the user"
[ -e /var/spool/sluice/data.mdb ] || fail "remove took the spool"
[ -e /etc/sluice/sluice.conf ] || fail "remove took the configuration"
expect_eq "$(readlink /etc/systemd/system/sluiced.service)" /dev/null "the unit masked after remove"
echo "kept: user sluice, /var/spool/sluice/data.mdb, /etc/sluice/sluice.conf"

step "dpkg --purge: nothing of sluice left"
dpkg --purge sluice >/dev/null || fail "purge"
left=$(find / -xdev \( -name '*sluice*' -o -name '*sluiced*' \) ! -path '/root/*' 2>/dev/null)
[ -z "$left" ] || fail "left behind: $left"
! getent passwd sluice >/dev/null || fail "user sluice left"
! getent group sluice >/dev/null || fail "group sluice left"
! grep -q sluice /etc/passwd /etc/group /etc/shadow /etc/gshadow /var/lib/dpkg/statoverride ||
    fail "sluice in the account files or statoverride"
! dpkg-query -W sluice >/dev/null 2>&1 || fail "dpkg still knows sluice"
echo "no file named *sluice*, no user, no group, no statoverride, unknown to dpkg"
# Not ours to edit: logrotate's own state file keeps a line per log it
# ever rotated, for any package (said, not hidden).
grep sluice /var/lib/logrotate/status | sed 's/^/note: logrotate keeps in its state file: /'
exit 0
