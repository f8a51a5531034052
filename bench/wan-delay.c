/*
 * bench/wan-delay.c - sluice-wan-delay, a netem stand-in built on NFQUEUE.
 *
 * The wan scenario (issue #18) wants the sink behind `tc qdisc netem delay
 * 50ms 10ms loss 0.5%`. Kernels without sch_netem still have NFQUEUE: an
 * iptables rule in the sink's network namespace hands every packet of its
 * veth (INPUT and OUTPUT) to this program, which holds the packet's
 * verdict for delay +- jitter (uniform, as netem's default) and answers
 * NF_DROP for a share `loss` of them. Each direction is one pass through
 * the queue, so the round trip gets the delay twice, as netem on both ends.
 *
 * Order: a packet is never released before an earlier packet of its flow
 * (the IPv4 5-tuple hashed into FLOW_SLOTS slots; two flows sharing a slot
 * just keep their common order), so TCP sees jitter as varying latency,
 * not as reordering. netem with jitter reorders; a real path rarely does.
 *
 * Copy mode: the first 40 bytes of each packet (IPv4 header and ports),
 * enough for the flow; the verdict carries no payload back. The queue is
 * fail-open (a full queue accepts instead of dropping) and the rules use
 * --queue-bypass (no listener: packets pass), so the delayer can only
 * delay or drop what it was asked to, never black-hole the link.
 *
 * Cost per packet (it shares the machine with what it measures): while
 * packets are held it wakes once a millisecond (wd_loop), not per packet;
 * packets are read 64 at a time (recvmmsg) and the verdicts that are due
 * go back as one netlink message each, many in one sendto(), instead of
 * one system call per packet each way. A packet so waits up to 1 ms more
 * than its delay.
 *
 * --rt-priority N runs it SCHED_FIFO: netem's delay is applied in the
 * kernel, ahead of any process, and a delayer that waits behind the MTAs
 * for a core would add its run-queue wait to the link's latency exactly
 * when the link is busiest. It sleeps in ppoll() between packets, and the
 * kernel's real-time throttling still leaves other tasks 5% of each CPU.
 *
 * At SIGTERM/SIGINT it writes one JSON line (packets, dropped, its own CPU
 * per packet) to --stats and exits 0.
 *
 * Main functions: main() (options, queue setup, the loop), wd_packet_cb()
 * (a packet in: drop or schedule), wd_release() (verdicts that are due),
 * wd_verdict() / wd_flush() (the batched verdicts).
 * Single-threaded; no locks.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FLOW_SLOTS 65536  /* per-flow last release time, by hash */
#define COPY_BYTES 40     /* IPv4 header (20, no options assumed beyond ihl) + ports */
#define RECV_BATCH 64     /* packets read per recvmmsg() */
#define RECV_SIZE 2048    /* one queued packet's message: 40 bytes + attributes */
#define VERDICT_BATCH 256 /* verdicts per sendto() */
#define TICK_NS 1000000L  /* while packets are held: wake once a millisecond */

/* One NFQNL_MSG_VERDICT message, as nfq_set_verdict() builds it. */
typedef struct wd_vmsg {
    struct nlmsghdr v_nh;
    struct nfgenmsg v_gen;
    struct nlattr v_attr;
    struct nfqnl_msg_verdict_hdr v_hdr;
} wd_vmsg_t;

typedef struct wd_pending {
    uint64_t p_due_ns;
    uint32_t p_id;
} wd_pending_t;

static struct {
    uint64_t delay_ns, jitter_ns;
    double loss;
    uint64_t rng;
    wd_pending_t *heap; /* min-heap on p_due_ns */
    size_t n, cap;
    uint64_t flow_last[FLOW_SLOTS];
    uint64_t packets, dropped, max_pending, late_ns_max, late_5ms;
    struct nfq_q_handle *qh;
    int fd;
    uint16_t qnum;
    wd_vmsg_t vbuf[VERDICT_BATCH];
    int nv;
    uint64_t sends;
} W;

static volatile sig_atomic_t wd_stop;

static void wd_on_signal(int sig);
static uint64_t wd_now_ns(void);
static double wd_rand01(void);
static void wd_push(uint64_t due, uint32_t id);
static void wd_pop(void);
static uint32_t wd_flow_slot(const unsigned char *p, int len);
static int wd_packet_cb(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                        void *data);
static void wd_release(void);
static void wd_verdict(uint32_t id, uint32_t verdict);
static void wd_flush(void);
static void wd_stats(const char *path, double cpu_s);
static struct nfq_handle *wd_open(int qnum);
static void wd_loop(struct nfq_handle *h);

