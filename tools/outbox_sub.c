/*
 * outbox-sub: a plain core-NATS subscriber for demos and debugging. One line
 * per message, "<subject> key=<Outbox-Key> id=<Outbox-Id> body=<...>", bytes
 * escaped so a message is always one line. Always bounded: exits after
 * --count messages (0), --timeout-s idle or --total-s (1), usage errors (2).
 */
#include <errno.h>
#include <getopt.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The relay's reserved headers (include/outbox/broker.h); this tool links
 * only cnats, so they are repeated here. */
#define HDR_ID "Outbox-Id"
#define HDR_KEY "Outbox-Key"

#define BODY_SHOW_MAX 1024 /* bytes of body printed; longer ones end in "..." */

static volatile sig_atomic_t stop_requested;

static void
on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void
usage(FILE *f)
{
    fprintf(f, "usage: outbox-sub [--nats URL] [--subject SUBJ] [--count N] [--timeout-s T]\n"
               "                  [--total-s T]\n"
               "  --nats URL      server (default $OUTBOX_NATS_URL, else nats://127.0.0.1:4222)\n"
               "  --subject SUBJ  subject to subscribe to (default \">\")\n"
               "  --count N       exit 0 after N messages (default 0: no limit)\n"
               "  --timeout-s T   exit after T seconds without a message (default 30)\n"
               "  --total-s T     exit after T seconds in all (default 600)\n"
               "Exit status: 0 count reached, 1 time-out before that or failure, 2 usage.\n");
}

static int
parse_nonneg(const char *s, const char *what, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0) {
        fprintf(stderr, "outbox-sub: %s must be a non-negative integer, not \"%s\"\n", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Print s[0..n) (at most max bytes) with \\, spaces in headers (space_too),
 * non-printable and non-ASCII bytes escaped. */
static void
put_escaped(FILE *f, const char *s, size_t n, size_t max, int space_too)
{
    size_t i, shown = n > max ? max : n;

    for (i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '\\') {
            fputs("\\\\", f);
        } else if (c == '\n') {
            fputs("\\n", f);
        } else if (c == '\r') {
            fputs("\\r", f);
        } else if (c == '\t') {
            fputs("\\t", f);
        } else if (c < 0x20 || c >= 0x7f || (space_too && c == ' ')) {
            fprintf(f, "\\x%02x", c);
        } else {
            fputc(c, f);
        }
    }
    if (shown < n) {
        fprintf(f, "...(%zu bytes)", n);
    }
}

/* " name=value", value escaped so that fields stay space-separated; "-"
 * when the header is absent. */
static void
put_header(natsMsg *m, const char *label, const char *name)
{
    const char *v = NULL;

    fprintf(stdout, " %s=", label);
    if (natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL) {
        fputc('-', stdout);
        return;
    }
    put_escaped(stdout, v, strlen(v), (size_t)-1, 1);
}

static void
print_msg(natsMsg *m)
{
    fputs(natsMsg_GetSubject(m), stdout);
    put_header(m, "key", HDR_KEY);
    put_header(m, "id", HDR_ID);
    fputs(" body=", stdout);
    put_escaped(stdout, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), BODY_SHOW_MAX, 0);
    fputc('\n', stdout);
    fflush(stdout);
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {{"nats", required_argument, NULL, 'n'},
                                             {"subject", required_argument, NULL, 's'},
                                             {"count", required_argument, NULL, 'c'},
                                             {"timeout-s", required_argument, NULL, 't'},
                                             {"total-s", required_argument, NULL, 'T'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *url = getenv("OUTBOX_NATS_URL"), *subject = ">";
    long count = 0, idle_s = 30, total_s = 600, got = 0;
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    natsOptions *opts = NULL;
    natsStatus s;
    struct sigaction sa;
    int64_t start, last;
    int opt, rc = 1;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'n': url = optarg; break;
        case 's': subject = optarg; break;
        case 'c':
            if (parse_nonneg(optarg, "--count", &count) != 0) {
                return 2;
            }
            break;
        case 't':
            if (parse_nonneg(optarg, "--timeout-s", &idle_s) != 0) {
                return 2;
            }
            break;
        case 'T':
            if (parse_nonneg(optarg, "--total-s", &total_s) != 0) {
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || idle_s == 0 || total_s == 0) {
        usage(stderr);
        return 2;
    }
    if (url == NULL || *url == '\0') {
        url = "nats://127.0.0.1:4222";
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    s = natsOptions_Create(&opts);
    if (s == NATS_OK) {
        s = natsOptions_SetURL(opts, url);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetTimeout(opts, 5000);
    }
    if (s == NATS_OK) {
        s = natsConnection_Connect(&nc, opts);
    }
    if (s != NATS_OK) {
        fprintf(stderr, "outbox-sub: connect to %s failed: %s\n", url, natsStatus_GetText(s));
        goto done;
    }
    s = natsConnection_SubscribeSync(&sub, nc, subject);
    if (s == NATS_OK) {
        /* The server has the subscription once the flush returns: only
         * then may a caller start publishing. */
        s = natsConnection_FlushTimeout(nc, 5000);
    }
    if (s != NATS_OK) {
        fprintf(stderr, "outbox-sub: subscribe to \"%s\" failed: %s\n", subject,
                natsStatus_GetText(s));
        goto done;
    }
    fprintf(stderr, "outbox-sub: listening on \"%s\" at %s\n", subject, url);

    start = last = now_ms();
    while (!stop_requested && (count == 0 || got < count)) {
        natsMsg *m = NULL;
        int64_t now = now_ms();

        if (now - last >= idle_s * 1000 || now - start >= total_s * 1000) {
            fprintf(stderr, "outbox-sub: timed out after %ld message(s)%s\n", got,
                    now - last >= idle_s * 1000 ? " (idle)" : "");
            goto done;
        }
        /* Short waits keep signals and both time limits responsive. */
        s = natsSubscription_NextMsg(&m, sub, 200);
        if (s == NATS_TIMEOUT) {
            continue;
        }
        if (s != NATS_OK) {
            fprintf(stderr, "outbox-sub: receive failed: %s\n", natsStatus_GetText(s));
            goto done;
        }
        print_msg(m);
        natsMsg_Destroy(m);
        got++;
        last = now_ms();
    }
    /* Interrupted without a count to reach is a normal end. */
    rc = (count == 0 || got >= count) ? 0 : 1;
    if (stop_requested) {
        fprintf(stderr, "outbox-sub: interrupted after %ld message(s)\n", got);
    }

done:
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    nats_CloseAndWait(2000);
    return rc;
}
