/* ChaCha20-Poly1305 (RFC 8439 2.8) for ESP packets of any length, without libcrypto's per-call
 * cost: four ChaCha20 blocks per pass (SSE2 on x86-64, plain C elsewhere; block 0 gives the
 * Poly1305 key and blocks 1-3 the first 192 bytes of keystream, so a small packet is one pass)
 * and Poly1305 in 44-bit limbs; runs of packets four at a time where the CPU has AVX-512VL and
 * IFMA (sixteen ChaCha20 lanes, four Poly1305 lanes: "Runs of packets" below). Constant time:
 * add-rotate-xor, multiplications of secrets only, a masked final reduction; the tag check is
 * CRYPTO_memcmp. Checked against RFC 8439's vectors and against libcrypto's
 * EVP_chacha20_poly1305 on random inputs (tests/test_esp_chapoly.py). docs/esp.md "Short
 * packets without libcrypto's per-call cost" and "ChaCha20-Poly1305 runs four packets at a
 * time". */
#ifndef ESP_CHAPOLY_H
#define ESP_CHAPOLY_H

#include <stddef.h>
#include <stdint.h>

#define CHAPOLY_KEY_LEN 32
#define CHAPOLY_NONCE_LEN 12
#define CHAPOLY_TAG_LEN 16

/* 1 where the SIMD ChaCha20 is built (x86-64): only then is this faster than libcrypto, so the
 * ESP path uses it only then; the plain C version (elsewhere) stays for the raw calls. */
int chapoly_available(void);

/* Tests: the ChaCha20 code to use, 0 SSE2, 1 SSSE3, 2 AVX-512VL (best the CPU has: -1). Returns
 * the level now in use, which is lower than asked where the CPU lacks it (always 0 outside
 * x86-64, meaning plain C). */
int chapoly_use_level(int level);

/* The level in use now. */
int chapoly_level(void);

/* Encrypts buf[0..len) in place and writes the 16-byte tag; aad is authenticated only. */
void chapoly_seal(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t nonce[CHAPOLY_NONCE_LEN],
                  const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len,
                  uint8_t tag[CHAPOLY_TAG_LEN]);

/* 1 and out[0..len) = the plaintext of in[0..len) if tag authenticates aad and in; 0 and out
 * untouched otherwise. out may equal in. */
int chapoly_open(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t nonce[CHAPOLY_NONCE_LEN],
                 const uint8_t *aad, size_t aadlen, const uint8_t *in, uint8_t *out, size_t len,
                 const uint8_t tag[CHAPOLY_TAG_LEN]);

/* Runs of packets of one key, up to four at a time. chapoly_first4 computes blocks 0-3 of the
 * keystream (the Poly1305 key and the first 192 bytes) for count (1-4) nonces into
 * out[0..count). chapoly_tags4 computes the AEAD tags of count (1-4) inputs (AAD up to 16
 * bytes) given their first blocks; chapoly_xor_first encrypts or decrypts one packet given its
 * first blocks (chapoly_seal = chapoly_xor_first then the tag; chapoly_open = the tag, compared,
 * then chapoly_xor_first); chapoly_open_first is chapoly_open given the first blocks. Where
 * chapoly_multi() is 1 (AVX-512VL and IFMA, in use) the four keystreams are one pass of sixteen
 * ChaCha20 lanes and the four tags one pass of four Poly1305 lanes, at about half the cost per
 * packet of single calls; elsewhere the same results come one packet after another. The caller
 * cleanses the first blocks. */
int chapoly_multi(void);
void chapoly_first4(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t *const nonces[4], int count,
                    uint8_t out[4][256]);
void chapoly_tags4(const uint8_t *const first[4], const uint8_t *const aad[4], const size_t aadlen[4],
                   const uint8_t *const ct[4], const size_t len[4], int count, uint8_t *const tag[4]);
void chapoly_xor_first(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t nonce[CHAPOLY_NONCE_LEN],
                       const uint8_t first[256], const uint8_t *in, uint8_t *out, size_t len);
int chapoly_open_first(const uint8_t key[CHAPOLY_KEY_LEN], const uint8_t nonce[CHAPOLY_NONCE_LEN],
                       const uint8_t first[256], const uint8_t *aad, size_t aadlen,
                       const uint8_t *in, uint8_t *out, size_t len, const uint8_t tag[CHAPOLY_TAG_LEN]);

/* Poly1305 of m[0..len) zero-padded to whole 16-byte blocks, the only form the AEAD uses (equal
 * to Poly1305 when len is a multiple of 16): exposed for tests of the arithmetic's edge cases. */
void chapoly_poly1305_padded(const uint8_t key[32], const uint8_t *m, size_t len,
                             uint8_t tag[CHAPOLY_TAG_LEN]);

/* The same for count (1-4) messages at once, through the four-lane code where chapoly_multi()
 * is 1 and each message is at most 1 072 bytes (else one after another): for tests. */
void chapoly_poly1305_padded4(const uint8_t *const key[4], const uint8_t *const m[4],
                              const size_t len[4], int count, uint8_t *const tag[4]);

#endif
