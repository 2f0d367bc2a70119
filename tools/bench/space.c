/*
 * Free space of the server's data directory (see space.h). A remote
 * server's path may exist here too and name another disk, so the path is
 * measured only when the connection's server address is loopback (or
 * none: a Unix socket).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "space.h"
#include "util.h"

#define GB 1e9

int64_t
space_needed(long long rows)
{
    return rows > 0 ? (int64_t)rows * SPACE_BYTES_PER_ROW : 0;
}

int
space_check(PGconn *c, long long rows, const char *what)
{
    PGresult *r = PQexec(c, "SELECT setting, coalesce(host(inet_server_addr())"
                            " IN ('127.0.0.1', '::1'), true)"
                            " FROM pg_settings WHERE name = 'data_directory'");
    int64_t need = space_needed(rows), avail;
    struct statvfs sv;
    const char *dir;
    int rc = 0;

    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
        PQgetvalue(r, 0, 0)[0] == '\0') {
        bench_info("%s: free disk space not checked: the server does not show its data "
                   "directory to this user (needs ~%.1f GB)",
                   what, (double)need / GB);
        goto done;
    }
    dir = PQgetvalue(r, 0, 0);
    if (strcmp(PQgetvalue(r, 0, 1), "t") != 0) {
        bench_info("%s: free disk space not checked: the server is not on this machine "
                   "(needs ~%.1f GB in %s there)",
                   what, (double)need / GB, dir);
        goto done;
    }
    if (statvfs(dir, &sv) != 0) {
        bench_info("%s: free disk space not checked: statvfs(%s) failed: %s (needs ~%.1f GB)", what,
                   dir, strerror(errno), (double)need / GB);
        goto done;
    }
    avail = (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
    if (avail < need) {
        bench_err("%s: %.1f GB free in %s, %lld rows need %.1f GB: free space or give smaller "
                  "sizes",
                  what, (double)avail / GB, dir, rows, (double)need / GB);
        rc = -1;
        goto done;
    }
    bench_info("%s: %.1f GB free in %s (%.1f GB needed)", what, (double)avail / GB, dir,
               (double)need / GB);
done:
    PQclear(r);
    return rc;
}
