#!/bin/bash
# tests/package/in-systemd.sh - run by tests/package/test-package inside a
# Debian 12 container booted with systemd (systemd-nspawn -b, private
# network), with the sluice package installed before the boot: the unit as
# systemd runs it, with every hardening directive in force. Started by a
# oneshot unit after multi-user.target; ends with "RESULT ok" or
# "RESULT failed", then powers the container off.
set -u
. /root/smtp.sh # smtp_send RCPT SUBJECT
fail() { echo "FAILED: $*"; journalctl -u sluiced --no-pager | tail -20; echo "RESULT failed"; exit 1; }
step() { echo "-- $*"; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', wanted '$2'"; }

for i in $(seq 240); do systemctl is-active --quiet multi-user.target && break; sleep 0.5; done
step "booted: $(systemctl --version | head -1)"
expect_eq "$(systemctl is-enabled sluiced)" enabled "is-enabled"
# enabled at install: a boot starts it
expect_eq "$(systemctl is-active sluiced)" active "is-active after the boot"
systemctl show -p Type -p User -p StatusText -p NRestarts sluiced

step "systemctl stop, systemctl start"
systemctl stop sluiced || fail "stop"
expect_eq "$(systemctl is-active sluiced)" inactive "is-active after stop"
expect_eq "$(systemctl show -p ExecMainStatus --value sluiced)" 0 "exit status"
[ ! -e /run/sluice ] || fail "RuntimeDirectory left after stop"
systemctl start sluiced || fail "systemctl start sluiced"
expect_eq "$(systemctl is-active sluiced)" active "is-active after start"
# Type=notify: start returned once sluiced said READY=1, so it takes mail now
systemctl show -p StatusText --value sluiced
pid=$(systemctl show -p MainPID --value sluiced)
grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp)' /proc/$pid/status

step "SMTP on port 25, at once"
smtp_send someone@example.org first || fail "the message was not accepted"
sluicectl --json status | grep -q '"messages":1' || fail "sluicectl status (no -s) does not count it"
echo "sluicectl status: 1 message"

step "systemctl reload sluiced"
systemctl reload sluiced || fail "reload"
echo "reloaded; $(systemctl show -p StatusText --value sluiced)"
echo 'no_such_key = 1;' >> /etc/sluice/sluice.conf
if systemctl reload sluiced; then fail "a broken file reloaded"; fi
journalctl -u sluiced --no-pager | grep -m1 "reload refused" || fail "the refusal is not in the journal"
expect_eq "$(systemctl is-active sluiced)" active "is-active after a refused reload"
sed -i '/^no_such_key/d' /etc/sluice/sluice.conf
systemctl reload sluiced || fail "reload after the fix"
echo "refused reload: systemctl reload failed, sluiced kept running, fixed file reloaded"

step "logrotate"
logrotate -f /etc/logrotate.d/sluice || fail "logrotate"
grep -q someone@example.org /var/log/sluice/acct.jsonl.1 || fail "the record is not in the rotated file"
smtp_send other@example.org second || fail "second message"
for i in $(seq 100); do grep -q other@example.org /var/log/sluice/acct.jsonl 2>/dev/null && break; sleep 0.1; done
grep -q other@example.org /var/log/sluice/acct.jsonl || fail "the new record is not in the new file"
echo "rotated: old record in acct.jsonl.1, new one in acct.jsonl"

step "systemctl stop"
systemctl stop sluiced || fail "stop"
expect_eq "$(systemctl show -p ExecMainStatus --value sluiced)" 0 "exit status"
journalctl -u sluiced --no-pager -o cat | grep -E "ready:|sluiced exits" | tail -3
step "systemd-analyze security sluiced"
systemd-analyze security --no-pager sluiced | tail -1
echo "RESULT ok"
