/* The compiled per-packet path of AEAD ESP SAs (AES-GCM-16, RFC 4106; ChaCha20-Poly1305,
 * RFC 7634) and the anti-replay window it updates. Optional: esp/compiled.py falls back to the
 * pure-Python code (esp/packet.py, esp/cipher.py, esp/replay.py), which defines the behaviour;
 * tests/test_esp_compiled.py checks that both give the same bytes, verdicts and windows.
 * docs/esp.md "Compiled ESP path".
 *
 * Linked against the system libcrypto (OpenSSL 3). Key material lives only in the EVP cipher
 * contexts and the salt of an Aead object: wipe() and deallocation free the contexts (OpenSSL
 * cleanses them) and overwrite the salt. No I/O, no threads; the GIL is held throughout.
 * Every length is checked before use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#if OPENSSL_VERSION_MAJOR >= 3
#include <openssl/core_names.h>
#include <openssl/params.h>
#endif
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "aesgcm.h"
#include "chapoly.h"

/* Bump when the interface or behaviour changes: esp/compiled.py ignores a module whose ABI
 * differs (a stale build left next to newer sources). */
#define ESP_AEAD_ABI 4

/* The ICV of the last encryption, and the expected ICV before a decryption's final step. With
 * OpenSSL 3 as a cipher parameter: EVP_CIPHER_CTX_ctrl translates to the same parameter, and
 * its detour cost 15-25 ns per 188-byte seal (in-process, seal_many of 64: AES-GCM-256 0.240 ->
 * 0.225 us, ChaCha20-Poly1305 0.626 -> 0.602 us; docs/esp.md "Runs grouped in C, and a faster
 * machine"). */
static int get_tag(EVP_CIPHER_CTX *c, unsigned char *tag, size_t len)
{
#if OPENSSL_VERSION_MAJOR >= 3
    OSSL_PARAM p[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, len),
                       OSSL_PARAM_construct_end()};
    return EVP_CIPHER_CTX_get_params(c, p);
#else
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, (int)len, tag);
#endif
}

static int set_tag(EVP_CIPHER_CTX *c, const unsigned char *tag, size_t len)
{
#if OPENSSL_VERSION_MAJOR >= 3
    OSSL_PARAM p[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)tag, len),
                       OSSL_PARAM_construct_end()};
    return EVP_CIPHER_CTX_set_params(c, p);
#else
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, (int)len, (void *)tag);
#endif
}

/* Verdicts of decapsulate(); esp/compiled.py maps them to DropReason. */
enum {
    D_MALFORMED = 1,
    D_SPI_MISMATCH = 2,
    D_REPLAY = 3,
    D_AUTH_FAILED = 4,
    D_BAD_PADDING = 5,
    D_DUMMY = 6,
    D_BAD_NEXT_HEADER = 7,
    D_SA_DEAD = 8,
};

#define ENCR_AES_GCM_16 20
#define ENCR_CHACHA20_POLY1305 28
#define SALT_LEN 4
#define IV_LEN 8
#define ICV_LEN 16
#define HDR_LEN 8
#define AEAD_MIN_LEN (HDR_LEN + IV_LEN + ICV_LEN + 2)
#define PROTO_IPIP 4
#define PROTO_IPV6 41
#define PROTO_NONE 59
#define MAX_SEQ_32 0xFFFFFFFFull
#define MAX_SEQ_ESN 0xFFFFFFFFFFFFFFFFull
#define MIN_WINDOW 32
#define BLOCK_BITS 32

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* An int argument as an unsigned 64-bit value: 0 ok, 1 out of range (negative or above
 * 2^64 - 1), -1 not an int (TypeError set). */
static int u64_arg(PyObject *o, uint64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "an int is required");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ the anti-replay window */

/* RFC 4303 3.4.3 semantics, RFC 6479 ring of 32-bit blocks, RFC 4303 A2 ESN inference: the
 * same algorithm as esp/replay.py ReplayWindow, line for line. */
typedef struct {
    PyObject_HEAD
    uint64_t top;  /* T, the highest authenticated sequence number; 0: none yet */
    uint64_t max;  /* 2^32 - 1, or 2^64 - 1 with ESN */
    uint64_t size; /* W, a multiple of 32 */
    uint64_t nblocks;
    int esn;
    uint32_t *bitmap;
} ReplayObject;

static int replay_ok(const ReplayObject *w, uint64_t seq)
{
    if (seq == 0 || seq > w->max)
        return 0;
    if (seq > w->top)
        return 1;
    if (w->top - seq >= w->size)
        return 0;
    uint32_t block = w->bitmap[(seq >> 5) % w->nblocks];
    return !((block >> (seq & 31)) & 1);
}

/* seq is 1 .. max (the caller checked). */
static void replay_record(ReplayObject *w, uint64_t seq)
{
    if (seq > w->top) {
        uint64_t cur = w->top >> 5, diff = (seq >> 5) - cur;
        uint64_t n = diff < w->nblocks ? diff : w->nblocks;
        for (uint64_t i = cur + 1; i < cur + 1 + n; i++)
            w->bitmap[i % w->nblocks] = 0;
        w->top = seq;
    } else if (w->top - seq >= w->size) {
        return;
    }
    w->bitmap[(seq >> 5) % w->nblocks] |= (uint32_t)1 << (seq & 31);
}

/* The high 32 bits to try for a packet carrying seq_low (ESN only); may be 2^32 when the
 * window's top is in the last subspace, which no valid sequence number reaches. */
static uint64_t replay_seq_high(const ReplayObject *w, uint32_t seq_low)
{
    uint64_t th = w->top >> 32;
    uint32_t tl = (uint32_t)w->top;
    uint32_t bl = (uint32_t)(tl - w->size + 1);
    if ((uint64_t)tl >= w->size - 1)
        return seq_low >= bl ? th : th + 1;
    if (seq_low >= bl)
        return th > 0 ? th - 1 : th;
    return th;
}

static PyObject *Replay_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "esn", NULL};
    PyObject *size_obj = NULL;
    int esn = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$p:ReplayWindow", kwlist, &size_obj, &esn))
        return NULL;
    uint64_t size = 1024;
    if (size_obj != NULL) {
        if (!PyLong_Check(size_obj)) {
            PyErr_SetString(PyExc_TypeError, "window size must be an int");
            return NULL;
        }
        int overflow = 0;
        long long s = PyLong_AsLongLongAndOverflow(size_obj, &overflow);
        if (s == -1 && PyErr_Occurred())
            return NULL;
        if (overflow < 0 || (!overflow && s < MIN_WINDOW)) {
            PyErr_SetString(PyExc_ValueError, "anti-replay window must be at least 32");
            return NULL;
        }
        if (overflow > 0 || (uint64_t)s > MAX_SEQ_32) {
            PyErr_SetString(PyExc_ValueError, "anti-replay window too large");
            return NULL;
        }
        size = (uint64_t)s;
    }
    size = (size + BLOCK_BITS - 1) / BLOCK_BITS * BLOCK_BITS;
    if (size > MAX_SEQ_32) {
        PyErr_SetString(PyExc_ValueError, "anti-replay window too large");
        return NULL;
    }
    ReplayObject *w = (ReplayObject *)type->tp_alloc(type, 0);
    if (w == NULL)
        return NULL;
    w->size = size;
    w->nblocks = size / BLOCK_BITS + 1;
    w->esn = esn;
    w->max = esn ? MAX_SEQ_ESN : MAX_SEQ_32;
    w->top = 0;
    w->bitmap = PyMem_Calloc((size_t)w->nblocks, sizeof(uint32_t));
    if (w->bitmap == NULL) {
        Py_DECREF(w);
        return PyErr_NoMemory();
    }
    return (PyObject *)w;
}

