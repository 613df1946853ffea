/* AES-GCM for short packets with AES-NI and PCLMULQDQ: see aesgcm.h. */
#include "aesgcm.h"
#include "xor_bytes.h"

#include <openssl/crypto.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(AESGCM_PORTABLE)
#include <immintrin.h>

#define TGT __attribute__((target("aes,pclmul,ssse3,sse4.1")))

int aesgcm_available(void)
{
    static int cached = -1;
    if (cached < 0) { /* the GIL (or any race) only ever stores the same value */
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul")
                 && __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1");
    }
    return cached;
}

/* ------------------------------------------------------------------ AES key expansion (FIPS 197) */

TGT static inline __m128i shift_xor(__m128i k) /* w0, w0^w1, w0^w1^w2, w0^w1^w2^w3 */
{
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    return _mm_xor_si128(k, _mm_slli_si128(k, 4));
}

#define EXP128(i, rcon)                                                                        \
    r[i] = _mm_xor_si128(shift_xor(r[i - 1]),                                                  \
                         _mm_shuffle_epi32(_mm_aeskeygenassist_si128(r[i - 1], rcon), 0xff))

#define EXP256(i, rcon)                                                                        \
    r[i] = _mm_xor_si128(shift_xor(r[i - 2]),                                                  \
                         _mm_shuffle_epi32(_mm_aeskeygenassist_si128(r[i - 1], rcon), 0xff));  \
    if (i + 1 <= 14)                                                                           \
        r[i + 1] = _mm_xor_si128(shift_xor(r[i - 1]),                                          \
                                 _mm_shuffle_epi32(_mm_aeskeygenassist_si128(r[i], 0), 0xaa))

TGT static void expand_key(__m128i r[15], const uint8_t *key, int rounds)
{
    r[0] = _mm_loadu_si128((const __m128i *)key);
    if (rounds == 10) {
        EXP128(1, 0x01); EXP128(2, 0x02); EXP128(3, 0x04); EXP128(4, 0x08); EXP128(5, 0x10);
        EXP128(6, 0x20); EXP128(7, 0x40); EXP128(8, 0x80); EXP128(9, 0x1b); EXP128(10, 0x36);
    } else {
        r[1] = _mm_loadu_si128((const __m128i *)(key + 16));
        EXP256(2, 0x01); EXP256(4, 0x02); EXP256(6, 0x04); EXP256(8, 0x08);
        EXP256(10, 0x10); EXP256(12, 0x20); EXP256(14, 0x40);
    }
}

TGT static inline __m128i aes_block(const __m128i *rk, int rounds, __m128i b)
{
    b = _mm_xor_si128(b, rk[0]);
    for (int r = 1; r < rounds; r++)
        b = _mm_aesenc_si128(b, rk[r]);
    return _mm_aesenclast_si128(b, rk[rounds]);
}

/* ------------------------------------------------------------------ GHASH (SP 800-38D 6.4) */

/* Blocks are byte-reversed before multiplication; the product is taken as in Intel's
 * "Carry-Less Multiplication and Its Usage for Computing the GCM Mode" (algorithm 5: the 256-bit
 * product shifted left by one, then reduced modulo x^128 + x^7 + x^2 + x + 1). Reduction is
 * linear, so the products of four blocks are summed and reduced once. */
TGT static inline __m128i bswap128(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

TGT static inline void clmul_acc(__m128i a, __m128i b, __m128i *lo, __m128i *mid, __m128i *hi)
{
    *lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128(a, b, 0x00));
    *hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128(a, b, 0x11));
    *mid = _mm_xor_si128(*mid, _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10),
                                             _mm_clmulepi64_si128(a, b, 0x01)));
}

TGT static inline __m128i reduce(__m128i lo, __m128i mid, __m128i hi)
{
    __m128i t3 = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
    __m128i t6 = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
    /* shift the 256-bit t6:t3 left by one bit */
    __m128i t7 = _mm_srli_epi32(t3, 31), t8 = _mm_srli_epi32(t6, 31);
    t3 = _mm_slli_epi32(t3, 1);
    t6 = _mm_slli_epi32(t6, 1);
    __m128i t9 = _mm_srli_si128(t7, 12);
    t8 = _mm_slli_si128(t8, 4);
    t7 = _mm_slli_si128(t7, 4);
    t3 = _mm_or_si128(t3, t7);
    t6 = _mm_or_si128(_mm_or_si128(t6, t8), t9);
    /* reduce */
    t7 = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi32(t3, 31), _mm_slli_epi32(t3, 30)),
                       _mm_slli_epi32(t3, 25));
    t8 = _mm_srli_si128(t7, 4);
    t7 = _mm_slli_si128(t7, 12);
    t3 = _mm_xor_si128(t3, t7);
    __m128i t2 = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi32(t3, 1), _mm_srli_epi32(t3, 2)),
                               _mm_srli_epi32(t3, 7));
    t2 = _mm_xor_si128(t2, t8);
    t3 = _mm_xor_si128(t3, t2);
    return _mm_xor_si128(t6, t3);
}

