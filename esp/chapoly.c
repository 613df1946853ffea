/* ChaCha20-Poly1305 AEAD (RFC 8439 2.8) without libcrypto's per-call cost: see chapoly.h. */
#include "chapoly.h"
#include "xor_bytes.h"

#include <openssl/crypto.h>
#include <string.h>

#if defined(__x86_64__) && defined(__SSE2__) && !defined(CHAPOLY_PORTABLE)
#include <emmintrin.h>
#define CHAPOLY_SSE2 1
#endif

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static inline void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ------------------------------------------------------------------ ChaCha20 (RFC 8439 2.3) */

/* The 20 rounds (RFC 8439 2.3) on state words X(0) .. X(15), each implementation's quarter round
 * QR(a, b, c, d, extra...) given the extra arguments. */
#define CHACHA_20_ROUNDS(QR, X, ...)                                                           \
    for (int round_ = 0; round_ < 10; round_++) {                                              \
        QR(X(0), X(4), X(8), X(12), __VA_ARGS__);                                              \
        QR(X(1), X(5), X(9), X(13), __VA_ARGS__);                                              \
        QR(X(2), X(6), X(10), X(14), __VA_ARGS__);                                             \
        QR(X(3), X(7), X(11), X(15), __VA_ARGS__);                                             \
        QR(X(0), X(5), X(10), X(15), __VA_ARGS__);                                             \
        QR(X(1), X(6), X(11), X(12), __VA_ARGS__);                                             \
        QR(X(2), X(7), X(8), X(13), __VA_ARGS__);                                              \
        QR(X(3), X(4), X(9), X(14), __VA_ARGS__);                                              \
    }
#define X_NAMED(i) x##i /* the vector code's x0 .. x15 */

/* The input state: constants, key, block counter (word 12), nonce. */
static void chacha_state(uint32_t s[16], const uint8_t key[32], const uint8_t nonce[12])
{
    s[0] = 0x61707865;
    s[1] = 0x3320646e;
    s[2] = 0x79622d32;
    s[3] = 0x6b206574;
    for (int i = 0; i < 8; i++)
        s[4 + i] = le32(key + 4 * i);
    s[12] = 0;
    for (int i = 0; i < 3; i++)
        s[13 + i] = le32(nonce + 4 * i);
}

#ifdef CHAPOLY_SSE2
#include <immintrin.h>

/* Lane j of every vector belongs to block counter s[12] + j. The body is instantiated with the
 * rotations each instruction set does best: SSE2 (shifts; 16 by word shuffles), SSSE3 (8 and 16
 * by byte shuffle), AVX-512VL (one rotate instruction each); chacha_four picks one per CPU. */
#define QRV(a, b, c, d, R16, R12, R8, R7)                                                      \
    do {                                                                                       \
        a = _mm_add_epi32(a, b); d = _mm_xor_si128(d, a); d = R16(d);                          \
        c = _mm_add_epi32(c, d); b = _mm_xor_si128(b, c); b = R12(b);                          \
        a = _mm_add_epi32(a, b); d = _mm_xor_si128(d, a); d = R8(d);                           \
        c = _mm_add_epi32(c, d); b = _mm_xor_si128(b, c); b = R7(b);                           \
    } while (0)

#define CHACHA_FOUR_BODY(R16, R12, R8, R7)                                                     \
    __m128i x0 = _mm_set1_epi32((int)s[0]), x1 = _mm_set1_epi32((int)s[1]),                    \
            x2 = _mm_set1_epi32((int)s[2]), x3 = _mm_set1_epi32((int)s[3]),                    \
            x4 = _mm_set1_epi32((int)s[4]), x5 = _mm_set1_epi32((int)s[5]),                    \
            x6 = _mm_set1_epi32((int)s[6]), x7 = _mm_set1_epi32((int)s[7]),                    \
            x8 = _mm_set1_epi32((int)s[8]), x9 = _mm_set1_epi32((int)s[9]),                    \
            x10 = _mm_set1_epi32((int)s[10]), x11 = _mm_set1_epi32((int)s[11]),                \
            x12 = _mm_add_epi32(_mm_set1_epi32((int)s[12]), _mm_set_epi32(3, 2, 1, 0)),        \
            x13 = _mm_set1_epi32((int)s[13]), x14 = _mm_set1_epi32((int)s[14]),                \
            x15 = _mm_set1_epi32((int)s[15]);                                                  \
    const __m128i c12 = x12;                                                                   \
    CHACHA_20_ROUNDS(QRV, X_NAMED, R16, R12, R8, R7)                                           \
    __m128i w[16] = {x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15};   \
    for (int i = 0; i < 16; i++)                                                               \
        w[i] = _mm_add_epi32(w[i], i == 12 ? c12 : _mm_set1_epi32((int)s[i]));                 \
    for (int g = 0; g < 4; g++) { /* words 4g..4g+3 of the four blocks: a 4x4 transpose */     \
        __m128i a = w[4 * g], b = w[4 * g + 1], c = w[4 * g + 2], d = w[4 * g + 3];           \
        __m128i t0 = _mm_unpacklo_epi32(a, b), t1 = _mm_unpacklo_epi32(c, d);                 \
        __m128i t2 = _mm_unpackhi_epi32(a, b), t3 = _mm_unpackhi_epi32(c, d);                 \
        _mm_storeu_si128((__m128i *)(out + 16 * g), _mm_unpacklo_epi64(t0, t1));               \
        _mm_storeu_si128((__m128i *)(out + 64 + 16 * g), _mm_unpackhi_epi64(t0, t1));          \
        _mm_storeu_si128((__m128i *)(out + 128 + 16 * g), _mm_unpacklo_epi64(t2, t3));         \
        _mm_storeu_si128((__m128i *)(out + 192 + 16 * g), _mm_unpackhi_epi64(t2, t3));         \
    }

