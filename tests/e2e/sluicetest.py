"""Shared helpers for sluice's end-to-end tests (tests/e2e/test_*.py).

Every e2e test runs real processes on loopback. This module finds the
binaries, picks free ports, starts and stops ``sluiced`` with a temporary
configuration, runs ``sluicectl`` and ``swaks``, and reads what the daemon
wrote (accounting log, operational log). Use it from a test like this::

    import sluicetest as st

    class T(unittest.TestCase):
        def test_status(self):
            with st.Daemon() as d:                 # starts; stops on exit
                r = d.ctl("status", json=True)     # sluicectl --json status
                self.assertEqual(r.rc, 0)
                self.assertEqual(r.data["queue"]["messages"], 0)
                st.swaks(d.smtp_port, to="a@example.test").check()
            # leaving the block: SIGTERM, wait, raise if the exit code was
            # not 0 or a sanitizer reported an error; the temp dir is removed

Environment: SLUICE_BUILD (build dir, default ../../build), SLUICE_SRC
(source dir), SLUICE_KEEP_TMP=1 keeps temporary directories for debugging,
SLUICE_TEST_TIMEOUT (seconds, set by ctest: the file's budget, see main()).
Runs under Debian's /usr/bin/python3; only the standard library is used.

Run a test file with main() (tests/e2e/runner.py does it for ctest): a
skipped test makes the file exit 77, which ctest reports as Skipped, never
as Passed. A precondition the suite cannot do without (root, a package of
.ci/deps, the release build) skips with require_root() or fails.

Nothing here leaves a process behind: every Daemon, Sink, Peer and Dnsmasq
still running when the interpreter exits is killed (atexit), and so is
everything when the file overruns its budget.
"""
import atexit
import glob
import hashlib
import hmac
import json as jsonlib
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("SLUICE_SRC", os.path.abspath(os.path.join(HERE, "../..")))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(SRC, "build"))
SLUICED = os.path.join(BUILD, "core/server/sluiced")
SLUICECTL = os.path.join(BUILD, "core/server/sluicectl")
SOURCE = os.path.join(BUILD, "bench/sluice-source")
SINK = os.path.join(BUILD, "bench/sluice-sink")
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"

# sluicectl exit codes
CTL_OK, CTL_REFUSED, CTL_USAGE, CTL_CONNECT = 0, 1, 2, 3

# What sanitizers print when they find a bug (ASan, UBSan, LSan, TSan).
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread)Sanitizer|runtime error:|"
                          r"WARNING: ThreadSanitizer")

_running = set()  # Daemons started and not yet stopped, killed at exit
_children = set()  # other helpers' Popen objects (sinks, peers, dnsmasq), killed at exit

# The exit status of a test file in which a test was skipped: ctest's
# SKIP_RETURN_CODE (tests/CMakeLists.txt), so that a skip is never "Passed".
SKIP_EXIT = 77


@atexit.register
def _kill_leftovers():
    for d in list(_running):
        try:
            d.kill9()
        except Exception:
            pass
    for p in list(_children):
        try:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        except Exception:
            pass
        _children.discard(p)


def _spawn(args, **kw):
    """subprocess.Popen, remembered so that nothing outlives the test file."""
    p = subprocess.Popen(args, **kw)
    _children.add(p)
    return p


def _reap(proc, timeout=10):
    """SIGTERM proc, SIGKILL after timeout seconds; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _children.discard(proc)
    return proc.returncode


# ------------------------------------------------------------------ running a test file

class _Result(unittest.TextTestResult):
    current = None  # the result of the running file, for the watchdog

    def startTestRun(self):
        _Result.current = self
        super().startTestRun()


def _watchdog(budget, name):
    """Within budget seconds the file must be done. At the budget, the
    running test fails with a TimeoutError where it waits (its cleanups
    stop its processes) and no further test starts; 30 s later, whatever
    still runs is killed and the file exits 1. Either way the output says
    so, instead of ctest killing the file silently at its TIMEOUT and
    leaving its daemons running."""
    def hard():
        print("\n%s: still running 30 s after its %d s budget: killing everything"
              % (name, budget), file=sys.stderr, flush=True)
        _kill_leftovers()
        os._exit(1)

    def soft(signum, frame):
        if _Result.current is not None:
            _Result.current.stop()
        t = threading.Timer(30, hard)
        t.daemon = True
        t.start()
        raise TimeoutError("the test file overran its budget of %d s (SLUICE_TEST_TIMEOUT): "
                           "this test was waiting here:\n%s"
                           % (budget, "".join(traceback.format_stack(frame))))
    signal.signal(signal.SIGALRM, soft)
    signal.alarm(budget)


def main(module="__main__", argv=None):
    """Run a test module's tests (all, or those named on the command line,
    as unittest.main does) and exit: 0 when every test ran and passed, 1
    on a failure or when no test ran, SKIP_EXIT (77) when a test was
    skipped, listing why. With SLUICE_TEST_TIMEOUT set (ctest sets its
    TIMEOUT), a watchdog fails the file 30 s before ctest would kill it."""
    budget = int(os.environ.get("SLUICE_TEST_TIMEOUT", "0") or 0)
    if budget > 60:
        _watchdog(budget - 30, getattr(module, "__file__", None) or sys.argv[0])
    prog = unittest.main(module=module, argv=argv, exit=False, verbosity=2,
                         testRunner=unittest.TextTestRunner(resultclass=_Result, verbosity=2))
    signal.alarm(0)
    r = prog.result
    if not r.wasSuccessful():
        sys.exit(1)
    if r.testsRun == 0:
        print("no test ran", file=sys.stderr)
        sys.exit(1)
    if r.skipped:
        for test, why in r.skipped:
            print("SKIPPED %s: %s" % (test.id(), why), file=sys.stderr)
        sys.exit(SKIP_EXIT)
    sys.exit(0)


def require_root(why):
    """Skip the calling test unless it runs as root (the file then exits
    77: ctest shows it as Skipped, and CI fails on a skip)."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root: " + why)


# ------------------------------------------------------------------ basics

def keep_tmp():
    """True when SLUICE_KEEP_TMP=1 asks to keep temporary directories."""
    return os.environ.get("SLUICE_KEEP_TMP", "") not in ("", "0")


_base_tmp = None  # this test file's own directory for its temporary directories


def make_tmpdir(prefix="sluice-e2e-"):
    """A new temporary directory (mode 0755, so that a test can run a
    client as another user inside it). The caller removes it (rmtree).

    It lives in a directory of this test file's own (/tmp/sluice-tests-*,
    removed at exit unless SLUICE_KEEP_TMP=1): another suite on this
    machine that cleans up /tmp/sluiced-* or /tmp/sink-* cannot remove a
    running test's spool or log, and a killed test leaves one directory."""
    global _base_tmp
    if _base_tmp is None:
        _base_tmp = tempfile.mkdtemp(prefix="sluice-tests-")
        os.chmod(_base_tmp, 0o755)
        if not keep_tmp():
            atexit.register(shutil.rmtree, _base_tmp, True)
    d = tempfile.mkdtemp(prefix=prefix, dir=_base_tmp)
    os.chmod(d, 0o755)
    return d


_held = {}  # (host, port) -> the socket that holds it (free_port)


def free_port(host="127.0.0.1", below=None):
    """A TCP port on host reserved for this test file until release_port()
    (or exit), so that nothing else takes it between now and the moment
    our server binds it, and none of our ports is ever someone else's.

    The port is held by a socket bound to it (exclusively: a socket of
    another test doing the same cannot bind it) that then sets
    SO_REUSEADDR and never listens. While it is held:
      - a server of ours that binds it with SO_REUSEADDR (sluiced, the
        sinks and libuv servers, aiosmtpd, smtp-sink, http.server) listens
        on it normally, also again after a restart;
      - no other socket can bind it without SO_REUSEADDR, a bind to port 0
        never returns it, and no outgoing connection uses it;
      - with no server on it, a connection is refused at once (RST): a
        closed port, e.g. a route that must defer.
    below: a port under this number (e.g. 1024: root only), tried upwards
    from 700.
    A server that binds it without SO_REUSEADDR (a plain socket.bind, a
    socketserver.TCPServer) gets EADDRINUSE: release_port() first, or bind
    port 0 and read the port back, as Sink and Peer do."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [0] if below is None else range(700, below)
    for port in candidates:
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            continue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        port = s.getsockname()[1]
        _held[(host, port)] = s
        return port
    raise RuntimeError("no free port below %s on %s" % (below, host))


def release_port(port, host="127.0.0.1"):
    """Give back a port of free_port()."""
    s = _held.pop((host, port), None)
    if s is not None:
        s.close()


def udp_blackhole():
    """(socket, port): a UDP port on 127.0.0.1 that receives and never
    answers (a DNS server that does not reply). Close the socket when done."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """Call pred() until it returns a true value (returned), or raise
    TimeoutError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def unix_connectable(path):
    """True when something accepts connections on the Unix socket path."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(path)
            return True
    except OSError:
        return False


def tcp_connectable(host, port):
    """True when host:port accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_socket(path, timeout=10.0, proc=None):
    """Wait until the Unix socket path accepts connections. With proc (a
    Popen), fail at once if the process exits first."""
    def ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before %s was ready" % (proc.returncode, path))
        return unix_connectable(path)
    wait_for(ready, timeout, what="control socket " + path)


