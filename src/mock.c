/*
 * In-memory Store and scriptable Broker (include/outbox/mock.h). The mock
 * store applies the PostgreSQL store's rules on a plain array so that logic
 * built on the interfaces can be tested without servers; its clock is
 * now_ms, moved by the test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/mock.h"

#define MOCK_FAIL(m)                                                                               \
    do {                                                                                           \
        if ((m)->fail_next > 0) {                                                                  \
            (m)->fail_next--;                                                                      \
            snprintf((m)->base.err, sizeof((m)->base.err), "mock store: injected failure");        \
            return (m)->fail_status;                                                               \
        }                                                                                          \
    } while (0)

static size_t
record_bytes(const outbox_mock_record_t *r)
{
    size_t i, len = sizeof(r->id) + strlen(r->topic) + strlen(r->key) + strlen(r->locked_by) +
                    strlen(r->last_error) + r->body_len + 5;

    for (i = 0; i < r->nhdr; i++)
        len += strlen(r->hdr[i].name) + strlen(r->hdr[i].value) + 2;
    return len;
}

static void
copy_out(outbox_batch_t *b, const outbox_mock_record_t *r)
{
    outbox_record_t *o = outbox_batch_push(b);
    outbox_header_t *h;
    size_t i;

    memcpy(o->id, r->id, sizeof(o->id));
    o->seq = r->seq;
    o->state = r->state;
    o->attempts = r->attempts;
    o->crashes = r->crashes;
    o->locked_on = r->locked_on_ms * 1000;
    o->processed_on = r->processed_on_ms * 1000;
    o->last_attempt_on = r->last_attempt_ms * 1000;
    o->msg.topic = outbox_batch_strdup(b, r->topic, strlen(r->topic));
    o->msg.key = r->key[0] ? outbox_batch_strdup(b, r->key, strlen(r->key)) : NULL;
    o->msg.body = outbox_batch_alloc(b, r->body_len + 1);
    memcpy((void *)o->msg.body, r->body, r->body_len);
    o->msg.body_len = r->body_len;
    o->locked_by =
        r->locked_by[0] ? outbox_batch_strdup(b, r->locked_by, strlen(r->locked_by)) : NULL;
    o->last_error =
        r->last_error[0] ? outbox_batch_strdup(b, r->last_error, strlen(r->last_error)) : NULL;
    h = outbox_batch_headers(b, r->nhdr);
    for (i = 0; i < r->nhdr; i++) {
        h[i].name = outbox_batch_strdup(b, r->hdr[i].name, strlen(r->hdr[i].name));
        h[i].value = outbox_batch_strdup(b, r->hdr[i].value, strlen(r->hdr[i].value));
    }
    o->msg.headers = r->nhdr ? h : NULL;
    o->msg.nheaders = r->nhdr;
}

/* Fill out with the records for which keep[i] is set, in seq order (the
 * array is kept in seq order). */
static int
fill(outbox_mock_store_t *m, outbox_batch_t *out, const unsigned char *keep)
{
    size_t i, nrec = 0, nhdr = 0, bytes = 0;
    int rc;

    outbox_batch_reset(out);
    for (i = 0; i < m->n; i++) {
        if (!keep[i])
            continue;
        nrec++;
        nhdr += m->recs[i].nhdr;
        bytes += record_bytes(&m->recs[i]);
    }
    if ((rc = outbox_batch_reserve(out, nrec, nhdr, bytes)) != OUTBOX_OK)
        return rc;
    for (i = 0; i < m->n; i++)
        if (keep[i])
            copy_out(out, &m->recs[i]);
    return OUTBOX_OK;
}

/* Per-key ordering: is every pending record of r's key up to the newest
 * candidate of that key a candidate too? */
static bool
key_prefix_whole(const outbox_mock_store_t *m, const unsigned char *cand, size_t idx)
{
    const char *key = m->recs[idx].key;
    int64_t mx = 0;
    size_t i;

    for (i = 0; i < m->n; i++)
        if (cand[i] && strcmp(m->recs[i].key, key) == 0 && m->recs[i].seq > mx)
            mx = m->recs[i].seq;
    for (i = 0; i < m->n; i++) {
        const outbox_mock_record_t *r = &m->recs[i];

        if (r->state == OUTBOX_STATE_PENDING && strcmp(r->key, key) == 0 && r->seq <= mx &&
            !cand[i])
            return false;
    }
    return true;
}