#define ROTV(x, n) _mm_or_si128(_mm_slli_epi32(x, n), _mm_srli_epi32(x, 32 - (n)))
#define SSE2_R16(x) _mm_shufflehi_epi16(_mm_shufflelo_epi16(x, 0xB1), 0xB1)
#define R12V(x) ROTV(x, 12)
#define R8V(x) ROTV(x, 8)
#define R7V(x) ROTV(x, 7)

/* Blocks s[12] .. s[12] + 3 of the keystream, 256 bytes. */
static void chacha_four_sse2(const uint32_t s[16], uint8_t out[256])
{
    CHACHA_FOUR_BODY(SSE2_R16, R12V, R8V, R7V)
}

#define SSSE3_R16(x) _mm_shuffle_epi8(x, _mm_set_epi8(13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2))
#define SSSE3_R8(x) _mm_shuffle_epi8(x, _mm_set_epi8(14, 13, 12, 15, 10, 9, 8, 11, 6, 5, 4, 7, 2, 1, 0, 3))

__attribute__((target("ssse3"))) static void chacha_four_ssse3(const uint32_t s[16], uint8_t out[256])
{
    CHACHA_FOUR_BODY(SSSE3_R16, R12V, SSSE3_R8, R7V)
}

#define VL_R16(x) _mm_rol_epi32(x, 16)
#define VL_R12(x) _mm_rol_epi32(x, 12)
#define VL_R8(x) _mm_rol_epi32(x, 8)
#define VL_R7(x) _mm_rol_epi32(x, 7)

__attribute__((target("avx512f,avx512vl"))) static void chacha_four_avx512vl(const uint32_t s[16],
                                                                             uint8_t out[256])
{
    CHACHA_FOUR_BODY(VL_R16, VL_R12, VL_R8, VL_R7)
    /* the EVEX code leaves xmm16-31 in use; without this the SSE code after it runs at a
     * penalty (a 188-byte seal took 400 ns instead of 290) */
    _mm256_zeroupper();
}

/* Blocks 0-3 of four keystreams at once, one per vector lane of sixteen: lanes 4k..4k+3 are
 * blocks 0-3 of nonce k (s: the state with nonce words n[k]). One pass of 16 lanes costs about
 * what two passes of four cost, so a run of packets of one SA pays half per packet. */
__attribute__((target("avx512f"))) static void chacha_sixteen_avx512(const uint32_t s[16],
                                                                     const uint32_t n[4][3],
                                                                     uint8_t out[4][256])
{
    __m512i x[16];
    for (int i = 0; i < 12; i++)
        x[i] = _mm512_set1_epi32((int)s[i]);
    x[12] = _mm512_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    for (int i = 0; i < 3; i++)
        x[13 + i] = _mm512_setr_epi32((int)n[0][i], (int)n[0][i], (int)n[0][i], (int)n[0][i],
                                      (int)n[1][i], (int)n[1][i], (int)n[1][i], (int)n[1][i],
                                      (int)n[2][i], (int)n[2][i], (int)n[2][i], (int)n[2][i],
                                      (int)n[3][i], (int)n[3][i], (int)n[3][i], (int)n[3][i]);
    __m512i x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3], x4 = x[4], x5 = x[5], x6 = x[6],
            x7 = x[7], x8 = x[8], x9 = x[9], x10 = x[10], x11 = x[11], x12 = x[12],
            x13 = x[13], x14 = x[14], x15 = x[15];
#define QRZ(a, b, c, d, unused)                                                                \
    do {                                                                                       \
        a = _mm512_add_epi32(a, b); d = _mm512_xor_si512(d, a); d = _mm512_rol_epi32(d, 16);   \
        c = _mm512_add_epi32(c, d); b = _mm512_xor_si512(b, c); b = _mm512_rol_epi32(b, 12);   \
        a = _mm512_add_epi32(a, b); d = _mm512_xor_si512(d, a); d = _mm512_rol_epi32(d, 8);    \
        c = _mm512_add_epi32(c, d); b = _mm512_xor_si512(b, c); b = _mm512_rol_epi32(b, 7);    \
    } while (0)
    CHACHA_20_ROUNDS(QRZ, X_NAMED, 0)