def smtp_greets(host, port):
    """True when an SMTP server on host:port accepted a connection and
    said something (its greeting, or a 421): unlike a bare connect, the
    server has then taken the connection off its accept queue, so the probe
    cannot be counted later, as a session the test did not open."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.settimeout(5)
            try:
                return s.recv(512) != b""
            except socket.timeout:
                return False
    except OSError:
        return False


def wait_for_port(host, port, timeout=10.0, proc=None, smtp=False):
    """Wait until host:port accepts TCP connections (see wait_for_socket);
    with smtp, until the server there has greeted a probe (smtp_greets)."""
    probe = smtp_greets if smtp else tcp_connectable

    def ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before %s:%d was ready"
                               % (proc.returncode, host, port))
        return probe(host, port)
    wait_for(ready, timeout, what="%s:%d" % (host, port))


def sanitizer_errors(text):
    """The lines of text where a sanitizer reported an error ([] if none)."""
    return [l for l in text.splitlines() if SANITIZER_RE.search(l)]


class Result:
    """What a command run returned: rc, out (stdout), err (stderr), and data
    (stdout parsed as JSON when asked for, else None)."""

    def __init__(self, args, rc, out, err, data=None):
        self.args, self.rc, self.out, self.err, self.data = args, rc, out, err, data

    @property
    def returncode(self):
        return self.rc

    def check(self, rc=0):
        """Raise AssertionError unless the exit code is rc; returns self."""
        if self.rc != rc:
            raise AssertionError("%s: exit %d, wanted %d\nstdout: %s\nstderr: %s"
                                 % (" ".join(self.args), self.rc, rc, self.out, self.err))
        return self

    def __repr__(self):
        return "Result(rc=%d, out=%r, err=%r)" % (self.rc, self.out[:200], self.err[:200])


_copies = {}  # binary of the build -> its copy that every user can run


def runnable_by_anyone(path):
    """path, or for a binary of the build a copy of it in a directory every
    user can read (made once per test file, removed at exit). A checkout
    in a home directory (/root is 0700) cannot be reached by another user:
    running build/.../sluicectl as nobody there fails before main() (the
    kernel or ld.so is refused the path), which says nothing about sluice.
    The binaries link sluice's own libraries statically, so the copy is
    the same program."""
    path = os.path.abspath(path)
    if not path.startswith(os.path.abspath(BUILD) + os.sep):
        return path
    if path not in _copies:
        d = make_tmpdir("sluice-bin-")  # removed at exit with the file's directory
        dst = os.path.join(d, os.path.basename(path))
        shutil.copy2(path, dst)
        os.chmod(dst, 0o755)
        _copies[path] = dst
    return _copies[path]


def as_user(args, user):
    """args run as user (group nogroup, no supplementary groups) through
    setpriv, with a build binary replaced by runnable_by_anyone()."""
    args = [str(a) for a in args]
    return (["setpriv", "--reuid=" + user, "--regid=nogroup", "--clear-groups",
             runnable_by_anyone(args[0])] + args[1:])


def run(args, timeout=60, user=None, env=None, input=None):
    """Run a command, capture text output, return a Result. user="nobody"
    runs it as that user (as_user())."""
    args = [str(a) for a in args]
    if user is not None:
        args = as_user(args, user)
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                       input=input)
    return Result(args, p.returncode, p.stdout, p.stderr)


def sluicectl(socket_path, *args, json=False, user=None, timeout=60):
    """Run sluicectl -s socket_path [--json] ARGS. With json=True, the
    Result's data holds the parsed answer (None if stdout was not JSON)."""
    cmd = [SLUICECTL, "-s", socket_path] + (["--json"] if json else []) + list(args)
    r = run(cmd, timeout=timeout, user=user)
    if json:
        try:
            r.data = jsonlib.loads(r.out)
        except ValueError:
            r.data = None
    return r


def ctl_request(socket_path, request, timeout=10):
    """Send one request on a fresh control connection and return the parsed
    answer. request is a dict (sent as JSON) or a str/bytes line."""
    with ControlConn(socket_path, timeout) as c:
        return c.request(request)


