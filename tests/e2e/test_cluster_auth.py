#!/usr/bin/python3
"""Redis AUTH (issue #17, docs/cluster.md): cluster.redis =
["redis://[user:]password@host:port"] authenticates both connections
(AUTH password, or AUTH user password for an ACL user); the password is
never logged nor shown; a wrong one keeps the node on local limits with a
clear log line and the server's reason in `sluicectl cluster` / status.
"""
import os
import shutil
import subprocess
import sys
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402
from test_cluster_resync import cluster, start_node  # noqa: E402

PASSWORD = "s3cret-Pw"


class AuthRedis(st.Redis):
    """redis-server with --requirepass PASSWORD; cli() authenticates."""

    def __init__(self, url_auth):
        super().__init__()
        self.url = "redis://%s@127.0.0.1:%d" % (url_auth, self.port)

    def start(self):
        self.errf = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = st._spawn([st.REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", self.dir,
                               "--protected-mode", "no", "--requirepass", PASSWORD],
                              stdout=self.errf, stderr=self.errf)
        st.wait_for(lambda: self.proc.poll() is None
                    and st.tcp_connectable("127.0.0.1", self.port)
                    and self.cli("PING").strip() == "PONG", 10, what="redis-server")
        return self

    def cli(self, *args):
        r = subprocess.run([st.REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), "--raw",
                            "--no-auth-warning", "-a", PASSWORD] + list(args),
                           capture_output=True, text=True, timeout=10)
        return r.stdout


class ClusterAuth(unittest.TestCase):

    def setUp(self):
        self.tmp = st.make_tmpdir("cluster-auth-")
        if not st.keep_tmp():
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.sink = st.Sink("--no-starttls", prefix="cluster-auth-sink-")
        self.addCleanup(self.sink.stop)

    def redis(self, url_auth):
        r = AuthRedis(url_auth).start()
        self.addCleanup(r.close)
        return r

    def log(self, d):
        with open(d.stderr_path, errors="replace") as f:
            return f.read()

    def assert_shared(self, redis, d):
        st.wait_for(lambda: cluster(d)["redis_up"], 15, what="redis up on the node")
        c = cluster(d)
        self.assertNotIn(PASSWORD, c["redis"])
        self.assertIn("***@127.0.0.1:%d" % redis.port, c["redis"])
        d.ctl("suppress", "add", "auth@rate.test").check()
        st.wait_for(lambda: "auth@rate.test" in redis.cli("HKEYS", "sluice:supp:global"), 10,
                    what="the entry in redis")
        self.assertNotIn(PASSWORD, self.log(d))

    def test_password(self):
        """redis://:PASSWORD@host:port (AUTH password): shared."""
        r = self.redis(":" + PASSWORD)
        self.assert_shared(r, start_node(self, r, self.sink, "a"))

    def test_acl_user(self):
        """redis://default:PASSWORD@host:port (AUTH user password)."""
        r = self.redis("default:" + PASSWORD)
        d = start_node(self, r, self.sink, "a")
        self.assert_shared(r, d)
        self.assertIn("redis://default:***@", cluster(d)["redis"])

    def test_wrong_password(self):
        """A wrong password: the node runs on local limits, says why once in
        the log (the server's WRONGPASS), and in `sluicectl cluster`'s
        reason and status; the password appears nowhere."""
        good = self.redis(":" + PASSWORD)
        r = types.SimpleNamespace(url="redis://default:wrong-pw@127.0.0.1:%d" % good.port)
        d = start_node(self, r, self.sink, "a")
        st.wait_for(lambda: "WRONGPASS" in (cluster(d)["reason"] or ""), 15,
                    what="the auth failure in the reason")
        c = cluster(d)
        self.assertFalse(c["redis_up"])
        self.assertTrue(c["reason"].startswith("auth: WRONGPASS"), c["reason"])
        st.wait_for(lambda: "unreachable (auth: WRONGPASS" in self.log(d), 10,
                    what="the log line")
        status = d.ctl("status").check().out
        self.assertIn("WRONGPASS", status)
        log = self.log(d)
        self.assertEqual(log.count("unreachable (auth: WRONGPASS"), 1, log[-3000:])
        self.assertNotIn("wrong-pw", log + status + str(c))


if __name__ == "__main__":
    st.main()
