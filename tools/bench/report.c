/*
 * Table and JSON output. Tables are built first and printed whole, so a
 * failure half-way through a command prints nothing misleading.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "report.h"
#include "util.h"

#define CELL_MAX 64
#define NOTE_MAX 512

struct report_table {
    char title[256];
    int ncols;
    char align[REPORT_COLS_MAX];
    char headers[REPORT_COLS_MAX][CELL_MAX];
    char (*cells)[REPORT_COLS_MAX][CELL_MAX]; /* rows */
    int nrows, cap, cur_col;
    char (*notes)[NOTE_MAX];
    int nnotes, notes_cap;
    int nomem;
};

report_table_t *
report_table_new(const char *title, int ncols, const char *const *headers, const char *align)
{
    report_table_t *t = calloc(1, sizeof(*t));
    int i;

    if (t == NULL)
        return NULL;
    snprintf(t->title, sizeof(t->title), "%s", title);
    t->ncols = ncols < REPORT_COLS_MAX ? ncols : REPORT_COLS_MAX;
    for (i = 0; i < t->ncols; i++) {
        snprintf(t->headers[i], CELL_MAX, "%s", headers[i]);
        t->align[i] = align != NULL && align[i] == 'l' ? 'l' : align != NULL || i > 0 ? 'r' : 'l';
    }
    return t;
}

void
report_row_begin(report_table_t *t)
{
    void *p;
    int ncap;

    if (t == NULL || t->nomem)
        return;
    if (t->nrows == t->cap) {
        ncap = t->cap ? t->cap * 2 : 16;
        if ((p = realloc(t->cells, (size_t)ncap * sizeof(*t->cells))) == NULL) {
            t->nomem = 1;
            return;
        }
        t->cells = p;
        t->cap = ncap;
    }
    memset(t->cells[t->nrows], 0, sizeof(t->cells[t->nrows]));
    t->nrows++;
    t->cur_col = 0;
}

void
report_cell(report_table_t *t, const char *fmt, ...)
{
    va_list ap;

    if (t == NULL || t->nomem || t->nrows == 0 || t->cur_col >= t->ncols)
        return;
    va_start(ap, fmt);
    vsnprintf(t->cells[t->nrows - 1][t->cur_col++], CELL_MAX, fmt, ap);
    va_end(ap);
}

void
report_note(report_table_t *t, const char *fmt, ...)
{
    va_list ap;
    void *p;
    int ncap;

    if (t == NULL || t->nomem)
        return;
    if (t->nnotes == t->notes_cap) {
        ncap = t->notes_cap ? t->notes_cap * 2 : 4;
        if ((p = realloc(t->notes, (size_t)ncap * sizeof(*t->notes))) == NULL) {
            t->nomem = 1;
            return;
        }
        t->notes = p;
        t->notes_cap = ncap;
    }
    va_start(ap, fmt);
    vsnprintf(t->notes[t->nnotes++], NOTE_MAX, fmt, ap);
    va_end(ap);
}

static void
put_cell(FILE *out, int col, char align, size_t width, const char *text)
{
    fprintf(out, align == 'l' ? "%s%-*s" : "%s%*s", col > 0 ? "  " : "", (int)width, text);
}

void
report_table_print(const report_table_t *t, FILE *out)
{
    size_t w[REPORT_COLS_MAX];
    int r, c;

    if (t == NULL)
        return;
    if (t->nomem) {
        fprintf(out, "%s: (out of memory building the table)\n", t->title);
        return;
    }
    for (c = 0; c < t->ncols; c++) {
        w[c] = strlen(t->headers[c]);
        for (r = 0; r < t->nrows; r++)
            if (strlen(t->cells[r][c]) > w[c])
                w[c] = strlen(t->cells[r][c]);
    }
    fprintf(out, "\n%s\n", t->title);
    for (c = 0; c < t->ncols; c++)
        put_cell(out, c, t->align[c], w[c], t->headers[c]);
    fputc('\n', out);
    for (c = 0; c < t->ncols; c++) {
        size_t i;

        fputs(c == 0 ? "" : "  ", out);
        for (i = 0; i < w[c]; i++)
            fputc('-', out);
    }
    fputc('\n', out);
    for (r = 0; r < t->nrows; r++) {
        for (c = 0; c < t->ncols; c++)
            put_cell(out, c, t->align[c], w[c], t->cells[r][c]);
        fputc('\n', out);
    }
    for (r = 0; r < t->nnotes; r++)
        fprintf(out, "note: %s\n", t->notes[r]);
    fflush(out);
}

void
report_table_free(report_table_t *t)
{
    if (t == NULL)
        return;
    free(t->cells);
    free(t->notes);
    free(t);
}

int
report_json_write(const json_t *doc, const char *path)
{
    FILE *f = fopen(path, "w");
    int rc = 0;

    if (f == NULL) {
        bench_err("--json %s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (json_dumpf(doc, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0 || fputc('\n', f) == EOF)
        rc = -1;
    if (fclose(f) != 0)
        rc = -1;
    if (rc != 0)
        bench_err("--json %s: write failed: %s", path, strerror(errno));
    return rc;
}

void
report_json_num(json_t *obj, const char *key, double v)
{
    json_object_set_new(obj, key, isfinite(v) ? json_real(v) : json_null());
}

static json_t *
list_json(const long *v, int n)
{
    json_t *a = json_array();
    int i;

    for (i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

json_t *
report_params_json(const bench_opts_t *o)
{
    json_t *p = json_object(), *ra = json_array();
    int i;

    for (i = 0; i < o->nrelay_args; i++)
        json_array_append_new(ra, json_string(o->relay_args[i]));
    json_object_set_new(p, "connections", list_json(o->connections, o->nconnections));
    json_object_set_new(p, "batch", json_integer(o->batch));
    json_object_set_new(p, "seconds", json_real(o->seconds));
    json_object_set_new(p, "body_size", json_integer(o->body_size));
    json_object_set_new(p, "headers", json_integer(o->headers));
    json_object_set_new(p, "api",
                        json_string(o->api == BENCH_API_SQL ? "sql"
                                    : o->api == BENCH_API_C ? "c"
                                                            : "both"));
    json_object_set_new(p, "rate", json_real(o->rate));
    json_object_set_new(p, "jitter", json_boolean(o->jitter));
    json_object_set_new(p, "grace", json_real(o->grace));
    json_object_set_new(p, "workers", list_json(o->workers, o->nworkers));
    json_object_set_new(p, "nats_mode", json_string(o->nats_core ? "core" : "jetstream"));
    json_object_set_new(p, "batch_size", json_integer(o->relay_batch));
    json_object_set_new(p, "messages", json_integer(o->messages));
    json_object_set_new(p, "timeout", json_real(o->timeout));
    json_object_set_new(p, "relay_args", ra);
    json_object_set_new(p, "delete_delivered", json_boolean(o->delete_delivered));
    json_object_set_new(p, "repeat", json_integer(o->repeat));
    if (o->cmd == BENCH_CLAIMCOST || o->cmd == BENCH_REPORT) {
        json_object_set_new(p, "delivered", list_json(o->delivered, o->ndelivered));
        json_object_set_new(p, "rounds", json_integer(o->rounds));
    }
    if (o->cmd == BENCH_REPORT) {
        json_object_set_new(p, "quick", json_boolean(o->quick));
        json_object_set_new(p, "claimcost", json_boolean(!o->no_claimcost));
    }
    return p;
}