TGT static inline __m128i gfmul(__m128i a, __m128i b)
{
    __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
    clmul_acc(a, b, &lo, &mid, &hi);
    return reduce(lo, mid, hi);
}

/* The first n (< 16) bytes at m, zero-padded, as one block; no byte beyond m + n is read. */
static inline uint64_t load_upto8(const uint8_t *m, size_t n)
{
    uint64_t v = 0;
    size_t i = 0;
    if (n & 8) {
        memcpy(&v, m, 8);
        return v;
    }
    if (n & 4) {
        uint32_t a;
        memcpy(&a, m, 4);
        v = a;
        i = 4;
    }
    if (n & 2) {
        uint16_t a;
        memcpy(&a, m + i, 2);
        v |= (uint64_t)a << (8 * i);
        i += 2;
    }
    if (n & 1)
        v |= (uint64_t)m[i] << (8 * i);
    return v;
}

TGT static inline __m128i load_partial(const uint8_t *m, size_t n)
{
    uint64_t lo = n >= 8 ? load_upto8(m, 8) : load_upto8(m, n);
    uint64_t hi = n > 8 ? load_upto8(m + 8, n - 8) : 0;
    return _mm_set_epi64x((long long)hi, (long long)lo);
}

/* The GHASH of aad and ct (each zero-padded to whole blocks) and the lengths block, from a zero
 * state: each run of up to GH_POWERS blocks is multiplied by H^run .. H^1 and summed, then
 * reduced once (a 188-byte packet with its AAD: 15 blocks, one reduction). */
TGT static __m128i ghash(const aesgcm_key *k, const uint8_t *aad, size_t aadlen, const uint8_t *ct,
                         size_t len)
{
    const size_t na = (aadlen + 15) / 16, nc = (len + 15) / 16, total = na + nc + 1;
    __m128i x = _mm_setzero_si128();
    size_t t = 0;
    while (t < total) {
        size_t run = total - t < GH_POWERS ? total - t : GH_POWERS;
        __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
        for (size_t i = 0; i < run; i++, t++) {
            __m128i b;
            if (t < na) {
                size_t off = 16 * t;
                b = aadlen - off >= 16 ? _mm_loadu_si128((const __m128i *)(aad + off))
                                       : load_partial(aad + off, aadlen - off);
                b = bswap128(b);
            } else if (t < na + nc) {
                size_t off = 16 * (t - na);
                b = len - off >= 16 ? _mm_loadu_si128((const __m128i *)(ct + off))
                                    : load_partial(ct + off, len - off);
                b = bswap128(b);
            } else { /* the lengths in bits, big-endian: already in reversed order */
                b = _mm_set_epi64x((long long)((uint64_t)aadlen * 8), (long long)((uint64_t)len * 8));
            }
            if (i == 0)
                b = _mm_xor_si128(b, x);
            clmul_acc(b, _mm_loadu_si128((const __m128i *)k->h[run - 1 - i]), &lo, &mid, &hi);
        }
        x = reduce(lo, mid, hi);
    }
    return x;
}

/* ------------------------------------------------------------------ counter mode */

/* n (1..16) keystream blocks E(nonce || ctr), E(nonce || ctr + 1), ... into out. Two versions:
 * AES-NI on one block per instruction (eight in flight), and VAES on four blocks per
 * instruction where the CPU has AVX-512 (a 188-byte packet's 13 blocks: 87 against 25 ns). */
#define KS_MAX 16