static int
mock_claim(outbox_store_t *s, const char *lock_id, int limit, outbox_batch_t *out)
{
    outbox_mock_store_t *m = (outbox_mock_store_t *)s;
    unsigned char *keep;
    size_t i, j, suspect = SIZE_MAX;
    int got = 0, rc;

    m->calls_claim++;
    MOCK_FAIL(m);
    keep = calloc(m->n + 1, 1);
    if (keep == NULL)
        return OUTBOX_ERR_NOMEM;
    /* candidates: oldest due unlocked pending records (the array is in seq order) */
    for (i = 0; i < m->n && got < limit; i++) {
        outbox_mock_record_t *r = &m->recs[i];

        if (r->state != OUTBOX_STATE_PENDING || r->locked_by[0] != '\0' ||
            r->next_attempt_ms > m->now_ms)
            continue;
        keep[i] = 1;
        got++;
    }
    if (m->per_key_order) {
        unsigned char *cand = malloc(m->n + 1);

        if (cand == NULL) {
            free(keep);
            return OUTBOX_ERR_NOMEM;
        }
        memcpy(cand, keep, m->n + 1);
        for (i = 0; i < m->n; i++)
            if (cand[i] && m->recs[i].key[0] != '\0' && !key_prefix_whole(m, cand, i))
                keep[i] = 0;
        free(cand);
    }
    /* the first suspect heading its key goes alone */
    for (i = 0; i < m->n && suspect == SIZE_MAX; i++) {
        bool head = true;

        if (!keep[i] || m->recs[i].crashes == 0)
            continue;
        for (j = 0; m->per_key_order && m->recs[i].key[0] != '\0' && j < i; j++)
            if (keep[j] && strcmp(m->recs[j].key, m->recs[i].key) == 0)
                head = false;
        if (head)
            suspect = i;
    }
    for (i = 0; i < m->n; i++) {
        if (suspect != SIZE_MAX)
            keep[i] = i == suspect;
        if (keep[i]) {
            snprintf(m->recs[i].locked_by, sizeof(m->recs[i].locked_by), "%s", lock_id);
            m->recs[i].locked_on_ms = m->now_ms;
        }
    }
    rc = fill(m, out, keep);
    free(keep);
    return rc;
}

static int
mock_get_by_lock_id(outbox_store_t *s, const char *lock_id, outbox_batch_t *out)
{
    outbox_mock_store_t *m = (outbox_mock_store_t *)s;
    unsigned char *keep;
    size_t i;
    int rc;

    MOCK_FAIL(m);
    keep = calloc(m->n + 1, 1);
    if (keep == NULL)
        return OUTBOX_ERR_NOMEM;
    for (i = 0; i < m->n; i++)
        keep[i] = strcmp(m->recs[i].locked_by, lock_id) == 0;
    rc = fill(m, out, keep);
    free(keep);
    return rc;
}

static int
mock_mark(outbox_store_t *s, const char *lock_id, const outbox_mark_t *marks, size_t n,
          int64_t *updated)
{
    outbox_mock_store_t *m = (outbox_mock_store_t *)s;
    int64_t count = 0;
    size_t i;

    m->calls_mark++;
    m->last_mark_n = n;
    MOCK_FAIL(m);
    for (i = 0; i < n; i++) {
        outbox_mock_record_t *r = outbox_mock_store_find(m, marks[i].id);

        if (r == NULL || r->state != OUTBOX_STATE_PENDING)
            continue;
        if (marks[i].kind != OUTBOX_MARK_DELIVERED && strcmp(r->locked_by, lock_id) != 0)
            continue;
        r->locked_by[0] = '\0';
        r->locked_on_ms = 0;
        if (marks[i].charge > 0) {
            r->attempts += marks[i].charge;
            r->last_attempt_ms = m->now_ms;
        }
        if (marks[i].error != NULL)
            snprintf(r->last_error, sizeof(r->last_error), "%s", marks[i].error);
        switch (marks[i].kind) {
        case OUTBOX_MARK_DELIVERED:
            r->state = OUTBOX_STATE_DELIVERED;
            r->processed_on_ms = m->now_ms;
            break;
        case OUTBOX_MARK_RETRY: r->next_attempt_ms = m->now_ms + marks[i].retry_delay_ms; break;
        case OUTBOX_MARK_DEAD:
            r->state = OUTBOX_STATE_MAX_ATTEMPTS_REACHED;
            r->processed_on_ms = m->now_ms;
            break;
        case OUTBOX_MARK_RELEASE: break;
        }
        count++;
    }
    if (updated != NULL)
        *updated = count;
    return OUTBOX_OK;
}