#undef QRZ
    __m512i w[16] = {x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15};
    for (int i = 0; i < 16; i++)
        w[i] = _mm512_add_epi32(w[i], x[i]);
    /* Within each 128-bit chunk k (blocks 4k..4k+3) a 4x4 transpose of words, as in the
     * four-lane code: y[g][b] holds in chunk k words 4g..4g+3 of block 4k+b. */
    __m512i y[4][4];
    for (int g = 0; g < 4; g++) {
        __m512i a = w[4 * g], b = w[4 * g + 1], c = w[4 * g + 2], d = w[4 * g + 3];
        __m512i t0 = _mm512_unpacklo_epi32(a, b), t1 = _mm512_unpacklo_epi32(c, d);
        __m512i t2 = _mm512_unpackhi_epi32(a, b), t3 = _mm512_unpackhi_epi32(c, d);
        y[g][0] = _mm512_unpacklo_epi64(t0, t1);
        y[g][1] = _mm512_unpackhi_epi64(t0, t1);
        y[g][2] = _mm512_unpacklo_epi64(t2, t3);
        y[g][3] = _mm512_unpackhi_epi64(t2, t3);
    }
    /* then per block b a 4x4 transpose of 128-bit chunks: chunk k of y[0..3][b] is block b of
     * nonce k, 64 bytes */
    for (int b = 0; b < 4; b++) {
        __m512i t0 = _mm512_shuffle_i32x4(y[0][b], y[1][b], 0x44);
        __m512i t1 = _mm512_shuffle_i32x4(y[0][b], y[1][b], 0xEE);
        __m512i t2 = _mm512_shuffle_i32x4(y[2][b], y[3][b], 0x44);
        __m512i t3 = _mm512_shuffle_i32x4(y[2][b], y[3][b], 0xEE);
        _mm512_storeu_si512((void *)(out[0] + 64 * b), _mm512_shuffle_i32x4(t0, t2, 0x88));
        _mm512_storeu_si512((void *)(out[1] + 64 * b), _mm512_shuffle_i32x4(t0, t2, 0xDD));
        _mm512_storeu_si512((void *)(out[2] + 64 * b), _mm512_shuffle_i32x4(t1, t3, 0x88));
        _mm512_storeu_si512((void *)(out[3] + 64 * b), _mm512_shuffle_i32x4(t1, t3, 0xDD));
    }
    _mm256_zeroupper();
}

static void (*chacha_impl)(const uint32_t *, uint8_t *);
static int chacha_level;

int chapoly_use_level(int level)
{
    __builtin_cpu_init();
    int best = __builtin_cpu_supports("avx512vl") ? 2 : __builtin_cpu_supports("ssse3") ? 1 : 0;
    chacha_level = level < 0 || level > best ? best : level;
    chacha_impl = chacha_level == 2 ? chacha_four_avx512vl
                : chacha_level == 1 ? chacha_four_ssse3 : chacha_four_sse2;
    return chacha_level;
}

static void chacha_four(const uint32_t s[16], uint8_t out[256])
{
    if (chacha_impl == NULL) /* the GIL (or any race) only ever stores the same pointer */
        chapoly_use_level(-1);
    chacha_impl(s, out);
}

int chapoly_level(void)
{
    if (chacha_impl == NULL)
        chapoly_use_level(-1);
    return chacha_level;
}

int chapoly_available(void)
{
    return 1;
}
#else
#define ROT(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
#define QR(a, b, c, d, unused)                                                                 \
    do {                                                                                       \
        a += b; d ^= a; d = ROT(d, 16);                                                        \
        c += d; b ^= c; b = ROT(b, 12);                                                        \
        a += b; d ^= a; d = ROT(d, 8);                                                         \
        c += d; b ^= c; b = ROT(b, 7);                                                         \
    } while (0)

static void chacha_four(const uint32_t s[16], uint8_t out[256])
{
    for (uint32_t j = 0; j < 4; j++) {
        uint32_t x[16];
        memcpy(x, s, sizeof x);
        x[12] += j;
#define X_ARRAY(i) x[i]
        CHACHA_20_ROUNDS(QR, X_ARRAY, 0)
#undef X_ARRAY
        for (int i = 0; i < 16; i++) {
            uint32_t v = x[i] + s[i] + (i == 12 ? j : 0);
            uint8_t *o = out + 64 * j + 4 * i;
            o[0] = (uint8_t)v;
            o[1] = (uint8_t)(v >> 8);
            o[2] = (uint8_t)(v >> 16);
            o[3] = (uint8_t)(v >> 24);
        }
        OPENSSL_cleanse(x, sizeof x);
    }
}
#endif

#ifndef CHAPOLY_SSE2
int chapoly_use_level(int level)
{
    return 0;
}

int chapoly_level(void)
{
    return 0;
}

int chapoly_available(void)
{
    return 0;
}
#endif


/* out = in XOR the keystream from block 1 on; first holds blocks 0-3, already computed. */
static void chacha_xor(uint32_t s[16], const uint8_t first[256], const uint8_t *in, uint8_t *out,
                       size_t len)
{
    size_t n = len < 192 ? len : 192;
    xor_bytes(out, in, first + 64, n);
    if (len > 192) {
        uint8_t ks[256];
        for (size_t off = 192; off < len; off += 256) {
            s[12] += 4;
            chacha_four(s, ks);
            size_t m = len - off < 256 ? len - off : 256;
            xor_bytes(out + off, in + off, ks, m);
        }
        OPENSSL_cleanse(ks, sizeof ks);
    }
}

/* ------------------------------------------------------------------ Poly1305 (RFC 8439 2.5) */

#define M44 0xfffffffffffULL
#define M42 0x3ffffffffffULL

