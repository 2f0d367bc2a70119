/*
 * outbox_escape(): see escape.h. One pass, no allocation; the UTF-8 check
 * follows RFC 3629 (no overlongs, no surrogates, nothing past U+10FFFF).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "escape.h"

size_t
outbox_utf8_len(const unsigned char *s, size_t n)
{
    size_t need, i;
    unsigned char lo = 0x80, hi = 0xBF;

    if (n == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        need = 2;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        need = 3, lo = s[0] == 0xE0 ? 0xA0 : 0x80, hi = s[0] == 0xED ? 0x9F : 0xBF;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        need = 4, lo = s[0] == 0xF0 ? 0x90 : 0x80, hi = s[0] == 0xF4 ? 0x8F : 0xBF;
    else
        return 0;
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return need;
}

/* The code point of the well-formed UTF-8 character s of n bytes. */
static unsigned
code_point(const unsigned char *s, size_t n)
{
    unsigned cp = n == 2 ? s[0] & 0x1Fu : n == 3 ? s[0] & 0x0Fu : s[0] & 0x07u;
    size_t i;

    for (i = 1; i < n; i++)
        cp = (cp << 6) | (s[i] & 0x3Fu);
    return cp;
}

/* C1 controls (U+0080-U+009F: U+009B is the 8-bit CSI some terminals obey)
 * and the invisible characters that break lines, reorder or hide text
 * (line and paragraph separators, zero-width, bidirectional marks,
 * overrides and isolates, BOM, tags): shown as \uXXXX. */
static int
invisible(const unsigned char *s, size_t n)
{
    unsigned cp = code_point(s, n);

    return (cp >= 0x80 && cp <= 0x9F) || cp == 0x061C || (cp >= 0x200B && cp <= 0x200F) ||
           (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2060 && cp <= 0x2064) ||
           (cp >= 0x2066 && cp <= 0x2069) || cp == 0xFEFF || (cp >= 0xE0000 && cp <= 0xE007F);
}

size_t
outbox_escape(char *dst, size_t dstlen, const char *src, size_t len, unsigned flags)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0;

    if (dstlen == 0)
        return 0;
    while (i < len) {
        char esc[12];
        const char *put = esc;
        size_t n = 1, take = 1;

        if (s[i] == '\n')
            put = "\\n", n = 2;
        else if (s[i] == '\r')
            put = "\\r", n = 2;
        else if (s[i] == '\t')
            put = "\\t", n = 2;
        else if (s[i] == '\\' && (flags & OUTBOX_ESCAPE_BACKSLASH))
            put = "\\\\", n = 2;
        else if (s[i] < 0x20 || s[i] == 0x7F)
            n = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", s[i]);
        else if (s[i] < 0x80)
            put = (const char *)s + i;
        else if ((take = n = outbox_utf8_len(s + i, len - i)) > 0 && !invisible(s + i, n))
            put = (const char *)s + i;
        else if (take > 0)
            n = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", code_point(s + i, take));
        else
            take = 1, n = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", s[i]);
        if (o + n >= dstlen)
            break;
        memcpy(dst + o, put, n);
        o += n;
        i += take;
    }
    dst[o] = '\0';
    return i;
}

int
outbox_fprintf_safe(FILE *f, const char *fmt, ...)
{
    char small[1024], *text = small, *out = NULL;
    const char *p, *nl;
    size_t o = 0;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return n;
    if ((size_t)n >= sizeof(small)) {
        if ((text = malloc((size_t)n + 1)) == NULL)
            return -1;
        va_start(ap, fmt);
        vsnprintf(text, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    /* at most 4 bytes out per byte in: "\x01" from 1, "\u202e" from 3 */
    if ((out = malloc(4 * (size_t)n + 1)) == NULL) {
        n = -1;
        goto done;
    }
    for (p = text; *p != '\0'; p = nl + 1) {
        size_t len = (nl = strchr(p, '\n')) != NULL ? (size_t)(nl - p) : strlen(p);

        outbox_escape(out + o, 4 * (size_t)n + 1 - o, p, len, 0);
        o += strlen(out + o);
        if (nl == NULL)
            break;
        out[o++] = '\n';
    }
    n = fwrite(out, 1, o, f) == o ? (int)o : -1;
done:
    if (text != small)
        free(text);
    free(out);
    return n;
}