static int
mock_clear_stale_locks(outbox_store_t *s, int64_t max_lock_ms, int64_t *released)
{
    outbox_mock_store_t *m = (outbox_mock_store_t *)s;
    int64_t count = 0;
    size_t i;

    m->calls_clear_stale++;
    MOCK_FAIL(m);
    for (i = 0; i < m->n; i++) {
        outbox_mock_record_t *r = &m->recs[i];

        if (r->state == OUTBOX_STATE_PENDING && r->locked_by[0] != '\0' &&
            r->locked_on_ms < m->now_ms - max_lock_ms) {
            r->locked_by[0] = '\0';
            r->locked_on_ms = 0;
            count++;
        }
    }
    if (released != NULL)
        *released = count;
    return OUTBOX_OK;
}

static int
mock_clear_locks_by_lock_id(outbox_store_t *s, const char *lock_id, int64_t *released)
{
    outbox_mock_store_t *m = (outbox_mock_store_t *)s;
    int64_t count = 0;
    size_t i;

    m->calls_clear_by_id++;
    MOCK_FAIL(m);
    for (i = 0; i < m->n; i++) {
        if (strcmp(m->recs[i].locked_by, lock_id) == 0) {
            m->recs[i].locked_by[0] = '\0';
            m->recs[i].locked_on_ms = 0;
            count++;
        }
    }
    if (released != NULL)
        *released = count;
    return OUTBOX_OK;
}

static int
mock_release_crashed(outbox_store_t *s, const char *lock_id, int64_t lo, int64_t hi,
                     int crash_limit, int64_t *released, int64_t *parked)
{
    outbox_mock_store_t *m = (outbox_mock_store_t *)s;
    int64_t count = 0, dead = 0;
    size_t i;

    m->calls_crashed++;
    MOCK_FAIL(m);
    for (i = 0; i < m->n; i++) {
        outbox_mock_record_t *r = &m->recs[i];

        if (r->state != OUTBOX_STATE_PENDING ||
            (strcmp(r->locked_by, lock_id) != 0 &&
             (r->locked_by[0] != '\0' || lo <= 0 || r->seq < lo || r->seq > hi)))
            continue;
        r->locked_by[0] = '\0';
        r->locked_on_ms = 0;
        /* a full count only alone in flight; a batch's records: suspects */
        r->crashes = lo > 0 && lo == hi ? r->crashes + 1 : (r->crashes > 0 ? r->crashes : 1);
        count++;
        if (crash_limit > 0 && r->crashes >= crash_limit) {
            r->state = OUTBOX_STATE_MAX_ATTEMPTS_REACHED;
            r->processed_on_ms = m->now_ms;
            snprintf(r->last_error, sizeof(r->last_error),
                     "worker died while processing (%d times)", (int)r->crashes);
            dead++;
        }
    }
    if (released != NULL)
        *released = count;
    if (parked != NULL)
        *parked = dead;
    return OUTBOX_OK;
}

static void
record_free(outbox_mock_record_t *r)
{
    size_t i;

    free(r->body);
    for (i = 0; i < r->nhdr; i++) {
        free((char *)r->hdr[i].name);
        free((char *)r->hdr[i].value);
    }
}