static void Replay_dealloc(ReplayObject *w)
{
    PyMem_Free(w->bitmap);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *Replay_infer_seq(ReplayObject *w, PyObject *arg)
{
    if (!w->esn && PyLong_Check(arg))
        return Py_NewRef(arg); /* without ESN the number itself (esp/replay.py) */
    uint64_t low;
    int r = u64_arg(arg, &low);
    if (r < 0)
        return NULL;
    if (r > 0 || low > MAX_SEQ_32) {
        PyErr_SetString(PyExc_ValueError, "the low sequence number bits are 0 .. 2^32 - 1");
        return NULL;
    }
    uint64_t high = replay_seq_high(w, (uint32_t)low);
    if (high <= MAX_SEQ_32)
        return PyLong_FromUnsignedLongLong((high << 32) | low);
    /* 2^64 + low: beyond every valid sequence number; check() refuses it */
    PyObject *h = PyLong_FromUnsignedLongLong(high), *sh = NULL, *l = NULL, *res = NULL;
    PyObject *thirty_two = PyLong_FromLong(32);
    if (h && thirty_two)
        sh = PyNumber_Lshift(h, thirty_two);
    if (sh)
        l = PyLong_FromUnsignedLongLong(low);
    if (l)
        res = PyNumber_Or(sh, l);
    Py_XDECREF(h);
    Py_XDECREF(thirty_two);
    Py_XDECREF(sh);
    Py_XDECREF(l);
    return res;
}

static PyObject *Replay_check(ReplayObject *w, PyObject *arg)
{
    uint64_t seq;
    int r = u64_arg(arg, &seq);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r == 0 && replay_ok(w, seq));
}

static PyObject *Replay_update(ReplayObject *w, PyObject *arg)
{
    uint64_t seq;
    int r = u64_arg(arg, &seq);
    if (r < 0)
        return NULL;
    if (r > 0 || seq == 0 || seq > w->max) {
        PyErr_SetString(PyExc_ValueError, "sequence number out of range");
        return NULL;
    }
    replay_record(w, seq);
    Py_RETURN_NONE;
}

static PyObject *Replay_repr(ReplayObject *w)
{
    return PyUnicode_FromFormat("ReplayWindow(size=%llu, esn=%s, top=%llu)",
                                (unsigned long long)w->size, w->esn ? "True" : "False",
                                (unsigned long long)w->top);
}

static PyObject *Replay_get_top(ReplayObject *w, void *closure)
{
    return PyLong_FromUnsignedLongLong(w->top);
}

static int Replay_set_top(ReplayObject *w, PyObject *value, void *closure)
{
    uint64_t top;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "top cannot be deleted");
        return -1;
    }
    int r = u64_arg(value, &top);
    if (r < 0)
        return -1;
    if (r > 0 || top > w->max) {
        PyErr_SetString(PyExc_ValueError, "top out of range");
        return -1;
    }
    w->top = top;
    return 0;
}

static PyObject *Replay_get_size(ReplayObject *w, void *closure)
{
    return PyLong_FromUnsignedLongLong(w->size);
}

static PyObject *Replay_get_esn(ReplayObject *w, void *closure)
{
    return PyBool_FromLong(w->esn);
}

static PyObject *Replay_get_bottom(ReplayObject *w, void *closure)
{
    /* top - size + 1, which may be <= 0 early on */
    if (w->top >= w->size - 1)
        return PyLong_FromUnsignedLongLong(w->top - w->size + 1);
    return PyLong_FromLongLong(-(long long)(w->size - 1 - w->top));
}

static PyMethodDef Replay_methods[] = {
    {"infer_seq", (PyCFunction)Replay_infer_seq, METH_O,
     "Full sequence number of a packet carrying these low 32 bits (RFC 4303 A2.2)."},
    {"check", (PyCFunction)Replay_check, METH_O,
     "True if the full sequence number is not a replay and not too old."},
    {"update", (PyCFunction)Replay_update, METH_O,
     "Record the sequence number as received (only after its ICV verified)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Replay_getset[] = {
    {"top", (getter)Replay_get_top, (setter)Replay_set_top, "highest authenticated sequence number", NULL},
    {"size", (getter)Replay_get_size, NULL, "window size (a multiple of 32)", NULL},
    {"esn", (getter)Replay_get_esn, NULL, "extended sequence numbers", NULL},
    {"bottom", (getter)Replay_get_bottom, NULL, "lowest sequence number inside the window", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReplayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "esp._aead.ReplayWindow",
    .tp_basicsize = sizeof(ReplayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sliding anti-replay window (esp/replay.py ReplayWindow, compiled).",
    .tp_new = Replay_new,
    .tp_dealloc = (destructor)Replay_dealloc,
    .tp_repr = (reprfunc)Replay_repr,
    .tp_methods = Replay_methods,
    .tp_getset = Replay_getset,
};

/* ------------------------------------------------------------------ the AEAD cipher */

/* Packets up to this many bytes of ciphertext go through chapoly.c and aesgcm.c, longer ones
 * through libcrypto, whose wider code overtakes them there (sealing with an 8-byte AAD,
 * in-process, this project's machine: ChaCha20-Poly1305 188 bytes 0.26 against 0.73 us, 640
 * bytes 0.65 against 0.71, 768 bytes 0.79 against 0.73; AES-256-GCM 188 bytes 0.084 against
 * 0.227 us, 1024 bytes 0.33 against 0.35, 1440 bytes 0.42 against 0.41; docs/esp.md "Short
 * packets without libcrypto's per-call cost"). */
#define CHAPOLY_MAX 640
#define AESGCM_MAX 1024

/* 0: every packet through libcrypto (short_path(False): tests and benchmarks compare both). */
static int short_path = 1;

enum { SHORT_NONE, SHORT_CHAPOLY, SHORT_AESGCM };

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    uint8_t salt[SALT_LEN];
    int chapoly;                     /* ChaCha20-Poly1305: short packets through chapoly.c */
    uint8_t key[CHAPOLY_KEY_LEN];    /* its key, only then */
    aesgcm_key *gcm;                 /* AES-GCM-128/256 on a CPU aesgcm.c runs on, else NULL */
} AeadObject;

/* The ESP plaintext length for a payload of n bytes: payload, padding to 4 bytes, pad length and
 * next header (RFC 4303 2.4). */
static size_t padded_len(size_t n)
{
    return n + ((size_t)(-(Py_ssize_t)(n + 2)) & 3) + 2;
}

/* Which code seals or opens a packet of len bytes of ciphertext with a's key: chapoly.c,
 * aesgcm.c, or libcrypto (SHORT_NONE). */
static int short_kind(const AeadObject *a, size_t len)
{
    if (!short_path)
        return SHORT_NONE;
    if (a->chapoly && len <= CHAPOLY_MAX)
        return SHORT_CHAPOLY;
    if (a->gcm != NULL && len <= AESGCM_MAX)
        return SHORT_AESGCM;
    return SHORT_NONE;
}

/* Scratch space for one decrypted packet (a UDP payload is below 64 KiB); the GIL serialises
 * its users. */
static uint8_t scratch[65536];

static void aead_free_keys(AeadObject *a)
{
    EVP_CIPHER_CTX_free(a->enc); /* cleanses the key schedule */
    EVP_CIPHER_CTX_free(a->dec);
    a->enc = a->dec = NULL;
    OPENSSL_cleanse(a->salt, sizeof a->salt);
    OPENSSL_cleanse(a->key, sizeof a->key);
    a->chapoly = 0;
    if (a->gcm != NULL) {
        OPENSSL_cleanse(a->gcm, sizeof *a->gcm);
        PyMem_Free(a->gcm);
        a->gcm = NULL;
    }
}

static EVP_CIPHER_CTX *aead_ctx(const EVP_CIPHER *cipher, const uint8_t *key, int encrypt)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (c == NULL)
        return NULL;
    if (EVP_CipherInit_ex(c, cipher, NULL, NULL, NULL, encrypt) != 1
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_IVLEN, SALT_LEN + IV_LEN, NULL) != 1
        || EVP_CipherInit_ex(c, NULL, NULL, key, NULL, encrypt) != 1) {
        EVP_CIPHER_CTX_free(c);
        return NULL;
    }
    return c;
}

