/* The one UTF-8 rule of `warmlock status --json` and of the bindings that render the same
 * text (header-only: the Node addon includes it too). Not installed. */
#ifndef WLC_UTF8_H
#define WLC_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the valid UTF-8 sequence at p (at most `left` bytes), 0 if invalid (overlong,
 * a surrogate, beyond U+10FFFF, truncated). */
static inline size_t wlc_utf8_len(const unsigned char *p, size_t left)
{
    size_t n, i;
    uint32_t cp;

    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xe0) == 0xc0)
        n = 2, cp = p[0] & 0x1fu;
    else if ((p[0] & 0xf0) == 0xe0)
        n = 3, cp = p[0] & 0x0fu;
    else if ((p[0] & 0xf8) == 0xf0)
        n = 4, cp = p[0] & 0x07u;
    else
        return 0;
    if (n > left)
        return 0;
    for (i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3fu);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

#endif