static void wd_on_signal(int sig)
{
    (void)sig;
    wd_stop = 1;
}

static uint64_t wd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: reproducible from --seed, cheap enough per packet */
static double wd_rand01(void)
{
    W.rng ^= W.rng >> 12;
    W.rng ^= W.rng << 25;
    W.rng ^= W.rng >> 27;
    return (double)((W.rng * 2685821657736338717ULL) >> 11) / (double)(1ULL << 53);
}

static void wd_push(uint64_t due, uint32_t id)
{
    if (W.n == W.cap) {
        W.cap = W.cap ? 2 * W.cap : 4096;
        W.heap = realloc(W.heap, W.cap * sizeof(*W.heap));
        if (W.heap == NULL) {
            fprintf(stderr, "sluice-wan-delay: out of memory\n");
            exit(1);
        }
    }
    size_t i = W.n++;
    while (i > 0 && W.heap[(i - 1) / 2].p_due_ns > due) {
        W.heap[i] = W.heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    W.heap[i].p_due_ns = due;
    W.heap[i].p_id = id;
    if (W.n > W.max_pending)
        W.max_pending = W.n;
}

static void wd_pop(void)
{
    wd_pending_t last = W.heap[--W.n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= W.n)
            break;
        if (c + 1 < W.n && W.heap[c + 1].p_due_ns < W.heap[c].p_due_ns)
            c++;
        if (W.heap[c].p_due_ns >= last.p_due_ns)
            break;
        W.heap[i] = W.heap[c];
        i = c;
    }
    if (W.n > 0)
        W.heap[i] = last;
}

/* FNV-1a of protocol, addresses and (TCP/UDP) ports; slot 0 for anything
 * that is not IPv4 (one shared order for it). */
static uint32_t wd_flow_slot(const unsigned char *p, int len)
{
    if (len < 20 || (p[0] >> 4) != 4)
        return 0;
    int ihl = (p[0] & 0x0f) * 4;
    uint32_t h = 2166136261u;
    unsigned char key[13];
    key[0] = p[9];
    memcpy(key + 1, p + 12, 8);
    memset(key + 9, 0, 4);
    if ((p[9] == IPPROTO_TCP || p[9] == IPPROTO_UDP) && len >= ihl + 4)
        memcpy(key + 9, p + ihl, 4);
    for (size_t i = 0; i < sizeof(key); i++) {
        h ^= key[i];
        h *= 16777619u;
    }
    return h % FLOW_SLOTS;
}

static int wd_packet_cb(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                        void *data)
{
    (void)msg;
    (void)data;
    (void)qh;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    W.packets++;
    if (W.loss > 0 && wd_rand01() < W.loss) {
        W.dropped++;
        wd_verdict(id, NF_DROP);
        return 0;
    }
    unsigned char *p = NULL;
    int len = nfq_get_payload(nfa, &p);
    uint32_t slot = wd_flow_slot(p, len);
    uint64_t d = W.delay_ns;
    if (W.jitter_ns > 0)
        d = d - W.jitter_ns + (uint64_t)(wd_rand01() * (double)(2 * W.jitter_ns));
    uint64_t due = wd_now_ns() + d;
    if (due < W.flow_last[slot])
        due = W.flow_last[slot]; /* keep the flow's order */
    W.flow_last[slot] = due;
    wd_push(due, id);
    return 0;
}

static void wd_release(void)
{
    uint64_t now = wd_now_ns();
    while (W.n > 0 && W.heap[0].p_due_ns <= now) {
        uint64_t late = now - W.heap[0].p_due_ns;
        if (late > W.late_ns_max)
            W.late_ns_max = late;
        if (late > 5000000ULL)
            W.late_5ms++;
        wd_verdict(W.heap[0].p_id, NF_ACCEPT);
        wd_pop();
    }
    wd_flush();
}

