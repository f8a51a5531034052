#!/usr/bin/python3
"""End-to-end tests of the shipped bounce rules, as an operator sees them:
the category of each accounting record.

sluiced delivers by MX: dnsmasq on loopback gives the recipient domains
the providers' real MX host names (gmail-smtp-in.l.google.com,
outlook-com.olc.protection.outlook.com, smtp-in.orange.fr, ...), all on
loopback, where an aiosmtpd peer (tests/e2e/peer_smtp.py, a server we did
not write) answers each recipient with a reply those providers send. The
accounting record must carry the category the provider's reply means
(docs/bounce-rules.md, "Order"): a provider's own rule before its spam
words and before the status table, statuses known to mislead decided by
their text, and a provider's rules only for replies from its MX hosts.
Every process started here is stopped by pid before the test ends.
"""
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluicetest as st  # noqa: E402

# Gmail's reply as it comes, on four lines
GMAIL_RFC5322 = "\r\n".join([
    "550-5.7.1 [127.0.0.1 13] This message is not RFC 5322 compliant. There are",
    "550-5.7.1 multiple Subject headers. To reduce the amount of spam sent to Gmail,",
    "550-5.7.1 this message has been blocked. Please visit",
    "550 5.7.1  https://support.google.com/mail/?p=RfcMessageNonCompliant x8si - gsmtp"])
MS_CONNECTIONS = ("451 4.7.652 The mail server [127.0.0.1] has exceeded the maximum number of "
                  "connections. (S3115) [BN8NAM11FT066.eop-nam11.prod.protection.outlook.com]")
MS_HOURLY = ("554 5.2.122 The recipient has exceeded their limit for the number of messages "
             "they can receive per hour. [MWH0EPF000A6735.namprd04.prod.outlook.com]")
ORANGE_FULL = "552 5.1.1 Boite du destinataire pleine. Recipient overquota. OFR_417 [417]"
RATE_450 = ("450 4.2.1 <fast@rate.test>: Recipient address rejected: exceeded message rate "
            "limit, try again later")
GMAIL_INACTIVE = ("552-5.2.2 The email account that you tried to reach is over quota and "
                  "inactive.\r\n552 5.2.2 https://support.google.com/mail/?p=OverQuotaPerm - gsmtp")
YAHOO_GL01 = ("421 4.7.0 [GL01] Message from (127.0.0.1) temporarily deferred - 4.16.50. "
              "Please refer to https://postmaster.yahooinc.com/error-codes")


def make_daemon(routes, delivery):
    """A Daemon that routes by MX (no smart host) with extra delivery lines."""
    d = st.Daemon(routes=routes)
    text = d.default_conf()
    text = re.sub(r"\n\s*smarthost\s*=[^;\n]*;", "", text)
    text = text.replace("delivery {\n", "delivery {\n" + delivery, 1)
    with open(d.conf_path, "w") as f:
        f.write(text)
    return d


def send(d, rcpts, sender="sender@s.example"):
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: rules\r\nDate: Fri, 27 Nov 2026 07:00:00 +0000\r\n"
           "Message-ID: <rules@s.example>\r\n\r\nHello.\r\n" % (sender, rcpts[0]))
    with d.smtp() as c:
        c.sendmail(sender, rcpts, msg.encode())


def record(d, type_, rcpt, timeout=30):
    """The first accounting record of this type for rcpt (waits for it)."""
    def find():
        return [r for r in d.accounting() if r.get("type") == type_ and r.get("recipient") == rcpt]
    return st.wait_for(find, timeout, what="a %s record for %s" % (type_, rcpt))[0]


class BounceRulesTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass

    def test_provider_replies_get_their_category(self):
        peer = st.Peer(prefix="rules-peer-", rcpt_reply=[
            "rfc@gmail.com=" + GMAIL_RFC5322,
            "conn@outlook.com=" + MS_CONNECTIONS,
            "hour@outlook.com=" + MS_HOURLY,
            "full@orange.fr=" + ORANGE_FULL,
            "fast@rate.test=" + RATE_450,
            "inactive@googlemail.com=" + GMAIL_INACTIVE,
        ])
        self.cleanups.append(peer.stop)
        # Yahoo's MX refuses at the greeting: a second peer, on 127.0.0.2
        # and the same port (delivery.port is one for all MX hosts)
        yahoo = st.Peer(prefix="rules-yahoo-", listen="127.0.0.2:%d" % peer.port,
                        greeting=YAHOO_GL01)
        self.cleanups.append(yahoo.stop)
        mx = {"gmail.com": "gmail-smtp-in.l.google.com",
              "outlook.com": "outlook-com.olc.protection.outlook.com",
              "orange.fr": "smtp-in.orange.fr",
              "rate.test": "mx.rate.test"}
        opts = []
        for dom, host in sorted(mx.items()):
            opts += ["--local=/%s/" % dom, "--mx-host=%s,%s,10" % (dom, host),
                     "--host-record=%s,127.0.0.1" % host]
        opts += ["--local=/hosted.test/", "--mx-host=hosted.test,mta5.am0.yahoodns.net,10",
                 "--host-record=mta5.am0.yahoodns.net,127.0.0.2"]
        dns = st.Dnsmasq(*opts)
        self.cleanups.append(dns.stop)
        # googlemail.com goes through a static route: the reply is the
        # route's host's, not Google's, whatever it quotes
        d = make_daemon({"googlemail.com": "127.0.0.1:%d" % peer.port},
                        '    resolvers = "127.0.0.1:%d";\n    port = %d;\n' % (dns.port, peer.port))
        self.cleanups.append(d.cleanup)
        d.start()
        send(d, ["rfc@gmail.com", "conn@outlook.com", "hour@outlook.com", "full@orange.fr",
                 "fast@rate.test", "inactive@googlemail.com", "someone@hosted.test"])

        want = {
            # Gmail: RFC 5322 form, though its text says spam
            "rfc@gmail.com": ("bounce", 550, "5.7.1", "content-related"),
            # Microsoft: a connection limit, though (S3115) is an S3xxx code
            "conn@outlook.com": ("transient", 451, "4.7.652", "bad-connection"),
            # Microsoft 5.2.122: the recipient's hourly limit, not a bad mailbox
            "hour@outlook.com": ("bounce", 554, "5.2.122", "quota-issues"),
            # Orange OFR_417 under 5.1.1: a full mailbox
            "full@orange.fr": ("bounce", 552, "5.1.1", "quota-issues"),
            # no provider: a rate limit under 4.2.1 is not an inactive mailbox
            "fast@rate.test": ("transient", 450, "4.2.1", "quota-issues"),
            # a static route's reply gets the generic rules (5.2.2: quota),
            # not Google's, whatever it quotes
            "inactive@googlemail.com": ("bounce", 552, "5.2.2", "quota-issues"),
            # a refused greeting from Yahoo's MX host: Yahoo's rules
            "someone@hosted.test": ("transient", 421, "4.7.0", "spam-related"),
        }
        got = {}
        for rcpt, (type_, _, _, _) in want.items():
            rec = record(d, type_, rcpt)
            got[rcpt] = (rec["type"], rec["code"], rec["status"], rec["category"])
            if rcpt == "inactive@googlemail.com":
                self.assertEqual(rec["mx"], "127.0.0.1")
            if rcpt == "rfc@gmail.com":  # the four lines, joined
                self.assertIn("not RFC 5322 compliant. There are multiple Subject headers.",
                              rec["text"])
            if rcpt == "someone@hosted.test":
                self.assertIn("mta5.am0.yahoodns.net[127.0.0.2]", rec["text"])
        self.assertEqual(got, want)
        self.assertEqual([r["recipient"] for r in d.accounting() if r.get("type") == "delivery"],
                         [])
        d.stop()


if __name__ == "__main__":
    unittest.main()