static PyObject *Aead_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"encr_id", "key", NULL};
    int encr_id;
    Py_buffer key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*:Aead", kwlist, &encr_id, &key))
        return NULL;
    const EVP_CIPHER *cipher = NULL;
    Py_ssize_t klen = key.len - SALT_LEN;
    if (encr_id == ENCR_AES_GCM_16)
        cipher = klen == 16 ? EVP_aes_128_gcm() : klen == 24 ? EVP_aes_192_gcm()
               : klen == 32 ? EVP_aes_256_gcm() : NULL;
    else if (encr_id == ENCR_CHACHA20_POLY1305)
        cipher = klen == 32 ? EVP_chacha20_poly1305() : NULL;
    if (cipher == NULL) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "unsupported AEAD transform or key length "
                        "(AES-GCM-16: 16/24/32 + 4; ChaCha20-Poly1305: 32 + 4 bytes)");
        return NULL;
    }
    AeadObject *a = (AeadObject *)type->tp_alloc(type, 0);
    if (a == NULL) {
        PyBuffer_Release(&key);
        return NULL;
    }
    const uint8_t *k = key.buf;
    a->enc = aead_ctx(cipher, k, 1);
    a->dec = aead_ctx(cipher, k, 0);
    memcpy(a->salt, k + klen, SALT_LEN);
    if (encr_id == ENCR_CHACHA20_POLY1305 && chapoly_available()) {
        memcpy(a->key, k, CHAPOLY_KEY_LEN);
        a->chapoly = 1;
    } else if (aesgcm_available() && (klen == 16 || klen == 32)) {
        a->gcm = PyMem_Malloc(sizeof *a->gcm);
        if (a->gcm != NULL && !aesgcm_init(a->gcm, k, (size_t)klen)) {
            PyMem_Free(a->gcm);
            a->gcm = NULL;
        }
    }
    PyBuffer_Release(&key);
    if (a->enc == NULL || a->dec == NULL) {
        Py_DECREF(a);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto refused the AEAD key");
        return NULL;
    }
    return (PyObject *)a;
}

static void Aead_dealloc(AeadObject *a)
{
    aead_free_keys(a);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyObject *Aead_wipe(AeadObject *a, PyObject *unused)
{
    aead_free_keys(a);
    Py_RETURN_NONE;
}

static PyObject *wiped_error(void)
{
    PyErr_SetString(PyExc_ValueError, "AEAD key wiped");
    return NULL;
}

/* ChaCha20-Poly1305 packets of a run taken four at a time (chapoly.h "Runs of packets"): the
 * keystreams' first blocks in one pass, the tags in one pass. at[j] is packet j's first blocks,
 * or NULL where packet j goes the single-packet way (not through chapoly.c, or alone). Sealing,
 * seal_one encrypts with at[j] and leaves its tag to group_tags; opening, open_group also
 * computes the tag each packet must carry (want[j], when have_want[j]). */
struct group {
    uint8_t ks[4][256];
    const uint8_t *at[4];
    int used;                     /* ks[0..used) hold key material */
    int ntags;                    /* tags for the group's pass */
    const uint8_t *first[4], *aad[4], *ct[4];
    uint8_t *tag[4];
    size_t aadlen[4], len[4];
    uint8_t aadbuf[4][12];
    uint8_t want[4][16];
    int have_want[4];
};

static void group_clear(struct group *g)
{
    if (g->used) { /* explicit_bzero: glibc's vector memset, 1 KiB in a few dozen cycles */
        explicit_bzero(g->ks, (size_t)g->used * sizeof g->ks[0]);
        explicit_bzero(g->want, sizeof g->want); /* a forged packet's right tag */
    }
    g->used = g->ntags = 0;
    for (int j = 0; j < 4; j++) {
        g->at[j] = NULL;
        g->have_want[j] = 0;
    }
}

/* The first blocks for nonces[0..count) (count >= 2) into g, slot[k] naming nonce k's packet. */
static void group_fill(AeadObject *a, struct group *g, const uint8_t *const nonces[4],
                       const int slot[4], int count)
{
    chapoly_first4(a->key, nonces, count, g->ks);
    g->used = count;
    for (int k = 0; k < count; k++)
        g->at[slot[k]] = g->ks[k];
}

/* A tag for the group's pass: over aad/aadlen and ct/len with first, written to tag. */
static void group_add_tag(struct group *g, const uint8_t *first, const uint8_t *aad, size_t aadlen,
                          const uint8_t *ct, size_t len, uint8_t *tag)
{
    int k = g->ntags++;
    memcpy(g->aadbuf[k], aad, aadlen);
    g->first[k] = first;
    g->aad[k] = g->aadbuf[k];
    g->aadlen[k] = aadlen;
    g->ct[k] = ct;
    g->len[k] = len;
    g->tag[k] = tag;
}

static void group_tags(struct group *g)
{
    if (g->ntags)
        chapoly_tags4(g->first, g->aad, g->aadlen, g->ct, g->len, g->ntags, g->tag);
    g->ntags = 0;
}

/* Whether a's runs go through groups: a ChaCha20-Poly1305 SA through chapoly.c on a CPU that
 * runs the four-lane code; decided once per seal_many / decapsulate_many call. */
static int grouped(const AeadObject *a)
{
    return a->enc != NULL && short_kind(a, 0) == SHORT_CHAPOLY && chapoly_multi();
}

/* For seal_many (grouped): packets i..i+3 of list, sequence numbers from seq + i. */
static void seal_group(AeadObject *a, struct group *g, PyObject *list, Py_ssize_t i, uint64_t seq)
{
    group_clear(g);
    uint8_t nonce[4][SALT_LEN + IV_LEN];
    const uint8_t *nonces[4];
    int slot[4], count = 0;
    Py_ssize_t end = PyList_GET_SIZE(list);
    for (int j = 0; j < 4 && i + j < end; j++) {
        size_t n = (size_t)PyBytes_GET_SIZE(PyList_GET_ITEM(list, i + j));
        if (n > 65535 || short_kind(a, padded_len(n)) != SHORT_CHAPOLY)
            continue;
        uint64_t q = seq + (uint64_t)(i + j);
        memcpy(nonce[count], a->salt, SALT_LEN);
        put32(nonce[count] + SALT_LEN, (uint32_t)(q >> 32));
        put32(nonce[count] + SALT_LEN + 4, (uint32_t)q);
        nonces[count] = nonce[count];
        slot[count++] = j;
    }
    if (count >= 2)
        group_fill(a, g, nonces, slot, count);
}

/* The whole ESP packet for payload p/n: SPI | low 32 bits of seq | explicit IV (the 64-bit seq)
 * | ciphertext of payload, padding 1, 2, 3 to 4 bytes, pad length, next header | ICV. AAD:
 * SPI | seq low, or SPI | seq high | seq low with ESN (RFC 4106 5). NULL with an exception
 * set on failure. With first (ChaCha20-Poly1305 in a group of seal_many: its first keystream
 * blocks) the packet is encrypted and its tag left to group_tags (g). */
static PyObject *seal_one(AeadObject *a, uint32_t spi, uint64_t seq, const uint8_t *p, size_t n,
                          unsigned nh, int esn, const uint8_t *first, struct group *g)
{
    if (n > 65535) {
        PyErr_SetString(PyExc_ValueError, "payload above 65535 bytes");
        return NULL;
    }
    size_t ptlen = padded_len(n), pad = ptlen - n - 2;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(HDR_LEN + IV_LEN + ptlen + ICV_LEN));
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    put32(o, spi);
    put32(o + 4, (uint32_t)seq);
    put32(o + 8, (uint32_t)(seq >> 32));
    put32(o + 12, (uint32_t)seq);
    uint8_t nonce[SALT_LEN + IV_LEN], aad[12], trailer[5];
    memcpy(nonce, a->salt, SALT_LEN);
    memcpy(nonce + SALT_LEN, o + 8, IV_LEN);
    int aadlen = 8;
    memcpy(aad, o, 8);
    if (esn) {
        put32(aad + 4, (uint32_t)(seq >> 32));
        put32(aad + 8, (uint32_t)seq);
        aadlen = 12;
    }
    for (size_t i = 0; i < pad; i++)
        trailer[i] = (uint8_t)(i + 1);
    trailer[pad] = (uint8_t)pad;
    trailer[pad + 1] = (uint8_t)nh;
    /* the plaintext laid out in place and encrypted with one update: a second update at an
     * unaligned offset costs more than the copy (ChaCha20-Poly1305 0.64 -> 0.43 us for 188
     * bytes, AES-GCM 0.31 -> 0.24) */
    uint8_t *ct = o + HDR_LEN + IV_LEN;
    memcpy(ct, p, n);
    memcpy(ct + n, trailer, pad + 2);
    switch (short_kind(a, ptlen)) {
    case SHORT_CHAPOLY:
        if (first != NULL) { /* the tag comes with the group's (seal_many) */
            chapoly_xor_first(a->key, nonce, first, ct, ct, ptlen);
            group_add_tag(g, first, aad, (size_t)aadlen, ct, ptlen, ct + ptlen);
        } else
            chapoly_seal(a->key, nonce, aad, (size_t)aadlen, ct, ptlen, ct + ptlen);
        return out;
    case SHORT_AESGCM:
        aesgcm_seal(a->gcm, nonce, aad, (size_t)aadlen, ct, ptlen, ct + ptlen);
        return out;
    }
    int len, ok = EVP_EncryptInit_ex(a->enc, NULL, NULL, NULL, nonce) == 1
        && EVP_EncryptUpdate(a->enc, NULL, &len, aad, aadlen) == 1
        && EVP_EncryptUpdate(a->enc, ct, &len, ct, (int)ptlen) == 1
        && EVP_EncryptFinal_ex(a->enc, ct + ptlen, &len) == 1
        && get_tag(a->enc, ct + ptlen, ICV_LEN) == 1;
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto AEAD seal failed");
        return NULL;
    }
    return out;
}

