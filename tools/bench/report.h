/*
 * Output: aligned text tables on stdout (text columns left, figures
 * right-aligned, a title line and notes under the table) and the JSON
 * document written by --json. Cells are copied; a table owns its rows.
 */
#ifndef BENCH_REPORT_H
#define BENCH_REPORT_H

#include <stdio.h>

#include <jansson.h>

#include "options.h"

#define REPORT_COLS_MAX 16

typedef struct report_table report_table_t;

/* align: one letter per column, 'l' left or 'r' right (NULL: first left,
 * the rest right). NULL on out of memory. */
report_table_t *report_table_new(const char *title, int ncols, const char *const *headers,
                                 const char *align);
/* Append a row; cells printf-formatted one by one with report_cell(). */
void report_row_begin(report_table_t *t);
void report_cell(report_table_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void report_note(report_table_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void report_table_print(const report_table_t *t, FILE *out);
void report_table_free(report_table_t *t); /* NULL ok */

/* Write doc to path (pretty, sorted as inserted); 0 or -1 (error printed). */
int report_json_write(const json_t *doc, const char *path);

/* Add a number that may be absent (NaN -> null). */
void report_json_num(json_t *obj, const char *key, double v);

/* The options a run used, as a new JSON object (caller owns it). */
json_t *report_params_json(const bench_opts_t *o);

#endif
