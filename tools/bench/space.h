/*
 * Free disk space where PostgreSQL keeps its data, checked before a command
 * grows a table by gigabytes (claimcost). The data directory comes from the
 * server (pg_settings: superuser or pg_read_all_settings) and is measured
 * here with statvfs(), so the figure is known only for a server on this
 * machine reached over loopback or a Unix socket; otherwise the check says
 * so in one line and does not refuse.
 */
#ifndef BENCH_SPACE_H
#define BENCH_SPACE_H

#include <stdint.h>

#include <libpq-fe.h>

/* Per row of claimcost's table (256 B body, 2 headers): ~600 B measured
 * with its indexes, doubled for WAL and VACUUM; 10M rows need 12 GB. */
#define SPACE_BYTES_PER_ROW 1200

/* Bytes needed for a table of rows rows. */
int64_t space_needed(long long rows);

/* 0 when at least space_needed(rows) bytes are free (or the figure is not
 * known: said so); -1 when fewer are (one-line error naming the directory,
 * the free and the needed GB). what names the caller in messages. */
int space_check(PGconn *c, long long rows, const char *what);

#endif
