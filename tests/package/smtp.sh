# tests/package/smtp.sh - sourced by in-root.sh and in-systemd.sh (bash).
# SMTP over bash's /dev/tcp: one message to port 25, prints the last reply.
smtp_send() { # rcpt subject
    exec 3<>/dev/tcp/127.0.0.1/25 || return 1
    local l
    read -r -t 10 l <&3; case "$l" in 220*) ;; *) echo "greeting: $l"; return 1;; esac
    printf 'EHLO stranger.test\r\n' >&3
    while read -r -t 10 l <&3; do case "$l" in 250\ *) break;; esac; done
    printf 'MAIL FROM:<me@stranger.test>\r\n' >&3; read -r -t 10 l <&3
    printf 'RCPT TO:<%s>\r\n' "$1" >&3; read -r -t 10 l <&3
    case "$l" in 250*) ;; *) echo "RCPT: $l"; return 1;; esac
    printf 'DATA\r\n' >&3; read -r -t 10 l <&3
    printf 'Subject: %s\r\n\r\nhello from a stranger\r\n.\r\n' "$2" >&3; read -r -t 30 l <&3
    printf 'QUIT\r\n' >&3; exec 3<&-
    echo "$l"
    case "$l" in 250*) return 0;; *) return 1;; esac
}
