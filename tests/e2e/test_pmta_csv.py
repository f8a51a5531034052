#!/usr/bin/python3
"""PowerMTA-compatible accounting CSV (issue #14, docs/events.md):
log.accounting_format = "both" writes acct.csv beside acct.jsonl, with a
header line of PowerMTA's standard column names, PowerMTA's record
letters (d, b, t) and RFC 4180 quoting, so an importer reads it with any
CSV parser - here Python's csv module.

A receiving server we did not write (aiosmtpd) accepts one recipient,
refuses one (550) and defers one (450); one mapped header carries a
comma and a quote.

Env: SLUICE_BUILD (binaries), SLUICE_SRC.
"""
import csv
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

COLUMNS = ["type", "timeLogged", "timeQueued", "orig", "rcpt", "orcpt", "dsnAction",
           "dsnStatus", "dsnDiag", "dsnMta", "bounceCat", "srcType", "srcMta", "dlvType",
           "dlvSourceIp", "dlvDestinationIp", "dlvEsmtpAvailable", "dlvSize", "vmta", "jobId",
           "envId", "queue", "vmtaPool", "header_x-campaign-id"]


class PmtaCsvTest(unittest.TestCase):

    def test_csv_rows_match_the_json_records(self):
        peer = st.Peer(dsn=True, rcpt_reply=["bad*@example.test=550 5.1.1 no such user",
                                             "soft*@example.test=450 4.2.0 try later"])
        self.addCleanup(peer.stop)
        d = st.Daemon(routes={"example.test": "127.0.0.1:%d" % peer.port},
                      extra_conf='queue {\n    retry = "1h";\n}\n')
        with open(d.conf_path) as f:
            conf = f.read()
        with open(d.conf_path, "w") as f:
            f.write(conf.replace("log {\n", 'log {\n    accounting_format = both;\n'
                                 '    header_fields = ["X-Campaign-Id"];\n', 1))
        self.addCleanup(d.close)
        d.start()
        with d.smtp() as s:
            s.sendmail("sender@example.com",
                       ["ok@example.test", "bad@example.test", "soft@example.test"],
                       'From: sender@example.com\r\nX-Sluice-Job: job-7\r\n'
                       'X-Campaign-Id: spring, "big" sale\r\n\r\nbody\r\n',
                       mail_options=["ENVID=env-42"],
                       rcpt_options=["NOTIFY=NEVER", "ORCPT=rfc822;orig@example.test"])
        st.wait_for(lambda: {"delivery", "bounce", "transient"} <=
                    {r["type"] for r in d.accounting()}, 60, what="three outcomes")
        d.stop()
        path = os.path.join(d.acct_dir, "acct.csv")
        with open(path, newline="") as f:
            raw = f.read()
        self.assertTrue(raw.startswith(",".join(COLUMNS) + "\r\n"), raw[:300])
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(list(rows[0].keys()), COLUMNS)
        recs = [r for r in d.accounting() if r["type"] in ("delivery", "bounce", "transient")]
        self.assertEqual(len(rows), len(recs))  # received records have no PowerMTA letter
        by = {r["rcpt"]: r for r in rows}
        ok, bad, soft = by["ok@example.test"], by["bad@example.test"], by["soft@example.test"]
        self.assertEqual((ok["type"], bad["type"], soft["type"]), ("d", "b", "t"))
        self.assertEqual((ok["dsnAction"], bad["dsnAction"], soft["dsnAction"]),
                         ("relayed", "failed", "delayed"))
        self.assertEqual((bad["dsnStatus"], bad["bounceCat"]), ("5.1.1", "bad-mailbox"))
        self.assertEqual(bad["dsnDiag"], "smtp;550 5.1.1 no such user")
        self.assertEqual(ok["dsnMta"], "127.0.0.1 (127.0.0.1)")
        self.assertEqual((ok["orig"], ok["orcpt"], ok["envId"], ok["jobId"]),
                         ("sender@example.com", "rfc822;orig@example.test", "env-42", "job-7"))
        self.assertEqual((ok["vmta"], ok["vmtaPool"], ok["queue"]),
                         ("default", "default", "example.test/default"))
        self.assertEqual(ok["header_x-campaign-id"], 'spring, "big" sale')
        self.assertRegex(ok["timeLogged"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0000$")
        self.assertRegex(ok["timeQueued"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0000$")
        js = [r for r in recs if r["recipient"] == "ok@example.test"][0]
        self.assertEqual(int(ok["dlvSize"]), js["size"])
        self.assertEqual(ok["dlvDestinationIp"], js["mx_ip"])


if __name__ == "__main__":
    st.main()
