#!/usr/bin/python3
"""A receiving SMTP server we did not write: Python's aiosmtpd, configured
from the command line, for sluice's delivery tests.

sluice's own sink (bench/sink.c) offers PIPELINING and shares sluice's TLS
code, so a defect in how sluice talks to an ordinary server can pass every
test that uses it. This server is aiosmtpd (Debian's python3-aiosmtpd),
which by itself offers neither PIPELINING nor DSN: each extension is
switched on or off here, and every reply a test needs can be scripted.

    peer_smtp.py --port-file F --out DIR [options]

Options (all optional):
  --listen HOST:PORT      default 127.0.0.1:0 (the port is written to F)
  --hostname NAME         the name in the greeting and EHLO reply
  --pipelining            advertise PIPELINING (aiosmtpd reads commands in
                          order, so pipelined input is handled as it should)
  --no-8bitmime           do not advertise 8BITMIME
  --smtputf8              advertise SMTPUTF8
  --dsn                   advertise DSN and accept NOTIFY/ORCPT on RCPT and
                          RET/ENVID on MAIL (recorded as sent, case kept)
  --size N                advertise SIZE N and refuse larger messages (552)
  --no-size               advertise no SIZE (default: SIZE 64 MiB)
  --starttls CERT:KEY     offer STARTTLS with this certificate
  --starttls-reply TEXT   answer STARTTLS with TEXT (e.g. "454 4.7.0 no")
  --ehlo-reply TEXT       answer EHLO with TEXT (e.g. "502 5.5.1 no EHLO")
  --greeting TEXT         the greeting line (default "220 NAME ESMTP")
  --greeting-delay SECS   wait this long after accepting before the greeting
  --mail-reply TEXT       answer every MAIL with TEXT
  --rcpt-reply GLOB=[N:]TEXT
                          answer RCPT TO addresses matching GLOB (fnmatch,
                          on the whole address) with TEXT; with N:, only the
                          first N times for each address, then accept.
                          Repeatable, first match wins.
  --max-rcpts N[:TEXT]    refuse RCPT beyond N per transaction (default
                          reply "452 4.5.3 Too many recipients")
  --data-reply TEXT       answer DATA with TEXT instead of 354
  --data-no-rcpts TEXT    a broken server: answer DATA with 354 even when no
                          recipient was accepted, read the content to the
                          dot (recorded as an event "data_no_rcpts" with
                          its bytes, latin-1) and answer TEXT
  --eom-reply [N:]TEXT    answer the final dot with TEXT (the first N
                          messages only, with N:). Repeatable, in order.
  --eom-delay GLOB=SECS   wait SECS before answering the final dot of a
                          message with a recipient matching GLOB (fnmatch,
                          on the whole address): a slow transaction.
                          Repeatable, first match wins.
  --hangup-in-data N      close the connection after N bytes of DATA content
  --reply-encoding ENC    encode the scripted replies (and every other reply)
                          with ENC instead of ASCII/UTF-8: "latin-1" sends
                          U+0000..U+00FF as those single bytes, so a test
                          can send a raw 0xE9 or 0x9B byte in a reply
  --wire                  record every byte the client sent, raw as it came
                          off the socket (before TLS is removed), per
                          connection in DIR/wire-<n>.bin

What it writes to DIR:
  messages.jsonl  one line per message accepted with 250 after the dot:
                  {"conn", "client_ip", "helo", "tls" (cipher or null), "mail_from",
                   "mail_params" (list, as sent), "rcpts": [{"addr",
                   "params"}], "size", "file" (the raw content, dots
                   unstuffed, in DIR), "eom_reply"}
  events.jsonl    one line per reply sent that was not 2xx/3xx, per EHLO
                  received, and per connection opened/closed, each with
                  "t" (time.time() when it happened): for tests that check
                  retries and the order of connections
  msg-<n>.eml     each message's content exactly as received

Stops cleanly on SIGTERM (exit 0).
"""
import argparse
import asyncio
import fnmatch
import json
import os
import signal
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, MISSING, syntax