static int
mock_purge(outbox_store_t *s, int64_t retention_ms, int64_t dead_retention_ms, int limit,
           int64_t *deleted)
{
    outbox_mock_store_t *m = (outbox_mock_store_t *)s;
    size_t i, j = 0;
    int64_t count = 0;

    m->calls_purge++;
    MOCK_FAIL(m);
    for (i = 0; i < m->n; i++) {
        outbox_mock_record_t *r = &m->recs[i];
        int64_t keep_ms = r->state == OUTBOX_STATE_DELIVERED              ? retention_ms
                          : r->state == OUTBOX_STATE_MAX_ATTEMPTS_REACHED ? dead_retention_ms
                                                                          : -1;

        if (count < limit && keep_ms >= 0 && r->processed_on_ms < m->now_ms - keep_ms) {
            record_free(r);
            count++;
            continue;
        }
        m->recs[j++] = *r;
    }
    m->n = j;
    if (deleted != NULL)
        *deleted = count;
    return OUTBOX_OK;
}

static void
mock_store_destroy(outbox_store_t *s)
{
    outbox_mock_store_t *m = (outbox_mock_store_t *)s;
    size_t i;

    for (i = 0; i < m->n; i++)
        record_free(&m->recs[i]);
    free(m->recs);
    free(m);
}

static const outbox_store_ops_t mock_store_ops = {
    .claim = mock_claim,
    .get_by_lock_id = mock_get_by_lock_id,
    .mark = mock_mark,
    .clear_stale_locks = mock_clear_stale_locks,
    .clear_locks_by_lock_id = mock_clear_locks_by_lock_id,
    .release_crashed = mock_release_crashed,
    .purge = mock_purge,
    .destroy = mock_store_destroy,
};

int
outbox_mock_store_create(outbox_mock_store_t **out)
{
    outbox_mock_store_t *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return OUTBOX_ERR_NOMEM;
    m->base.ops = &mock_store_ops;
    m->next_seq = 1;
    m->fail_status = OUTBOX_ERR_UNREACHABLE;
    *out = m;
    return OUTBOX_OK;
}

int
outbox_mock_store_add(outbox_mock_store_t *m, const char *topic, const char *key, const char *body)
{
    outbox_mock_record_t *r;

    if (m->n == m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 16;
        outbox_mock_record_t *nr = realloc(m->recs, ncap * sizeof(*nr));

        if (nr == NULL)
            return -1;
        m->recs = nr;
        m->cap = ncap;
    }
    r = &m->recs[m->n];
    memset(r, 0, sizeof(*r));
    r->seq = m->next_seq++;
    snprintf(r->id, sizeof(r->id), "00000000-0000-4000-8000-%012lld", (long long)r->seq);
    snprintf(r->topic, sizeof(r->topic), "%s", topic);
    snprintf(r->key, sizeof(r->key), "%s", key ? key : "");
    r->body_len = strlen(body);
    r->body = malloc(r->body_len + 1);
    if (r->body == NULL)
        return -1;
    memcpy(r->body, body, r->body_len + 1);
    r->next_attempt_ms = m->now_ms;
    return (int)m->n++;
}

outbox_mock_record_t *
outbox_mock_store_find(outbox_mock_store_t *m, const char *id)
{
    size_t i;

    for (i = 0; i < m->n; i++)
        if (strcmp(m->recs[i].id, id) == 0)
            return &m->recs[i];
    return NULL;
}

size_t
outbox_mock_store_count(const outbox_mock_store_t *m, outbox_state_t st)
{
    size_t i, count = 0;

    for (i = 0; i < m->n; i++)
        count += m->recs[i].state == st;
    return count;
}

/* ---- broker ---- */