/* The SPI and sequence number arguments: 0, or -1 with TypeError (not ints) or ValueError (SPI
 * beyond 32 bits, sequence number beyond 64 bits or negative) set. */
static int spi_seq_args(PyObject *spi_o, PyObject *seq_o, uint64_t *spi, uint64_t *seq)
{
    int r = u64_arg(spi_o, spi);
    if (r == 0)
        r = u64_arg(seq_o, seq);
    if (r < 0)
        return -1;
    if (r > 0 || *spi > MAX_SEQ_32) {
        PyErr_SetString(PyExc_ValueError, "SPI or sequence number out of range");
        return -1;
    }
    return 0;
}

/* seal(spi, seq, payload, next_header, esn) -> the whole ESP packet (seal_one); the same bytes
 * as EspCipher.seal_packet. */
static PyObject *Aead_seal(AeadObject *a, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "seal(spi, seq, payload, next_header, esn)");
        return NULL;
    }
    if (a->enc == NULL)
        return wiped_error();
    uint64_t spi, seq, nh;
    if (spi_seq_args(args[0], args[1], &spi, &seq) < 0)
        return NULL;
    int r = u64_arg(args[3], &nh);
    if (r < 0)
        return NULL;
    if (r > 0 || nh > 255) {
        PyErr_SetString(PyExc_ValueError, "next header out of range");
        return NULL;
    }
    int esn = PyObject_IsTrue(args[4]);
    if (esn < 0)
        return NULL;
    if (PyBytes_CheckExact(args[2]))
        return seal_one(a, (uint32_t)spi, seq, (const uint8_t *)PyBytes_AS_STRING(args[2]),
                        (size_t)PyBytes_GET_SIZE(args[2]), (unsigned)nh, esn, NULL, NULL);
    Py_buffer pl;
    if (PyObject_GetBuffer(args[2], &pl, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = seal_one(a, (uint32_t)spi, seq, pl.buf, (size_t)pl.len, (unsigned)nh, esn, NULL, NULL);
    PyBuffer_Release(&pl);
    return out;
}

/* seal_many(spi, first_seq, packets, esn) -> (list of ESP packets, bytes): seal() for each IP
 * packet of the list (bytes, each at least one byte) in order with sequence numbers first_seq,
 * first_seq + 1, ...; next header 4 for IPv4 (version nibble 4), else 41. The second value is
 * the packets' total length (the SA's byte counter). The caller has checked that the numbers
 * stay within the SA's limit. */
static PyObject *Aead_seal_many(AeadObject *a, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "seal_many(spi, first_seq, packets, esn)");
        return NULL;
    }
    if (a->enc == NULL)
        return wiped_error();
    uint64_t spi, seq;
    if (spi_seq_args(args[0], args[1], &spi, &seq) < 0)
        return NULL;
    if (!PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "packets must be a list of bytes");
        return NULL;
    }
    int esn = PyObject_IsTrue(args[3]);
    if (esn < 0)
        return NULL;
    PyObject *list = args[2];
    Py_ssize_t count = PyList_GET_SIZE(list);
    if (count > 0 && (uint64_t)(count - 1) > MAX_SEQ_ESN - seq) {
        PyErr_SetString(PyExc_ValueError, "sequence numbers would pass 2^64 - 1");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *o = PyList_GET_ITEM(list, i);
        if (!PyBytes_CheckExact(o) || PyBytes_GET_SIZE(o) < 1) {
            PyErr_SetString(PyExc_TypeError, "packets must be non-empty bytes");
            return NULL;
        }
    }
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    unsigned long long total = 0;
    struct group g;
    g.used = 0;
    group_clear(&g);
    int by_groups = grouped(a);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *o = PyList_GET_ITEM(list, i);
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(o);
        size_t n = (size_t)PyBytes_GET_SIZE(o);
        if (by_groups && i % 4 == 0)
            seal_group(a, &g, list, i, seq);
        PyObject *esp = seal_one(a, (uint32_t)spi, seq + (uint64_t)i, p, n,
                                 p[0] >> 4 == 4 ? PROTO_IPIP : PROTO_IPV6, esn, g.at[i % 4], &g);
        if (esp == NULL) {
            group_clear(&g);
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, esp);
        total += n;
        if (by_groups && (i % 4 == 3 || i == count - 1))
            group_tags(&g);
    }
    group_clear(&g);
    return Py_BuildValue("(NK)", out, total);
}