DSN_MAIL = ("RET", "ENVID")
DSN_RCPT = ("NOTIFY", "ORCPT")


def parse_args(argv):
    p = argparse.ArgumentParser(description="aiosmtpd-based test receiver")
    p.add_argument("--port-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--hostname", default="peer.test")
    p.add_argument("--pipelining", action="store_true")
    p.add_argument("--no-8bitmime", action="store_true")
    p.add_argument("--smtputf8", action="store_true")
    p.add_argument("--dsn", action="store_true")
    p.add_argument("--size", type=int, default=64 << 20)
    p.add_argument("--no-size", action="store_true")
    p.add_argument("--starttls")
    p.add_argument("--starttls-reply")
    p.add_argument("--ehlo-reply")
    p.add_argument("--greeting")
    p.add_argument("--greeting-delay", type=float, default=0.0)
    p.add_argument("--mail-reply")
    p.add_argument("--rcpt-reply", action="append", default=[])
    p.add_argument("--max-rcpts")
    p.add_argument("--data-reply")
    p.add_argument("--data-no-rcpts")
    p.add_argument("--eom-reply", action="append", default=[])
    p.add_argument("--eom-delay", action="append", default=[])
    p.add_argument("--hangup-in-data", type=int)
    p.add_argument("--wire", action="store_true")
    p.add_argument("--reply-encoding")
    return p.parse_args(argv)


def counted(spec):
    """'N:TEXT' -> (N, TEXT); 'TEXT' -> (None, TEXT)."""
    head, sep, rest = spec.partition(":")
    if sep and head.isdigit():
        return int(head), rest
    return None, spec


class State:
    def __init__(self, opts):
        self.opts = opts
        self.conns = 0
        self.wires = 0
        self.msgs = 0
        self.rcpt_rules = []
        for r in opts.rcpt_reply:
            glob, _, rest = r.partition("=")
            n, text = counted(rest)
            self.rcpt_rules.append((glob.lower(), n, text, {}))
        self.eom = [list(counted(e)) for e in opts.eom_reply]
        self.eom_delays = []
        for r in opts.eom_delay:
            glob, _, secs = r.partition("=")
            self.eom_delays.append((glob.lower(), float(secs)))
        os.makedirs(opts.out, exist_ok=True)
        self.msg_log = open(os.path.join(opts.out, "messages.jsonl"), "a", buffering=1)
        self.ev_log = open(os.path.join(opts.out, "events.jsonl"), "a", buffering=1)

    def event(self, **kw):
        kw["t"] = time.time()
        self.ev_log.write(json.dumps(kw) + "\n")

    def rcpt_reply(self, addr):
        a = addr.lower()
        for glob, n, text, seen in self.rcpt_rules:
            if fnmatch.fnmatchcase(a, glob):
                k = seen.get(a, 0)
                if n is not None and k >= n:
                    return None
                seen[a] = k + 1
                return text
        return None

    def eom_reply(self):
        for e in self.eom:
            if e[0] is None:
                return e[1]
            if e[0] > 0:
                e[0] -= 1
                return e[1]
        return None


