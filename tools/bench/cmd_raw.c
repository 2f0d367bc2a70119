/*
 * raw: this machine's ceiling with no relay logic, in one run:
 *   sql       the relay's claim + mark-delivered (liboutbox's Store) in a loop
 *   nats      JetStream async publish of messages built in memory beforehand
 *   together  claim -> async publish -> wait for PubAcks -> mark, one thread
 * Each step must move every message (PubAcks counted, rows marked) or the
 * run fails: a ceiling reached by dropping work would be no ceiling.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uuid/uuid.h>
#include "bench.h"
#include "db.h"
#include "jsadmin.h"
#include "jspub.h"
#include "rawsql.h"
#include "report.h"
#include "util.h"

#define ACK_WAIT_MS 30000
#define MEM_MAX ((size_t)2 << 30) /* in-memory messages for the nats step */
#define HDR_MAX 64

typedef struct step {
    const char *name;
    uint64_t msgs, batches;
    double seconds;
} step_t;

/* Claim and mark until no row is pending. */
static int
step_sql(rawsql_t *c, long batch, step_t *s)
{
    int64_t t0 = bench_now_us();
    const outbox_batch_t *b;

    for (;;) {
        if (bench_stopping())
            return -1;
        if (rawsql_claim(c, batch, &b) != 0)
            return -1;
        if (b->n == 0)
            break;
        s->msgs += (uint64_t)b->n;
        s->batches++;
        if (rawsql_mark(c) != 0)
            return -1;
    }
    s->seconds = (double)(bench_now_us() - t0) / 1e6;
    return 0;
}

/* Publish m messages built beforehand, batch by batch. */
static int
step_nats(const char *url, const char *topic, long m, long batch, long body_size, long headers,
          step_t *s)
{
    size_t blen = (size_t)body_size + 24, stride = 37 + blen;
    char *mem = NULL, names[HDR_MAX][16], values[HDR_MAX][16];
    const char *hn[HDR_MAX], *hv[HDR_MAX];
    size_t *lens = NULL;
    jspub_t *p = NULL;
    int64_t t0;
    long i, j;
    int rc = -1;

    if ((size_t)m > MEM_MAX / stride) {
        bench_err("raw: %ld messages of %ld bytes do not fit the %zu MB this step may use", m,
                  body_size, MEM_MAX >> 20);
        return -1;
    }
    if ((mem = malloc((size_t)m * stride)) == NULL ||
        (lens = malloc((size_t)m * sizeof(*lens))) == NULL) {
        bench_err("out of memory for %ld in-memory messages", m);
        goto done;
    }
    for (i = 0; i < headers && i < HDR_MAX; i++) {
        snprintf(names[i], sizeof(names[i]), "bench-h%ld", i + 1);
        snprintf(values[i], sizeof(values[i]), "value-%ld", i + 1);
        hn[i] = names[i];
        hv[i] = values[i];
    }
    for (i = 0; i < m; i++) {
        char *id = mem + (size_t)i * stride, *body = id + 37;
        int n = snprintf(body, blen, "%ld ", i);
        uuid_t u;

        uuid_generate(u);
        uuid_unparse_lower(u, id);
        lens[i] = (size_t)body_size > (size_t)n ? (size_t)body_size : (size_t)n;
        memset(body + n, 'x', lens[i] - (size_t)n);
    }
    if (jspub_open(&p, url, batch) != 0)
        goto done;
    t0 = bench_now_us();
    for (i = 0; i < m; i += batch) {
        if (bench_stopping())
            goto done;
        for (j = i; j < m && j < i + batch; j++) {
            jspub_msg_t msg = {.subject = topic,
                               .id = mem + (size_t)j * stride,
                               .key = "bench",
                               .hnames = hn,
                               .hvalues = hv,
                               .nheaders = (int)headers,
                               .body = mem + (size_t)j * stride + 37,
                               .body_len = lens[j]};

            if (jspub_send(p, &msg) != 0)
                goto done;
        }
        if (jspub_complete(p, ACK_WAIT_MS) != 0)
            goto done;
        s->batches++;
    }
    s->seconds = (double)(bench_now_us() - t0) / 1e6;
    s->msgs = jspub_acked(p);
    if (s->msgs != (uint64_t)m) {
        bench_err("raw nats: %llu PubAcks for %ld messages", (unsigned long long)s->msgs, m);
        goto done;
    }
    rc = 0;
done:
    jspub_close(p);
    free(mem);
    free(lens);
    return rc;
}

/* Publish every record of a claimed batch. */
static int
publish_rows(jspub_t *p, const outbox_batch_t *b)
{
    const char *hn[HDR_MAX], *hv[HDR_MAX];
    size_t i, k;

    for (i = 0; i < b->n; i++) {
        const outbox_record_t *r = &b->recs[i];
        jspub_msg_t msg;
        int nh = 0;

        for (k = 0; k < r->msg.nheaders && nh < HDR_MAX; k++, nh++) {
            hn[nh] = r->msg.headers[k].name;
            hv[nh] = r->msg.headers[k].value;
        }
        memset(&msg, 0, sizeof(msg));
        msg.subject = r->msg.topic;
        msg.id = r->id;
        msg.key = r->msg.key;
        msg.hnames = hn;
        msg.hvalues = hv;
        msg.nheaders = nh;
        msg.body = r->msg.body;
        msg.body_len = r->msg.body_len;
        if (jspub_send(p, &msg) != 0)
            return -1;
    }
    return 0;
}

