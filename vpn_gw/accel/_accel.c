/* Compiled helpers of the userspace data plane: the Internet checksum (RFC 1071) over whole
 * packets, TCP segmentation of TSO super-packets, receiving a burst of UDP datagrams with one
 * recvmmsg, and reading a burst of packets from a TUN device. Optional: vpn_gw/accel/__init__.py
 * falls back to the pure-Python code (gro.py, tso.py, transport/udp.py, plane.py), which defines
 * the behaviour; tests/test_accel.py checks that both give the same bytes. docs/esp.md
 * "Compiled helpers".
 *
 * No state between calls; the only I/O is the read()/recvmmsg() the burst functions exist for;
 * every length is checked before use.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Bump when the interface or behaviour changes: vpn_gw/accel ignores a module whose ABI differs
 * (a stale build left next to newer sources). */
#define ACCEL_ABI 7

#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80
#define MAX_IP_LEN 65535

/* Sum of the native-order 64-bit words of b with end-around carry, i.e. modulo 2^64 - 1, a
 * multiple of 0xFFFF: the result is congruent (mod 0xFFFF) to the ones' complement sum of the
 * native-order 16-bit words. An odd last byte is padded with zero after it (RFC 1071). */
static uint64_t add_words(uint64_t s, const uint8_t *b, size_t len)
{
    uint64_t w;
    while (len >= 8) {
        memcpy(&w, b, 8);
        s += w;
        s += (s < w);
        b += 8;
        len -= 8;
    }
    w = 0;
    if (len) {
        uint8_t tail[8] = {0};
        memcpy(tail, b, len);
        memcpy(&w, tail, 8);
        s += w;
        s += (s < w);
    }
    return s;
}

/* Fold a 64-bit sum to 16 bits keeping its residue mod 0xFFFF (0 only for 0), in network byte
 * order: on a little-endian machine the native-order sum is the byte-swapped one. */
