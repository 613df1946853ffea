/* ChaCha20-Poly1305 (RFC 8439 2.8) for ESP packets of any length, without libcrypto's per-call
 * cost: four ChaCha20 blocks per pass (SSE2 on x86-64, plain C elsewhere; block 0 gives the
 * Poly1305 key and blocks 1-3 the first 192 bytes of keystream, so a small packet is one pass)
 * and Poly1305 in 44-bit limbs. Constant time: add-rotate-xor, multiplications of secrets only,
 * a masked final reduction; the tag check is CRYPTO_memcmp. Checked against RFC 8439's vectors
 * and against libcrypto's EVP_chacha20_poly1305 on random inputs (tests/test_esp_chapoly.py).
 * docs/esp.md "ChaCha20-Poly1305 without libcrypto's per-call cost". */
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

/* Poly1305 of m[0..len) zero-padded to whole 16-byte blocks, the only form the AEAD uses (equal
 * to Poly1305 when len is a multiple of 16): exposed for tests of the arithmetic's edge cases. */
void chapoly_poly1305_padded(const uint8_t key[32], const uint8_t *m, size_t len,
                             uint8_t tag[CHAPOLY_TAG_LEN]);

#endif
