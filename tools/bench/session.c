/*
 * Session: names, workdir, schema and streams of one outboxbench run.
 * The schema is bench_<pid> so concurrent runs (a CI job next to a
 * developer's run) never share a table; streams and subjects carry the
 * pid as well.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "jsadmin.h"
#include "relay.h"
#include "session.h"
#include "util.h"

int
session_open(bench_t *b, const bench_opts_t *o, const char *db, const char *nats)
{
    char dir[PATH_MAX];

    memset(b, 0, sizeof(*b));
    b->o = o;
    b->db = db;
    b->nats = nats;
    snprintf(b->tag, sizeof(b->tag), "%ld", (long)getpid());
    snprintf(b->schema, sizeof(b->schema), "bench_%s", b->tag);
    if (o->outboxd != NULL) {
        snprintf(b->outboxd, sizeof(b->outboxd), "%s", o->outboxd);
    } else {
        if (bench_exe_dir(dir, sizeof(dir)) != 0)
            return -1;
        snprintf(b->outboxd, sizeof(b->outboxd), "%s/outboxd", dir);
    }
    if (access(b->outboxd, X_OK) != 0) {
        bench_err("outboxd %s: %s (give --outboxd PATH)", b->outboxd, strerror(errno));
        return -1;
    }
    snprintf(b->workdir, sizeof(b->workdir), "/tmp/outboxbench-run.XXXXXX");
    if (mkdtemp(b->workdir) == NULL) {
        bench_err("mkdtemp(%s) failed: %s", b->workdir, strerror(errno));
        b->workdir[0] = '\0';
        return -1;
    }
    return 0;
}

int
bench_schema_ready(bench_t *b)
{
    if (b->migrated)
        return 0;
    b->migrated = 1; /* from here on, close drops the schema, even a partial one */
    bench_info("schema %s: outboxd migrate", b->schema);
    return relay_migrate(b);
}

void
bench_stream_names(bench_t *b, const char *label, bench_stream_t *s)
{
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "BENCH_%s_%s", b->tag, label);
    snprintf(s->subjects, sizeof(s->subjects), "bench.%s.%s.>", b->tag, label);
    snprintf(s->topic, sizeof(s->topic), "bench.%s.%s.msg", b->tag, label);
}

int
bench_stream_create(bench_t *b, const char *label, bench_stream_t *s)
{
    bench_stream_names(b, label, s);
    if (relay_stream_add(b, s->name, s->subjects) != 0)
        return -1;
    s->created = 1;
    return 0;
}

void
bench_stream_drop(bench_t *b, bench_stream_t *s)
{
    jsadm_t *a = NULL;

    if (!s->created)
        return;
    if (jsadm_open(&a, b->nats) == 0) {
        if (jsadm_delete(a, s->name) == 0)
            s->created = 0;
        jsadm_close(a);
    }
    if (s->created)
        bench_err("stream %s was not deleted: delete it by hand", s->name);
    s->created = 0;
}

static void
drop_schema(bench_t *b)
{
    PGconn *c;
    char sql[256], *q;

    if ((c = db_connect(b->db, "drop schema")) == NULL)
        return;
    if ((q = db_qident(c, b->schema)) != NULL) {
        snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", q);
        if (db_exec(c, sql) != 0)
            bench_err("schema %s was not dropped: drop it by hand", b->schema);
        free(q);
    }
    PQfinish(c);
}

static void
remove_workdir(const char *dir)
{
    char path[PATH_MAX + 300];
    struct dirent *de;
    DIR *d;

    if ((d = opendir(dir)) != NULL) {
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            unlink(path);
        }
        closedir(d);
    }
    if (rmdir(dir) != 0)
        bench_err("rmdir %s: %s", dir, strerror(errno));
}

void
session_close(bench_t *b, int failed)
{
    if (b->migrated)
        drop_schema(b);
    b->migrated = 0;
    if (b->workdir[0] == '\0')
        return;
    if (failed && b->failed_keep)
        bench_err("outboxd logs kept in %s", b->workdir);
    else
        remove_workdir(b->workdir);
    b->workdir[0] = '\0';
}