static void wd_verdict(uint32_t id, uint32_t verdict)
{
    if (W.nv == VERDICT_BATCH)
        wd_flush();
    wd_vmsg_t *m = &W.vbuf[W.nv++];
    memset(m, 0, sizeof(*m));
    m->v_nh.nlmsg_len = sizeof(*m);
    m->v_nh.nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT;
    m->v_nh.nlmsg_flags = NLM_F_REQUEST;
    m->v_gen.nfgen_family = AF_UNSPEC;
    m->v_gen.version = NFNETLINK_V0;
    m->v_gen.res_id = htons(W.qnum);
    m->v_attr.nla_len = sizeof(m->v_attr) + sizeof(m->v_hdr);
    m->v_attr.nla_type = NFQA_VERDICT_HDR;
    m->v_hdr.verdict = htonl(verdict);
    m->v_hdr.id = htonl(id);
}

/* The kernel runs every message of one datagram (netlink_rcv_skb). */
static void wd_flush(void)
{
    if (W.nv == 0)
        return;
    struct sockaddr_nl to;
    memset(&to, 0, sizeof(to));
    to.nl_family = AF_NETLINK;
    if (sendto(W.fd, W.vbuf, (size_t)W.nv * sizeof(W.vbuf[0]), 0, (struct sockaddr *)&to,
               sizeof(to)) < 0)
        fprintf(stderr, "sluice-wan-delay: sendto(verdicts): %s\n", strerror(errno));
    W.sends++;
    W.nv = 0;
}

static void wd_stats(const char *path, double cpu_s)
{
    FILE *f = path ? fopen(path, "w") : stdout;
    if (f == NULL) {
        fprintf(stderr, "sluice-wan-delay: %s: %s\n", path, strerror(errno));
        return;
    }
    fprintf(f,
            "{\"packets\":%llu,\"dropped\":%llu,\"cpu_s\":%.3f,\"cpu_us_per_packet\":%.2f,"
            "\"max_pending\":%llu,\"late_ms_max\":%.2f,\"delay_ms\":%.1f,\"jitter_ms\":%.1f,"
            "\"loss\":%g,\"verdict_sends\":%llu,\"late_5ms\":%llu}\n",
            (unsigned long long)W.packets, (unsigned long long)W.dropped, cpu_s,
            W.packets ? cpu_s * 1e6 / (double)W.packets : 0.0, (unsigned long long)W.max_pending,
            (double)W.late_ns_max / 1e6, (double)W.delay_ns / 1e6, (double)W.jitter_ns / 1e6,
            W.loss, (unsigned long long)W.sends, (unsigned long long)W.late_5ms);
    if (f != stdout)
        fclose(f);
}

/* The queue, in copy-40-bytes mode, fail-open, 65,536 long; W.qh, W.fd
 * set. NULL (said on stderr) when NFQUEUE is not there or not ours. */
static struct nfq_handle *wd_open(int qnum)
{
    struct nfq_handle *h = nfq_open();
    if (h == NULL) {
        fprintf(stderr, "sluice-wan-delay: nfq_open: %s (root, and NFQUEUE in this kernel?)\n",
                strerror(errno));
        return NULL;
    }
    W.qh = nfq_create_queue(h, (uint16_t)qnum, wd_packet_cb, NULL);
    if (W.qh == NULL) {
        fprintf(stderr, "sluice-wan-delay: queue %d: %s\n", qnum, strerror(errno));
        nfq_close(h);
        return NULL;
    }
    if (nfq_set_mode(W.qh, NFQNL_COPY_PACKET, COPY_BYTES) < 0 ||
        nfq_set_queue_maxlen(W.qh, 1 << 16) < 0 ||
        nfq_set_queue_flags(W.qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN) < 0) {
        fprintf(stderr, "sluice-wan-delay: queue setup: %s\n", strerror(errno));
        nfq_destroy_queue(W.qh);
        nfq_close(h);
        return NULL;
    }
    int fd = nfq_fd(h);
    W.fd = fd;
    W.qnum = (uint16_t)qnum;
    int one = 1, rcv = 16 << 20;
    /* a burst larger than the socket buffer must not stop the loop: a
     * packet whose message is lost stays queued (fail-open does not apply) */
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof(rcv)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    return h;
}

/* Read what arrived, answer its drops, release what is due; then, while
 * packets are held, sleep one tick (1 ms) rather than wake per packet:
 * at tens of thousands of packets a second each wake-up then serves
 * dozens of them (a packet waits at most a tick more than its delay).
 * With nothing held it sleeps until a packet comes. */
