/*
 * JetStream stream state for the benchmark: the message count a drain
 * waits for (jsStreamInfo), purge between runs, delete at the end. One
 * connection, no reconnects; each call prints one line on failure.
 */
#ifndef BENCH_JSADMIN_H
#define BENCH_JSADMIN_H

#include <stdint.h>

typedef struct jsadm jsadm_t;

int jsadm_open(jsadm_t **out, const char *url);
int jsadm_msgs(jsadm_t *a, const char *stream, uint64_t *out);
int jsadm_purge(jsadm_t *a, const char *stream);
int jsadm_delete(jsadm_t *a, const char *stream);
void jsadm_close(jsadm_t *a); /* NULL ok */

#endif