class ControlConn:
    """A raw control-socket connection, for protocol tests: request() sends
    one line and reads one answer; send() and readline() do half of it."""

    def __init__(self, socket_path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(socket_path)
        self.rfile = self.sock.makefile("rb")

    def send(self, request):
        if isinstance(request, dict):
            request = jsonlib.dumps(request)
        if isinstance(request, str):
            request = request.encode()
        if not request.endswith(b"\n"):
            request += b"\n"
        self.sock.sendall(request)

    def readline(self):
        """The next answer line parsed, or None at end of stream."""
        line = self.rfile.readline()
        return jsonlib.loads(line) if line else None

    def request(self, request):
        self.send(request)
        return self.readline()

    def close(self):
        self.rfile.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def swaks(port, to="user@example.test", from_="sender@example.com", server="127.0.0.1",
          args=(), timeout=60):
    """Send one message with swaks to server:port; returns a Result (check()
    it). args are extra swaks arguments, e.g. ["--tls"], ["--header",
    "X-Sluice-Job: j1"], ["--body", "text"], ["--auth", "PLAIN", ...]."""
    cmd = [SWAKS, "--server", "%s:%d" % (server, port), "--to", to, "--from", from_,
           "--timeout", "30"] + list(args)
    return run(cmd, timeout=timeout)


def queue_id_from_swaks(out):
    """The queue id in a swaks transcript's "250 2.0.0 Ok: queued as ID"
    reply (16 hex digits), or None."""
    m = re.search(r"\b250[ -].*?\b([0-9A-F]{16})\b", out)
    return m.group(1) if m else None


# ------------------------------------------------------------------ the daemon

class Daemon:
    """One sluiced with its own directory, configuration and ports.

    tmpdir: the directory to use (default: a new one, removed by cleanup()
    unless SLUICE_KEEP_TMP=1). extra_conf: text appended to the generated
    configuration (top-level blocks such as 'delivery { ... }'; a block that
    is also generated, e.g. smtp { }, may appear twice only if the config
    parser merges blocks - prefer the keyword arguments). conf_text: the
    whole configuration instead of the generated one (the attributes below
    still name the default paths). log_level: log.level. routes: dict
    domain -> "host:port" for delivery.routes (default: "example.test" and
    "example.com" routed to a closed loopback port, so that delivery defers
    and mail stays queued). smtp_extra: text put inside smtp { }.

    Attributes: dir, conf_path, spool, ctl_socket, acct_dir, cert, key,
    smtp_port, smtp_host, stderr_path, proc, exit_code. smtp_port and
    closed_port are reserved with free_port() until cleanup(): the daemon
    finds its port again after a restart. start() returns once sluiced said
    it is ready.

    In a unittest, self.addCleanup(d.close) stops it at the end of the test
    and fails the test unless it exited 0 without a sanitizer report.
    """

    def __init__(self, tmpdir=None, extra_conf="", conf_text=None, log_level="info",
                 routes=None, smtp_extra="", env=None, sluiced=None, wrapper=()):
        self.sluiced = sluiced or SLUICED  # another build's binary
        self.wrapper = list(wrapper)  # runs [*wrapper, sluiced, ...] (e.g. prlimit --as=N)
        self._own_dir = tmpdir is None
        self.dir = tmpdir or make_tmpdir("sluiced-")
        self.conf_path = os.path.join(self.dir, "sluice.conf")
        self.spool = os.path.join(self.dir, "spool")
        self.ctl_socket = os.path.join(self.dir, "ctl.sock")
        self.acct_dir = os.path.join(self.dir, "log")
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        self.stderr_path = os.path.join(self.dir, "sluiced.stderr")
        self.smtp_host = "127.0.0.1"
        self.smtp_port = free_port()
        self.closed_port = free_port()  # nothing listens here: delivery defers
        self.env = env
        self.proc = None
        self.exit_code = None
        if routes is None:
            routes = {"example.test": "127.0.0.1:%d" % self.closed_port,
                      "example.com": "127.0.0.1:%d" % self.closed_port}
        self.routes = routes
        if conf_text is None:
            conf_text = self.default_conf(log_level, smtp_extra) + "\n" + extra_conf + "\n"
        with open(self.conf_path, "w") as f:
            f.write(conf_text)

    def default_conf(self, log_level="info", smtp_extra=""):
        """The generated configuration text."""
        routes = "".join('        "%s" = "%s";\n' % kv for kv in self.routes.items())
        return (
            'hostname = "sluice.test";\n'
            'log {\n    level = %s;\n    accounting_dir = "%s";\n}\n'
            'spool {\n    path = "%s";\n    map_size = 64M;\n}\n'
            'control {\n    socket = "%s";\n}\n'
            'smtp {\n    listen = "%s:%d";\n%s'
            '    tls {\n        cert = "%s";\n        key = "%s";\n    }\n}\n'
            'delivery {\n    smarthost = "127.0.0.1:%d";\n    routes {\n%s    }\n}\n'
            % (log_level, self.acct_dir, self.spool, self.ctl_socket, self.smtp_host,
               self.smtp_port, smtp_extra, self.cert, self.key, self.closed_port, routes))

    # -- process control

    READY = " ready: config="  # sluiced's last start-up line (log level info)

    def start(self, timeout=30, wait=True):
        """Start sluiced -c conf_path (stderr to stderr_path) and, with
        wait, return once the control socket and the SMTP port answer and
        the daemon has logged that it is ready (every thread started, the
        privileges dropped; not awaited when the configuration logs at warn
        or error only). Raises RuntimeError with the daemon's stderr if it
        exits first."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("already running")
        self.exit_code = None
        readies = self.stderr().count(self.READY)
        with open(self.conf_path) as f:
            # the ready line is not on stderr with a log file or above info
            quiet = re.search(r"(?m)^\s*(level\s*=\s*\"?(warn|error)\b|file\s*=)",
                              f.read()) is not None
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.wrapper + [self.sluiced, "-c", self.conf_path],
                                     stdin=subprocess.DEVNULL,
                                     stdout=self._err, stderr=self._err, cwd=self.dir,
                                     env=self.env)
        _running.add(self)
        if wait:
            try:
                wait_for_socket(self.ctl_socket, timeout, self.proc)
                wait_for_port(self.smtp_host, self.smtp_port, timeout, self.proc, smtp=True)
                if not quiet:
                    def ready():
                        if self.proc.poll() is not None:
                            raise RuntimeError("sluiced exited with %s" % self.proc.returncode)
                        return self.stderr().count(self.READY) > readies
                    wait_for(ready, timeout, what="sluiced's ready line")
            except (RuntimeError, TimeoutError) as e:
                self.kill9()
                raise RuntimeError("sluiced did not start: %s\n--- stderr ---\n%s"
                                   % (e, self.stderr()))
        return self

    def wait(self, timeout=60):
        """Wait for the process to exit; returns (and records) its exit code."""
        self.exit_code = self.proc.wait(timeout=timeout)
        _running.discard(self)
        self._err.close()
        return self.exit_code

    def stop(self, timeout=60, check=True):
        """SIGTERM and wait. With check, raise AssertionError when the exit
        code is not 0 or a sanitizer reported an error. Returns the code."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None and self.exit_code is None:
                self.wait()
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise AssertionError("sluiced did not stop within %ds after SIGTERM\n%s"
                                     % (timeout, self.stderr()))
        if check:
            self.check_clean_exit()
        return self.exit_code

    def kill9(self):
        """SIGKILL (a crash, for recovery tests) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.wait(timeout=30)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def check_clean_exit(self):
        """Raise AssertionError unless the daemon exited 0 with no sanitizer
        report in its stderr."""
        bad = sanitizer_errors(self.stderr())
        if self.exit_code != 0 or bad:
            raise AssertionError("sluiced exit code %s%s\n--- stderr ---\n%s"
                                 % (self.exit_code, " (sanitizer report)" if bad else "",
                                    self.stderr()[-20000:]))

    def cleanup(self):
        """Kill if still running, give back the reserved ports and remove the
        directory if it was ours."""
        if self.running():
            self.kill9()
        release_port(self.smtp_port, self.smtp_host)
        release_port(self.closed_port)
        if self._own_dir and not keep_tmp():
            shutil.rmtree(self.dir, ignore_errors=True)

    def close(self):
        """The end of a test (addCleanup(d.close)): a daemon still running is
        stopped with SIGTERM and must exit 0 without a sanitizer report
        (AssertionError otherwise); then cleanup(). A daemon the test killed
        on purpose (kill9) is left as it is."""
        try:
            if self.running():
                self.stop(check=True)
        finally:
            self.cleanup()

    def __enter__(self):
        if not self.running():
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.running():
                # Check the exit only when the body passed: a failing test's
                # own error is more useful than a follow-on one.
                self.stop(check=exc_type is None)
            elif exc_type is None and self.exit_code is not None:
                self.check_clean_exit()
        finally:
            self.cleanup()

    # -- what the daemon says

    def stderr(self):
        """Everything sluiced wrote to stdout/stderr (the operational log)."""
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def ctl(self, *args, json=False, user=None, timeout=60):
        """Run sluicectl against this daemon; see sluicectl()."""
        return sluicectl(self.ctl_socket, *args, json=json, user=user, timeout=timeout)

    def request(self, request, timeout=10):
        """One raw control request (dict or line) -> parsed answer."""
        return ctl_request(self.ctl_socket, request, timeout)

    def status(self):
        """The status answer as a dict (raises if the command failed)."""
        r = self.request({"cmd": "status"})
        if not r or not r.get("ok"):
            raise AssertionError("status failed: %r" % (r,))
        return r

    def list(self, limit=0):
        """The list answer as a dict: {"ok", "messages": [...], "total"}."""
        req = {"cmd": "list"}
        if limit:
            req["limit"] = limit
        return self.request(req, timeout=30)

    def wait_queue(self, messages, timeout=30):
        """Wait until the queue holds exactly this many messages."""
        wait_for(lambda: self.status()["queue"]["messages"] == messages, timeout,
                 what="%d messages in the queue" % messages)

    def smtp(self, timeout=30, **kw):
        """An smtplib.SMTP connected to the daemon's reception port."""
        return smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=timeout, **kw)

    def swaks(self, to="user@example.test", from_="sender@example.com", args=(), timeout=60):
        """swaks() against this daemon's reception port."""
        return swaks(self.smtp_port, to=to, from_=from_, server=self.smtp_host, args=args,
                     timeout=timeout)

    def accounting(self):
        """Every accounting record (JSON lines in acct_dir, all files,
        oldest file first) as a list of dicts."""
        recs = []
        if not os.path.isdir(self.acct_dir):
            return recs
        files = sorted((n for n in os.listdir(self.acct_dir) if not n.endswith(".csv")),
                       key=lambda n: os.path.getmtime(os.path.join(self.acct_dir, n)))
        for name in files:
            with open(os.path.join(self.acct_dir, name), errors="replace") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        recs.append(jsonlib.loads(line))
        return recs


# ------------------------------------------------------------------ raw SMTP

class RawClient:
    """A raw SMTP client socket (from a chosen loopback source address),
    for pipelining, malformed input and misbehaving clients."""

    def __init__(self, port, src="127.0.0.1", timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(src, 0))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def reply(self):
        """One complete reply: (code, text) or (None, "") at EOF."""
        lines = []
        while True:
            while b"\n" not in self.buf:
                d = self.sock.recv(65536)
                if not d:
                    return (None, b"".join(lines).decode(errors="replace"))
                self.buf += d
            line, _, self.buf = self.buf.partition(b"\n")
            lines.append(line + b"\n")
            if len(line) < 4 or line[3:4] != b"-":
                return (int(line[:3]) if line[:3].isdigit() else -1,
                        b"".join(lines).decode(errors="replace"))

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def wait_close(self, timeout):
        """Read until EOF; returns (seconds waited, everything read)."""
        t0 = time.monotonic()
        self.sock.settimeout(0.5)
        got = self.buf
        while time.monotonic() - t0 < timeout:
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not d:
                break
            got += d
        return time.monotonic() - t0, got

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------------ DNS

