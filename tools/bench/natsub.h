/*
 * A core NATS subscription that timestamps arrivals. Message bodies start
 * with their decimal index (see producer.h); the first arrival of index i
 * stores CLOCK_MONOTONIC microseconds in recv_us[i], later ones count as
 * duplicates. The callback runs on a cnats thread; counters and stamps are
 * atomics, so the main thread may poll them while messages arrive.
 */
#ifndef BENCH_NATSUB_H
#define BENCH_NATSUB_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct natsub natsub_t;

/* Connect to url, subscribe to subject (unlimited pending, so a burst is
 * never dropped as a slow consumer) and flush, so the server has the
 * interest before anything is published. nidx: size of the index space.
 * 0 or -1 (error printed). */
int natsub_open(natsub_t **out, const char *url, const char *subject, size_t nidx);

uint64_t natsub_unique(const natsub_t *s);     /* distinct indexes received */
uint64_t natsub_duplicates(const natsub_t *s); /* repeats of an index */
uint64_t natsub_foreign(const natsub_t *s);    /* bodies without a valid index */
/* Receive time of index i, 0 when not (yet) received. */
int64_t natsub_recv_us(const natsub_t *s, size_t i);

/* Stop delivery (drain, bounded), close, free. NULL ok. */
void natsub_close(natsub_t *s);

#endif