typedef unsigned __int128 u128;

typedef struct {
    uint64_t r0, r1, r2, s1, s2;     /* r; s = r * 20 (2^132 = 20 mod p for the top limbs) */
    uint64_t q0, q1, q2, t1, t2;     /* r^2 mod p and its * 20: two blocks per step */
    uint64_t h0, h1, h2, pad0, pad1;
} poly1305;

/* d = a * b mod p, before the carries (limbs 44/44/42; bs1, bs2 = b1, b2 * 20) */
#define POLY_MUL(d0, d1, d2, a0, a1, a2, b0, b1, b2, bs1, bs2)                                 \
    do {                                                                                       \
        d0 = (u128)(a0) * (b0) + (u128)(a1) * (bs2) + (u128)(a2) * (bs1);                      \
        d1 = (u128)(a0) * (b1) + (u128)(a1) * (b0) + (u128)(a2) * (bs2);                       \
        d2 = (u128)(a0) * (b2) + (u128)(a1) * (b1) + (u128)(a2) * (b0);                        \
    } while (0)

/* h = d with its carries propagated (h0, h1 below 2^44 plus a little, h2 below 2^42) */
#define POLY_CARRY(h0, h1, h2, d0, d1, d2)                                                     \
    do {                                                                                       \
        uint64_t c_ = (uint64_t)(d0 >> 44);                                                    \
        h0 = (uint64_t)d0 & M44;                                                               \
        d1 += c_;                                                                              \
        c_ = (uint64_t)(d1 >> 44);                                                             \
        h1 = (uint64_t)d1 & M44;                                                               \
        d2 += c_;                                                                              \
        c_ = (uint64_t)(d2 >> 42);                                                             \
        h2 = (uint64_t)d2 & M42;                                                               \
        h0 += c_ * 5;                                                                          \
        c_ = h0 >> 44;                                                                         \
        h0 &= M44;                                                                             \
        h1 += c_;                                                                              \
    } while (0)

/* the 16-byte block m as limbs, plus 2^128 */
#define POLY_LOAD(b0, b1, b2, m)                                                               \
    do {                                                                                       \
        uint64_t t0_ = le64(m), t1_ = le64((m) + 8);                                           \
        b0 = t0_ & M44;                                                                        \
        b1 = ((t0_ >> 44) | (t1_ << 20)) & M44;                                                \
        b2 = ((t1_ >> 24) & M42) | (1ULL << 40);                                               \
    } while (0)

static void poly_init(poly1305 *p, const uint8_t key[32])
{
    uint64_t t0 = le64(key), t1 = le64(key + 8);
    p->r0 = t0 & 0xffc0fffffffULL; /* r clamped (RFC 8439 2.5.1), in 44/44/42-bit limbs */
    p->r1 = ((t0 >> 44) | (t1 << 20)) & 0xfffffc0ffffULL;
    p->r2 = (t1 >> 24) & 0x00ffffffc0fULL;
    p->s1 = p->r1 * (5 << 2);
    p->s2 = p->r2 * (5 << 2);
    u128 d0, d1, d2;
    POLY_MUL(d0, d1, d2, p->r0, p->r1, p->r2, p->r0, p->r1, p->r2, p->s1, p->s2);
    POLY_CARRY(p->q0, p->q1, p->q2, d0, d1, d2);
    p->t1 = p->q1 * (5 << 2);
    p->t2 = p->q2 * (5 << 2);
    p->h0 = p->h1 = p->h2 = 0;
    p->pad0 = le64(key + 16);
    p->pad1 = le64(key + 24);
}

/* n full 16-byte blocks, each with the 2^128 bit set. Two at a time as (h + m1) r^2 + m2 r:
 * the two products are independent, so the chain of multiplications is half as long (13
 * blocks: 0.10 -> 0.06 us). */
static void poly_blocks(poly1305 *p, const uint8_t *m, size_t n)
{
    const uint64_t r0 = p->r0, r1 = p->r1, r2 = p->r2, s1 = p->s1, s2 = p->s2;
    const uint64_t q0 = p->q0, q1 = p->q1, q2 = p->q2, t1 = p->t1, t2 = p->t2;
    uint64_t h0 = p->h0, h1 = p->h1, h2 = p->h2, a0, a1, a2, b0, b1, b2;
    u128 d0, d1, d2, e0, e1, e2;
    for (; n >= 2; n -= 2, m += 32) {
        POLY_LOAD(a0, a1, a2, m);
        POLY_LOAD(b0, b1, b2, m + 16);
        a0 += h0;
        a1 += h1;
        a2 += h2;
        POLY_MUL(d0, d1, d2, a0, a1, a2, q0, q1, q2, t1, t2);
        POLY_MUL(e0, e1, e2, b0, b1, b2, r0, r1, r2, s1, s2);
        d0 += e0;
        d1 += e1;
        d2 += e2;
        POLY_CARRY(h0, h1, h2, d0, d1, d2);
    }
    if (n) {
        POLY_LOAD(a0, a1, a2, m);
        a0 += h0;
        a1 += h1;
        a2 += h2;
        POLY_MUL(d0, d1, d2, a0, a1, a2, r0, r1, r2, s1, s2);
        POLY_CARRY(h0, h1, h2, d0, d1, d2);
    }
    p->h0 = h0;
    p->h1 = h1;
    p->h2 = h2;
}