static int
step_together(rawsql_t *c, const char *url, long batch, step_t *s)
{
    const outbox_batch_t *b;
    jspub_t *p = NULL;
    int64_t t0;
    int rc = -1;

    if (jspub_open(&p, url, batch) != 0)
        return -1;
    t0 = bench_now_us();
    for (;;) {
        if (bench_stopping())
            goto done;
        if (rawsql_claim(c, batch, &b) != 0)
            goto done;
        if (b->n == 0)
            break;
        s->msgs += (uint64_t)b->n;
        s->batches++;
        if (publish_rows(p, b) != 0 || jspub_complete(p, ACK_WAIT_MS) != 0 || rawsql_mark(c) != 0)
            goto done;
    }
    s->seconds = (double)(bench_now_us() - t0) / 1e6;
    rc = 0;
done:
    jspub_close(p);
    return rc;
}

static void
add_step(report_table_t *t, json_t *rows, const step_t *s)
{
    double mps = s->seconds > 0 ? (double)s->msgs / s->seconds : 0;
    json_t *row = json_pack("{s:s, s:I, s:I}", "step", s->name, "messages", (json_int_t)s->msgs,
                            "batches", (json_int_t)s->batches);

    report_row_begin(t);
    report_cell(t, "%s", s->name);
    report_cell(t, "%llu", (unsigned long long)s->msgs);
    report_cell(t, "%llu", (unsigned long long)s->batches);
    report_cell(t, "%.3f", s->seconds);
    report_cell(t, "%.0f", mps);
    report_json_num(row, "seconds", s->seconds);
    report_json_num(row, "msgs_per_s", mps);
    json_array_append_new(rows, row);
}

int
cmd_raw(bench_t *b, const bench_opts_t *o, json_t *doc)
{
    static const char *const hdr[] = {"step", "messages", "batches", "seconds", "msgs/s"};
    step_t sql = {"sql: claim + mark", 0, 0, 0}, nats = {"nats: js async publish", 0, 0, 0},
           both = {"claim + publish + mark", 0, 0, 0};
    bench_stream_t st;
    PGconn *admin = NULL;
    rawsql_t *c = NULL;
    report_table_t *t = NULL;
    json_t *rows = json_array();
    jsadm_t *js = NULL;
    uint64_t in_stream = 0;
    char *qtable = NULL, title[256];
    int rc = BENCH_EXIT_FAIL;

    memset(&st, 0, sizeof(st));
    if (rows == NULL || bench_schema_ready(b) != 0 || bench_stream_create(b, "raw", &st) != 0)
        goto done;
    if ((admin = db_connect(b->db, "raw admin")) == NULL ||
        (qtable = db_qtable(admin, b->schema)) == NULL ||
        rawsql_open(&c, b->db, b->schema, o->delete_delivered) != 0)
        goto done;
    if (db_empty(admin, qtable) != 0 ||
        db_preload(admin, qtable, st.topic, 0, o->messages, o->body_size, o->headers) != 0 ||
        db_checkpoint(admin) != 0)
        goto done;
    bench_info("raw: sql claim + mark, %ld messages, batch %ld", o->messages, o->relay_batch);
    if (step_sql(c, o->relay_batch, &sql) != 0)
        goto done;
    if (sql.msgs != (uint64_t)o->messages) {
        bench_err("raw sql: %llu rows claimed and marked of %ld preloaded",
                  (unsigned long long)sql.msgs, o->messages);
        goto done;
    }

    bench_info("raw: nats async publish, %ld messages, batch %ld", o->messages, o->relay_batch);
    if (step_nats(b->nats, st.topic, o->messages, o->relay_batch, o->body_size, o->headers,
                  &nats) != 0)
        goto done;

    if (db_empty(admin, qtable) != 0 ||
        db_preload(admin, qtable, st.topic, 0, o->messages, o->body_size, o->headers) != 0 ||
        db_checkpoint(admin) != 0)
        goto done;
    bench_info("raw: claim + publish + mark, %ld messages, batch %ld", o->messages, o->relay_batch);
    if (step_together(c, b->nats, o->relay_batch, &both) != 0)
        goto done;
    if (both.msgs != (uint64_t)o->messages) {
        bench_err("raw together: %llu of %ld messages went through", (unsigned long long)both.msgs,
                  o->messages);
        goto done;
    }
    if (jsadm_open(&js, b->nats) != 0 || jsadm_msgs(js, st.name, &in_stream) != 0)
        goto done;
    if (in_stream != 2 * (uint64_t)o->messages) {
        bench_err("raw: stream %s holds %llu messages, expected %llu", st.name,
                  (unsigned long long)in_stream, 2 * (unsigned long long)o->messages);
        goto done;
    }

    snprintf(title, sizeof(title), "raw: %ld messages, batch %ld, body %ld B, %ld headers",
             o->messages, o->relay_batch, o->body_size, o->headers);
    if ((t = report_table_new(title, 5, hdr, "lrrrr")) == NULL)
        goto done;
    add_step(t, rows, &sql);
    add_step(t, rows, &nats);
    add_step(t, rows, &both);
    report_note(t, "single thread each; claim and mark are liboutbox's PostgreSQL Store; "
                   "nats waits for every PubAck of a batch (js_PublishAsyncComplete)");
    report_table_print(t, stdout);
    json_object_set_new(doc, "results", rows);
    rows = NULL;
    rc = BENCH_EXIT_OK;
done:
    bench_stream_drop(b, &st);
    jsadm_close(js);
    report_table_free(t);
    json_decref(rows);
    free(qtable);
    rawsql_close(c);
    PQfinish(admin);
    return rc;
}
