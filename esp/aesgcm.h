/* AES-GCM with a 12-byte nonce and a 16-byte tag (NIST SP 800-38D; RFC 4106's ESP use) for short
 * ESP packets, without libcrypto's per-call cost: the counter blocks (the first is E(J0), which
 * masks the tag) sixteen at a time, with VAES four per instruction where the CPU has AVX-512,
 * else with AES-NI eight in flight; GHASH with carry-less multiplication, up to sixteen blocks
 * per reduction. x86-64 with AES-NI, PCLMULQDQ, SSSE3 and SSE4.1 only (aesgcm_available() says
 * whether this CPU has them); AES-128 and AES-256 keys. Constant time: AES-NI and PCLMULQDQ have
 * no data-dependent timing, the tag check is CRYPTO_memcmp. Checked against NIST's vectors and
 * against libcrypto's EVP_aes_*_gcm on random inputs (tests/test_esp_aesgcm.py). docs/esp.md
 * "Short packets without libcrypto's per-call cost". */
#ifndef ESP_AESGCM_H
#define ESP_AESGCM_H

#include <stddef.h>
#include <stdint.h>

#define AESGCM_NONCE_LEN 12
#define AESGCM_TAG_LEN 16

/* GHASH multiplies runs of up to this many blocks by H^n .. H^1 and reduces once per run. */
#define GH_POWERS 16

/* The expanded key and H^1..H^16 (for GHASH), as plain bytes so that any allocation holds them. */
typedef struct {
    uint8_t rk[15][16];
    uint8_t h[GH_POWERS][16];
    int rounds; /* 10 (AES-128) or 14 (AES-256); 0: not keyed */
} aesgcm_key;

/* 1 if this CPU runs this code (cached after the first call). */
int aesgcm_available(void);

/* Tests: 0 makes the counter blocks go through AES-NI even where VAES is there; 1 uses VAES if
 * the CPU has it. Returns whether VAES is now in use. */
int aesgcm_use_vaes(int on);

/* 1 if the counter blocks go through VAES now. */
int aesgcm_vaes(void);

/* 1 and k keyed for a 16- or 32-byte key; 0 (k untouched) for other lengths or without the CPU
 * features. */
int aesgcm_init(aesgcm_key *k, const uint8_t *key, size_t keylen);

/* Encrypts buf[0..len) in place and writes the 16-byte tag; aad is authenticated only. */
void aesgcm_seal(const aesgcm_key *k, const uint8_t nonce[AESGCM_NONCE_LEN], const uint8_t *aad,
                 size_t aadlen, uint8_t *buf, size_t len, uint8_t tag[AESGCM_TAG_LEN]);

/* 1 and out[0..len) = the plaintext of in[0..len) if tag authenticates aad and in; 0 and out
 * untouched otherwise. out may equal in. */
int aesgcm_open(const aesgcm_key *k, const uint8_t nonce[AESGCM_NONCE_LEN], const uint8_t *aad,
                size_t aadlen, const uint8_t *in, uint8_t *out, size_t len,
                const uint8_t tag[AESGCM_TAG_LEN]);

#endif
