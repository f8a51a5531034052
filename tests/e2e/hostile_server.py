#!/usr/bin/python3
"""A scriptable misbehaving SMTP server for the receiving-side tests.

HostileServer(mode) listens on 127.0.0.1:0 (threads, standard library
only) and plays a small but real ESMTP server (EHLO, PIPELINING, STARTTLS
when given a certificate, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that
misbehaves the way ``mode`` says on its first ``bad_conns`` connections
(None = on every connection), then behaves, so that a test can check both
the outcome of the fault (a deferral within the configured timeout) and
that the deferred message is delivered afterwards (nothing lost).

Modes:
  normal          no fault
  silent          accept the connection, never say anything
  trickle         every reply sent one byte at a time (delay: trickle_s)
  late            the greeting comes late_s seconds late
  endless         the EHLO reply is a multi-line reply that never ends
                  (one "250-" line every 10 ms, for at most 60 s)
  hugeline        the EHLO reply is one 10 MB line (no CRLF), then silence
  garbage         the greeting is not SMTP ("HTTP/1.1 400 ...")
  tls_stall       STARTTLS answered 220, then the handshake never starts
  tls_fail        STARTTLS answered 220, then garbage instead of a handshake
  reset_mid_data  DATA answered 354, part of the body read, then a TCP RST
  data_5xx        the final "." answered 554 5.7.1 (a permanent refusal)

Received messages are kept in .messages as dicts (mail_from, rcpts, data,
tls); .conns counts connections; .starttls counts STARTTLS commands.

Also a command-line tool for manual runs and the soak:
  hostile_server.py MODE [--port-file F] [--bad-conns N] [--seconds S]
"""
import argparse
import os
import socket
import ssl
import struct
import sys
import threading
import time

MODES = ("normal", "silent", "trickle", "late", "endless", "hugeline", "garbage", "tls_stall",
         "tls_fail", "reset_mid_data", "data_5xx")


