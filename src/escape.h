/*
 * Text taken from rows, servers or the command line, made safe to print:
 * one line, no terminal control sequences, valid UTF-8. Control characters
 * become \n, \r, \t or \xNN; bytes that are not UTF-8 become \xNN; C1
 * controls and invisible characters that reorder or hide text (zero-width,
 * bidirectional overrides, BOM) become \uXXXX; with
 * OUTBOX_ESCAPE_BACKSLASH a '\' becomes "\\", so the text shown maps back
 * to the bytes sent. Valid UTF-8 (accented letters, CJK) is kept as is.
 */
#ifndef OUTBOX_ESCAPE_H
#define OUTBOX_ESCAPE_H

#include <stddef.h>
#include <stdio.h>

#define OUTBOX_ESCAPE_BACKSLASH 0x1

/*
 * Write src (len bytes; a NUL byte is escaped too) escaped to dst, at most
 * dstlen - 1 bytes and NUL-terminated; an escape or a UTF-8 character is
 * never cut. Returns how many bytes of src were written: less than len
 * when dst was too small.
 */
size_t outbox_escape(char *dst, size_t dstlen, const char *src, size_t len, unsigned flags);

/* Bytes in the UTF-8 character at s (n bytes left): 1 to 4, or 0 when s
 * does not start a well-formed one (RFC 3629). */
size_t outbox_utf8_len(const unsigned char *s, size_t n);

/*
 * fprintf() to f with the formatted text escaped as above, line breaks
 * kept: for diagnostics that quote what a user, a file or a row supplied.
 * Returns the bytes written or -1.
 */
int outbox_fprintf_safe(FILE *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