/* For an authentic plaintext pt/ctlen (ctlen >= 4): the inner packet (new reference, its next
 * header in *nh), or NULL with *verdict > 0 (refused) or *verdict == 0 (an exception is set).
 * Checks the padding 1, 2, 3, ... (RFC 4303 2.4), dummy packets, allowed next headers, the
 * inner IPv4 or IPv6 header; TFC padding after the inner packet is stripped
 * (esp.packet._inner_of). */
static PyObject *opened_inner(const uint8_t *pt, size_t ctlen, const uint8_t *allow, unsigned *nh_out,
                              long *verdict)
{
    size_t pad = pt[ctlen - 2];
    unsigned nh = pt[ctlen - 1];
    *verdict = 0;
    if (pad + 2 > ctlen) {
        *verdict = D_BAD_PADDING;
        return NULL;
    }
    size_t end = ctlen - 2 - pad;
    for (size_t i = 0; i < pad; i++)
        if (pt[end + i] != (uint8_t)(i + 1)) {
            *verdict = D_BAD_PADDING;
            return NULL;
        }
    if (nh == PROTO_NONE) {
        *verdict = D_DUMMY;
        return NULL;
    }
    if (!((allow[nh >> 3] >> (nh & 7)) & 1)) {
        *verdict = D_BAD_NEXT_HEADER;
        return NULL;
    }
    size_t inner = end;
    if (nh == PROTO_IPIP) {
        size_t hlen = end ? (size_t)(pt[0] & 0x0F) * 4 : 0, total = end >= 4 ? ((size_t)pt[2] << 8) | pt[3] : 0;
        if (end == 0 || pt[0] >> 4 != 4 || end < 20 || hlen < 20 || total < hlen || total > end) {
            *verdict = D_MALFORMED;
            return NULL;
        }
        inner = total;
    } else if (nh == PROTO_IPV6) {
        if (end == 0 || pt[0] >> 4 != 6 || end < 40) {
            *verdict = D_MALFORMED;
            return NULL;
        }
        size_t plen = ((size_t)pt[4] << 8) | pt[5];
        if ((plen == 0 && end > 40) || 40 + plen > end) {
            *verdict = D_MALFORMED;
            return NULL;
        }
        inner = 40 + plen;
    }
    *nh_out = nh;
    return PyBytes_FromStringAndSize((const char *)pt, (Py_ssize_t)inner);
}

/* The whole per-packet check and decryption of one ESP packet p/len for SA (a, w, spi): 0 with
 * *inner set (new reference; its next header in *nh) when it passed, a verdict > 0 when it was
 * refused, -1 with an exception set (out of memory). The order is RFC 4303 3.4: lengths and SPI,
 * sequence number inference (ESN) and anti-replay check, ICV verification and decryption, window
 * update (only now), then the plaintext's checks (opened_inner). */
static long decap_core(AeadObject *a, ReplayObject *w, uint32_t spi, const uint8_t *allow,
                       const uint8_t *p, size_t len, PyObject **inner, unsigned *nh,
                       const uint8_t *first, const uint8_t *want)
{
    long verdict = 0;
    uint64_t seq = 0;
    size_t ctlen = 0;
    uint8_t *pt = scratch; /* the plaintext */
    *inner = NULL;
    if (a->enc == NULL)
        return D_SA_DEAD;
    if (len < HDR_LEN)
        return D_MALFORMED;
    if (get32(p) != spi)
        return D_SPI_MISMATCH;
    uint32_t low = get32(p + 4);
    if (w->esn) {
        uint64_t high = replay_seq_high(w, low);
        if (high > MAX_SEQ_32)
            return D_REPLAY;
        seq = (high << 32) | low;
    } else {
        seq = low;
    }
    if (!replay_ok(w, seq))
        return D_REPLAY;
    if (len < AEAD_MIN_LEN || len > INT_MAX)
        return D_MALFORMED;
    ctlen = len - HDR_LEN - IV_LEN - ICV_LEN;
    if (ctlen < 4 || (ctlen & 3))
        return D_MALFORMED;
    if (ctlen > sizeof scratch) { /* not from a UDP datagram: beyond 64 KiB */
        pt = PyMem_Malloc(ctlen);
        if (pt == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    uint8_t nonce[SALT_LEN + IV_LEN], aad[12];
    memcpy(nonce, a->salt, SALT_LEN);
    memcpy(nonce + SALT_LEN, p + HDR_LEN, IV_LEN);
    int aadlen = 8, outl;
    memcpy(aad, p, 8);
    if (w->esn) {
        put32(aad + 4, (uint32_t)(seq >> 32));
        put32(aad + 8, low);
        aadlen = 12;
    }
    int authentic, kind = short_kind(a, ctlen);
    if (kind == SHORT_CHAPOLY && want != NULL) { /* the tag came with the group's (open_group) */
        authentic = CRYPTO_memcmp(want, p + len - ICV_LEN, ICV_LEN) == 0;
        if (authentic)
            chapoly_xor_first(a->key, nonce, first, p + HDR_LEN + IV_LEN, pt, ctlen);
    } else if (kind == SHORT_CHAPOLY && first != NULL)
        authentic = chapoly_open_first(a->key, nonce, first, aad, (size_t)aadlen,
                                       p + HDR_LEN + IV_LEN, pt, ctlen, p + len - ICV_LEN);
    else if (kind == SHORT_CHAPOLY)
        authentic = chapoly_open(a->key, nonce, aad, (size_t)aadlen, p + HDR_LEN + IV_LEN, pt,
                                 ctlen, p + len - ICV_LEN);
    else if (kind == SHORT_AESGCM)
        authentic = aesgcm_open(a->gcm, nonce, aad, (size_t)aadlen, p + HDR_LEN + IV_LEN, pt,
                                ctlen, p + len - ICV_LEN);
    else
        authentic = EVP_DecryptInit_ex(a->dec, NULL, NULL, NULL, nonce) == 1
                    && EVP_DecryptUpdate(a->dec, NULL, &outl, aad, aadlen) == 1
                    && EVP_DecryptUpdate(a->dec, pt, &outl, p + HDR_LEN + IV_LEN, (int)ctlen) == 1
                    && set_tag(a->dec, p + len - ICV_LEN, ICV_LEN) == 1
                    && EVP_DecryptFinal_ex(a->dec, pt + ctlen, &outl) == 1;
    if (!authentic) {
        verdict = D_AUTH_FAILED;
    } else {
        replay_record(w, seq); /* authentic: the window moves even if the trailer is then refused */
        *inner = opened_inner(pt, ctlen, allow, nh, &verdict);
        if (*inner == NULL && verdict == 0)
            verdict = -1;
    }
    if (pt != scratch)
        PyMem_Free(pt);
    return verdict;
}

/* For decapsulate_many (grouped): packets i..i+3 of list that may be ChaCha20-Poly1305 packets of this SA
 * short enough for chapoly.c get their first blocks and, without ESN (whose AAD takes the high
 * sequence bits from the window as each packet passes), the tag they must carry. decap_core
 * makes every check again; a packet refused before decryption just wasted its share. */
static void open_group(AeadObject *a, struct group *g, PyObject *list, Py_ssize_t i, uint32_t spi,
                       int esn)
{
    group_clear(g);
    uint8_t nonce[4][SALT_LEN + IV_LEN];
    const uint8_t *nonces[4], *pkt[4];
    size_t ctlen[4];
    int slot[4], count = 0;
    Py_ssize_t end = PyList_GET_SIZE(list);
    for (int j = 0; j < 4 && i + j < end; j++) {
        PyObject *o = PyList_GET_ITEM(list, i + j);
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(o);
        size_t len = (size_t)PyBytes_GET_SIZE(o);
        if (len < AEAD_MIN_LEN || get32(p) != spi)
            continue;
        ctlen[count] = len - HDR_LEN - IV_LEN - ICV_LEN;
        if (short_kind(a, ctlen[count]) != SHORT_CHAPOLY)
            continue;
        memcpy(nonce[count], a->salt, SALT_LEN);
        memcpy(nonce[count] + SALT_LEN, p + HDR_LEN, IV_LEN);
        nonces[count] = nonce[count];
        pkt[count] = p;
        slot[count++] = j;
    }
    if (count < 2)
        return;
    group_fill(a, g, nonces, slot, count);
    if (esn)
        return;
    for (int k = 0; k < count; k++) {
        group_add_tag(g, g->ks[k], pkt[k], 8, pkt[k] + HDR_LEN + IV_LEN, ctlen[k], g->want[slot[k]]);
        g->have_want[slot[k]] = 1;
    }
    group_tags(g);
}

/* The arguments both decapsulate calls share: their count (``want``, else TypeError ``usage``),
 * the SPI (args[1]), the replay window (args[2]) and the 32-byte next-header bitmap (args[3]);
 * 0 or -1 with an exception set. */
static int decap_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage,
                      uint32_t *spi, ReplayObject **w, uint8_t *allow)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    PyObject *spi_obj = args[1], *replay = args[2], *allowed = args[3];
    if (!PyObject_TypeCheck(replay, &ReplayType)) {
        PyErr_SetString(PyExc_TypeError, "replay must be an esp._aead.ReplayWindow");
        return -1;
    }
    *w = (ReplayObject *)replay;
    uint64_t v;
    int r = u64_arg(spi_obj, &v);
    if (r < 0)
        return -1;
    if (r > 0 || v > MAX_SEQ_32) {
        PyErr_SetString(PyExc_ValueError, "SPI out of range");
        return -1;
    }
    *spi = (uint32_t)v;
    Py_buffer b;
    if (PyObject_GetBuffer(allowed, &b, PyBUF_SIMPLE) < 0)
        return -1;
    if (b.len != 32) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "allowed must be 32 bytes");
        return -1;
    }
    memcpy(allow, b.buf, 32);
    PyBuffer_Release(&b);
    return 0;
}