class Dnsmasq:
    """dnsmasq on 127.0.0.1:<free UDP port> that never forwards
    (--no-resolv, --no-hosts): it knows only the records in opts
    ("--mx-host=...", "--txt-record=...", "--host-record=...";
    "--local=/test/" makes every other .test name NXDOMAIN). Point sluiced
    at it with delivery.resolvers = "127.0.0.1:PORT". restart(*opts)
    serves new records on the same port."""

    def __init__(self, *opts):
        self.proc = None
        # The port is free when we look and may be taken before dnsmasq
        # binds it (another test's process): dnsmasq then exits 2 at once,
        # and we try another port.
        for attempt in range(5):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            s.close()
            try:
                self.start(*opts)
                return
            except RuntimeError:
                if attempt == 4 or self.proc.returncode != 2:
                    raise

    def start(self, *opts):
        self.proc = _spawn(
            ["dnsmasq", "--no-daemon", "--port=%d" % self.port, "--listen-address=127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts", "--log-facility=-"] + list(opts),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers():
            if self.proc.poll() is not None:
                raise RuntimeError("dnsmasq exited: %s" % self.proc.returncode)
            return udp_dns_answers(self.port)
        wait_for(answers, 10, what="dnsmasq on port %d" % self.port)

    def restart(self, *opts):
        self.stop()
        self.start(*opts)

    def stop(self):
        if self.proc is not None:
            _reap(self.proc)


class NetNs:
    """A private network namespace with nothing in it but a loopback
    interface (up): a test that needs a fixed port, e.g. the default
    configuration's 127.0.0.1:2525, gets it there whatever else runs on
    this machine, and nothing inside reaches the network. Needs root.
    cmd(args) is args run inside it (nsenter); Unix sockets (the control
    socket) are files and work from outside as usual. stop() ends it."""

    def __init__(self):
        require_root("a private network namespace (unshare --net)")
        self.proc = _spawn(["unshare", "--net", "--", "sh", "-c",
                            "ip link set lo up && exec sleep 3600"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("unshare --net failed: %s" % self.proc.stderr.read().decode())
            with open("/proc/%d/comm" % self.proc.pid) as f:
                return f.read().strip() == "sleep"  # lo is up
        wait_for(ready, 10, what="the network namespace")
        self.path = "/proc/%d/ns/net" % self.proc.pid

    def cmd(self, args):
        return ["nsenter", "--net=" + self.path, "--"] + [str(a) for a in args]

    def stop(self):
        _reap(self.proc)
        self.proc.stderr.close()


def udp_dns_answers(port):
    """True when a DNS server answers (any answer) a query on 127.0.0.1:port."""
    q = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
         b"\x01a\x04test\x00\x00\x01\x00\x01")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(q, ("127.0.0.1", port))
            return s.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


# ------------------------------------------------------------------ the sink

class Sink:
    """One sluice-sink storing every message (--store) on 127.0.0.1.

    args: extra sink arguments (e.g. "--no-starttls", "--tls-generate", DIR).
    port: 0 = any free port (read back from --port-file), or a port of
    free_port(). Attributes: dir, store, port, proc. stop() ends it (SIGTERM),
    fails unless it exited 0 without a sanitizer report, and removes dir
    (unless SLUICE_KEEP_TMP=1). In a unittest: self.addCleanup(sink.stop)."""

    def __init__(self, *args, port=0, prefix="sink-"):
        self.dir = make_tmpdir(prefix)
        self.store = os.path.join(self.dir, "store")
        port_file = os.path.join(self.dir, "port")
        self.errf = open(os.path.join(self.dir, "stderr"), "w+")
        cmd = [SINK, "-l", "127.0.0.1:%d" % port, "--port-file", port_file, "--store",
               self.store, "--hostname", "sink.test"] + list(args)
        self.proc = _spawn(cmd, stdout=subprocess.DEVNULL, stderr=self.errf)
        self.exit_code = None

        def ready():
            if self.proc.poll() is not None:
                self.errf.seek(0)
                raise RuntimeError("sink exited %s: %s" % (self.proc.returncode,
                                                           self.errf.read()[-2000:]))
            if not os.path.exists(port_file):
                return False
            with open(port_file) as f:
                return f.read().strip()
        wait_for(ready, 10, what="sink port file")
        with open(port_file) as f:
            self.port = int(f.readline())

    def messages(self):
        """[(envelope dict, raw bytes)] of every stored message, by seq."""
        out = []
        for j in glob.glob(os.path.join(self.store, "*.json")):
            eml = j[:-5] + ".eml"
            if not os.path.exists(eml):
                continue
            try:
                with open(j) as f:
                    env = jsonlib.load(f)
            except ValueError:
                continue  # being written
            with open(eml, "rb") as f:
                out.append((env, f.read()))
        out.sort(key=lambda m: m[0]["seq"])
        return out

    def rcpts(self):
        """Every envelope recipient of the stored messages."""
        out = []
        for env, _ in self.messages():
            rc = env.get("rcpts") or env.get("rcpt") or []
            out.extend(rc if isinstance(rc, list) else [rc])
        return out

    def wait_messages(self, n, timeout=30):
        """Wait until at least n messages are stored; returns messages()."""
        return wait_for(lambda: len(self.messages()) >= n and self.messages(), timeout,
                        what="%d messages at the sink" % n)

    def stop(self, check=True):
        """SIGTERM and wait (idempotent). With check, AssertionError unless
        it exited 0 with no sanitizer report in its stderr."""
        if self.exit_code is None:
            self.exit_code = _reap(self.proc)
            self.errf.seek(0)
            self._err_text = self.errf.read()
            self.errf.close()
            if not keep_tmp():
                shutil.rmtree(self.dir, ignore_errors=True)
        bad = sanitizer_errors(self._err_text)
        if check and (self.exit_code != 0 or bad):
            raise AssertionError("sluice-sink exited %s%s\n%s" % (
                self.exit_code, " (sanitizer report)" if bad else "", self._err_text[-5000:]))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop(check=exc_type is None)


# ------------------------------------------------------------------ a peer we did not write

PEER = os.path.join(HERE, "peer_smtp.py")


def make_cert(directory, cn="peer.test"):
    """A self-signed RSA certificate and key for cn, made with the openssl
    command line in directory. Returns (cert_path, key_path)."""
    cert = os.path.join(directory, cn + ".crt")
    key = os.path.join(directory, cn + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + cn, "-addext", "subjectAltName=DNS:" + cn,
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


class Peer:
    """A receiving SMTP server we did not write: aiosmtpd (Debian's
    python3-aiosmtpd) run by tests/e2e/peer_smtp.py under /usr/bin/python3.

    Keyword switches map to peer_smtp.py's options (see its docstring):
    pipelining=True, no_8bitmime=True, smtputf8=True, dsn=True, size=N,
    no_size=True, starttls=True (a fresh self-signed certificate),
    starttls_reply, ehlo_reply, greeting, greeting_delay=SECONDS, mail_reply,
    data_reply, data_no_rcpts,
    hangup_in_data=N, wire=True, rcpt_reply=[...], eom_reply=[...], eom_delay=["GLOB=SECS"],
    reply_encoding="latin-1" (raw bytes 0x80-0xFF in replies),
    max_rcpts="N[:TEXT]". Attributes: dir, port, proc. stop() checks that
    it exited 0."""

    def __init__(self, prefix="peer-", **kw):
        self.dir = make_tmpdir(prefix)
        self.out = os.path.join(self.dir, "out")
        port_file = os.path.join(self.dir, "port")
        cmd = ["/usr/bin/python3", PEER, "--port-file", port_file, "--out", self.out]
        for k, v in kw.items():
            opt = "--" + k.replace("_", "-")
            if k == "starttls" and v is True:
                cert, key = make_cert(self.dir)
                cmd += [opt, "%s:%s" % (cert, key)]
            elif v is True:
                cmd.append(opt)
            elif v is False or v is None:
                continue
            elif isinstance(v, (list, tuple)):
                for x in v:
                    cmd += [opt, str(x)]
            else:
                cmd += [opt, str(v)]
        self.cmd = cmd
        self.errf = open(os.path.join(self.dir, "stderr"), "w+")
        self.proc = _spawn(cmd, stdout=subprocess.DEVNULL, stderr=self.errf)

        def ready():
            if self.proc.poll() is not None:
                self.errf.seek(0)
                raise RuntimeError("peer_smtp.py exited %s: %s" % (self.proc.returncode,
                                                                  self.errf.read()[-2000:]))
            return os.path.exists(port_file)
        wait_for(ready, 15, what="peer_smtp.py port file")
        with open(port_file) as f:
            self.port = int(f.readline())

    def messages(self):
        """[(record dict, raw content bytes)] in arrival order."""
        out = []
        path = os.path.join(self.out, "messages.jsonl")
        if not os.path.exists(path):
            return out
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                rec = jsonlib.loads(line)
                with open(os.path.join(self.out, rec["file"]), "rb") as m:
                    out.append((rec, m.read()))
        return out

    def events(self):
        """Connection opened/closed and every 4xx/5xx reply sent, in order."""
        path = os.path.join(self.out, "events.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [jsonlib.loads(l) for l in f if l.endswith("\n")]

    def rcpts(self):
        return [r["addr"] for rec, _ in self.messages() for r in rec["rcpts"]]

    def wait_messages(self, n, timeout=30):
        return wait_for(lambda: len(self.messages()) >= n and self.messages(), timeout,
                        what="%d messages at the aiosmtpd peer" % n)

    def wires(self):
        """With wire=True: every connection's client-to-server bytes, raw."""
        out = []
        for p in sorted(glob.glob(os.path.join(self.out, "wire-*.bin")),
                        key=lambda p: int(re.search(r"(\d+)\.bin$", p).group(1))):
            with open(p, "rb") as f:
                out.append(f.read())
        return out

    def stop(self, check=True):
        if not self.errf.closed:
            _reap(self.proc)
            self.errf.seek(0)
            self._err_text = self.errf.read()
            self.errf.close()
            if not keep_tmp():
                shutil.rmtree(self.dir, ignore_errors=True)
        rc = self.proc.returncode
        if check and rc != 0:
            raise AssertionError("peer_smtp.py exited %s: %s" % (rc, self._err_text[-2000:]))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop(check=exc_type is None)


def cleartext_after_starttls(wire):
    """What a client sent in the clear after its STARTTLS command: b"" when
    everything after "STARTTLS\\r\\n" is TLS records (content types 20..23,
    version 3.x), else the first bytes that are not. A client that writes a
    command to the socket instead of through TLS shows up here."""
    i = wire.upper().find(b"STARTTLS\r\n")
    if i < 0:
        return b""
    p = i + len(b"STARTTLS\r\n")
    while p < len(wire):
        if p + 5 > len(wire):
            return wire[p:]
        ctype, major = wire[p], wire[p + 1]
        if ctype not in (20, 21, 22, 23) or major != 3:
            return wire[p:p + 200]
        p += 5 + int.from_bytes(wire[p + 3:p + 5], "big")
    return b""


# ------------------------------------------------------------------ reception: hostile clients
# (test_smuggling.py, test_reception_limits.py)

def strip_received(raw):
    """The message without its first header field (the daemon's Received,
    continuation lines included)."""
    assert raw.startswith(b"Received:"), raw[:80]
    i = raw.index(b"\r\n") + 2
    while raw[i:i + 1] in (b" ", b"\t"):
        i = raw.index(b"\r\n", i) + 2
    return raw[i:]


def bare_line_ends(data):
    """Offsets of every bare CR (not followed by LF) and bare LF (not
    preceded by CR) in data: [] when every line ends with CRLF."""
    out = []
    for m in re.finditer(rb"\r(?!\n)|(?<!\r)\n", data):
        out.append(m.start())
    return out


def rss_anon_kib(pid):
    """RssAnon of a process, in KiB (its own heap: what a leak or an
    unbounded queue grows; VmRSS also counts LMDB's mapped spool)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/%d/status" % pid)


def release_sluiced():
    """The release build's sluiced ($SLUICE_RELEASE_BUILD, which `make test`
    builds), or None. Memory measurements use it: ASan's quarantine and
    shadow memory blur RssAnon."""
    rel = os.environ.get("SLUICE_RELEASE_BUILD")
    p = os.path.join(rel, "core/server/sluiced") if rel else None
    return p if p and os.access(p, os.X_OK) else None


# ------------------------------------------------------------------ operator surfaces (opsb)
# What operators and their tools read: the accounting log, the control
# socket's JSON, sluicectl's output. Checked byte for byte, with a strict
# JSON reader (tests/e2e/test_surfaces.py, test_records.py, test_metrics.py).

# Bytes a terminal acts on: C0 controls but "\n", DEL; C1 (U+0080-U+009F)
# and bidi controls once decoded.
TTY_CONTROL_BYTES = set(range(0x00, 0x20)) - {0x0A} | {0x7F}
TTY_CONTROL_CHARS = re.compile("[\u0080-\u009f\u2028-\u202e\u2066-\u2069]")


def strict_json(raw):
    """Parse one JSON text (bytes) as a strict reader does: valid UTF-8
    (raises UnicodeDecodeError), no raw control byte or DEL anywhere (JSON
    forbids them in strings; json.loads' strict mode misses DEL), no NaN /
    Infinity, no duplicate key. Returns the value; raises ValueError."""
    if isinstance(raw, str):
        raw = raw.encode()
    text = raw.decode("utf-8", errors="strict")
    bad = sorted({b for b in raw.rstrip(b"\n") if b < 0x20 or b == 0x7F})
    if bad:
        raise ValueError("raw control bytes %r in %r" % (bad, raw[:300]))

    def pairs(kv):
        keys = [k for k, _ in kv]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key in %r" % keys)
        return dict(kv)

    def no_const(name):
        raise ValueError("%s is not JSON" % name)
    return jsonlib.loads(text, object_pairs_hook=pairs, parse_constant=no_const, strict=True)


def acct_raw_lines(acct_dir):
    """Every line (bytes, without "\\n") of every accounting file, oldest
    file first."""
    out = []
    if not os.path.isdir(acct_dir):
        return out
    names = sorted((n for n in os.listdir(acct_dir) if not n.endswith(".csv")),
                   key=lambda n: os.path.getmtime(os.path.join(acct_dir, n)))
    for name in names:
        with open(os.path.join(acct_dir, name), "rb") as f:
            data = f.read()
        out.extend(l for l in data.split(b"\n") if l)
    return out


def ctl_raw(socket_path, request, timeout=30):
    """One control request (dict) on a fresh connection; the answer line as
    the daemon wrote it (bytes, without "\\n")."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(jsonlib.dumps(request).encode() + b"\n")
        got = b""
        while not got.endswith(b"\n"):
            d = s.recv(65536)
            if not d:
                break
            got += d
    return got.rstrip(b"\n")


def run_bytes(args, timeout=60, user=None, env=None):
    """Like run(), with stdout and stderr kept as bytes (a terminal gets
    bytes: whatever sluicectl prints is checked before any decoding)."""
    args = [str(a) for a in args]
    if user is not None:
        args = ["setpriv", "--reuid=" + user, "--regid=nogroup", "--clear-groups"] + args
    p = subprocess.run(args, capture_output=True, timeout=timeout, env=env)
    return Result(args, p.returncode, p.stdout, p.stderr)


def tty_unsafe(data):
    """What in data (bytes a program printed) a terminal would act on or
    cannot show: [] when it is valid UTF-8 without control bytes (but
    newlines), C1 or bidi controls."""
    bad = []
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        bad.append("invalid UTF-8 at %d: %r" % (e.start, data[max(0, e.start - 20):e.start + 20]))
        text = data.decode("utf-8", errors="replace")
    for i, b in enumerate(data):
        if b in TTY_CONTROL_BYTES:
            bad.append("control byte 0x%02x at %d: %r" % (b, i, data[max(0, i - 20):i + 20]))
    for m in TTY_CONTROL_CHARS.finditer(text):
        bad.append("control character U+%04X: %r" % (ord(m.group()), text[m.start() - 20:m.end() + 20]))
    return bad


def unix_time(value):
    """A point in time of our JSON (RFC 3339 UTC, "2026-11-27T10:15:30.123Z",
    docs/records.md) as unix seconds (float); None stays None."""
    if value is None:
        return None
    import datetime
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


# ------------------------------------------------------------------ wire: sluice's SMTP client
# against receivers we did not write (tests/e2e/test_peers*.py)

WIRE_QUEUE = ('queue {\n    retry = "1s,1s,2s";\n    retry_jitter = 0;\n'
              '    scan_interval = 100ms;\n}\n')


def wire_daemon(routes, delivery="", extra_conf="", smtp_extra="", log_level="info",
                map_size=None, by_mx=False):
    """A Daemon (not started) that routes each domain of routes (domain ->
    port on 127.0.0.1, or "host:port") with a fast retry schedule; delivery
    lines go inside delivery { }, extra_conf at the top level; map_size
    (e.g. "1G") replaces the spool's 64M; by_mx drops the smart host, so
    that other domains are routed by MX (set delivery.resolvers)."""
    r = {k: (v if isinstance(v, str) else "127.0.0.1:%d" % v) for k, v in routes.items()}
    d = Daemon(routes=r, log_level=log_level, smtp_extra=smtp_extra)
    text = d.default_conf(log_level, smtp_extra)
    text = text.replace("delivery {\n", "delivery {\n" + delivery, 1)
    if map_size:
        text = text.replace("map_size = 64M;", "map_size = %s;" % map_size, 1)
    if by_mx:
        text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "", text)
    with open(d.conf_path, "w") as f:
        f.write(text + WIRE_QUEUE + extra_conf)
    return d


def wire_message(frm, to, subject="wire test", body=b"Hello.\r\n", headers=b""):
    """A message (bytes, CRLF) with the usual fields, extra headers, body."""
    return (("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n"
             "Date: Fri, 27 Nov 2026 07:00:00 +0000\r\nMessage-ID: <%s@s.example>\r\n"
             % (frm, to, subject, re.sub(r"\W", "-", subject))).encode()
            + headers + b"\r\n" + body)


def wire_submit(d, rcpts, msg, frm="sender@s.example", mail_options=(), timeout=120):
    """Submit msg (bytes) to d over SMTP; mail_options e.g. ["BODY=8BITMIME"]."""
    with d.smtp(timeout=timeout) as c:
        c.ehlo()
        c.sendmail(frm, rcpts, msg, mail_options=list(mail_options))


def acct_records(d, type_=None, rcpt=None):
    """d's accounting records of one type (and recipient)."""
    return [r for r in d.accounting()
            if (type_ is None or r.get("type") == type_)
            and (rcpt is None or r.get("recipient") == rcpt)]


def wait_acct(d, type_, rcpt=None, n=1, timeout=30):
    """Wait for at least n accounting records of type_ (for rcpt)."""
    return wait_for(lambda: len(acct_records(d, type_, rcpt)) >= n and
                    acct_records(d, type_, rcpt), timeout,
                    what="%d %s record(s) for %s" % (n, type_, rcpt))


class PostfixSink:
    """Postfix's smtp-sink (/usr/sbin/smtp-sink), a receiver we did not
    write, storing each transaction in DIR/store/<n>.<random> (-d). args:
    extra options (e.g. "-8": no 8BITMIME, "-p": no PIPELINING).
    messages() returns the stored content of each complete file: smtp-sink
    writes lines with LF only, after its own X-* fields and a three-line
    Received field, and one empty line at the end."""

    def __init__(self, *args):
        self.dir = make_tmpdir("smtp-sink-")
        self.store = os.path.join(self.dir, "store")
        os.mkdir(self.store)
        os.chmod(self.store, 0o777)  # written by the user "nobody"
        self.errf = open(os.path.join(self.dir, "stderr"), "w+")
        for attempt in range(5):  # the port may be taken before smtp-sink binds it
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["/usr/sbin/smtp-sink", "-u", "nobody", "-d", self.store + "/%M.", *args,
                 "127.0.0.1:%d" % self.port, "100"],
                stdout=subprocess.DEVNULL, stderr=self.errf)
            try:
                wait_for(lambda: self.proc.poll() is not None or
                         tcp_connectable("127.0.0.1", self.port), 10, what="smtp-sink")
            except TimeoutError:
                pass
            if self.proc.poll() is None:
                return
        raise RuntimeError("smtp-sink did not start")

    def messages(self):
        """[(envelope dict, content bytes)] of the files whose transaction
        is complete (they end with the empty line), oldest first. envelope:
        {"helo", "mail" (the MAIL arguments), "rcpts" (RCPT arguments)}."""
        out = []
        paths = sorted(glob.glob(os.path.join(self.store, "*")), key=os.path.getmtime)
        for p in paths:
            with open(p, "rb") as f:
                data = f.read()
            head, sep, rest = data.partition(b"\nReceived: ")
            if not sep or not data.endswith(b"\n\n"):
                continue
            env = {"rcpts": []}
            for line in head.split(b"\n"):
                k, _, v = line.partition(b": ")
                if k == b"X-Helo-Args":
                    env["helo"] = v.decode()
                elif k == b"X-Mail-Args":
                    env["mail"] = v.decode()
                elif k == b"X-Rcpt-Args":
                    env["rcpts"].append(v.decode())
            # smtp-sink's Received: three lines, the last one its time stamp
            body = rest.split(b"\n", 3)[3]
            out.append((env, body[:-1]))
        return out

    def wait_messages(self, n, timeout=60):
        return wait_for(lambda: len(self.messages()) >= n and self.messages(), timeout,
                        what="%d messages at smtp-sink" % n)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errf.close()
        if not keep_tmp():
            shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ routing and DSNs
# (the routing/DSN area: FakeDns for answers dnsmasq cannot give, and
# check_dsn, the RFC 3464 checker every test that receives a DSN calls)

class FakeDns:
    """A small authoritative DNS server on 127.0.0.1:<free UDP port> (a
    thread), for answers dnsmasq cannot give: a null MX or two root MX,
    any TTL (0 included), NXDOMAIN or SERVFAIL for chosen names.

    records: {(name, type): [value, ...]}; type "MX" takes (pref, host) or
    (pref, host, ttl) (host "" is the root: (0, "") is a null MX); "A" and
    "AAAA" take "address" or ("address", ttl). nxdomain: names answered
    NXDOMAIN; servfail: names answered SERVFAIL. ttl: the TTL of records
    given without one; neg_ttl: the TTL (and minimum) of the SOA record in
    the authority section of NXDOMAIN and NODATA answers (RFC 2308). Any
    other question gets NOERROR without answers (NODATA).

    queries: every (name, type) asked, in order; count(name, type) counts
    them. stop() ends the thread and closes the socket.

    DNSSEC as a validating resolver shows it (DANE tests): "TLSA" takes
    (usage, selector, matching type, hex data); "TXT" takes a string.
    secure: zones (a name and every name under it) whose answers carry the
    AD bit - only to a query with the EDNS0 DO bit set, as unbound does;
    do_queries lists the (name, type) asked with DO."""

    TYPES = {1: "A", 2: "NS", 6: "SOA", 15: "MX", 16: "TXT", 28: "AAAA", 52: "TLSA"}

    def __init__(self, records=None, nxdomain=(), servfail=(), ttl=300, neg_ttl=300, secure=()):
        import threading
        self.secure = set(secure)
        self.do_queries = []
        self.records = dict(records or {})
        self.nxdomain = set(nxdomain)
        self.servfail = set(servfail)
        self.ttl, self.neg_ttl = ttl, neg_ttl
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def count(self, name, type_=None):
        """How many questions for name (of type_, any type when None)."""
        return sum(1 for n, t in list(self.queries) if n == name and (type_ is None or t == type_))

    @staticmethod
    def encode_name(name):
        out = b""
        for label in [l for l in name.split(".") if l]:
            out += bytes([len(label)]) + label.encode()
        return out + b"\x00"

    def _rdata(self, qtype, v):
        import struct
        if qtype == 15:
            return struct.pack(">H", v[0]) + self.encode_name(v[1])
        if qtype == 28:
            return socket.inet_pton(socket.AF_INET6, v)
        if qtype == 52:
            return bytes([v[0], v[1], v[2]]) + bytes.fromhex(v[3])
        if qtype == 16:
            raw = v.encode()
            return b"".join(bytes([len(raw[i:i + 255])]) + raw[i:i + 255]
                            for i in range(0, max(len(raw), 1), 255))
        return socket.inet_aton(v)

    def _is_secure(self, name):
        return any(name == z or name.endswith("." + z) for z in self.secure)

    @staticmethod
    def _do_bit(q, end):
        """The DO bit of the query's OPT record (after the question)."""
        import struct
        if struct.unpack(">H", q[10:12])[0] < 1 or len(q) < end + 11:
            return False
        rr = q[end:end + 11]
        return rr[0] == 0 and struct.unpack(">H", rr[1:3])[0] == 41 and bool(rr[7] & 0x80)

    def answer(self, q):
        """The reply to one query packet (bytes)."""
        import struct
        i, labels = 12, []
        while q[i] != 0:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode().lower())
            i += 1 + n
        name = ".".join(labels)
        qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
        tname = self.TYPES.get(qtype, qtype)
        self.queries.append((name, tname))
        do = self._do_bit(q, i + 5)
        if do:
            self.do_queries.append((name, tname))
        rcode = 3 if name in self.nxdomain else 2 if name in self.servfail else 0
        answers, count = b"", 0
        for v in self.records.get((name, tname), []) if rcode == 0 else []:
            ttl = self.ttl
            if qtype == 15 and len(v) == 3:
                ttl, v = v[2], v[:2]
            elif qtype not in (15, 52) and isinstance(v, tuple):
                v, ttl = v
            rdata = self._rdata(qtype, v)
            answers += b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, ttl, len(rdata)) + rdata
            count += 1
        auth, nauth = b"", 0
        if rcode == 3 or (rcode == 0 and count == 0):
            # RFC 2308: the SOA of the zone says how long the negative answer holds
            soa = (self.encode_name("ns.invalid") + self.encode_name("hostmaster.invalid") +
                   struct.pack(">IIIII", 1, 3600, 600, 86400, self.neg_ttl))
            auth = (b"\xc0\x0c" + struct.pack(">HHIH", 6, 1, self.neg_ttl, len(soa)) + soa)
            nauth = 1
        flags = 0x8400 | (struct.unpack(">H", q[2:4])[0] & 0x0100) | 0x0080 | rcode
        if do and rcode != 2 and self._is_secure(name):
            flags |= 0x0020  # AD: "validated" (RFC 4035 3.2.3)
        return (q[:2] + struct.pack(">HHHHH", flags, 1, count, nauth, 0) + question + answers +
                auth)

    def _serve(self):
        while not self.stopping:
            try:
                q, addr = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(q), addr)
            except Exception:
                pass

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