class PeerSMTP(SMTP):
    """aiosmtpd's SMTP with the switches above."""

    def __init__(self, state, *a, **kw):
        super().__init__(*a, **kw)
        self.st = state
        state.conns += 1
        self.conn_no = state.conns
        self.greeted = False

    def connection_made(self, transport):
        self.st.event(ev="connect", conn=self.conn_no)
        super().connection_made(transport)

    def connection_lost(self, exc):
        self.st.event(ev="close", conn=self.conn_no)
        super().connection_lost(exc)

    async def push(self, status):
        if not self.greeted:
            self.greeted = True
            if self.st.opts.greeting_delay > 0:
                await asyncio.sleep(self.st.opts.greeting_delay)
            if self.st.opts.greeting:
                status = self.st.opts.greeting
        code = status[:3]
        if code[:1] in ("4", "5"):
            self.st.event(ev="reply", conn=self.conn_no, reply=status)
        if self.st.opts.reply_encoding and isinstance(status, str):
            status = status.encode(self.st.opts.reply_encoding, "surrogateescape")
        return await super().push(status)

    async def smtp_STARTTLS(self, arg):
        if self.st.opts.starttls_reply:
            return await self.push(self.st.opts.starttls_reply)
        await super().smtp_STARTTLS(arg)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname):
        self.st.event(ev="ehlo", conn=self.conn_no, name=hostname)
        if self.st.opts.ehlo_reply:
            return await self.push(self.st.opts.ehlo_reply)
        return await super().smtp_EHLO(hostname)

    def _split_dsn(self, arg, names):
        """Take RFC 3461 parameters out of a MAIL/RCPT argument (their
        values keep their case) so that aiosmtpd sees only what it knows."""
        if not self.st.opts.dsn or arg is None:
            return arg, []
        words = arg.split(" ")
        keep, dsn = [], []
        for w in words:
            key = w.split("=", 1)[0].upper()
            if key in names and "=" in w:
                dsn.append(w)
            else:
                keep.append(w)
        return " ".join(keep), dsn

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg):
        if self.st.opts.mail_reply:
            return await self.push(self.st.opts.mail_reply)
        arg, dsn = self._split_dsn(arg, DSN_MAIL)
        self.mail_raw_params = (arg or "").split(">", 1)[-1].split() + dsn
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg):
        if self.envelope.mail_from is not None:
            lim = self.st.opts.max_rcpts
            if lim:
                n, _, text = lim.partition(":")
                if len(self.envelope.rcpt_tos) >= int(n):
                    return await self.push(text or "452 4.5.3 Too many recipients")
        arg, dsn = self._split_dsn(arg, DSN_RCPT)
        addr = (arg or "")
        if addr.upper().startswith("TO:"):
            addr = addr[3:]
        addr = addr.strip().split(">", 1)[0].lstrip("<")
        text = self.st.rcpt_reply(addr) if self.envelope.mail_from is not None else None
        if text:
            return await self.push(text)
        before = len(self.envelope.rcpt_tos)
        await super().smtp_RCPT(arg)
        if len(self.envelope.rcpt_tos) > before:
            if not hasattr(self.envelope, "rcpt_params"):
                self.envelope.rcpt_params = []
            rest = (arg or "").split(">", 1)[-1].split()
            self.envelope.rcpt_params.append(rest + dsn)

    @syntax("DATA")
    async def smtp_DATA(self, arg):
        if (self.st.opts.data_no_rcpts and not self.envelope.rcpt_tos
                and self.envelope.mail_from is not None):
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            got = b""
            while len(got) < (1 << 20):
                line = await self._reader.readline()
                if not line:
                    break
                if line == b".\r\n":
                    break
                got += line
            self.st.event(ev="data_no_rcpts", conn=self.conn_no, content=got.decode("latin-1"))
            self._set_post_data_state()
            return await self.push(self.st.opts.data_no_rcpts)
        if self.st.opts.data_reply and self.envelope.rcpt_tos:
            text = self.st.opts.data_reply
            await self.push(text)
            if text.startswith("2"):
                # a broken server: it said 2xx to DATA. Whatever the client
                # sends next is read as commands.
                pass
            return
        if self.st.opts.hangup_in_data is not None and self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            got = 0
            while got < self.st.opts.hangup_in_data:
                chunk = await self._reader.read(65536)
                if not chunk:
                    break
                got += len(chunk)
            self.st.event(ev="hangup", conn=self.conn_no, after=got)
            self.transport.close()
            return
        await super().smtp_DATA(arg)