/* m[0..len) zero-padded to a multiple of 16 bytes (the AEAD's pad16). */
static void poly_padded(poly1305 *p, const uint8_t *m, size_t len)
{
    poly_blocks(p, m, len / 16);
    size_t rest = len % 16;
    if (rest) {
        uint8_t last[16] = {0};
        memcpy(last, m + len - rest, rest);
        poly_blocks(p, last, 1);
    }
}

static void poly_finish(poly1305 *p, uint8_t tag[16])
{
    uint64_t h0 = p->h0, h1 = p->h1, h2 = p->h2, c;
    c = h1 >> 44; h1 &= M44;
    h2 += c; c = h2 >> 42; h2 &= M42;
    h0 += c * 5; c = h0 >> 44; h0 &= M44;
    h1 += c; c = h1 >> 44; h1 &= M44;
    h2 += c; c = h2 >> 42; h2 &= M42;
    h0 += c * 5; c = h0 >> 44; h0 &= M44;
    h1 += c;
    /* h - p = h + 5 - 2^130: taken when it does not borrow, chosen by mask */
    uint64_t g0 = h0 + 5;
    c = g0 >> 44; g0 &= M44;
    uint64_t g1 = h1 + c;
    c = g1 >> 44; g1 &= M44;
    uint64_t g2 = h2 + c - (1ULL << 42);
    c = (g2 >> 63) - 1; /* all ones if h >= p */
    g0 &= c; g1 &= c; g2 &= c;
    c = ~c;
    h0 = (h0 & c) | g0;
    h1 = (h1 & c) | g1;
    h2 = (h2 & c) | g2;
    uint64_t t0 = p->pad0, t1 = p->pad1; /* + s, mod 2^128 */
    h0 += t0 & M44; c = h0 >> 44; h0 &= M44;
    h1 += (((t0 >> 44) | (t1 << 20)) & M44) + c; c = h1 >> 44; h1 &= M44;
    h2 += ((t1 >> 24) & M42) + c; h2 &= M42;
    put_le64(tag, h0 | (h1 << 44));
    put_le64(tag + 8, (h1 >> 20) | (h2 << 24));
}

#ifdef CHAPOLY_SSE2
/* Poly1305 of four messages at once, one per 64-bit lane, in the same 44/44/42-bit limbs with
 * AVX-512 IFMA (52-bit multiply-add: vpmadd52luq adds bits 0-51 of a product, vpmadd52huq bits
 * 52-103). Lane k: p[k] (r, r^2 and h from poly_init; h updated), nb[k] whole 16-byte blocks at
 * msg + k * stride, readable up to one block past the end (every block gets the 2^128 bit: the
 * AEAD's input is padded to 16 bytes). Two blocks per step as in poly_blocks, (h + m1) r^2 +
 * m2 r; a lane with one block left takes (h + m1) r, a lane with none keeps h (masks). The
 * bounds are the scalar code's: h + m below 2^46, r * 20 below 2^49, so every multiplicand is
 * below 2^52 as IFMA needs. */
#define MADD_LO _mm256_madd52lo_epu64
#define MADD_HI _mm256_madd52hi_epu64
__attribute__((target("avx2,avx512f,avx512vl,avx512ifma"))) static void
poly_four_ifma(poly1305 *const p[4], const uint8_t *msg, size_t stride, const size_t nb[4])
{
    const __m256i m44 = _mm256_set1_epi64x((long long)M44), m42 = _mm256_set1_epi64x((long long)M42);
    const __m256i hibit = _mm256_set1_epi64x(1LL << 40), zero = _mm256_setzero_si256();
#define LANES(f) _mm256_setr_epi64x((long long)p[0]->f, (long long)p[1]->f, (long long)p[2]->f,     \
                                    (long long)p[3]->f)
    const __m256i r0 = LANES(r0), r1 = LANES(r1), r2 = LANES(r2), s1 = LANES(s1), s2 = LANES(s2);
    const __m256i q0 = LANES(q0), q1 = LANES(q1), q2 = LANES(q2), t1 = LANES(t1), t2 = LANES(t2);
    __m256i h0 = LANES(h0), h1 = LANES(h1), h2 = LANES(h2);
#undef LANES
    const __m256i n = _mm256_setr_epi64x((long long)nb[0], (long long)nb[1], (long long)nb[2],
                                         (long long)nb[3]);
    size_t most = nb[0];
    for (int k = 1; k < 4; k++)
        most = nb[k] > most ? nb[k] : most;