static int
mock_publish(outbox_broker_t *b, const outbox_record_t *recs, size_t n, outbox_pub_result_t *res)
{
    outbox_mock_broker_t *m = (outbox_mock_broker_t *)b;
    size_t i;

    m->calls++;
    for (i = 0; i < n; i++) {
        memset(&res[i], 0, sizeof(res[i]));
        if (m->down) {
            res[i].status = OUTBOX_PUB_NOT_SENT;
            snprintf(res[i].error, sizeof(res[i].error), "mock broker: down");
            continue;
        }
        res[i].status = m->verdict ? m->verdict(&recs[i], m->verdict_arg) : OUTBOX_PUB_OK;
        if (res[i].status != OUTBOX_PUB_OK) {
            snprintf(res[i].error, sizeof(res[i].error), "mock broker: verdict %d",
                     (int)res[i].status);
            continue;
        }
        if (m->nsent == m->sent_cap) {
            size_t ncap = m->sent_cap ? m->sent_cap * 2 : 64;
            void *p = realloc(m->sent_ids, ncap * sizeof(*m->sent_ids));

            if (p == NULL)
                return OUTBOX_ERR_NOMEM;
            m->sent_ids = p;
            m->sent_cap = ncap;
        }
        memcpy(m->sent_ids[m->nsent++], recs[i].id, OUTBOX_ID_LEN + 1);
        m->published++;
    }
    if (m->down) {
        snprintf(b->err, sizeof(b->err), "mock broker: down");
        return OUTBOX_ERR_UNREACHABLE;
    }
    return OUTBOX_OK;
}

static int
mock_publish_dead(outbox_broker_t *b, const char *subject, const outbox_record_t *recs,
                  const char *const *reasons, size_t n, outbox_pub_result_t *res)
{
    outbox_mock_broker_t *m = (outbox_mock_broker_t *)b;
    size_t i;

    (void)subject;
    m->dead_calls++;
    for (i = 0; i < n; i++) {
        memset(&res[i], 0, sizeof(res[i]));
        res[i].status = m->down ? OUTBOX_PUB_NOT_SENT : m->dead_verdict;
        if (res[i].status != OUTBOX_PUB_OK) {
            snprintf(res[i].error, sizeof(res[i].error), "mock broker: dead verdict %d",
                     (int)res[i].status);
            continue;
        }
        if (m->ndead == m->dead_cap) {
            size_t ncap = m->dead_cap ? m->dead_cap * 2 : 16;
            void *p = realloc(m->dead_ids, ncap * sizeof(*m->dead_ids)),
                 *q = p ? realloc(m->dead_reasons, ncap * sizeof(*m->dead_reasons)) : NULL;

            if (p != NULL)
                m->dead_ids = p;
            if (q == NULL)
                return OUTBOX_ERR_NOMEM;
            m->dead_reasons = q;
            m->dead_cap = ncap;
        }
        memcpy(m->dead_ids[m->ndead], recs[i].id, OUTBOX_ID_LEN + 1);
        snprintf(m->dead_reasons[m->ndead], sizeof(m->dead_reasons[0]), "%s",
                 reasons[i] != NULL ? reasons[i] : "");
        m->ndead++;
    }
    if (m->down) {
        snprintf(b->err, sizeof(b->err), "mock broker: down");
        return OUTBOX_ERR_UNREACHABLE;
    }
    return OUTBOX_OK;
}

static void
mock_broker_destroy(outbox_broker_t *b)
{
    outbox_mock_broker_t *m = (outbox_mock_broker_t *)b;

    free(m->sent_ids);
    free(m->dead_ids);
    free(m->dead_reasons);
    free(m);
}

static const outbox_broker_ops_t mock_broker_ops = {
    .publish = mock_publish,
    .publish_dead = mock_publish_dead,
    .destroy = mock_broker_destroy,
};

int
outbox_mock_broker_create(outbox_mock_broker_t **out)
{
    outbox_mock_broker_t *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return OUTBOX_ERR_NOMEM;
    m->base.ops = &mock_broker_ops;
    *out = m;
    return OUTBOX_OK;
}

int
outbox_mock_store_add_header(outbox_mock_store_t *m, int idx, const char *name, const char *value)
{
    outbox_mock_record_t *r;

    if (idx < 0 || (size_t)idx >= m->n)
        return -1;
    r = &m->recs[idx];
    if (r->nhdr == sizeof(r->hdr) / sizeof(r->hdr[0]))
        return -1;
    r->hdr[r->nhdr].name = strdup(name);
    r->hdr[r->nhdr].value = strdup(value);
    if (r->hdr[r->nhdr].name == NULL || r->hdr[r->nhdr].value == NULL)
        return -1;
    r->nhdr++;
    return 0;
}