class _Conn:
    """One connection: a socket (maybe wrapped in TLS) and a line reader."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def readline(self, limit=1 << 20):
        while b"\n" not in self.buf:
            if len(self.buf) > limit:
                raise ConnectionError("line too long")
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("eof")
            self.buf += d
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def send(self, data):
        self.sock.sendall(data)


class HostileServer:
    def __init__(self, mode="normal", bad_conns=None, cert=None, key=None, trickle_s=0.01,
                 late_s=3.0, name="hostile.test"):
        if mode not in MODES:
            raise ValueError("unknown mode %r" % mode)
        self.mode, self.bad_conns, self.name = mode, bad_conns, name
        self.trickle_s, self.late_s = trickle_s, late_s
        self.tls_ctx = None
        if cert:
            self.tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_ctx.load_cert_chain(cert, key)
        self.lock = threading.Lock()
        self.messages, self.conns, self.starttls = [], 0, 0
        self.stopping = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.open = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    # -- lifecycle

    def _serve(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
                self.open.append(c)
            bad = self.bad_conns is None or n <= self.bad_conns
            threading.Thread(target=self._session, args=(c, bad), daemon=True).start()

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        with self.lock:
            for c in self.open:
                try:
                    c.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def message_count(self):
        with self.lock:
            return len(self.messages)

    # -- one session

    def _say(self, conn, text, bad):
        data = text.encode() + b"\r\n"
        if bad and self.mode == "trickle":
            for i in range(len(data)):
                if self.stopping:
                    return
                conn.send(data[i:i + 1])
                time.sleep(self.trickle_s)
        else:
            conn.send(data)

    def _session(self, sock, bad):
        sock.settimeout(120)
        conn = _Conn(sock)
        mode = self.mode if bad else "normal"
        try:
            if mode == "silent":
                self._idle(sock, 120)
                return
            if mode == "late":
                time.sleep(self.late_s)
            if mode == "garbage":
                conn.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self._idle(sock, 30)
                return
            self._say(conn, "220 %s ESMTP hostile" % self.name, bad)
            self._commands(conn, mode, bad)
        except (OSError, ConnectionError, ssl.SSLError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _idle(self, sock, seconds):
        """Hold the connection without speaking until the peer goes away."""
        deadline = time.monotonic() + seconds
        sock.settimeout(0.2)
        while not self.stopping and time.monotonic() < deadline:
            try:
                if not sock.recv(65536):
                    return
            except socket.timeout:
                continue

    def _commands(self, conn, mode, bad):
        mail_from, rcpts, tls = None, [], False
        while not self.stopping:
            line = conn.readline()
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                if mode == "endless":
                    deadline = time.monotonic() + 60
                    while not self.stopping and time.monotonic() < deadline:
                        conn.send(b"250-" + b"x" * 70 + b"\r\n")
                        time.sleep(0.01)
                    return
                if mode == "hugeline":
                    chunk = b"250-" + b"y" * (1 << 20)
                    for _ in range(10):
                        conn.send(chunk)
                    self._idle(conn.sock, 60)
                    return
                ext = ["PIPELINING", "SIZE 52428800", "8BITMIME"]
                if self.tls_ctx is not None and not tls:
                    ext.append("STARTTLS")
                lines = [self.name] + ext
                self._say(conn, "\r\n".join("250-" + l for l in lines[:-1]) + "\r\n250 " +
                          lines[-1], bad)
            elif verb == b"STAR" and self.tls_ctx is not None and not tls:
                with self.lock:
                    self.starttls += 1
                self._say(conn, "220 2.0.0 go ahead", bad)
                if mode == "tls_stall":
                    self._idle(conn.sock, 60)
                    return
                if mode == "tls_fail":
                    conn.send(b"this is not a TLS record\r\n" * 4)
                    time.sleep(0.5)
                    return
                conn.sock.settimeout(10)
                conn.sock = self.tls_ctx.wrap_socket(conn.sock, server_side=True)
                conn.sock.settimeout(120)
                conn.buf = b""
                tls = True
                mail_from, rcpts = None, []
            elif verb == b"MAIL":
                mail_from, rcpts = line[10:].decode(errors="replace"), []
                self._say(conn, "250 2.1.0 ok", bad)
            elif verb == b"RCPT":
                rcpts.append(line[8:].decode(errors="replace").split(">")[0].strip("<"))
                self._say(conn, "250 2.1.5 ok", bad)
            elif verb == b"DATA":
                self._say(conn, "354 go ahead", bad)
                body = []
                if mode == "reset_mid_data":
                    conn.readline()  # some of the body, then a reset
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                    return
                while True:
                    l = conn.readline()
                    if l == b".":
                        break
                    body.append(l[1:] if l.startswith(b".") else l)
                if mode == "data_5xx":
                    self._say(conn, "554 5.7.1 message refused by policy", bad)
                else:
                    with self.lock:
                        self.messages.append({"mail_from": mail_from, "rcpts": rcpts,
                                              "data": b"\r\n".join(body) + b"\r\n",
                                              "tls": tls})
                    self._say(conn, "250 2.0.0 ok: queued", bad)
                mail_from, rcpts = None, []
            elif verb == b"RSET":
                mail_from, rcpts = None, []
                self._say(conn, "250 2.0.0 ok", bad)
            elif verb == b"NOOP":
                self._say(conn, "250 2.0.0 ok", bad)
            elif verb == b"QUIT":
                self._say(conn, "221 2.0.0 bye", bad)
                return
            else:
                self._say(conn, "502 5.5.2 unknown command", bad)


def main():
    ap = argparse.ArgumentParser(description="a misbehaving SMTP server on 127.0.0.1")
    ap.add_argument("mode", choices=MODES)
    ap.add_argument("--port-file")
    ap.add_argument("--bad-conns", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=600, help="exit after this long")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    srv = HostileServer(a.mode, a.bad_conns, a.cert, a.key)
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write("%d\n" % srv.port)
        os.rename(a.port_file + ".tmp", a.port_file)
    else:
        print(srv.port, flush=True)
    try:
        time.sleep(a.seconds)
    except KeyboardInterrupt:
        pass
    srv.stop()
    print("connections=%d messages=%d" % (srv.conns, len(srv.messages)), file=sys.stderr)


if __name__ == "__main__":
    main()