/* decapsulate(packet, spi, replay, allowed) -> (next_header, inner) or a verdict (int): the
 * per-packet part of esp.packet.decapsulate for an AEAD SA, in its order (RFC 4303 3.4):
 * lengths and SPI, sequence number inference (ESN) and anti-replay check, ICV verification
 * and decryption, window update (only now), padding, next header (``allowed``: 32 bytes, a
 * bit per allowed value), the inner IPv4/IPv6 header and TFC padding. Usability (dead,
 * expired, hard limits) and the counters stay with the caller. */
static PyObject *Aead_decapsulate(AeadObject *a, PyObject *const *args, Py_ssize_t nargs)
{
    ReplayObject *w;
    uint32_t spi;
    uint8_t allow[32];
    if (decap_args(args, nargs, 4, "decapsulate(packet, spi, replay, allowed)", &spi, &w, allow) < 0)
        return NULL;
    Py_buffer pk;
    if (PyObject_GetBuffer(args[0], &pk, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *inner;
    unsigned nh = 0;
    long verdict = decap_core(a, w, spi, allow, pk.buf, (size_t)pk.len, &inner, &nh, NULL, NULL);
    PyBuffer_Release(&pk);
    if (verdict < 0)
        return NULL;
    if (verdict > 0)
        return PyLong_FromLong(verdict);
    return Py_BuildValue("(lN)", (long)nh, inner);
}

/* decapsulate_many(packets, spi, replay, allowed, in4) -> (inners, unchecked, packets, bytes,
 * policy_drops, verdicts): decapsulate() for each ESP packet of the list (bytes), in order, for
 * one SA. ``in4``: None, or (remote lo, remote hi, local lo, local hi) when the SA's selectors
 * are one IPv4 range each side of any protocol and port (plane._Child.in4): an inner IPv4
 * packet whose source and destination lie in them goes to ``inners``, one that does not is
 * counted in ``policy_drops`` (RFC 4301 5.2); every other inner packet goes to ``unchecked``
 * for the caller's selector check. ``packets``/``bytes``: the inner packets and their bytes
 * that decapsulated (the SA's counters, as decapsulate's caller counts them), ``verdicts``: the
 * verdict of each refused packet, in order. */
static PyObject *Aead_decapsulate_many(AeadObject *a, PyObject *const *args, Py_ssize_t nargs)
{
    ReplayObject *w;
    uint32_t spi;
    uint8_t allow[32];
    if (decap_args(args, nargs, 5, "decapsulate_many(packets, spi, replay, allowed, in4)", &spi, &w, allow) < 0)
        return NULL;
    if (!PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "packets must be a list of bytes");
        return NULL;
    }
    int have_in4 = args[4] != Py_None;
    unsigned long long b[4] = {0, 0, 0, 0};
    if (have_in4) {
        if (!PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != 4) {
            PyErr_SetString(PyExc_TypeError, "in4 must be None or 4 integers");
            return NULL;
        }
        for (int i = 0; i < 4; i++) {
            b[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args[4], i));
            if (b[i] == (unsigned long long)-1 && PyErr_Occurred())
                return NULL;
        }
    }
    PyObject *list = args[0];
    Py_ssize_t count = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < count; i++)
        if (!PyBytes_CheckExact(PyList_GET_ITEM(list, i))) {
            PyErr_SetString(PyExc_TypeError, "packets must be bytes");
            return NULL;
        }
    struct group g; /* before the first goto fail, which clears it */
    g.used = 0;
    group_clear(&g);
    int by_groups = grouped(a);
    PyObject *inners = PyList_New(0), *unchecked = PyList_New(0), *verdicts = PyList_New(0);
    if (inners == NULL || unchecked == NULL || verdicts == NULL)
        goto fail;
    unsigned long long npackets = 0, nbytes = 0, policy = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *o = PyList_GET_ITEM(list, i);
        PyObject *inner;
        unsigned nh = 0;
        if (by_groups && i % 4 == 0)
            open_group(a, &g, list, i, spi, w->esn);
        long verdict = decap_core(a, w, spi, allow, (const uint8_t *)PyBytes_AS_STRING(o),
                                  (size_t)PyBytes_GET_SIZE(o), &inner, &nh, g.at[i % 4],
                                  g.have_want[i % 4] ? g.want[i % 4] : NULL);
        if (verdict < 0)
            goto fail;
        if (verdict > 0) {
            PyObject *v = PyLong_FromLong(verdict);
            if (v == NULL || PyList_Append(verdicts, v) < 0) {
                Py_XDECREF(v);
                goto fail;
            }
            Py_DECREF(v);
            continue;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(inner);
        const uint8_t *q = (const uint8_t *)PyBytes_AS_STRING(inner);
        npackets++;
        nbytes += (unsigned long long)n;
        PyObject *to = unchecked;
        if (have_in4 && n >= 20 && q[0] >> 4 == 4) {
            unsigned long long src = get32(q + 12), dst = get32(q + 16);
            if (b[0] <= src && src <= b[1] && b[2] <= dst && dst <= b[3]) {
                to = inners;
            } else {
                policy++;
                Py_DECREF(inner);
                continue;
            }
        }
        int r = PyList_Append(to, inner);
        Py_DECREF(inner);
        if (r < 0)
            goto fail;
    }
    group_clear(&g);
    return Py_BuildValue("(NNKKKN)", inners, unchecked, npackets, nbytes, policy, verdicts);