TGT static void ks_aesni(const aesgcm_key *k, __m128i base, uint32_t ctr, int n, uint8_t *out)
{
    const int rounds = k->rounds;
    for (int done = 0; done < n; done += 8, ctr += 8) {
        __m128i b[8], r0 = _mm_loadu_si128((const __m128i *)k->rk[0]);
        for (int j = 0; j < 8; j++)
            b[j] = _mm_xor_si128(_mm_insert_epi32(base, (int)__builtin_bswap32(ctr + (uint32_t)j), 3), r0);
        for (int r = 1; r < rounds; r++) {
            __m128i rk = _mm_loadu_si128((const __m128i *)k->rk[r]);
            for (int j = 0; j < 8; j++)
                b[j] = _mm_aesenc_si128(b[j], rk);
        }
        __m128i rl = _mm_loadu_si128((const __m128i *)k->rk[rounds]);
        int m = n - done < 8 ? n - done : 8;
        for (int j = 0; j < m; j++)
            _mm_storeu_si128((__m128i *)(out + 16 * (done + j)), _mm_aesenclast_si128(b[j], rl));
    }
}

#define VAES_TGT __attribute__((target("aes,pclmul,ssse3,sse4.1,avx2,avx512f,avx512bw,vaes")))

/* Z zmm registers of four counter blocks each */
#define VAES_BODY(Z)                                                                           \
    do {                                                                                       \
        __m512i b[Z], r0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)k->rk[0])); \
        for (int z = 0; z < Z; z++) {                                                          \
            b[z] = _mm512_xor_si512(_mm512_or_si512(vbase, _mm512_shuffle_epi8(c, be)), r0);   \
            c = _mm512_add_epi32(c, four);                                                     \
        }                                                                                      \
        for (int r = 1; r < rounds; r++) {                                                     \
            __m512i rk = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)k->rk[r]));   \
            for (int z = 0; z < Z; z++)                                                        \
                b[z] = _mm512_aesenc_epi128(b[z], rk);                                         \
        }                                                                                      \
        __m512i rl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)k->rk[rounds])); \
        for (int z = 0; z < Z; z++)                                                            \
            _mm512_storeu_si512((void *)(out + 64 * z), _mm512_aesenclast_epi128(b[z], rl));   \
    } while (0)