class DsnReport:
    """A DSN parsed by check_dsn(): msg (the email.message.Message),
    human (the text/plain part, str), report_type (the second part's
    content type), per_message (dict: field name in lower case -> value),
    recipients (list of such dicts, one per recipient block), returned
    (the third part's payload as bytes, or None) and returned_type."""

    def __init__(self, msg, human, report_type, per_message, recipients, returned,
                 returned_type):
        self.msg, self.human, self.report_type = msg, human, report_type
        self.per_message, self.recipients = per_message, recipients
        self.returned, self.returned_type = returned, returned_type

    def recipient(self, addr):
        """The block whose Final-Recipient is addr (raises KeyError)."""
        for r in self.recipients:
            if r["final-recipient"].split(";", 1)[1].strip().lower() == addr.lower():
                return r
        raise KeyError(addr)


def _dsn_fields(block):
    """'Name: value' lines (with folded continuations) -> ordered dict with
    lower-case names; a repeated field is an error (RFC 3464 2.1)."""
    fields, last = {}, None
    for line in block.split("\n"):
        line = line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t":
            if last is None:
                raise AssertionError("DSN: continuation line without a field: %r" % line)
            fields[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not re.match(r"^[A-Za-z0-9-]+$", name):
            raise AssertionError("DSN: not a header field: %r" % line)
        last = name.lower()
        if last in fields:
            raise AssertionError("DSN: field %s given twice in a block" % name)
        fields[last] = value.strip()
    return fields


def _dsn_typed(value, what):
    """'type; text' (RFC 3464 2.1.2 / 2.3.x): check the form, return (type, text)."""
    typ, sep, text = value.partition(";")
    if not sep or not re.match(r"^[A-Za-z0-9-]+$", typ.strip()) or not text.strip():
        raise AssertionError("DSN: %s is not 'type; value': %r" % (what, value))
    return typ.strip().lower(), text.strip()


def check_dsn(raw, ret=None):
    """Parse a DSN as received (bytes) with Python's email package and check
    it against RFC 3464 (RFC 6533 for message/global-delivery-status, RFC
    6522 for multipart/report, RFC 3834 Auto-Submitted); raise
    AssertionError naming what is wrong, else return a DsnReport.

    Checked: multipart/report; report-type=delivery-status with a
    text/plain first part, a message/delivery-status (7-bit) or
    message/global-delivery-status second part and an optional third part
    (text/rfc822-headers, message/rfc822, message/global-headers or
    message/global); per message: Reporting-MTA and Arrival-Date; per
    recipient: Final-Recipient, Action (failed, delayed, delivered,
    relayed, expanded) and Status (class 2 for delivered/relayed/expanded,
    4 or 5 for failed, 4 for delayed), and the form of Original-Recipient,
    Remote-MTA, Diagnostic-Code, Last-Attempt-Date when present. With ret
    ("full" or "hdrs"), the third part must be the whole message or its
    headers only."""
    import email
    import email.utils
    from email import policy
    if isinstance(raw, str):
        raw = raw.encode()
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    if msg.defects:
        raise AssertionError("DSN: MIME defects: %r" % msg.defects)
    for h in ("From", "To", "Date", "Subject", "Message-ID"):
        if msg.get(h) is None:
            raise AssertionError("DSN: no %s header" % h)
    if email.utils.parsedate_tz(msg["Date"]) is None:
        raise AssertionError("DSN: Date does not parse: %r" % msg["Date"])
    if (msg.get("Auto-Submitted") or "").lower() != "auto-replied":
        raise AssertionError("DSN: Auto-Submitted is not auto-replied (RFC 3834)")
    if msg.get_content_type() != "multipart/report":
        raise AssertionError("DSN: content type %s" % msg.get_content_type())
    if (msg.get_param("report-type") or "").lower() != "delivery-status":
        raise AssertionError("DSN: report-type is %r" % msg.get_param("report-type"))
    parts = msg.get_payload()
    if not isinstance(parts, list) or len(parts) not in (2, 3):
        raise AssertionError("DSN: %s parts, wanted 2 or 3" % (
            len(parts) if isinstance(parts, list) else "no"))
    if parts[0].get_content_type() != "text/plain":
        raise AssertionError("DSN: first part is %s" % parts[0].get_content_type())
    human = parts[0].get_payload(decode=True).decode("utf-8", "replace")
    report_type = parts[1].get_content_type()
    if report_type not in ("message/delivery-status", "message/global-delivery-status"):
        raise AssertionError("DSN: second part is %s" % report_type)
    # the report's text exactly as sent: between the part's blank line and
    # the next boundary
    boundary = msg.get_boundary()
    chunks = raw.split(b"\r\n--" + boundary.encode())
    body = chunks[2] if len(chunks) > 2 else b""
    body = body.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in body else b""
    if report_type == "message/delivery-status" and any(c > 127 for c in body):
        raise AssertionError("DSN: 8-bit text in message/delivery-status (RFC 6533 wants "
                             "message/global-delivery-status)")
    blocks = [b for b in re.split(r"\r?\n\r?\n", body.decode("utf-8")) if b.strip()]
    if len(blocks) < 2:
        raise AssertionError("DSN: %d blocks in the report, wanted per-message + recipients"
                             % len(blocks))
    per_message = _dsn_fields(blocks[0])
    if "reporting-mta" not in per_message:
        raise AssertionError("DSN: no Reporting-MTA")
    _dsn_typed(per_message["reporting-mta"], "Reporting-MTA")
    if "arrival-date" not in per_message:
        raise AssertionError("DSN: no Arrival-Date")
    if email.utils.parsedate_tz(per_message["arrival-date"]) is None:
        raise AssertionError("DSN: Arrival-Date does not parse")
    recipients = []
    for b in blocks[1:]:
        f = _dsn_fields(b)
        for need in ("final-recipient", "action", "status"):
            if need not in f:
                raise AssertionError("DSN: recipient block without %s: %r" % (need, f))
        _dsn_typed(f["final-recipient"], "Final-Recipient")
        if "original-recipient" in f:
            _dsn_typed(f["original-recipient"], "Original-Recipient")
        action = f["action"].lower()
        m = re.match(r"^([245])\.\d{1,3}\.\d{1,3}$", f["status"])
        if not m:
            raise AssertionError("DSN: Status %r is not an RFC 3463 code" % f["status"])
        want = {"failed": "45", "delayed": "4", "delivered": "2", "relayed": "2",
                "expanded": "2"}.get(action)
        if want is None:
            raise AssertionError("DSN: Action %r" % f["action"])
        if m.group(1) not in want:
            raise AssertionError("DSN: Action %s with Status %s" % (action, f["status"]))
        if "remote-mta" in f:
            _dsn_typed(f["remote-mta"], "Remote-MTA")
        if "diagnostic-code" in f:
            _dsn_typed(f["diagnostic-code"], "Diagnostic-Code")
        if "last-attempt-date" in f and email.utils.parsedate_tz(f["last-attempt-date"]) is None:
            raise AssertionError("DSN: Last-Attempt-Date does not parse")
        recipients.append(f)
    returned, returned_type = None, None
    if len(parts) == 3:
        returned_type = parts[2].get_content_type()
        kinds = {"text/rfc822-headers": "hdrs", "message/global-headers": "hdrs",
                 "message/rfc822": "full", "message/global": "full"}
        if returned_type not in kinds:
            raise AssertionError("DSN: third part is %s" % returned_type)
        tail = chunks[3] if len(chunks) > 3 else b""
        returned = tail.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in tail else b""
        if ret is not None and kinds[returned_type] != ret:
            raise AssertionError("DSN: returned %s, wanted RET=%s" % (returned_type, ret))
        if kinds[returned_type] == "hdrs" and b"\r\n\r\n" in returned.rstrip(b"\r\n"):
            raise AssertionError("DSN: returned headers carry a body")
    elif ret is not None:
        raise AssertionError("DSN: nothing returned, wanted RET=%s" % ret)
    return DsnReport(msg, human, report_type, per_message, recipients, returned, returned_type)


# ------------------------------------------------------------------ deploy (issue 13)
# The installed tree and the service manager's side of sluiced, for
# tests/e2e/test_install.py and test_service.py: `cmake --install` of the
# build tree into a DESTDIR, and a stand-in for systemd's notification
# socket (sd_notify, the Type=notify protocol).

def install_tree(destdir, component=None, prefix="/usr", build=None):
    """cmake --install of the build tree (SLUICE_BUILD) into destdir (as
    DESTDIR) with prefix; only component ("sluice", "bench") when given.
    Raises AssertionError if it fails; returns the Result."""
    args = ["cmake", "--install", build or BUILD, "--prefix", prefix]
    if component:
        args += ["--component", component]
    return run(args, timeout=120, env=dict(os.environ, DESTDIR=destdir)).check()


class NotifySocket:
    """systemd's end of sd_notify(3): an AF_UNIX datagram socket at
    directory/notify.sock. Give the daemon env() (NOTIFY_SOCKET); wait()
    returns the next message that has KEY (=value), as a dict of its
    KEY=VALUE lines. Every message received is kept in messages, in order."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)  # as systemd's: a daemon that dropped root sends too
        self.messages = []
        self._next = 0

    def env(self, base=None):
        return dict(base if base is not None else os.environ, NOTIFY_SOCKET=self.path)

    def _recv(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        data = self.sock.recv(65536)
        msg = {}
        for line in data.decode("utf-8", "replace").split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                msg[k] = v
        self.messages.append(msg)
        return msg

    def wait(self, key, value=None, timeout=30.0):
        """The next message (after those already returned) with key, and
        value if given; raises TimeoutError naming what it got instead."""
        deadline = time.monotonic() + timeout
        while True:
            while self._next < len(self.messages):
                m = self.messages[self._next]
                self._next += 1
                if key in m and (value is None or m[key] == value):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %s%s from the daemon within %.0fs; got %r"
                                   % (key, "" if value is None else "=" + value, timeout,
                                      self.messages))
            try:
                self._recv(left)
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------ the HTTP API (#16)

HTTP_TOKENS = {  # token -> scopes, hashed into http.tokens by http_conf()
    "tok-inject-0123456789abcdef": "inject",
    "tok-read-0123456789abcdef": "read",
    "tok-admin-0123456789abcdef": "admin",
    "tok-all-0123456789abcdef": "inject,admin",
}


def http_conf(port, extra="", tokens=None):
    """An http { } block listening on 127.0.0.1:port with HTTP_TOKENS (or
    tokens) stored as SHA-256, plus extra lines inside the block."""
    import hashlib
    toks = HTTP_TOKENS if tokens is None else tokens
    lines = "".join('        t%d = "%s:%s";\n' % (i, sc, hashlib.sha256(t.encode()).hexdigest())
                    for i, (t, sc) in enumerate(sorted(toks.items())))
    return ('http {\n    listen = "127.0.0.1:%d";\n%s    tokens {\n%s    }\n}\n'
            % (port, extra, lines))


def http_call(port, method, path, body=None, token=None, ctype="application/json",
              headers=None, timeout=60, host="127.0.0.1", tls_context=None):
    """One request with http.client: returns (status, {header: value}
    lower-cased, body bytes). body: a dict/list (sent as JSON), str or
    bytes. token: a bearer token (or None)."""
    import http.client
    if isinstance(body, (dict, list)):
        body = jsonlib.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = "Bearer " + token
    if body is not None and ctype is not None:
        hdrs["Content-Type"] = ctype
    if tls_context is not None:
        c = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls_context)
    else:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def http_json(port, method, path, body=None, token=None, **kw):
    """http_call() whose answer is JSON: (status, headers, parsed body)."""
    s, h, data = http_call(port, method, path, body, token, **kw)
    return s, h, jsonlib.loads(data) if data else None

# ------------------------------------------------------------------ events: webhooks (#14)

class WebhookReceiver:
    """An HTTPS endpoint for sluice's webhooks on 127.0.0.1 (Python's
    http.server with ssl, HTTP/1.1 keep-alive), with its own certificate
    (IP SAN 127.0.0.1; the file is also the CA sluice is given: ca_file).

    Each POST is checked: Content-Type, X-Sluice-Timestamp, and
    X-Sluice-Signature "v1=" + HMAC-SHA256(secret, timestamp + "." + body)
    as docs/events.md says a receiver must; a bad signature is answered 401
    and counted in bad_signatures. Then it answers as told: status (200 by
    default; set_status(500) fails every request until set back),
    retry_after (a Retry-After header with the answer), delay (seconds
    before answering). Every request is kept in requests as a dict: time,
    status answered, sequence (first, last) from X-Sluice-Sequence,
    records (the parsed JSON array), connection (the client's port: keep-
    alive shows as one port for many requests), replay (X-Sluice-Replay,
    None when absent: `events replay`)."""

    def __init__(self, secret):
        import http.server
        import ssl
        import threading
        self.secret = secret.encode()
        self.dir = make_tmpdir("webhook-")
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext",
                        "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-keyout", self.key, "-out", self.cert], check=True,
                       capture_output=True)
        self.lock = threading.Lock()
        self.requests = []
        self.bad_signatures = 0
        self.status = 200
        self.retry_after = None
        self.delay = 0.0
        self.fail_next = []  # statuses for the next requests, one each, before status
        recv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                ts = self.headers.get("X-Sluice-Timestamp", "")
                sig = self.headers.get("X-Sluice-Signature", "")
                want = "v1=" + hmac.new(recv.secret, ts.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
                seq = self.headers.get("X-Sluice-Sequence", "0-0").split("-")
                ok_sig = (hmac.compare_digest(sig, want) and ts.isdigit()
                          and abs(time.time() - int(ts)) < 300
                          and self.headers.get("Content-Type") == "application/json")
                with recv.lock:
                    if not ok_sig:
                        recv.bad_signatures += 1
                        status = 401
                    elif recv.fail_next:
                        status = recv.fail_next.pop(0)
                    else:
                        status = recv.status
                    retry_after = recv.retry_after
                    delay = recv.delay
                if delay:
                    time.sleep(delay)
                try:
                    records = jsonlib.loads(body)
                except ValueError:
                    records = None
                with recv.lock:
                    recv.requests.append({"time": time.time(), "status": status,
                                          "sequence": (int(seq[0]), int(seq[1])),
                                          "records": records,
                                          "webhook": self.headers.get("X-Sluice-Webhook"),
                                          "replay": self.headers.get("X-Sluice-Replay"),
                                          "connection": self.client_address[1]})
                out = b"ok" if status < 300 else b"no"
                self.send_response(status)
                if retry_after is not None and status >= 300:
                    self.send_header("Retry-After", str(retry_after))
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client killed mid-request (the kill -9 test): not news

        self.httpd = Server(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = "https://127.0.0.1:%d/hook" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def set_status(self, status, retry_after=None):
        with self.lock:
            self.status = status
            self.retry_after = retry_after

    def ok_records(self):
        """The records of the requests answered 2xx, in arrival order (the
        stream's: replayed requests left out)."""
        with self.lock:
            return [r for q in self.requests if 200 <= q["status"] < 300
                    and q.get("replay") is None for r in (q["records"] or [])]

    def all_requests(self):
        with self.lock:
            return list(self.requests)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if not keep_tmp():
            shutil.rmtree(self.dir, ignore_errors=True)


def webhook_conf(name, url, secret, ca_file, types=None, batch=100, max_latency="200ms",
                 extra=""):
    """An events { webhooks { name { ... } } } block for Daemon(extra_conf=)."""
    t = "" if types is None else "types = [%s];\n" % ", ".join('"%s"' % x for x in types)
    return ('events {\n    webhooks {\n        %s {\n            url = "%s";\n'
            '            secret = "%s";\n            ca_file = "%s";\n            batch = %d;\n'
            '            max_latency = %s;\n            %s            %s\n        }\n    }\n}\n'
            % (name, url, secret, ca_file, batch, max_latency, t, extra))


# ------------------------------------------------------------------ DANE and TLSRPT (#19)

class DaneCA:
    """A test CA (openssl CLI, `openssl ca` so that any validity window can
    be given) in directory, for DANE tests: issue() makes server
    certificates, tlsa() the association data of a TLSA record."""

    def __init__(self, directory, name="sluice DANE test CA"):
        self.dir = directory
        self.cert = os.path.join(directory, "ca.crt")
        self.key = os.path.join(directory, "ca.key")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=" + name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", self.key, "-out", self.cert]).check()
        open(os.path.join(directory, "index.txt"), "w").close()
        with open(os.path.join(directory, "serial"), "w") as f:
            f.write("1000\n")

    def issue(self, name, dns_names, start=None, end=None):
        """A certificate for dns_names signed by the CA, valid from start to
        end ("YYYYMMDDHHMMSSZ"; default: now for two days). Returns
        (cert, key, chain): chain is the certificate followed by the CA's
        (what a DANE-TA(2) server sends, RFC 7672 3.2.1)."""
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        crt = os.path.join(self.dir, name + ".crt")
        cnf = os.path.join(self.dir, name + ".cnf")
        with open(cnf, "w") as f:
            f.write("[ca]\ndefault_ca = t\n[t]\ndatabase = %s\nnew_certs_dir = %s\n"
                    "serial = %s\ndefault_md = sha256\npolicy = p\nx509_extensions = ext\n"
                    "unique_subject = no\ndefault_days = 2\n[p]\ncommonName = supplied\n"
                    "[ext]\nsubjectAltName = %s\nbasicConstraints = critical,CA:FALSE\n"
                    "extendedKeyUsage = serverAuth\n"
                    % (os.path.join(self.dir, "index.txt"), self.dir,
                       os.path.join(self.dir, "serial"),
                       ",".join("DNS:" + n for n in dns_names)))
        run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", "/CN=" + dns_names[0], "-keyout", key, "-out", csr]).check()
        args = ["openssl", "ca", "-batch", "-notext", "-config", cnf, "-cert", self.cert,
                "-keyfile", self.key, "-in", csr, "-out", crt]
        if start:
            args += ["-startdate", start]
        if end:
            args += ["-enddate", end]
        run(args).check()
        chain = os.path.join(self.dir, name + ".chain")
        with open(chain, "w") as f, open(crt) as a, open(self.cert) as b:
            f.write(a.read() + b.read())
        return crt, key, chain