fail:
    group_clear(&g);
    Py_XDECREF(inners);
    Py_XDECREF(unchecked);
    Py_XDECREF(verdicts);
    return NULL;
}

static PyMethodDef Aead_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))Aead_seal, METH_FASTCALL,
     "seal(spi, seq, payload, next_header, esn) -> the whole ESP packet"},
    {"seal_many", (PyCFunction)(void (*)(void))Aead_seal_many, METH_FASTCALL,
     "seal_many(spi, first_seq, packets, esn) -> (list of ESP packets, total packet bytes)"},
    {"decapsulate", (PyCFunction)(void (*)(void))Aead_decapsulate, METH_FASTCALL,
     "decapsulate(packet, spi, replay, allowed) -> (next_header, inner) or a verdict (int)"},
    {"decapsulate_many", (PyCFunction)(void (*)(void))Aead_decapsulate_many, METH_FASTCALL,
     "decapsulate_many(packets, spi, replay, allowed, in4) -> (inners, unchecked, packets, bytes, "
     "policy_drops, verdicts)"},
    {"wipe", (PyCFunction)Aead_wipe, METH_NOARGS, "Free the key material."},
    {NULL, NULL, 0, NULL},
};

static PyObject *Aead_get_wiped(AeadObject *a, void *closure)
{
    return PyBool_FromLong(a->enc == NULL);
}

static PyGetSetDef Aead_getset[] = {
    {"wiped", (getter)Aead_get_wiped, NULL, "True once the key material is gone", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *Aead_repr(AeadObject *a)
{
    return PyUnicode_FromFormat("Aead(%s)", a->enc == NULL ? "wiped" : "keyed");
}

static PyTypeObject AeadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "esp._aead.Aead",
    .tp_basicsize = sizeof(AeadObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One SA's AEAD key (AES-GCM-16 or ChaCha20-Poly1305) and its packet operations.",
    .tp_new = Aead_new,
    .tp_dealloc = (destructor)Aead_dealloc,
    .tp_repr = (reprfunc)Aead_repr,
    .tp_methods = Aead_methods,
    .tp_getset = Aead_getset,
};

/* ------------------------------------------------------------------ chapoly.c and aesgcm.c, raw */

/* The raw AEADs of chapoly.c (RFC 8439) and aesgcm.c (SP 800-38D) with key, nonce and AAD given
 * (whatever the length: no libcrypto fallback here), so that tests check them against published
 * vectors and another implementation, and benchmarks time them. */
static void release4(Py_buffer b[4])
{
    for (int i = 0; i < 4; i++)
        PyBuffer_Release(&b[i]);
}

/* The four buffers (key, nonce, aad, data) of a raw call; 0, or -1 with an exception set and
 * nothing held. */
static int raw_args(PyObject *const *args, Py_ssize_t nargs, const char *usage, Py_buffer b[4])
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        if (PyObject_GetBuffer(args[i], &b[i], PyBUF_SIMPLE) < 0) {
            while (--i >= 0)
                PyBuffer_Release(&b[i]);
            return -1;
        }
    }
    if (b[1].len != CHAPOLY_NONCE_LEN || (b[0].len != 32 && b[0].len != 16)) {
        release4(b);
        PyErr_SetString(PyExc_ValueError, "key must be 32 bytes (AES-GCM: or 16) and nonce 12");
        return -1;
    }
    return 0;
}

/* seal: ciphertext || tag; open: the plaintext or None. aes: aesgcm.c, else chapoly.c. */
static PyObject *raw_aead(PyObject *const *args, Py_ssize_t nargs, int aes, int seal)
{
    Py_buffer b[4];
    const char *usage = seal ? "(key, nonce, aad, plaintext)" : "(key, nonce, aad, ciphertext_and_tag)";
    if (raw_args(args, nargs, usage, b) < 0)
        return NULL;
    aesgcm_key *gk = NULL;
    if (!aes && b[0].len != CHAPOLY_KEY_LEN) {
        release4(b);
        PyErr_SetString(PyExc_ValueError, "ChaCha20-Poly1305 takes a 32-byte key");
        return NULL;
    }
    if (aes) {
        gk = PyMem_Malloc(sizeof *gk);
        if (gk == NULL) {
            release4(b);
            return PyErr_NoMemory();
        }
        if (!aesgcm_init(gk, b[0].buf, (size_t)b[0].len)) {
            PyMem_Free(gk);
            release4(b);
            PyErr_SetString(PyExc_RuntimeError, "aesgcm.c does not run on this CPU");
            return NULL;
        }
    }
    PyObject *out = NULL;
    const uint8_t *in = b[3].buf;
    size_t n = (size_t)b[3].len;
    if (seal) {
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n + CHAPOLY_TAG_LEN));
        if (out != NULL) {
            uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
            memcpy(o, in, n);
            if (aes)
                aesgcm_seal(gk, b[1].buf, b[2].buf, (size_t)b[2].len, o, n, o + n);
            else
                chapoly_seal(b[0].buf, b[1].buf, b[2].buf, (size_t)b[2].len, o, n, o + n);
        }
    } else if (n < CHAPOLY_TAG_LEN) {
        PyErr_SetString(PyExc_ValueError, "shorter than the tag");
    } else {
        n -= CHAPOLY_TAG_LEN;
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        uint8_t *o = out == NULL ? NULL : (uint8_t *)PyBytes_AS_STRING(out);
        int ok = o != NULL
                 && (aes ? aesgcm_open(gk, b[1].buf, b[2].buf, (size_t)b[2].len, in, o, n, in + n)
                         : chapoly_open(b[0].buf, b[1].buf, b[2].buf, (size_t)b[2].len, in, o, n,
                                        in + n));
        if (o != NULL && !ok) {
            Py_DECREF(out);
            out = Py_NewRef(Py_None);
        }
    }
    if (gk != NULL) {
        OPENSSL_cleanse(gk, sizeof *gk);
        PyMem_Free(gk);
    }
    release4(b);
    return out;
}

