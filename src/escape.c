/*
 * outbox_escape(): see escape.h. One pass, no allocation; the UTF-8 check
 * follows RFC 3629 (no overlongs, no surrogates, nothing past U+10FFFF).
 */
#include <stdio.h>
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

size_t
outbox_escape(char *dst, size_t dstlen, const char *src, size_t len, unsigned flags)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0;

    if (dstlen == 0)
        return 0;
    while (i < len) {
        char esc[8];
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
        else if ((take = n = outbox_utf8_len(s + i, len - i)) > 0)
            put = (const char *)s + i;
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