def tlsa_data(cert, selector=1, mtype=1):
    """The hex association data of a TLSA record for cert (PEM file):
    selector 0 = the whole certificate, 1 = its SubjectPublicKeyInfo;
    matching type 0 = exact, 1 = SHA2-256, 2 = SHA2-512 (RFC 6698 2.1)."""
    import hashlib
    der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    if selector == 1:
        pem = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"], check=True,
                             capture_output=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem,
                             check=True, capture_output=True).stdout
    if mtype == 1:
        return hashlib.sha256(der).hexdigest()
    if mtype == 2:
        return hashlib.sha512(der).hexdigest()
    return der.hex()


# ------------------------------------------------------------------ cluster (#17): Redis

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


class Redis:
    """One redis-server (Debian's, installed by .ci/deps) on a loopback port
    of free_port() (Redis binds with SO_REUSEADDR), with no persistence
    (--save "" --appendonly no), its files in its own directory. start()
    again after stop()/kill9() comes back on the same port, empty.
    cli(*args) runs redis-cli against it and returns its stdout (raw)."""

    def __init__(self):
        self.dir = make_tmpdir("redis-")
        self.port = free_port()
        self.proc = None
        self.url = "redis://127.0.0.1:%d" % self.port

    def start(self):
        self.errf = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = _spawn([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--dir", self.dir,
                            "--protected-mode", "no"],
                           stdout=self.errf, stderr=self.errf)
        wait_for(lambda: self.proc.poll() is None and tcp_connectable("127.0.0.1", self.port)
                 and self.cli("PING").strip() == "PONG", 10, what="redis-server")
        return self

    def cli(self, *args):
        r = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), "--raw"]
                           + list(args), capture_output=True, text=True, timeout=10)
        return r.stdout

    def stop(self):
        """SIGTERM and reap (idempotent)."""
        if self.proc is not None:
            _reap(self.proc)
            self.proc = None
            self.errf.close()

    def kill9(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            _children.discard(self.proc)
            self.proc = None
            self.errf.close()

    def close(self):
        self.stop()
        release_port(self.port)
        if not keep_tmp():
            shutil.rmtree(self.dir, ignore_errors=True)


def cluster_conf(redis, node, lease_ttl="2s", extra=""):
    """The cluster { } block for node `node` of a Redis."""
    return ('cluster {\n    redis = ["%s"];\n    node = "%s";\n    lease_ttl = %s;\n%s}\n'
            % (redis.url, node, lease_ttl, extra))