static PyObject *mod_chapoly_seal(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return raw_aead(args, nargs, 0, 1);
}

static PyObject *mod_chapoly_open(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return raw_aead(args, nargs, 0, 0);
}

static PyObject *mod_aesgcm_seal(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return raw_aead(args, nargs, 1, 1);
}

static PyObject *mod_aesgcm_open(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return raw_aead(args, nargs, 1, 0);
}

/* use_simd(vaes, chacha_level) -> (vaes in use, ChaCha20 level in use): for tests and
 * benchmarks, which run each instruction-set version this CPU has (aesgcm_use_vaes,
 * chapoly_use_level); the defaults are the best ones. */
static PyObject *mod_use_simd(PyObject *m, PyObject *args)
{
    int vaes, level;
    if (!PyArg_ParseTuple(args, "pi:use_simd", &vaes, &level))
        return NULL;
    return Py_BuildValue("(Oi)", aesgcm_use_vaes(vaes) ? Py_True : Py_False,
                         chapoly_use_level(level));
}

/* short_path(on) -> the previous setting: whether ESP packets up to CHAPOLY_MAX / AESGCM_MAX
 * bytes go through chapoly.c / aesgcm.c (the default) or all through libcrypto */
static PyObject *mod_short_path(PyObject *m, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    int was = short_path;
    short_path = on;
    return PyBool_FromLong(was);
}

/* simd() -> what the AEAD paths use on this CPU (see the method's doc) */
static PyObject *mod_simd(PyObject *m, PyObject *unused)
{
    return Py_BuildValue("(OOOiO)", aesgcm_available() ? Py_True : Py_False,
                         aesgcm_vaes() ? Py_True : Py_False,
                         chapoly_available() ? Py_True : Py_False, chapoly_level(),
                         chapoly_multi() ? Py_True : Py_False);
}

/* poly1305_padded4(keys, messages) -> list of 16-byte tags: chapoly_poly1305_padded4 for 1-4
 * pairs (the four-lane code where it runs) */
static PyObject *mod_poly1305_padded4(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1])
        || PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1]) || PyList_GET_SIZE(args[0]) < 1
        || PyList_GET_SIZE(args[0]) > 4) {
        PyErr_SetString(PyExc_TypeError, "poly1305_padded4(keys, messages): two lists of 1-4 bytes");
        return NULL;
    }
    int count = (int)PyList_GET_SIZE(args[0]);
    const uint8_t *key[4] = {NULL}, *msg[4] = {NULL};
    size_t len[4] = {0};
    uint8_t tags[4][16], *tag[4] = {tags[0], tags[1], tags[2], tags[3]};
    for (int k = 0; k < count; k++) {
        PyObject *ko = PyList_GET_ITEM(args[0], k), *mo = PyList_GET_ITEM(args[1], k);
        if (!PyBytes_CheckExact(ko) || PyBytes_GET_SIZE(ko) != 32 || !PyBytes_CheckExact(mo)) {
            PyErr_SetString(PyExc_TypeError, "keys are 32 bytes, messages bytes");
            return NULL;
        }
        key[k] = (const uint8_t *)PyBytes_AS_STRING(ko);
        msg[k] = (const uint8_t *)PyBytes_AS_STRING(mo);
        len[k] = (size_t)PyBytes_GET_SIZE(mo);
    }
    chapoly_poly1305_padded4(key, msg, len, count, tag);
    PyObject *out = PyList_New(count);
    for (int k = 0; out != NULL && k < count; k++) {
        PyObject *t = PyBytes_FromStringAndSize((const char *)tags[k], 16);
        if (t == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, t);
    }
    return out;
}

/* poly1305_padded(key, message) -> 16-byte tag (chapoly_poly1305_padded) */
static PyObject *mod_poly1305_padded(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "poly1305_padded(key, message)");
        return NULL;
    }
    Py_buffer k, msg;
    if (PyObject_GetBuffer(args[0], &k, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &msg, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&k);
        return NULL;
    }
    PyObject *out = NULL;
    if (k.len != 32) {
        PyErr_SetString(PyExc_ValueError, "key must be 32 bytes");
    } else {
        uint8_t tag[CHAPOLY_TAG_LEN];
        chapoly_poly1305_padded(k.buf, msg.buf, (size_t)msg.len, tag);
        out = PyBytes_FromStringAndSize((const char *)tag, sizeof tag);
    }
    PyBuffer_Release(&k);
    PyBuffer_Release(&msg);
    return out;
}

static PyMethodDef module_methods[] = {
    {"poly1305_padded", (PyCFunction)(void (*)(void))mod_poly1305_padded, METH_FASTCALL,
     "poly1305_padded(key, message) -> Poly1305 tag of message zero-padded to 16-byte blocks"},
    {"chapoly_seal", (PyCFunction)(void (*)(void))mod_chapoly_seal, METH_FASTCALL,
     "chapoly_seal(key, nonce, aad, plaintext) -> ciphertext + tag (RFC 8439 2.8, chapoly.c)"},
    {"chapoly_open", (PyCFunction)(void (*)(void))mod_chapoly_open, METH_FASTCALL,
     "chapoly_open(key, nonce, aad, ciphertext + tag) -> plaintext, or None if not authentic"},
    {"aesgcm_seal", (PyCFunction)(void (*)(void))mod_aesgcm_seal, METH_FASTCALL,
     "aesgcm_seal(key, nonce, aad, plaintext) -> ciphertext + tag (SP 800-38D, aesgcm.c)"},
    {"aesgcm_open", (PyCFunction)(void (*)(void))mod_aesgcm_open, METH_FASTCALL,
     "aesgcm_open(key, nonce, aad, ciphertext + tag) -> plaintext, or None if not authentic"},
    {"poly1305_padded4", (PyCFunction)(void (*)(void))mod_poly1305_padded4, METH_FASTCALL,
     "poly1305_padded4(keys, messages) -> tags (1-4 at once, the four-lane code where it runs)"},
    {"use_simd", (PyCFunction)mod_use_simd, METH_VARARGS,
     "use_simd(vaes, chacha_level) -> (VAES in use, ChaCha20 level in use); for tests"},
    {"short_path", (PyCFunction)mod_short_path, METH_O,
     "short_path(on) -> previous: short ESP packets through chapoly.c/aesgcm.c (default) or "
     "libcrypto; for tests and benchmarks"},
    {"simd", (PyCFunction)mod_simd, METH_NOARGS,
     "simd() -> (aesgcm.c runs here, VAES in use, chapoly.c's SIMD ChaCha20 runs here, its level:"
     " 0 SSE2, 1 SSSE3, 2 AVX-512VL, runs of packets four at a time: AVX-512VL and IFMA in use)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "esp._aead",
    "The compiled AEAD ESP path and anti-replay window (esp/compiled.py).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__aead(void)
{
    if (PyType_Ready(&ReplayType) < 0 || PyType_Ready(&AeadType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ReplayType);
    Py_INCREF(&AeadType);
    if (PyModule_AddObject(m, "ReplayWindow", (PyObject *)&ReplayType) < 0
        || PyModule_AddObject(m, "Aead", (PyObject *)&AeadType) < 0
        || PyModule_AddIntConstant(m, "ABI", ESP_AEAD_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