/* block m (lanes at m, m + stride, ...) as limbs x0, x1, x2 with the 2^128 bit */
#define LOAD_LIMBS(x0, x1, x2, m)                                                              \
    do {                                                                                       \
        __m256i e_ = _mm256_inserti128_si256(                                                  \
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(m))),                     \
            _mm_loadu_si128((const __m128i *)((m) + 2 * stride)), 1);                          \
        __m256i o_ = _mm256_inserti128_si256(                                                  \
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)((m) + stride))),          \
            _mm_loadu_si128((const __m128i *)((m) + 3 * stride)), 1);                          \
        __m256i w0_ = _mm256_unpacklo_epi64(e_, o_), w1_ = _mm256_unpackhi_epi64(e_, o_);      \
        x0 = _mm256_and_si256(w0_, m44);                                                       \
        x1 = _mm256_and_si256(_mm256_or_si256(_mm256_srli_epi64(w0_, 44), _mm256_slli_epi64(w1_, 20)), m44); \
        x2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi64(w1_, 24), m42), hibit);        \
    } while (0)
    for (size_t b = 0; b < most; b += 2) {
        const uint8_t *m = msg + 16 * b;
        __m256i a0, a1, a2, b0, b1, b2;
        LOAD_LIMBS(a0, a1, a2, m);
        LOAD_LIMBS(b0, b1, b2, m + 16);
        const __m256i at = _mm256_set1_epi64x((long long)b);
        __mmask8 live = _mm256_cmpgt_epu64_mask(n, at);
        __mmask8 two = _mm256_cmpgt_epu64_mask(n, _mm256_add_epi64(at, _mm256_set1_epi64x(1)));
        /* the multiplier of h + m1: r^2 where a second block follows, else r; m2 zero if none */
        const __m256i x0 = _mm256_mask_blend_epi64(two, r0, q0), x1 = _mm256_mask_blend_epi64(two, r1, q1);
        const __m256i x2 = _mm256_mask_blend_epi64(two, r2, q2), y1 = _mm256_mask_blend_epi64(two, s1, t1);
        const __m256i y2 = _mm256_mask_blend_epi64(two, s2, t2);
        b0 = _mm256_maskz_mov_epi64(two, b0);
        b1 = _mm256_maskz_mov_epi64(two, b1);
        b2 = _mm256_maskz_mov_epi64(two, b2);
        a0 = _mm256_add_epi64(a0, h0);
        a1 = _mm256_add_epi64(a1, h1);
        a2 = _mm256_add_epi64(a2, h2);
        /* d_i = l_i + u_i * 2^52: m2 r first (independent of h), then (h + m1) x in separate
         * accumulators so the chain from h is one multiply-add deep */
        __m256i l0 = MADD_LO(zero, b0, r0), u0 = MADD_HI(zero, b0, r0);
        __m256i l1 = MADD_LO(zero, b0, r1), u1 = MADD_HI(zero, b0, r1);
        __m256i l2 = MADD_LO(zero, b0, r2), u2 = MADD_HI(zero, b0, r2);
        l0 = MADD_LO(l0, b1, s2); u0 = MADD_HI(u0, b1, s2);
        l1 = MADD_LO(l1, b1, r0); u1 = MADD_HI(u1, b1, r0);
        l2 = MADD_LO(l2, b1, r1); u2 = MADD_HI(u2, b1, r1);
        l0 = MADD_LO(l0, b2, s1); u0 = MADD_HI(u0, b2, s1);
        l1 = MADD_LO(l1, b2, s2); u1 = MADD_HI(u1, b2, s2);
        l2 = MADD_LO(l2, b2, r0); u2 = MADD_HI(u2, b2, r0);
        l0 = MADD_LO(l0, a0, x0); u0 = MADD_HI(u0, a0, x0);
        l1 = MADD_LO(l1, a0, x1); u1 = MADD_HI(u1, a0, x1);
        l2 = MADD_LO(l2, a0, x2); u2 = MADD_HI(u2, a0, x2);
        __m256i l0b = MADD_LO(zero, a1, y2), u0b = MADD_HI(zero, a1, y2);
        __m256i l1b = MADD_LO(zero, a1, x0), u1b = MADD_HI(zero, a1, x0);
        __m256i l2b = MADD_LO(zero, a1, x1), u2b = MADD_HI(zero, a1, x1);
        __m256i l0c = MADD_LO(zero, a2, y1), u0c = MADD_HI(zero, a2, y1);
        __m256i l1c = MADD_LO(zero, a2, y2), u1c = MADD_HI(zero, a2, y2);
        __m256i l2c = MADD_LO(zero, a2, x0), u2c = MADD_HI(zero, a2, x0);
        l0 = _mm256_add_epi64(l0, _mm256_add_epi64(l0b, l0c));
        u0 = _mm256_add_epi64(u0, _mm256_add_epi64(u0b, u0c));
        l1 = _mm256_add_epi64(l1, _mm256_add_epi64(l1b, l1c));
        u1 = _mm256_add_epi64(u1, _mm256_add_epi64(u1b, u1c));
        l2 = _mm256_add_epi64(l2, _mm256_add_epi64(l2b, l2c));
        u2 = _mm256_add_epi64(u2, _mm256_add_epi64(u2b, u2c));
        /* the carries of POLY_CARRY; a hi part counts 2^52 = 2^44 * 2^8 (2^42 * 2^10 in d2) */
        __m256i c = _mm256_add_epi64(_mm256_srli_epi64(l0, 44), _mm256_slli_epi64(u0, 8));
        __m256i g0 = _mm256_and_si256(l0, m44);
        l1 = _mm256_add_epi64(l1, c);
        c = _mm256_add_epi64(_mm256_srli_epi64(l1, 44), _mm256_slli_epi64(u1, 8));
        __m256i g1 = _mm256_and_si256(l1, m44);
        l2 = _mm256_add_epi64(l2, c);
        c = _mm256_add_epi64(_mm256_srli_epi64(l2, 42), _mm256_slli_epi64(u2, 10));
        __m256i g2 = _mm256_and_si256(l2, m42);
        g0 = _mm256_add_epi64(g0, _mm256_add_epi64(c, _mm256_slli_epi64(c, 2)));
        c = _mm256_srli_epi64(g0, 44);
        g0 = _mm256_and_si256(g0, m44);
        g1 = _mm256_add_epi64(g1, c);
        h0 = _mm256_mask_blend_epi64(live, h0, g0);
        h1 = _mm256_mask_blend_epi64(live, h1, g1);
        h2 = _mm256_mask_blend_epi64(live, h2, g2);
    }