VAES_TGT static void ks_vaes(const aesgcm_key *k, __m128i base, uint32_t ctr, int n, uint8_t *out)
{
    const int rounds = k->rounds;
    const __m512i vbase = _mm512_broadcast_i32x4(base);
    /* lane j's last word is ctr + j, turned big-endian by the byte shuffle */
    __m512i c = _mm512_add_epi32(_mm512_set_epi32((int)ctr, 0, 0, 0, (int)ctr, 0, 0, 0, (int)ctr,
                                                  0, 0, 0, (int)ctr, 0, 0, 0),
                                 _mm512_set_epi32(3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0));
    const __m512i four = _mm512_set_epi32(4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0);
    const __m512i be = _mm512_broadcast_i32x4(
        _mm_set_epi8(12, 13, 14, 15, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
    switch ((n + 3) / 4) { /* out has room for whole groups of four */
    case 1: VAES_BODY(1); break;
    case 2: VAES_BODY(2); break;
    case 3: VAES_BODY(3); break;
    default: VAES_BODY(4); break;
    }
    _mm256_zeroupper();
}

static int vaes_state = -1; /* -1: not yet looked at */

static int cpu_has_vaes(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("vaes") && __builtin_cpu_supports("avx512f")
           && __builtin_cpu_supports("avx512bw");
}

static int have_vaes(void)
{
    if (vaes_state < 0) /* the GIL (or any race) only ever stores the same value */
        vaes_state = cpu_has_vaes();
    return vaes_state;
}

int aesgcm_use_vaes(int on)
{
    vaes_state = on && cpu_has_vaes();
    return vaes_state;
}

int aesgcm_vaes(void)
{
    return aesgcm_available() && have_vaes();
}

TGT static void keystream(const aesgcm_key *k, __m128i base, uint32_t ctr, int n, uint8_t *out)
{
    if (have_vaes())
        ks_vaes(k, base, ctr, n, out);
    else
        ks_aesni(k, base, ctr, n, out);
}


/* ------------------------------------------------------------------ the AEAD (SP 800-38D 7) */

/* first = E(J0) and the keystream of counters 2..: as many of counters 1-16 as len needs. */
static int first_blocks(size_t len)
{
    size_t n = 1 + (len + 15) / 16;
    return n < KS_MAX ? (int)n : KS_MAX;
}

/* out = in XOR the keystream from counter 2 on; first holds counters 1.. (E(J0) first). */
TGT static void ctr_xor(const aesgcm_key *k, __m128i base, const uint8_t *first, const uint8_t *in,
                        uint8_t *out, size_t len)
{
    size_t n = len < 16 * (KS_MAX - 1) ? len : 16 * (KS_MAX - 1);
    xor_bytes(out, in, first + 16, n);
    if (len > n) {
        uint8_t ks[16 * KS_MAX];
        uint32_t ctr = 1 + KS_MAX;
        for (size_t off = n; off < len; off += sizeof ks, ctr += KS_MAX) {
            size_t m = len - off < sizeof ks ? len - off : sizeof ks;
            keystream(k, base, ctr, (int)((m + 15) / 16), ks);
            xor_bytes(out + off, in + off, ks, m);
        }
        OPENSSL_cleanse(ks, sizeof ks);
    }
}

TGT static void tag_of(const aesgcm_key *k, const uint8_t *ej0, const uint8_t *aad, size_t aadlen,
                       const uint8_t *ct, size_t len, uint8_t tag[16])
{
    __m128i x = ghash(k, aad, aadlen, ct, len);
    _mm_storeu_si128((__m128i *)tag,
                     _mm_xor_si128(bswap128(x), _mm_loadu_si128((const __m128i *)ej0)));
}

TGT int aesgcm_init(aesgcm_key *k, const uint8_t *key, size_t keylen)
{
    if ((keylen != 16 && keylen != 32) || !aesgcm_available())
        return 0;
    int rounds = keylen == 16 ? 10 : 14;
    __m128i rk[15];
    expand_key(rk, key, rounds);
    __m128i h[GH_POWERS];
    h[0] = bswap128(aes_block(rk, rounds, _mm_setzero_si128()));
    for (int i = 1; i < GH_POWERS; i++)
        h[i] = gfmul(h[i - 1], h[0]);
    for (int i = 0; i <= rounds; i++)
        _mm_storeu_si128((__m128i *)k->rk[i], rk[i]);
    for (int i = 0; i < GH_POWERS; i++)
        _mm_storeu_si128((__m128i *)k->h[i], h[i]);
    k->rounds = rounds;
    OPENSSL_cleanse(rk, sizeof rk);
    OPENSSL_cleanse(h, sizeof h);
    return 1;
}

TGT void aesgcm_seal(const aesgcm_key *k, const uint8_t nonce[AESGCM_NONCE_LEN],
                     const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len,
                     uint8_t tag[AESGCM_TAG_LEN])
{
    uint8_t b[16] = {0}, first[16 * KS_MAX];
    memcpy(b, nonce, AESGCM_NONCE_LEN);
    __m128i base = _mm_loadu_si128((const __m128i *)b);
    keystream(k, base, 1, first_blocks(len), first);
    ctr_xor(k, base, first, buf, buf, len);
    tag_of(k, first, aad, aadlen, buf, len, tag);
    OPENSSL_cleanse(first, 16); /* E(J0): with H it would forge under this nonce */
}

TGT int aesgcm_open(const aesgcm_key *k, const uint8_t nonce[AESGCM_NONCE_LEN], const uint8_t *aad,
                    size_t aadlen, const uint8_t *in, uint8_t *out, size_t len,
                    const uint8_t tag[AESGCM_TAG_LEN])
{
    uint8_t b[16] = {0}, first[16 * KS_MAX], want[16];
    memcpy(b, nonce, AESGCM_NONCE_LEN);
    __m128i base = _mm_loadu_si128((const __m128i *)b);
    keystream(k, base, 1, first_blocks(len), first);
    tag_of(k, first, aad, aadlen, in, len, want);
    int ok = CRYPTO_memcmp(want, tag, sizeof want) == 0;
    if (ok)
        ctr_xor(k, base, first, in, out, len);
    OPENSSL_cleanse(first, 16);
    return ok;
}

#else /* not x86-64: libcrypto does all of it */

int aesgcm_available(void)
{
    return 0;
}

int aesgcm_use_vaes(int on)
{
    return 0;
}

int aesgcm_vaes(void)
{
    return 0;
}

int aesgcm_init(aesgcm_key *k, const uint8_t *key, size_t keylen)
{
    return 0;
}

void aesgcm_seal(const aesgcm_key *k, const uint8_t nonce[AESGCM_NONCE_LEN], const uint8_t *aad,
                 size_t aadlen, uint8_t *buf, size_t len, uint8_t tag[AESGCM_TAG_LEN])
{
}

int aesgcm_open(const aesgcm_key *k, const uint8_t nonce[AESGCM_NONCE_LEN], const uint8_t *aad,
                size_t aadlen, const uint8_t *in, uint8_t *out, size_t len,
                const uint8_t tag[AESGCM_TAG_LEN])
{
    return 0;
}

#endif