class Handler:
    def __init__(self, state):
        self.st = state

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        o = self.st.opts
        out = []
        for r in responses:
            body = r[4:]
            if o.no_8bitmime and body.upper() == "8BITMIME":
                continue
            if body.upper().startswith("SIZE"):
                continue
            if body.upper().startswith("AUTH"):
                continue
            out.append(r)
        last = out.pop()  # "250 HELP"
        if not o.no_size and o.size:
            out.append("250-SIZE %d" % o.size)
        if o.pipelining:
            out.append("250-PIPELINING")
        if o.dsn:
            out.append("250-DSN")
        out.append("250-ENHANCEDSTATUSCODES")
        out.append(last)
        return out

    async def handle_DATA(self, server, session, envelope):
        st = self.st
        data = envelope.original_content
        o = st.opts
        if not o.no_size and o.size and len(data) > o.size:
            return "552 5.3.4 Message too big"
        for glob, secs in st.eom_delays:
            if any(fnmatch.fnmatchcase(r.lower(), glob) for r in envelope.rcpt_tos):
                await asyncio.sleep(secs)
                break
        reply = st.eom_reply()
        if reply and not reply.startswith("2"):
            return reply
        st.msgs += 1
        name = "msg-%d.eml" % st.msgs
        with open(os.path.join(o.out, name), "wb") as f:
            f.write(data)
        tls = None
        if session.ssl is not None:
            c = session.ssl.get("cipher") if isinstance(session.ssl, dict) else None
            tls = c[0] if c else "tls"
        rec = {
            "conn": server.conn_no,
            "client_ip": session.peer[0] if session.peer else None,
            "helo": session.host_name,
            "tls": tls,
            "mail_from": envelope.mail_from,
            "mail_params": getattr(server, "mail_raw_params", []),
            "rcpts": [{"addr": a, "params": p} for a, p in
                      zip(envelope.rcpt_tos, getattr(envelope, "rcpt_params",
                                                     [[]] * len(envelope.rcpt_tos)))],
            "size": len(data),
            "file": name,
            "eom_reply": reply or "250 2.0.0 OK",
        }
        st.msg_log.write(json.dumps(rec) + "\n")
        return reply or "250 2.0.0 OK queued as %d" % st.msgs


async def wire_proxy(state, reader, writer, target):
    """--wire: forward one client connection to the SMTP server and record
    every byte the client sent, exactly as it came off the socket."""
    state.wires += 1
    path = os.path.join(state.opts.out, "wire-%d.bin" % state.wires)
    rec = open(path, "wb")
    try:
        ur, uw = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        writer.close()
        rec.close()
        return

    async def pump(src, dst, log):
        try:
            while True:
                b = await src.read(65536)
                if not b:
                    break
                if log is not None:
                    log.write(b)
                    log.flush()
                dst.write(b)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                dst.close()
            except Exception:
                pass

    await asyncio.gather(pump(reader, uw, rec), pump(ur, writer, None))
    rec.close()


def main(argv):
    o = parse_args(argv)
    state = State(o)
    tls_ctx = None
    if o.starttls:
        cert, key = o.starttls.split(":", 1)
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(cert, key)
    handler = Handler(state)
    host, port = o.listen.rsplit(":", 1)
    host = host.strip("[]")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def factory():
        s = PeerSMTP(state, handler, hostname=o.hostname, tls_context=tls_ctx,
                     data_size_limit=None, enable_SMTPUTF8=o.smtputf8,
                     decode_data=False, loop=loop, timeout=60)
        return s

    if o.wire:
        inner = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
        target = inner.sockets[0].getsockname()[1]
        server = loop.run_until_complete(asyncio.start_server(
            lambda r, w: wire_proxy(state, r, w, target), host, int(port)))
    else:
        inner = None
        server = loop.run_until_complete(loop.create_server(factory, host, int(port)))
    real = server.sockets[0].getsockname()[1]
    tmp = o.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % real)
    os.rename(tmp, o.port_file)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(0))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(0))
    loop.run_until_complete(stop)
    server.close()
    loop.run_until_complete(server.wait_closed())
    if inner is not None:
        inner.close()
        loop.run_until_complete(inner.wait_closed())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