#undef LOAD_LIMBS
    uint64_t o[3][4];
    _mm256_storeu_si256((__m256i *)o[0], h0);
    _mm256_storeu_si256((__m256i *)o[1], h1);
    _mm256_storeu_si256((__m256i *)o[2], h2);
    for (int k = 0; k < 4; k++) {
        p[k]->h0 = o[0][k];
        p[k]->h1 = o[1][k];
        p[k]->h2 = o[2][k];
    }
    OPENSSL_cleanse(o, sizeof o);
    _mm256_zeroupper();
}
#undef MADD_LO
#undef MADD_HI
#endif

void chapoly_poly1305_padded(const uint8_t key[32], const uint8_t *m, size_t len,
                             uint8_t tag[CHAPOLY_TAG_LEN])
{
    poly1305 p;
    poly_init(&p, key);
    poly_padded(&p, m, len);
    poly_finish(&p, tag);
    OPENSSL_cleanse(&p, sizeof p);
}

/* ------------------------------------------------------------------ the AEAD (RFC 8439 2.8) */

static void aead_tag(poly1305 *p, const uint8_t *aad, size_t aadlen, const uint8_t *ct,
                     size_t len, uint8_t tag[16])
{
    uint8_t lens[16];
    poly_padded(p, aad, aadlen);
    poly_padded(p, ct, len);
    put_le64(lens, aadlen);
    put_le64(lens + 8, len);
    poly_blocks(p, lens, 1);
    poly_finish(p, tag);
}

/* The AEAD with blocks 0-3 of the keystream already in first (s: the state, counter 0) */
static void seal_with(uint32_t s[16], const uint8_t first[256], const uint8_t *aad, size_t aadlen,
                      uint8_t *buf, size_t len, uint8_t tag[16])
{
    poly1305 p;
    poly_init(&p, first);
    chacha_xor(s, first, buf, buf, len);
    aead_tag(&p, aad, aadlen, buf, len, tag);
    OPENSSL_cleanse(&p, sizeof p);
}

static int open_with(uint32_t s[16], const uint8_t first[256], const uint8_t *aad, size_t aadlen,
                     const uint8_t *in, uint8_t *out, size_t len, const uint8_t tag[16])
{
    uint8_t want[16];
    poly1305 p;
    poly_init(&p, first);
    aead_tag(&p, aad, aadlen, in, len, want);
    int ok = CRYPTO_memcmp(want, tag, sizeof want) == 0;
    if (ok)
        chacha_xor(s, first, in, out, len);
    OPENSSL_cleanse(&p, sizeof p);
    OPENSSL_cleanse(want, sizeof want);
    return ok;
}

void chapoly_seal(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t nonce[CHAPOLY_NONCE_LEN],
                  const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len,
                  uint8_t tag[CHAPOLY_TAG_LEN])
{
    uint32_t s[16];
    uint8_t first[256];
    chacha_state(s, key, nonce);
    chacha_four(s, first);
    seal_with(s, first, aad, aadlen, buf, len, tag);
    OPENSSL_cleanse(s, sizeof s);
    OPENSSL_cleanse(first, sizeof first);
}

int chapoly_open(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t nonce[CHAPOLY_NONCE_LEN],
                 const uint8_t *aad, size_t aadlen, const uint8_t *in, uint8_t *out, size_t len,
                 const uint8_t tag[CHAPOLY_TAG_LEN])
{
    uint32_t s[16];
    uint8_t first[256];
    chacha_state(s, key, nonce);
    chacha_four(s, first);
    int ok = open_with(s, first, aad, aadlen, in, out, len, tag);
    OPENSSL_cleanse(s, sizeof s);
    OPENSSL_cleanse(first, sizeof first);
    return ok;
}

/* ------------------------------------------------------------------ runs of packets */

/* The largest ciphertext chapoly_tags4 takes in its four-lane pass (longer ones: one lane at a
 * time); its stack buffer holds four such inputs. */
#define MULTI_MAX 1024
#define MULTI_STRIDE (16 + MULTI_MAX + 16 + 16) /* AAD, ciphertext, lengths, one block of slack */

static int multi_level = -1;

int chapoly_multi(void)
{
#ifdef CHAPOLY_SSE2
    if (multi_level < 0)
        multi_level = __builtin_cpu_supports("avx512ifma") ? 1 : 0;
    return multi_level && chapoly_level() == 2;
#else
    return 0;
#endif
}

