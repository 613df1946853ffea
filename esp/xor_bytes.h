/* out[0..n) = in[0..n) XOR ks[0..n): the keystream step both short-packet AEADs share
 * (chapoly.c, aesgcm.c); 16 bytes at a time, then 8, 4 and single bytes. */
#ifndef ESP_XOR_BYTES_H
#define ESP_XOR_BYTES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#endif

static inline void xor_bytes(uint8_t *out, const uint8_t *in, const uint8_t *ks, size_t n)
{
    size_t i = 0;
#if defined(__x86_64__) && defined(__SSE2__)
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm_xor_si128(_mm_loadu_si128((const __m128i *)(in + i)),
                                       _mm_loadu_si128((const __m128i *)(ks + i))));
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t a, b;
        memcpy(&a, in + i, 8);
        memcpy(&b, ks + i, 8);
        a ^= b;
        memcpy(out + i, &a, 8);
    }
    if (i + 4 <= n) {
        uint32_t a, b;
        memcpy(&a, in + i, 4);
        memcpy(&b, ks + i, 4);
        a ^= b;
        memcpy(out + i, &a, 4);
        i += 4;
    }
    for (; i < n; i++)
        out[i] = in[i] ^ ks[i];
}

#endif