static void wd_loop(struct nfq_handle *h)
{
    static char bufs[RECV_BATCH][RECV_SIZE];
    static struct iovec iov[RECV_BATCH];
    static struct mmsghdr mm[RECV_BATCH];
    for (int k = 0; k < RECV_BATCH; k++) {
        iov[k].iov_base = bufs[k];
        iov[k].iov_len = RECV_SIZE;
        mm[k].msg_hdr.msg_iov = &iov[k];
        mm[k].msg_hdr.msg_iovlen = 1;
    }
    while (!wd_stop) {
        for (int round = 0; round < 64; round++) {
            int n = recvmmsg(W.fd, mm, RECV_BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0)
                break;
            for (int k = 0; k < n; k++)
                nfq_handle_packet(h, bufs[k], (int)mm[k].msg_len);
            if (n < RECV_BATCH)
                break;
        }
        wd_release(); /* and the drops' verdicts with them */
        if (W.n > 0) {
            struct timespec tick = {0, TICK_NS};
            nanosleep(&tick, NULL);
            continue;
        }
        struct timespec idle = {0, 100 * 1000000L}; /* wake to look at wd_stop */
        struct pollfd pfd = {W.fd, POLLIN, 0};
        if (ppoll(&pfd, 1, &idle, NULL) < 0 && errno != EINTR)
            break;
    }
}

static void wd_usage(void)
{
    fprintf(stderr, "usage: sluice-wan-delay [--queue N] [--delay-ms MS] [--jitter-ms MS] "
                    "[--loss FRACTION] [--seed N] [--stats FILE] [--ready FILE] "
                    "[--rt-priority N]\n");
}

int main(int argc, char **argv)
{
    int qnum = 0;
    double delay_ms = 50, jitter_ms = 10;
    const char *stats = NULL, *ready = NULL;
    int rt_prio = 0;
    W.loss = 0.005;
    W.rng = 0x9e3779b97f4a7c15ULL;
    static const struct option opts[] = {{"queue", required_argument, NULL, 'q'},
                                         {"delay-ms", required_argument, NULL, 'd'},
                                         {"jitter-ms", required_argument, NULL, 'j'},
                                         {"loss", required_argument, NULL, 'l'},
                                         {"seed", required_argument, NULL, 's'},
                                         {"stats", required_argument, NULL, 'o'},
                                         {"ready", required_argument, NULL, 'r'},
                                         {"rt-priority", required_argument, NULL, 'p'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'q':
            qnum = atoi(optarg);
            break;
        case 'd':
            delay_ms = atof(optarg);
            break;
        case 'j':
            jitter_ms = atof(optarg);
            break;
        case 'l':
            W.loss = atof(optarg);
            break;
        case 's':
            W.rng = strtoull(optarg, NULL, 10) * 2654435761ULL + 1;
            break;
        case 'o':
            stats = optarg;
            break;
        case 'r':
            ready = optarg;
            break;
        case 'p':
            rt_prio = atoi(optarg);
            break;
        default:
            wd_usage();
            return 2;
        }
    }
    if (delay_ms < 0 || jitter_ms < 0 || jitter_ms > delay_ms || W.loss < 0 || W.loss >= 1) {
        fprintf(stderr, "sluice-wan-delay: need 0 <= jitter <= delay and 0 <= loss < 1\n");
        return 2;
    }
    W.delay_ns = (uint64_t)(delay_ms * 1e6);
    W.jitter_ns = (uint64_t)(jitter_ms * 1e6);

    if (rt_prio > 0) {
        struct sched_param sp = {.sched_priority = rt_prio};
        if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0)
            fprintf(stderr, "sluice-wan-delay: SCHED_FIFO %d: %s (runs unprioritised)\n", rt_prio,
                    strerror(errno));
    }
    struct nfq_handle *h = wd_open(qnum);
    if (h == NULL)
        return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = wd_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* the driver killed outright: stop too (nothing else would) */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (ready) {
        FILE *f = fopen(ready, "w");
        if (f)
            fclose(f);
    }
    wd_loop(h);
    /* what is still held goes out now: the scenario is over */
    while (W.n > 0) {
        wd_verdict(W.heap[0].p_id, NF_ACCEPT);
        wd_pop();
    }
    wd_flush();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    wd_stats(stats, cpu);
    nfq_destroy_queue(W.qh);
    nfq_close(h);
    free(W.heap);
    return 0;
}