static uint32_t fold_be(uint64_t s)
{
    s = (s & 0xFFFFFFFFu) + (s >> 32);
    s = (s & 0xFFFFFFFFu) + (s >> 32);
    while (s >> 16)
        s = (s & 0xFFFFu) + (s >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    s = ((s & 0xFFu) << 8) | (s >> 8);
#endif
    return (uint32_t)s;
}

/* The checksum to store for a sum (tso.py _fold): the complement of its residue mod 0xFFFF,
 * 0 for residue 0. */
static uint16_t checksum_of(uint64_t s)
{
    uint32_t r = (uint32_t)(s % 0xFFFFu);
    return r ? (uint16_t)(~r & 0xFFFFu) : 0;
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint32_t get16(const uint8_t *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

PyDoc_STRVAR(csum_words_doc,
"csum_words(buffers) -> int\n\n"
"The ones' complement sum of the big-endian 16-bit words of each buffer (words start at each\n"
"buffer's first byte; an odd last byte is padded with zero), added over all buffers and\n"
"folded to 16 bits: congruent to the sum modulo 0xFFFF, 0 only if every word is 0.");

static PyObject *csum_words(PyObject *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "csum_words needs a sequence of buffers");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uint64_t s = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = items[i];
        if (PyBytes_CheckExact(o)) {
            s = add_words(s, (const uint8_t *)PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
            continue;
        }
        Py_buffer view;
        if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        s = add_words(s, (const uint8_t *)view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
    }
    Py_DECREF(seq);
    return PyLong_FromUnsignedLong(fold_be(s));
}

/* Append the wire segments of a GSO TCP packet (v: its 10-byte virtio-net header, p/n: the
 * packet) to the list out. Returns the number appended, 0 if it is not a well-formed one (or
 * would need more than max_segments segments; nothing appended), -1 with an exception set. */
static Py_ssize_t segment_into(PyObject *out, const uint8_t *v, const uint8_t *p, size_t n, int max_segments)
{
    uint16_t gso_size;
    memcpy(&gso_size, v + 4, 2); /* native order, as the device gives it */
    unsigned kind = v[1] & ~GSO_ECN & 0xFFu;
    size_t ip_len;
    int v6;
    if (kind == GSO_TCPV4) {
        if (n < 40 || p[0] != 0x45 || p[9] != 6)
            return 0;
        uint32_t tl = get16(p + 2);
        if (tl != n && tl != 0)
            return 0;
        if (get16(p + 6) & 0x3FFF)
            return 0; /* a fragment (MF or offset) */
        ip_len = 20;
        v6 = 0;
    } else if (kind == GSO_TCPV6) {
        if (n < 60 || (p[0] >> 4) != 6 || p[6] != 6)
            return 0;
        ip_len = 40;
        v6 = 1;
    } else {
        return 0;
    }
    size_t thl = (size_t)(p[ip_len + 12] >> 4) * 4;
    size_t hl = ip_len + thl;
    if (thl < 20 || n < hl || gso_size == 0)
        return 0;
    size_t total = n - hl;
    size_t count = total ? (total + gso_size - 1) / gso_size : 1;
    if (max_segments < 1 || count > (size_t)max_segments)
        return 0;
    if (hl + (total < gso_size ? total : gso_size) > MAX_IP_LEN)
        return 0; /* a segment that no IP length field can describe */

    /* pseudo header without the length: addresses + protocol (network order) */
    uint32_t pseudo = fold_be(v6 ? add_words(0, p + 8, 32) : add_words(0, p + 12, 8)) + 6;
    uint32_t seq0 = ((uint32_t)p[ip_len + 4] << 24) | ((uint32_t)p[ip_len + 5] << 16)
                    | ((uint32_t)p[ip_len + 6] << 8) | p[ip_len + 7];
    uint32_t ident0 = get16(p + 4);
    uint8_t flags = p[ip_len + 13];
    Py_ssize_t first = PyList_GET_SIZE(out);

    for (size_t k = 0; k < count; k++) {
        size_t start = hl + k * gso_size;
        size_t clen = total - k * gso_size;
        if (clen > gso_size)
            clen = gso_size;
        PyObject *seg = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(hl + clen));
        if (seg == NULL)
            goto fail;
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(seg);
        memcpy(o, p, hl);
        memcpy(o + hl, p + start, clen);
        uint32_t tcp_len = (uint32_t)(thl + clen);
        if (v6) {
            put16(o + 4, tcp_len);
        } else {
            put16(o + 2, 20 + tcp_len);
            put16(o + 4, (ident0 + (uint32_t)k) & 0xFFFFu);
            put16(o + 10, 0);
            put16(o + 10, checksum_of(fold_be(add_words(0, o, 20))));
        }
        uint32_t seq = seq0 + (uint32_t)(k * gso_size);
        uint8_t *t = o + ip_len;
        t[4] = (uint8_t)(seq >> 24);
        t[5] = (uint8_t)(seq >> 16);
        t[6] = (uint8_t)(seq >> 8);
        t[7] = (uint8_t)seq;
        uint8_t f = flags;
        if (k + 1 < count)
            f &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (k)
            f &= (uint8_t)~TCP_CWR;
        t[13] = f;
        put16(t + 16, 0);
        /* pseudo header (addresses, protocol, TCP length) + TCP header + payload */
        uint64_t s = (uint64_t)pseudo + tcp_len + fold_be(add_words(0, t, tcp_len));
        put16(t + 16, checksum_of(s));
        int r = PyList_Append(out, seg);
        Py_DECREF(seg);
        if (r < 0)
            goto fail;
    }
    return (Py_ssize_t)count;
fail:
    PyList_SetSlice(out, first, PyList_GET_SIZE(out), NULL);
    return -1;
}

PyDoc_STRVAR(tso_segment_doc,
"tso_segment(vnet, pkt, max_segments) -> list[bytes] | None\n\n"
"The wire segments of one GSO TCP packet read from a TUN device (vnet: its 10-byte\n"
"virtio-net header), exactly as vpn_gw.dataplane.userspace.tso.segment_py cuts them; None if\n"
"it is not a well-formed one (or would need more than max_segments segments).");

static PyObject *tso_segment(PyObject *self, PyObject *args)
{
    Py_buffer vb, pb;
    int max_segments;
    if (!PyArg_ParseTuple(args, "y*y*i:tso_segment", &vb, &pb, &max_segments))
        return NULL;
    PyObject *out = NULL;
    if (vb.len != 10) {
        PyErr_SetString(PyExc_ValueError, "the virtio-net header is 10 bytes");
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    Py_ssize_t got = segment_into(out, vb.buf, pb.buf, (size_t)pb.len, max_segments);
    if (got < 0) {
        Py_CLEAR(out);
    } else if (got == 0) {
        Py_DECREF(out);
        out = Py_NewRef(Py_None);
    }
done:
    PyBuffer_Release(&vb);
    PyBuffer_Release(&pb);
    return out;
}

/* The IP packet of a non-GSO read whose header says NEEDS_CSUM, with that checksum filled in
 * (gro.complete_checksum): a new bytes object, NULL with an exception set, or NULL without
 * one (*bad = 1) if the offsets do not fit the packet. */
static PyObject *completed(const uint8_t *v, const uint8_t *p, size_t n, int *bad)
{
    uint16_t start, offset;
    memcpy(&start, v + 6, 2);
    memcpy(&offset, v + 8, 2);
    if ((size_t)start + offset + 2 > n) {
        *bad = 1;
        return NULL;
    }
    PyObject *pkt = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (pkt == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(pkt);
    uint16_t c = checksum_of(fold_be(add_words(0, o + start, n - start)));
    if (c == 0 && offset == 6)
        c = 0xFFFF; /* UDP: 0 would mean "no checksum" */
    put16(o + start + offset, c);
    return pkt;
}

#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#define BURST_MAX 64
#define CONTROL_LEN 128

/* Appends a new reference (NULL: the exception of the call that made it) to list and drops
 * it: 0, or -1 with an exception set. */
static int append_new(PyObject *list, PyObject *item)
{
    if (item == NULL)
        return -1;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r;
}

/* One recvmmsg burst: the messages, their buffers (slots of the caller's buffer), source
 * addresses and control messages. */
struct burst {
    struct mmsghdr msgs[BURST_MAX];
    struct iovec iov[BURST_MAX];
    struct sockaddr_storage names[BURST_MAX];
    /* aligned for struct cmsghdr */
    union { struct cmsghdr align; char bytes[CONTROL_LEN]; } control[BURST_MAX];
};

/* What one received message says about itself. */
struct burst_msg {
    const char *data;
    size_t len;
    long seg;          /* UDP GRO segment size, or 0: one datagram */
    const char *name;  /* the source sockaddr as the kernel wrote it */
    Py_ssize_t name_len;
    const char *local; /* the header's destination address (PKTINFO), or "" */
    Py_ssize_t local_len;
};

/* Checks recv_burst's / recv_runs's arguments: 0, or -1 with ValueError set. */
static int burst_args(const char *fn, Py_buffer *buf, Py_ssize_t slot, int count)
{
    if (count < 1 || count > BURST_MAX || slot < 1 || slot > (1 << 20) || buf->len / slot < count) {
        PyErr_Format(PyExc_ValueError, "%s: 1-64 slots of 1 B-1 MiB that fit in the buffer", fn);
        return -1;
    }
    return 0;
}

/* recvmmsg(MSG_DONTWAIT) of up to count datagrams into b: how many (0 when nothing is queued
 * or the socket reports an ICMP error), or -1 with OSError set. */
static int burst_recv(struct burst *b, int fd, Py_buffer *buf, Py_ssize_t slot, int count)
{
    memset(b->msgs, 0, sizeof(struct mmsghdr) * (size_t)count);
    for (int i = 0; i < count; i++) {
        b->iov[i].iov_base = (char *)buf->buf + (size_t)i * (size_t)slot;
        b->iov[i].iov_len = (size_t)slot;
        b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
        b->msgs[i].msg_hdr.msg_iovlen = 1;
        b->msgs[i].msg_hdr.msg_name = &b->names[i];
        b->msgs[i].msg_hdr.msg_namelen = sizeof(b->names[i]);
        b->msgs[i].msg_hdr.msg_control = b->control[i].bytes;
        b->msgs[i].msg_hdr.msg_controllen = CONTROL_LEN;
    }
    int n, err;
    Py_BEGIN_ALLOW_THREADS
    n = recvmmsg(fd, b->msgs, (unsigned)count, MSG_DONTWAIT, NULL);
    err = errno;
    Py_END_ALLOW_THREADS
    if (n >= 0)
        return n;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNREFUSED
            || err == EHOSTUNREACH || err == ENETUNREACH)
        return 0;
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* Message i of a burst: its data, GRO segment size, source and local address. */
static void burst_msg(struct burst *b, int i, Py_ssize_t slot, struct burst_msg *m)
{
    struct msghdr *h = &b->msgs[i].msg_hdr;
    size_t len = b->msgs[i].msg_len;
    if (len > (size_t)slot)
        len = (size_t)slot;
    long seg = 0;
    m->local = "";
    m->local_len = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        size_t dlen = c->cmsg_len - CMSG_LEN(0);
        const unsigned char *d = CMSG_DATA(c);
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO && dlen >= 12) {
            m->local = (const char *)d + 8; /* ipi_addr: the header's destination */
            m->local_len = 4;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO && dlen >= 16) {
            m->local = (const char *)d; /* ipi6_addr */
            m->local_len = 16;
        } else if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && dlen >= 2) {
            if (dlen >= sizeof(int)) {
                int v;
                memcpy(&v, d, sizeof v);
                seg = v;
            } else {
                uint16_t v;
                memcpy(&v, d, sizeof v);
                seg = v;
            }
        }
    }
    if (seg < 0 || (size_t)seg >= len)
        seg = 0;
    socklen_t nl = h->msg_namelen;
    if (nl > sizeof(b->names[i]))
        nl = sizeof(b->names[i]);
    m->data = (const char *)b->iov[i].iov_base;
    m->len = len;
    m->seg = seg;
    m->name = (const char *)&b->names[i];
    m->name_len = (Py_ssize_t)nl;
}

PyDoc_STRVAR(recv_burst_doc,
"recv_burst(fd, buffer, slot, count) -> list[tuple[bytes, int, bytes, bytes]]\n\n"
"Up to count datagrams from the non-blocking UDP socket fd with one recvmmsg(MSG_DONTWAIT),\n"
"each received into its own slot-sized part of buffer (a writable buffer of at least\n"
"slot * count bytes, reused between calls). Per datagram: (data, segment size, source\n"
"sockaddr as the kernel wrote it, local address from IP_PKTINFO / IPV6_PKTINFO or b'').\n"
"Segment size is the UDP_GRO size when the kernel coalesced several datagrams into data,\n"
"else 0 (as IkeSocket.recv_segments). Nothing queued, or an ICMP error reported on the\n"
"socket (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH): an empty list. Other errors: OSError.");

static PyObject *recv_burst(PyObject *self, PyObject *args)
{
    int fd, count;
    Py_ssize_t slot;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iw*ni:recv_burst", &fd, &buf, &slot, &count))
        return NULL;
    PyObject *out = NULL;
    struct burst *b = NULL;
    if (burst_args("recv_burst", &buf, slot, count) < 0)
        goto done;
    b = PyMem_Malloc(sizeof *b);
    if (b == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int n = burst_recv(b, fd, &buf, slot, count);
    if (n < 0)
        goto done;
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (int i = 0; i < n; i++) {
        struct burst_msg m;
        burst_msg(b, i, slot, &m);
        PyObject *item = Py_BuildValue("(y#ly#y#)", m.data, (Py_ssize_t)m.len, m.seg,
                                       m.name, m.name_len, m.local, m.local_len);
        if (item == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyMem_Free(b);
    PyBuffer_Release(&buf);
    return out;
}

PyDoc_STRVAR(recv_runs_doc,
"recv_runs(fd, buffer, slot, count) -> tuple[list[tuple[bool, list[bytes], bytes, bytes]], int, int, int]\n\n"
"recv_burst, with the datagrams already cut and grouped as UdpService._readable_burst groups\n"
"them: UDP GRO messages cut into their datagrams (segment size each, the last maybe\n"
"shorter); ESP datagrams in a row (at least 8 bytes, not starting with the non-ESP marker)\n"
"with the same SPI, the same source sockaddr and the same local address form one run; every\n"
"other datagram is an item of its own. Returns (items, messages, datagrams, bytes): per item\n"
"(is an ESP run, its datagrams, source sockaddr, local address or b''); the number of\n"
"messages recvmmsg returned (fewer than count: the socket is drained), of datagrams in them\n"
"and their bytes. Errors as recv_burst.");

static PyObject *recv_runs(PyObject *self, PyObject *args)
{
    int fd, count;
    Py_ssize_t slot;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iw*ni:recv_runs", &fd, &buf, &slot, &count))
        return NULL;
    PyObject *items = NULL, *result = NULL;
    struct burst *b = NULL;
    long datagrams = 0, nbytes = 0;
    if (burst_args("recv_runs", &buf, slot, count) < 0)
        goto done;
    b = PyMem_Malloc(sizeof *b);
    if (b == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int n = burst_recv(b, fd, &buf, slot, count);
    if (n < 0)
        goto done;
    items = PyList_New(0);
    if (items == NULL)
        goto done;
    PyObject *run = NULL; /* borrowed: the open run's list (held by its item in items) */
    struct burst_msg prev = {0};
    for (int i = 0; i < n; i++) {
        struct burst_msg m;
        burst_msg(b, i, slot, &m);
        nbytes += (long)m.len;
        size_t step = m.seg ? (size_t)m.seg : m.len;
        size_t pieces = m.seg ? (m.len + step - 1) / step : 1;
        for (size_t k = 0; k < pieces; k++) {
            size_t off = k * step;
            size_t dlen = m.len - off < step ? m.len - off : step;
            const char *d = m.data + off;
            datagrams++;
            PyObject *pkt = PyBytes_FromStringAndSize(d, (Py_ssize_t)dlen);
            if (pkt == NULL)
                goto fail;
            int esp = dlen >= 8 && (d[0] | d[1] | d[2] | d[3]) != 0;
            if (esp && run != NULL && memcmp(d, prev.data, 4) == 0 && m.name_len == prev.name_len
                    && memcmp(m.name, prev.name, (size_t)m.name_len) == 0 && m.local_len == prev.local_len
                    && memcmp(m.local, prev.local, (size_t)m.local_len) == 0) {
                int r = PyList_Append(run, pkt);
                Py_DECREF(pkt);
                if (r < 0)
                    goto fail;
                continue;
            }
            PyObject *list = PyList_New(1);
            if (list == NULL) {
                Py_DECREF(pkt);
                goto fail;
            }
            PyList_SET_ITEM(list, 0, pkt);
            if (append_new(items, Py_BuildValue("(ONy#y#)", esp ? Py_True : Py_False, list,
                                                m.name, m.name_len, m.local, m.local_len)) < 0)
                goto fail;
            run = esp ? list : NULL;
            prev = m;
            prev.data = d; /* the run's SPI */
        }
    }
    result = Py_BuildValue("(Nill)", items, n, datagrams, nbytes);
    items = NULL; /* stolen by N, even on failure */
    goto done;
fail:
    Py_CLEAR(items);
done:
    PyMem_Free(b);
    PyBuffer_Release(&buf);
    return result;
}

/* The reads of a burst (read_burst): the IP packets appended to out; counters[0..3] = reads,
 * TSO reads, TSO segments, malformed reads. 0, or -1 with an exception set. */
static int read_into(int fd, Py_buffer *buf, int count, int vnet, int max_segments, PyObject *out,
                     long counters[4])
{
    const uint8_t *b = buf->buf;
    for (int i = 0; i < count; i++) {
        ssize_t n = read(fd, buf->buf, (size_t)buf->len);
        if (n < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || counters[0] > 0)
                break;
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (n == 0)
            break;
        counters[0]++;
        PyObject *pkt;
        if (!vnet) {
            pkt = PyBytes_FromStringAndSize(buf->buf, n);
        } else if (n < 10) {
            counters[3]++;
            continue;
        } else if (b[0] == 0 && b[1] == 0) { /* no offload at all: the usual case */
            pkt = PyBytes_FromStringAndSize((const char *)b + 10, n - 10);
        } else if (b[1]) { /* a TSO super-packet */
            Py_ssize_t got = segment_into(out, b, b + 10, (size_t)n - 10, max_segments);
            if (got < 0)
                return -1;
            if (got == 0) {
                counters[3]++;
            } else {
                counters[1]++;
                counters[2] += (long)got;
            }
            continue;
        } else if (b[0] & 1) { /* NEEDS_CSUM */
            int bad = 0;
            pkt = completed(b, b + 10, (size_t)n - 10, &bad);
            if (bad) {
                counters[3]++;
                continue;
            }
        } else { /* other flags (DATA_VALID): nothing to do */
            pkt = PyBytes_FromStringAndSize((const char *)b + 10, n - 10);
        }
        if (pkt == NULL)
            return -1;
        int r = PyList_Append(out, pkt);
        Py_DECREF(pkt);
        if (r < 0)
            return -1;
    }
    return 0;
}

PyDoc_STRVAR(read_burst_doc,
"read_burst(fd, buffer, count, vnet, max_segments)\n"
"    -> tuple[list[bytes], int, int, int, int]\n\n"
"Up to count reads from the non-blocking TUN device fd, one read() each into buffer (a\n"
"writable buffer as large as the largest read: 65 545 bytes with a virtio-net header).\n"
"Returns (packets, reads, tso_reads, tso_segments, malformed). Without vnet each read is one\n"
"packet, exactly what os.read returns. With vnet (IFF_VNET_HDR) the IP packets as the\n"
"pure-Python drain makes them (UserspaceDataPlane._drain): the header stripped; a TSO\n"
"super-packet cut into its wire segments (tso.segment_py); a checksum left to us\n"
"(NEEDS_CSUM) filled in (gro.complete_checksum); a read that is none of these well-formed\n"
"counted as malformed and dropped. Stops at the first read that finds nothing (EAGAIN).\n"
"An error on the first read raises OSError; after some reads it ends the burst (the next\n"
"call reports it).");

/* read_burst's and read_runs's common part: the arguments (format "iw*ipi:" + name) checked,
 * the reads done; a new list of the IP packets, or NULL with an exception set. */
static PyObject *read_packets(PyObject *args, const char *format, long counters[4])
{
    int fd, count, vnet, max_segments;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, format, &fd, &buf, &count, &vnet, &max_segments))
        return NULL;
    PyObject *out = NULL;
    if (count < 1 || count > 1024 || buf.len < 1) {
        PyErr_Format(PyExc_ValueError, "%s: 1-1024 reads into a non-empty buffer", format + 7); /* after "iw*ipi:" */
        goto done;
    }
    out = PyList_New(0);
    if (out != NULL && read_into(fd, &buf, count, vnet, max_segments, out, counters) < 0)
        Py_CLEAR(out);
done:
    PyBuffer_Release(&buf);
    return out;
}

static PyObject *read_burst(PyObject *self, PyObject *args)
{
    long counters[4] = {0, 0, 0, 0};
    PyObject *out = read_packets(args, "iw*ipi:read_burst", counters);
    if (out == NULL)
        return NULL;
    return Py_BuildValue("(Nllll)", out, counters[0], counters[1], counters[2], counters[3]);
}

PyDoc_STRVAR(read_runs_doc,
"read_runs(fd, buffer, count, vnet, max_segments)\n"
"    -> tuple[list[tuple[bytes | None, list[bytes], int]], int, int, int, int, int]\n\n"
"read_burst, with the packets grouped for the encrypt side's lookup: IPv4 packets in a row\n"
"(at least 20 bytes) with the same source and destination address (bytes 12-20) form one\n"
"run keyed by those 8 bytes; other packets in a row form runs keyed None. Per run (key,\n"
"packets in order, length of the longest). Returns (runs, reads, tso_reads, tso_segments,\n"
"malformed, bytes of the packets). Errors as read_burst.");

static PyObject *read_runs(PyObject *self, PyObject *args)
{
    PyObject *runs = NULL, *result = NULL;
    long counters[4] = {0, 0, 0, 0}, nbytes = 0;
    PyObject *pkts = read_packets(args, "iw*ipi:read_runs", counters);
    if (pkts == NULL)
        return NULL;
    runs = PyList_New(0);
    if (runs == NULL)
        goto done;
    Py_ssize_t total = PyList_GET_SIZE(pkts), first = 0, longest = 0;
    const char *run_key = NULL; /* the open run's key (inside its first packet); NULL: None */
    for (Py_ssize_t i = 0; i <= total; i++) {
        const char *key = NULL;
        Py_ssize_t len = 0;
        if (i < total) {
            PyObject *pkt = PyList_GET_ITEM(pkts, i);
            const char *p = PyBytes_AS_STRING(pkt);
            len = PyBytes_GET_SIZE(pkt);
            nbytes += (long)len;
            key = len >= 20 && ((uint8_t)p[0] >> 4) == 4 ? p + 12 : NULL;
            if (i > first && (key == NULL ? run_key == NULL : run_key != NULL && memcmp(key, run_key, 8) == 0)) {
                if (len > longest)
                    longest = len;
                continue;
            }
        }
        if (i > first) { /* close the open run: packets [first, i) */
            PyObject *list = PyList_GetSlice(pkts, first, i);
            if (list == NULL)
                goto fail;
            if (append_new(runs, run_key ? Py_BuildValue("(y#Nn)", run_key, (Py_ssize_t)8, list, longest)
                                         : Py_BuildValue("(ONn)", Py_None, list, longest)) < 0)
                goto fail;
        }
        first = i;
        run_key = key;
        longest = len;
    }
    result = Py_BuildValue("(Nlllll)", runs, counters[0], counters[1], counters[2], counters[3], nbytes);
    runs = NULL; /* stolen by N, even on failure */
    goto done;
fail:
    Py_CLEAR(runs);
done:
    Py_DECREF(pkts);
    return result;
}

/* gro._datagram_size: the UDP payload length of an IPv4 datagram that may be coalesced (no
 * options, not a fragment, a payload, lengths agreeing, a non-zero UDP checksum), else -1. */
static long udp_payload(const uint8_t *p, size_t n)
{
    if (n <= 28 || p[0] != 0x45 || p[9] != 17 || (p[6] & 0x3F) || p[7] || get16(p + 2) != n)
        return -1;
    if (get16(p + 24) != n - 20 || (p[26] == 0 && p[27] == 0))
        return -1;
    return (long)n - 28;
}

/* gro._checksums_ok for UDP over items[i:j] (IPv4 without options, the same addresses): the
 * ones' complement sum of every datagram plus their pseudo headers is 0 modulo 0xFFFF. */
static int udp_run_ok(PyObject **items, Py_ssize_t i, Py_ssize_t j)
{
    uint64_t s = 0, lens = 0;
    for (Py_ssize_t k = i; k < j; k++) {
        const uint8_t *q = (const uint8_t *)PyBytes_AS_STRING(items[k]);
        size_t n = (size_t)PyBytes_GET_SIZE(items[k]);
        s = add_words(s, q, n);
        lens += n;
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(items[i]);
    uint64_t addr = (uint64_t)get16(p + 12) + get16(p + 14) + get16(p + 16) + get16(p + 18);
    /* len(run) * (addresses + 17 - 20) + the lengths, kept non-negative modulo 0xFFFF */
    uint64_t pseudo = ((uint64_t)(j - i) * ((addr + 0xFFFFu - 3) % 0xFFFFu) + lens) % 0xFFFFu;
    return ((uint64_t)fold_be(s) + pseudo) % 0xFFFFu == 0;
}

PyDoc_STRVAR(udp_coalesce_doc,
"udp_coalesce(packets, i, max_segments) -> tuple[bytes, int] | None\n\n"
"gro._udp_run_py in C: the coalesced UDP write that starts at packets[i] (a list of bytes:\n"
"decrypted IP packets) as one buffer (virtio-net header, IPv4 and UDP header, the payloads)\n"
"and the number of datagrams it carries, or None if packets[i] starts no run of two or more.\n"
"The same rules and the same bytes as the Python code.");

static PyObject *udp_coalesce(PyObject *self, PyObject *args)
{
    PyObject *list;
    Py_ssize_t i;
    int max_segments;
    if (!PyArg_ParseTuple(args, "O!ni:udp_coalesce", &PyList_Type, &list, &i, &max_segments))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (i < 0 || i >= n || max_segments < 1) {
        PyErr_SetString(PyExc_ValueError, "udp_coalesce: index out of range or no segments");
        return NULL;
    }
    PyObject **items = ((PyListObject *)list)->ob_item;
    Py_ssize_t limit = n - i < max_segments ? n : i + max_segments;
    for (Py_ssize_t k = i; k < limit; k++)
        if (!PyBytes_CheckExact(items[k])) {
            PyErr_SetString(PyExc_TypeError, "udp_coalesce: packets must be bytes");
            return NULL;
        }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(items[i]);
    long size = udp_payload(p, (size_t)PyBytes_GET_SIZE(items[i]));
    if (size < 0)
        Py_RETURN_NONE;
    size_t total = (size_t)PyBytes_GET_SIZE(items[i]);
    Py_ssize_t j = i + 1;
    while (j < limit) {
        const uint8_t *q = (const uint8_t *)PyBytes_AS_STRING(items[j]);
        long qsize = udp_payload(q, (size_t)PyBytes_GET_SIZE(items[j]));
        if (qsize < 0 || qsize > size || total + (size_t)qsize > MAX_IP_LEN
            || memcmp(q + 12, p + 12, 12) != 0 || q[1] != p[1] || q[8] != p[8] || q[6] != p[6])
            break;
        total += (size_t)qsize;
        j++;
        if (qsize < size)
            break; /* a shorter datagram ends the packet */
    }
    if (j > i + 1 && !udp_run_ok(items, i, j)) {
        Py_ssize_t e = i;
        while (e < j && udp_run_ok(items, e, e + 1))
            e++;
        j = e;
        total = 0;
        for (Py_ssize_t k = i; k < j; k++)
            total += (size_t)PyBytes_GET_SIZE(items[k]);
        if (j > i)
            total -= (size_t)(j - i - 1) * 28;
    }
    if (j <= i + 1)
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(10 + total));
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    /* struct virtio_net_hdr, native byte order: NEEDS_CSUM, GSO UDP_L4, hdr_len 28,
     * gso_size, csum_start 20, csum_offset 6 */
    uint16_t v16[4] = {28, (uint16_t)size, 20, 6};
    o[0] = 1;
    o[1] = 5;
    memcpy(o + 2, v16, sizeof v16);
    uint8_t *h = o + 10;
    memcpy(h, p, 28);
    put16(h + 2, (uint32_t)total);
    put16(h + 10, 0);
    uint32_t ip = 0;
    for (int k = 0; k < 20; k += 2)
        ip += get16(h + k);
    while (ip > 0xFFFF)
        ip = (ip & 0xFFFF) + (ip >> 16);
    put16(h + 10, ~ip & 0xFFFF);
    uint32_t udp_len = (uint32_t)total - 20;
    put16(h + 24, udp_len);
    uint32_t ps = get16(h + 12) + get16(h + 14) + get16(h + 16) + get16(h + 18) + 17 + udp_len;
    while (ps > 0xFFFF)
        ps = (ps & 0xFFFF) + (ps >> 16);
    put16(h + 26, ps); /* NEEDS_CSUM: the pseudo-header sum, not complemented */
    uint8_t *w = h + 28;
    for (Py_ssize_t k = i; k < j; k++) {
        size_t len = (size_t)PyBytes_GET_SIZE(items[k]) - 28;
        memcpy(w, PyBytes_AS_STRING(items[k]) + 28, len);
        w += len;
    }
    return Py_BuildValue("(Nn)", out, j - i);
}

PyDoc_STRVAR(gso_ends_doc,
"gso_ends(datagrams, max_segments, max_bytes) -> list[int]\n\n"
"Where IkeSocket.send_many cuts its list into UDP GSO sends: the end index of each run of\n"
"datagrams (in order) whose sizes equal the first's, except a last shorter one, with at most\n"
"max_segments of them and max_bytes in all. The same runs as the Python loop it replaces\n"
"(transport/udp.py gso_ends_py); the items may be any objects with a length.");

static PyObject *gso_ends(PyObject *self, PyObject *args)
{
    PyObject *list;
    Py_ssize_t maxseg, maxbytes;
    if (!PyArg_ParseTuple(args, "O!nn:gso_ends", &PyList_Type, &list, &maxseg, &maxbytes))
        return NULL;
    if (maxseg < 1) {
        PyErr_SetString(PyExc_ValueError, "max_segments must be at least 1");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list), i = 0;
    while (i < n) {
        PyObject *d = PyList_GET_ITEM(list, i);
        Py_ssize_t size = PyBytes_Check(d) ? PyBytes_GET_SIZE(d) : PyObject_Length(d);
        if (size < 0)
            goto fail;
        Py_ssize_t total = size, j = i + 1, limit = n - i > maxseg ? i + maxseg : n;
        while (j < limit) {
            PyObject *e = PyList_GET_ITEM(list, j);
            Py_ssize_t m = PyBytes_Check(e) ? PyBytes_GET_SIZE(e) : PyObject_Length(e);
            if (m < 0)
                goto fail;
            if (m > size || total + m > maxbytes)
                break;
            total += m;
            j++;
            if (m < size)
                break; /* a shorter datagram ends the run */
        }
        PyObject *end = PyLong_FromSsize_t(j);
        if (end == NULL || PyList_Append(out, end) < 0) {
            Py_XDECREF(end);
            goto fail;
        }
        Py_DECREF(end);
        i = j;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef accel_methods[] = {
    {"gso_ends", gso_ends, METH_VARARGS, gso_ends_doc},
    {"udp_coalesce", udp_coalesce, METH_VARARGS, udp_coalesce_doc},
    {"read_burst", read_burst, METH_VARARGS, read_burst_doc},
    {"recv_burst", recv_burst, METH_VARARGS, recv_burst_doc},
    {"recv_runs", recv_runs, METH_VARARGS, recv_runs_doc},
    {"read_runs", read_runs, METH_VARARGS, read_runs_doc},
    {"csum_words", csum_words, METH_O, csum_words_doc},
    {"tso_segment", tso_segment, METH_VARARGS, tso_segment_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_accel",
    .m_doc = "Compiled helpers of the userspace data plane (checksums, TSO, receive and read bursts).",
    .m_size = -1,
    .m_methods = accel_methods,
};

PyMODINIT_FUNC PyInit__accel(void)
{
    PyObject *m = PyModule_Create(&accel_module);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", ACCEL_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
