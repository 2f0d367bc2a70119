/*
 * Record batches: one growable array of records, one of headers and one byte
 * arena. A fill first reserves everything it needs, so pointers handed out
 * during the fill never move; memory is kept across resets.
 */
#include <stdlib.h>
#include <string.h>

#include "outbox/outbox.h"

void
outbox_batch_init(outbox_batch_t *b)
{
    memset(b, 0, sizeof(*b));
}

void
outbox_batch_reset(outbox_batch_t *b)
{
    b->n = 0;
    b->nhdrs = 0;
    b->arena_used = 0;
}

void
outbox_batch_free(outbox_batch_t *b)
{
    if (b == NULL)
        return;
    free(b->recs);
    free(b->hdrs);
    free(b->arena);
    outbox_batch_init(b);
}

static int
grow(void **p, size_t *cap, size_t need, size_t elem)
{
    size_t ncap;
    void *np;

    if (need <= *cap)
        return OUTBOX_OK;
    ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    np = realloc(*p, ncap * elem);
    if (np == NULL)
        return OUTBOX_ERR_NOMEM;
    *p = np;
    *cap = ncap;
    return OUTBOX_OK;
}

int
outbox_batch_reserve(outbox_batch_t *b, size_t nrecs, size_t nhdrs, size_t bytes)
{
    void *p;
    int rc;

    p = b->recs;
    if ((rc = grow(&p, &b->cap, b->n + nrecs, sizeof(outbox_record_t))) != OUTBOX_OK)
        return rc;
    b->recs = p;
    /* Headers and arena hold pointers from records already in the batch, so
     * they may only grow while the batch is empty. */
    if ((b->nhdrs + nhdrs > b->hdrs_cap || b->arena_used + bytes > b->arena_cap) && b->n != 0)
        return OUTBOX_ERR_INVALID;
    p = b->hdrs;
    if ((rc = grow(&p, &b->hdrs_cap, b->nhdrs + nhdrs, sizeof(outbox_header_t))) != OUTBOX_OK)
        return rc;
    b->hdrs = p;
    p = b->arena;
    if ((rc = grow(&p, &b->arena_cap, b->arena_used + bytes, 1)) != OUTBOX_OK)
        return rc;
    b->arena = p;
    return OUTBOX_OK;
}

outbox_record_t *
outbox_batch_push(outbox_batch_t *b)
{
    outbox_record_t *r;

    if (b->n >= b->cap)
        return NULL;
    r = &b->recs[b->n++];
    memset(r, 0, sizeof(*r));
    return r;
}

outbox_header_t *
outbox_batch_headers(outbox_batch_t *b, size_t n)
{
    outbox_header_t *h;

    if (b->nhdrs + n > b->hdrs_cap)
        return NULL;
    h = b->hdrs + b->nhdrs;
    b->nhdrs += n;
    return h;
}

void *
outbox_batch_alloc(outbox_batch_t *b, size_t len)
{
    void *p;

    if (b->arena_used + len > b->arena_cap)
        return NULL;
    p = b->arena + b->arena_used;
    b->arena_used += len;
    return p;
}

const char *
outbox_batch_strdup(outbox_batch_t *b, const char *s, size_t len)
{
    char *p = outbox_batch_alloc(b, len + 1);

    if (p == NULL)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}