void chapoly_first4(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t *const nonces[4], int count,
                    uint8_t out[4][256])
{
    uint32_t s[16];
    chacha_state(s, key, nonces[0]);
#ifdef CHAPOLY_SSE2
    if (count > 1 && chapoly_multi()) {
        uint32_t n[4][3];
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < 3; i++)
                n[k][i] = le32(nonces[k < count ? k : 0] + 4 * i);
        chacha_sixteen_avx512(s, (const uint32_t(*)[3])n, out);
        OPENSSL_cleanse(s, sizeof s);
        return;
    }
#endif
    for (int k = 0; k < count; k++) {
        for (int i = 0; i < 3; i++)
            s[13 + i] = le32(nonces[k] + 4 * i);
        chacha_four(s, out[k]);
    }
    OPENSSL_cleanse(s, sizeof s);
}

void chapoly_xor_first(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t nonce[CHAPOLY_NONCE_LEN],
                       const uint8_t first[256], const uint8_t *in, uint8_t *out, size_t len)
{
    uint32_t s[16];
    chacha_state(s, key, nonce);
    chacha_xor(s, first, in, out, len);
    OPENSSL_cleanse(s, sizeof s);
}

int chapoly_open_first(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t nonce[CHAPOLY_NONCE_LEN],
                       const uint8_t first[256], const uint8_t *aad, size_t aadlen,
                       const uint8_t *in, uint8_t *out, size_t len, const uint8_t tag[CHAPOLY_TAG_LEN])
{
    uint32_t s[16];
    chacha_state(s, key, nonce);
    int ok = open_with(s, first, aad, aadlen, in, out, len, tag);
    OPENSSL_cleanse(s, sizeof s);
    return ok;
}

#ifdef CHAPOLY_SSE2
/* The tags of count (1-4) messages laid out at buf + k * MULTI_STRIDE (nb[k] blocks, lanes past
 * count: none) under the Poly1305 keys key[k], in one four-lane pass. */
static void tags_four(const uint8_t *const key[4], const uint8_t *buf, const size_t nb[4], int count,
                      uint8_t *const tag[4])
{
    static const poly1305 idle;
    poly1305 p[4], *lanes[4];
    for (int k = 0; k < 4; k++) {
        if (k < count)
            poly_init(&p[k], key[k]);
        else
            p[k] = idle;
        lanes[k] = &p[k];
    }
    poly_four_ifma(lanes, buf, MULTI_STRIDE, nb);
    for (int k = 0; k < count; k++)
        poly_finish(&p[k], tag[k]);
    explicit_bzero(p, sizeof p);
}
#endif

void chapoly_tags4(const uint8_t *const first[4], const uint8_t *const aad[4], const size_t aadlen[4],
                   const uint8_t *const ct[4], const size_t len[4], int count, uint8_t *const tag[4])
{
    int fits = count >= 2 && chapoly_multi();
    for (int k = 0; k < count; k++)
        fits = fits && aadlen[k] <= 16 && len[k] <= MULTI_MAX;
#ifdef CHAPOLY_SSE2
    if (fits) { /* the AEAD's Poly1305 input per lane: AAD, ciphertext (each padded), lengths */
        uint8_t buf[4 * MULTI_STRIDE]; /* AAD and ciphertext only: nothing secret, not cleared */
        size_t nb[4] = {0, 0, 0, 0};
        for (int k = 0; k < count; k++) {
            uint8_t *m = buf + k * MULTI_STRIDE;
            size_t ap = (aadlen[k] + 15) & ~(size_t)15, cp = (len[k] + 15) & ~(size_t)15;
            memset(m, 0, ap);
            memcpy(m, aad[k], aadlen[k]);
            memcpy(m + ap, ct[k], len[k]);
            memset(m + ap + len[k], 0, cp - len[k]);
            put_le64(m + ap + cp, aadlen[k]);
            put_le64(m + ap + cp + 8, len[k]);
            memset(m + ap + cp + 16, 0, 16);
            nb[k] = (ap + cp) / 16 + 1;
        }
        tags_four(first, buf, nb, count, tag);
        return;
    }
#endif
    poly1305 p;
    for (int k = 0; k < count; k++) {
        poly_init(&p, first[k]);
        aead_tag(&p, aad[k], aadlen[k], ct[k], len[k], tag[k]);
    }
    OPENSSL_cleanse(&p, sizeof p);
}

void chapoly_poly1305_padded4(const uint8_t *const key[4], const uint8_t *const m[4],
                              const size_t len[4], int count, uint8_t *const tag[4])
{
    int fits = count >= 2 && chapoly_multi();
    for (int k = 0; k < count; k++)
        fits = fits && len[k] <= MULTI_STRIDE - 16;
#ifdef CHAPOLY_SSE2
    if (fits) {
        uint8_t buf[4 * MULTI_STRIDE];
        size_t nb[4] = {0, 0, 0, 0};
        memset(buf, 0, sizeof buf);
        for (int k = 0; k < count; k++) {
            memcpy(buf + k * MULTI_STRIDE, m[k], len[k]);
            nb[k] = (len[k] + 15) / 16;
        }
        tags_four(key, buf, nb, count, tag);
        return;
    }
#endif
    for (int k = 0; k < count; k++)
        chapoly_poly1305_padded(key[k], m[k], len[k], tag[k]);
}
