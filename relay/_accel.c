/* The compiled packet path (see relay/accel.py for the interface and its pure-Python twin).
 *
 * Session: one libsrtp context made from the keying material aiortc's DTLS transport derived.
 * Tx:      one subscriber leg's output: its own outbound Session, the socket and the address of
 *          the nominated ICE pair, and what says whether that is still the leg to send on.
 * Route:   one consumer's header rewrite (SSRC, payload type, sequence and timestamp offsets,
 *          mid / abs-send-time / audio-level extension ids), its counters and NACK history.
 * fan_out: rewrite, SRTP protect (in place, in one buffer with trailer room) and sendto for every
 *          consumer of one packet, in one call; consumers it cannot serve are handed back.
 *
 * The payload is copied unchanged; the header is written exactly as relay.rtp.RtpRewriter does
 * (tests/relay/test_accel.py compares both byte for byte).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <srtp2/srtp.h>

/* who does libsrtp's cryptography: "openssl" when setup.py links the libsrtp that
 * scripts/libsrtp.sh built, else whatever the system's libsrtp2 was built with */
#ifndef PARLEY_SRTP_CRYPTO
#define PARLEY_SRTP_CRYPTO "system libsrtp2"
#endif

/* --- AES-GCM for libsrtp on Nettle ---------------------------------------------------------
 *
 * libsrtp's own OpenSSL AES-GCM makes OpenSSL 3 translate a legacy control into parameters
 * three times per unprotect and twice per protect; even one EVP_CipherInit_ex per packet (to
 * set the IV) has OpenSSL 3.0 ask the provider for the IV length by name, and reading or
 * setting the tag is one more parameter walk: about 500 ns of fixed cost per packet, and more
 * on a cold cache. Nettle's GCM (AES-NI and PCLMUL where the CPU has them, chosen at run time)
 * is plain calls on a struct: about 100 ns. This cipher type takes libsrtp's place for
 * SRTP_AES_GCM_128/256 through srtp_replace_cipher_type, which first runs it against libsrtp's
 * own test vectors (and ours: tests/relay/test_accel*.py compare it with pylibsrtp byte for
 * byte and check that forgeries fail). Nettle wants the AAD in one piece (all but the last
 * update a multiple of 16 bytes) and SRTCP gives it in two, so the AAD is gathered first. Only
 * with the libsrtp scripts/libsrtp.sh built and Nettle's headers (setup.py: PARLEY_SRTP_NETTLE);
 * PARLEY_LIBSRTP_GCM=1 in the environment keeps libsrtp's. */
#ifdef PARLEY_SRTP_NETTLE
#include <nettle/gcm.h>
#include <nettle/memops.h>
#include <nettle/nettle-meta.h>
#include <srtp2/cipher.h>

extern const srtp_cipher_test_case_t srtp_aes_gcm_128_test_case_0;
extern const srtp_cipher_test_case_t srtp_aes_gcm_256_test_case_0;
extern const srtp_cipher_type_t srtp_aes_gcm_128; /* libsrtp's, to put back */
static const srtp_cipher_type_t gcm_128_type, gcm_256_type;

#define GCM_MAX_AAD 2304 /* a whole SRTCP packet, when it is only authenticated */

typedef struct {
    union {
        struct gcm_aes128_ctx aes128;
        struct gcm_aes256_ctx aes256;
    } ctx;
    const struct nettle_aead *aead; /* nettle_gcm_aes128 or _aes256: calls on ctx */
    int tag_len, ready, aad_done;
    uint32_t aad_len;
    uint8_t aad[GCM_MAX_AAD];
} Gcm;

static srtp_err_status_t aead_alloc(srtp_cipher_t **out, int key_len, int tag_len) {
    const srtp_cipher_type_t *type;
    const struct nettle_aead *aead;
    int algorithm;
    if (key_len == SRTP_AES_GCM_128_KEY_LEN_WSALT) {
        type = &gcm_128_type, aead = &nettle_gcm_aes128, algorithm = SRTP_AES_GCM_128;
    } else if (key_len == SRTP_AES_GCM_256_KEY_LEN_WSALT) {
        type = &gcm_256_type, aead = &nettle_gcm_aes256, algorithm = SRTP_AES_GCM_256;
    } else {
        return srtp_err_status_bad_param;
    }
    if (tag_len != 16 && tag_len != 8) {
        return srtp_err_status_bad_param;
    }
    srtp_cipher_t *cipher = calloc(1, sizeof(*cipher));
    Gcm *gcm = calloc(1, sizeof(*gcm));
    if (cipher == NULL || gcm == NULL) {
        free(cipher);
        free(gcm);
        return srtp_err_status_alloc_fail;
    }
    gcm->aead = aead;
    gcm->tag_len = tag_len;
    cipher->type = type;
    cipher->state = gcm;
    cipher->key_len = key_len;
    cipher->algorithm = algorithm;
    *out = cipher;
    return srtp_err_status_ok;
}

static srtp_err_status_t aead_dealloc(srtp_cipher_t *cipher) {
    Gcm *gcm = cipher->state;
    if (gcm != NULL) {
        explicit_bzero(gcm, sizeof(*gcm)); /* the key schedule */
        free(gcm);
    }
    free(cipher);
    return srtp_err_status_ok;
}

static srtp_err_status_t aead_init(void *state, const uint8_t *key) {
    Gcm *gcm = state;
    gcm->aead->set_encrypt_key(&gcm->ctx, key);
    gcm->ready = 0;
    return srtp_err_status_ok;
}

static srtp_err_status_t aead_set_iv(void *state, uint8_t *iv, srtp_cipher_direction_t dir) {
    Gcm *gcm = state;
    if (dir != srtp_direction_encrypt && dir != srtp_direction_decrypt) {
        return srtp_err_status_bad_param;
    }
    gcm->aead->set_nonce(&gcm->ctx, iv); /* GCM_IV_SIZE: SRTP's 12 bytes */
    gcm->ready = 1;
    gcm->aad_len = 0;
    gcm->aad_done = 0;
    return srtp_err_status_ok;
}

static srtp_err_status_t aead_set_aad(void *state, const uint8_t *aad, uint32_t len) {
    Gcm *gcm = state;
    if (!gcm->ready || gcm->aad_done || len > GCM_MAX_AAD - gcm->aad_len) {
        return srtp_err_status_bad_param;
    }
    memcpy(gcm->aad + gcm->aad_len, aad, len);
    gcm->aad_len += len;
    return srtp_err_status_ok;
}

/* the gathered AAD into the hash, once, before the first byte of data */
static void aead_flush_aad(Gcm *gcm) {
    if (!gcm->aad_done) {
        gcm->aead->update(&gcm->ctx, gcm->aad_len, gcm->aad);
        gcm->aad_done = 1;
    }
}

static srtp_err_status_t aead_encrypt(void *state, uint8_t *buf, unsigned int *len) {
    Gcm *gcm = state;
    if (!gcm->ready) {
        return srtp_err_status_bad_param;
    }
    aead_flush_aad(gcm);
    gcm->aead->encrypt(&gcm->ctx, *len, buf, buf);
    return srtp_err_status_ok;
}

static void aead_digest(Gcm *gcm, uint8_t *tag) {
    aead_flush_aad(gcm);
    gcm->aead->digest(&gcm->ctx, (size_t)gcm->tag_len, tag);
    gcm->ready = 0; /* a new IV before the next packet */
}

static srtp_err_status_t aead_get_tag(void *state, uint8_t *tag, uint32_t *len) {
    Gcm *gcm = state;
    if (!gcm->ready) {
        return srtp_err_status_bad_param;
    }
    aead_digest(gcm, tag);
    *len = (uint32_t)gcm->tag_len;
    return srtp_err_status_ok;
}

static srtp_err_status_t aead_decrypt(void *state, uint8_t *buf, unsigned int *len) {
    Gcm *gcm = state;
    if (!gcm->ready) {
        return srtp_err_status_bad_param;
    }
    if (*len < (unsigned int)gcm->tag_len) {
        return srtp_err_status_auth_fail;
    }
    unsigned int data = *len - (unsigned int)gcm->tag_len;
    aead_flush_aad(gcm);
    gcm->aead->decrypt(&gcm->ctx, data, buf, buf);
    uint8_t tag[GCM_DIGEST_SIZE];
    aead_digest(gcm, tag);
    if (!memeql_sec(tag, buf + data, (size_t)gcm->tag_len)) {
        return srtp_err_status_auth_fail; /* the tag did not match */
    }
    *len = data;
    return srtp_err_status_ok;
}

static const srtp_cipher_type_t gcm_128_type = {
    aead_alloc, aead_dealloc, aead_init, aead_set_aad, aead_encrypt, aead_decrypt, aead_set_iv,
    aead_get_tag, "AES-128 GCM (parley, Nettle)", &srtp_aes_gcm_128_test_case_0,
    SRTP_AES_GCM_128};
static const srtp_cipher_type_t gcm_256_type = {
    aead_alloc, aead_dealloc, aead_init, aead_set_aad, aead_encrypt, aead_decrypt, aead_set_iv,
    aead_get_tag, "AES-256 GCM (parley, Nettle)", &srtp_aes_gcm_256_test_case_0,
    SRTP_AES_GCM_256};

/* "parley" when ours took libsrtp's place (its test vectors passed), else "libsrtp" */
static const char *install_gcm(void) {
    const char *keep = getenv("PARLEY_LIBSRTP_GCM");
    if (keep != NULL && strcmp(keep, "1") == 0) {
        return "libsrtp";
    }
    if (srtp_replace_cipher_type(&gcm_128_type, SRTP_AES_GCM_128) != srtp_err_status_ok) {
        return "libsrtp";
    }
    if (srtp_replace_cipher_type(&gcm_256_type, SRTP_AES_GCM_256) != srtp_err_status_ok) {
        srtp_replace_cipher_type(&srtp_aes_gcm_128, SRTP_AES_GCM_128); /* both or neither */
        return "libsrtp";
    }
    return "parley";
}
#else
static const char *install_gcm(void) {
    return "libsrtp";
}
#endif

#define MAX_PACKET 2048
#define BUF_SIZE (MAX_PACKET + SRTP_MAX_TRAILER_LEN + 64)

static PyObject *AccelError;
static PyObject *s_marker, *s_sequence_number, *s_timestamp, *s_csrc, *s_payload,
    *s_padding_size, *s_audio_level, *s_route, *s_state, *s_tx_srtp, *s_is_closing, *s_datagram_received, *one;

/* --- Session ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    srtp_t ctx;
} Session;

static void Session_dealloc(Session *self) {
    if (self->ctx != NULL) {
        srtp_dealloc(self->ctx);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Session_init(Session *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"profile", "key", "outbound", NULL};
    int profile, outbound;
    Py_buffer key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*p", kwlist, &profile, &key, &outbound)) {
        return -1;
    }
    srtp_policy_t policy;
    memset(&policy, 0, sizeof(policy));
    if (srtp_crypto_policy_set_from_profile_for_rtp(&policy.rtp, (srtp_profile_t)profile) !=
            srtp_err_status_ok ||
        srtp_crypto_policy_set_from_profile_for_rtcp(&policy.rtcp, (srtp_profile_t)profile) !=
            srtp_err_status_ok) {
        PyBuffer_Release(&key);
        PyErr_Format(AccelError, "unsupported SRTP profile %d", profile);
        return -1;
    }
    int need = policy.rtp.cipher_key_len;
    if (key.len != need) {
        PyBuffer_Release(&key);
        PyErr_Format(AccelError, "SRTP key must be %d bytes, got %zd", need, key.len);
        return -1;
    }
    unsigned char material[64];
    memcpy(material, key.buf, key.len);
    PyBuffer_Release(&key);
    policy.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
    policy.key = material;
    policy.window_size = 1024;
    policy.allow_repeat_tx = 1;
    policy.next = NULL;
    if (self->ctx != NULL) {
        srtp_dealloc(self->ctx);
        self->ctx = NULL;
    }
    srtp_err_status_t status = srtp_create(&self->ctx, &policy);
    memset(material, 0, sizeof(material));
    if (status != srtp_err_status_ok) {
        self->ctx = NULL;
        PyErr_Format(AccelError, "srtp_create failed (%d)", (int)status);
        return -1;
    }
    return 0;
}

typedef srtp_err_status_t (*srtp_transform)(srtp_t, void *, int *);

/* One packet through srtp_protect or srtp_unprotect, on a stack copy (the input is immutable). */
static PyObject *Session_apply(Session *self, PyObject *arg, srtp_transform transform,
                               Py_ssize_t max_len, const char *what) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (in.len < 12 || in.len > max_len) {
        PyBuffer_Release(&in);
        PyErr_Format(AccelError, "%s packet size out of range",
                     transform == srtp_protect ? "RTP" : "SRTP");
        return NULL;
    }
    unsigned char buf[BUF_SIZE];
    int len = (int)in.len;
    memcpy(buf, in.buf, in.len);
    PyBuffer_Release(&in);
    srtp_err_status_t status = transform(self->ctx, buf, &len);
    if (status != srtp_err_status_ok) {
        PyErr_Format(AccelError, "%s failed (%d)", what, (int)status);
        return NULL;
    }
    return PyBytes_FromStringAndSize((char *)buf, len);
}

/* --- parse: relay.rtp.parse_rtp in C ------------------------------------------------------
 *
 * Fills a new relay.rtp.RtpIn (the class is handed over by relay/accel.py at import), exactly as
 * parse_rtp does; NULL without an exception when the packet is malformed (parse_rtp raises
 * ValueError there). */

/* what the packet path reads of an RTP packet: filled by parse_packet (the fast receive path)
 * or read back from a packet object (Fields_read) */
typedef struct {
    PyObject *payload; /* bytes, owned */
    PyObject *csrc;    /* owned */
    int marker;
    unsigned long seq, ts;
    int padding;
    int has_level;
    int level_voice, level;
    Py_ssize_t cc;
} Fields;

static void Fields_release(Fields *f) {
    Py_CLEAR(f->payload);
    Py_CLEAR(f->csrc);
}

static PyTypeObject *packet_type = NULL;
static PyObject *s_payload_type, *s_ssrc, *s_abs_send_time, *s_consumers, *empty_tuple;

/* Where packet_type's __slots__ keep each attribute (its member descriptors' offsets), so that
 * parse_packet fills a new packet, and the packet path reads one, without an attribute lookup
 * per field; 0 when packet_type is not a plain slotted class (then getattr / setattr). */
/* the offset of ``type``'s writable __slots__ member ``name`` in its instances, or 0: none (a
 * type with a __dict__ too, a property, a member of a base class) */
static Py_ssize_t slot_offset(PyTypeObject *type, PyObject *name) {
    if (type == NULL || type->tp_dictoffset != 0) {
        return 0;
    }
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    if (descr == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t offset = 0;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY) &&
            PyDescr_TYPE(descr) == type) {
            offset = member->offset;
        }
    }
    Py_DECREF(descr);
    return offset;
}

static Py_ssize_t packet_slot_offset(PyObject *name) {
    return slot_offset(packet_type, name);
}

/* relay.fanout.ConsumerView, whose ``consumers`` slot Inbound reads per packet (set_view_type) */
static PyTypeObject *view_type;
static Py_ssize_t o_consumers;

static Py_ssize_t o_payload_type, o_marker, o_sequence_number, o_timestamp, o_ssrc, o_csrc,
    o_payload, o_padding_size, o_abs_send_time, o_audio_level;

/* store a new packet's attribute (a new reference, or NULL: failed) */
static int set_slot(PyObject *obj, PyObject *name, Py_ssize_t offset, PyObject *value) {
    if (value == NULL) {
        return -1;
    }
    if (offset > 0 && Py_IS_TYPE(obj, packet_type)) {
        Py_XSETREF(*(PyObject **)((char *)obj + offset), value);
        return 0;
    }
    int rc = PyObject_GenericSetAttr(obj, name, value);
    Py_DECREF(value);
    return rc;
}

/* getattr(obj, name), straight from the slot when obj is a packet_type (a new reference) */
static PyObject *get_slot(PyObject *obj, PyObject *name, Py_ssize_t offset) {
    if (offset > 0 && Py_IS_TYPE(obj, packet_type)) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(obj, name); /* (an unset slot raises AttributeError there) */
}

/* PyLong_FromUnsignedLong(v) through a one-entry cache: the packets of a frame share their SSRC
 * and timestamp, so most packets reuse the previous one's int instead of allocating (and later
 * freeing) their own */
static inline PyObject *cached_long(unsigned long v, PyObject **cache, unsigned long *cached) {
    if (*cache == NULL || *cached != v) {
        PyObject *value = PyLong_FromUnsignedLong(v);
        if (value == NULL) {
            return NULL;
        }
        Py_XSETREF(*cache, value);
        *cached = v;
    }
    return Py_NewRef(*cache);
}

static PyObject *last_ssrc_int, *last_ts_int;
static unsigned long last_ssrc_value, last_ts_value;

/* ``fields`` (may be NULL): also filled with what Fields_read would read from the packet, with
 * new references the caller releases (Fields_release) */
static PyObject *parse_packet(const unsigned char *data, Py_ssize_t length, int ast_id,
                              int level_id, int *malformed, Fields *fields) {
    *malformed = 0;
    if (packet_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the packet type was not set");
        return NULL;
    }
    if (length < 12 || data[0] >> 6 != 2) {
        *malformed = 1;
        return NULL;
    }
    unsigned char first = data[0], second = data[1];
    Py_ssize_t pos = 12;
    int cc = first & 0x0F;
    if (cc && length < pos + 4 * cc) {
        *malformed = 1;
        return NULL;
    }
    Py_ssize_t csrc_pos = pos;
    pos += 4 * cc;
    long abs_send_time = -1;
    int level = -1;
    if (first & 0x10) {
        if (length < pos + 4) {
            *malformed = 1;
            return NULL;
        }
        unsigned profile = ((unsigned)data[pos] << 8) | data[pos + 1];
        Py_ssize_t end = pos + 4 + 4 * (((Py_ssize_t)data[pos + 2] << 8) | data[pos + 3]);
        if (length < end) {
            *malformed = 1;
            return NULL;
        }
        pos += 4;
        if (profile == 0xBEDE) {
            while (pos < end) {
                unsigned char byte = data[pos];
                if (byte == 0) {
                    pos++;
                    continue;
                }
                int x_id = byte >> 4, x_len = (byte & 0x0F) + 1;
                if (x_id == 15 || pos + 1 + x_len > end) {
                    break;
                }
                if (x_id == ast_id && x_len == 3) {
                    abs_send_time = ((long)data[pos + 1] << 16) | ((long)data[pos + 2] << 8) |
                                    data[pos + 3];
                } else if (x_id == level_id) {
                    level = data[pos + 1];
                }
                pos += 1 + x_len;
            }
        } else if ((profile & 0xFFF0) == 0x1000) {
            while (pos + 1 < end) {
                int x_id = data[pos];
                if (x_id == 0) {
                    pos++;
                    continue;
                }
                int x_len = data[pos + 1];
                if (pos + 2 + x_len > end) {
                    break;
                }
                if (x_id == ast_id && x_len == 3) {
                    abs_send_time = ((long)data[pos + 2] << 16) | ((long)data[pos + 3] << 8) |
                                    data[pos + 4];
                } else if (x_id == level_id && x_len >= 1) {
                    level = data[pos + 2];
                }
                pos += 2 + x_len;
            }
        }
        pos = end;
    }
    int padding = 0;
    if (first & 0x20) {
        padding = data[length - 1];
        if (padding == 0 || pos + padding > length) {
            *malformed = 1;
            return NULL;
        }
    }
    PyObject *packet = packet_type->tp_alloc(packet_type, 0);
    if (packet == NULL) {
        return NULL;
    }
    PyObject *csrc;
    if (cc) {
        csrc = PyTuple_New(cc);
        if (csrc == NULL) {
            goto fail;
        }
        for (int i = 0; i < cc; i++) {
            const unsigned char *p = data + csrc_pos + 4 * i;
            unsigned long v = ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) |
                              ((unsigned long)p[2] << 8) | p[3];
            PyObject *item = PyLong_FromUnsignedLong(v);
            if (item == NULL) {
                Py_DECREF(csrc);
                goto fail;
            }
            PyTuple_SET_ITEM(csrc, i, item);
        }
    } else {
        Py_INCREF(empty_tuple);
        csrc = empty_tuple;
    }
    PyObject *level_value;
    if (level >= 0) {
        level_value = Py_BuildValue("(Oi)", (level & 0x80) ? Py_True : Py_False, level & 0x7F);
    } else {
        Py_INCREF(Py_None);
        level_value = Py_None;
    }
    PyObject *ast_value;
    if (abs_send_time >= 0) {
        ast_value = PyLong_FromLong(abs_send_time);
    } else {
        Py_INCREF(Py_None);
        ast_value = Py_None;
    }
    PyObject *payload =
        PyBytes_FromStringAndSize((const char *)data + pos, length - padding - pos);
    if (payload == NULL) {
        Py_DECREF(csrc);
        Py_DECREF(level_value);
        Py_DECREF(ast_value);
        goto fail;
    }
    unsigned long seq = ((unsigned long)data[2] << 8) | data[3];
    unsigned long ts = ((unsigned long)data[4] << 24) | ((unsigned long)data[5] << 16) |
                       ((unsigned long)data[6] << 8) | data[7];
    unsigned long ssrc = ((unsigned long)data[8] << 24) | ((unsigned long)data[9] << 16) |
                         ((unsigned long)data[10] << 8) | data[11];
    if (set_slot(packet, s_payload_type, o_payload_type, PyLong_FromLong(second & 0x7F)) < 0 ||
        set_slot(packet, s_marker, o_marker, PyLong_FromLong(second >> 7)) < 0 ||
        set_slot(packet, s_sequence_number, o_sequence_number, PyLong_FromUnsignedLong(seq)) <
            0 ||
        set_slot(packet, s_timestamp, o_timestamp, cached_long(ts, &last_ts_int, &last_ts_value)) <
            0 ||
        set_slot(packet, s_ssrc, o_ssrc, cached_long(ssrc, &last_ssrc_int, &last_ssrc_value)) <
            0 ||
        set_slot(packet, s_csrc, o_csrc, csrc) < 0 ||
        set_slot(packet, s_payload, o_payload, Py_NewRef(payload)) < 0 ||
        set_slot(packet, s_padding_size, o_padding_size, PyLong_FromLong(padding)) < 0 ||
        set_slot(packet, s_abs_send_time, o_abs_send_time, ast_value) < 0 ||
        set_slot(packet, s_audio_level, o_audio_level, level_value) < 0) {
        Py_DECREF(payload);
        goto fail;
    }
    /* Only ints, bytes, None and tuples of those: it can be in no reference cycle, and the
     * thousands the NACK histories keep would otherwise be walked by every full collection. */
    if (PyObject_IS_GC(packet)) {
        PyObject_GC_UnTrack(packet);
    }
    if (fields != NULL) {
        memset(fields, 0, sizeof(*fields));
        fields->marker = second >> 7;
        fields->seq = seq;
        fields->ts = ts;
        fields->padding = padding;
        fields->cc = cc;
        if (level >= 0) {
            fields->has_level = 1;
            fields->level_voice = (level & 0x80) ? 1 : 0;
            fields->level = level & 0x7F;
        }
        fields->csrc = Py_NewRef(csrc); /* the packet holds one */
        fields->payload = payload;
    } else {
        Py_DECREF(payload);
    }
    return packet;
fail:
    Py_DECREF(packet);
    return NULL;
}

static PyObject *parse_py(PyObject *module, PyObject *args) {
    Py_buffer in;
    int ast_id, level_id, malformed;
    if (!PyArg_ParseTuple(args, "y*ii", &in, &ast_id, &level_id)) {
        return NULL;
    }
    PyObject *packet =
        parse_packet((const unsigned char *)in.buf, in.len, ast_id, level_id, &malformed, NULL);
    PyBuffer_Release(&in);
    if (packet == NULL && malformed) {
        Py_RETURN_NONE;
    }
    return packet;
}

static PyObject *set_packet_type_py(PyObject *module, PyObject *arg) {
    if (!PyType_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "a class");
        return NULL;
    }
    Py_INCREF(arg);
    Py_XSETREF(packet_type, (PyTypeObject *)arg);
    o_payload_type = packet_slot_offset(s_payload_type);
    o_marker = packet_slot_offset(s_marker);
    o_sequence_number = packet_slot_offset(s_sequence_number);
    o_timestamp = packet_slot_offset(s_timestamp);
    o_ssrc = packet_slot_offset(s_ssrc);
    o_csrc = packet_slot_offset(s_csrc);
    o_payload = packet_slot_offset(s_payload);
    o_padding_size = packet_slot_offset(s_padding_size);
    o_abs_send_time = packet_slot_offset(s_abs_send_time);
    o_audio_level = packet_slot_offset(s_audio_level);
    Py_RETURN_NONE;
}

static PyObject *set_view_type_py(PyObject *module, PyObject *arg) {
    if (!PyType_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "a class");
        return NULL;
    }
    Py_INCREF(arg);
    Py_XSETREF(view_type, (PyTypeObject *)arg);
    o_consumers = slot_offset(view_type, s_consumers);
    Py_RETURN_NONE;
}

/* unprotect in a stack buffer and parse from it: no intermediate bytes */
static PyObject *Session_unprotect_parse(Session *self, PyObject *const *args,
                                         Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unprotect_parse(data, abs_send_time_id, audio_level_id)");
        return NULL;
    }
    int ast_id = (int)PyLong_AsLong(args[1]), level_id = (int)PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer in;
    if (PyObject_GetBuffer(args[0], &in, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (in.len < 12 || in.len > MAX_PACKET + SRTP_MAX_TRAILER_LEN) {
        PyBuffer_Release(&in);
        PyErr_SetString(AccelError, "SRTP packet size out of range");
        return NULL;
    }
    unsigned char buf[BUF_SIZE];
    int len = (int)in.len;
    memcpy(buf, in.buf, in.len);
    PyBuffer_Release(&in);
    srtp_err_status_t status = srtp_unprotect(self->ctx, buf, &len);
    if (status != srtp_err_status_ok) {
        PyErr_Format(AccelError, "srtp_unprotect failed (%d)", (int)status);
        return NULL;
    }
    int malformed;
    PyObject *packet = parse_packet(buf, len, ast_id, level_id, &malformed, NULL);
    if (packet == NULL && malformed) {
        Py_RETURN_NONE;
    }
    return packet;
}

static PyObject *Session_protect(Session *self, PyObject *arg) {
    return Session_apply(self, arg, srtp_protect, MAX_PACKET, "srtp_protect");
}

static PyObject *Session_unprotect(Session *self, PyObject *arg) {
    return Session_apply(self, arg, srtp_unprotect, MAX_PACKET + SRTP_MAX_TRAILER_LEN,
                         "srtp_unprotect");
}

static PyMethodDef Session_methods[] = {
    {"protect", (PyCFunction)Session_protect, METH_O, "SRTP-protect one RTP packet."},
    {"unprotect", (PyCFunction)Session_unprotect, METH_O, "SRTP-unprotect one RTP packet."},
    {"unprotect_parse", (PyCFunction)(void (*)(void))Session_unprotect_parse, METH_FASTCALL,
     "unprotect_parse(data, abs_send_time_id, audio_level_id) -> RtpIn, or None when the "
     "decrypted packet is malformed (Error when SRTP refuses it)."},
    {NULL}};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parley.relay._accel.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Session(profile, key, outbound): one libsrtp context (RTP only).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Session_init,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
};

/* --- Tx ----------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Session *session;
    int fd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    /* what says this is still the leg to send on (see relay/_aiortc.py fast_tx) */
    PyObject *dtls;      /* dtls._state is connected and dtls._tx_srtp is keyed_by */
    PyObject *connected;
    PyObject *keyed_by; /* aiortc's own session, whose keys ours were derived from */
    PyObject *nominated; /* nominated.get(1) is pair */
    PyObject *pair;
    PyObject *transport; /* not transport.is_closing() */
    PyObject *reader;    /* or, when the transport is read by this Reader: not its closed */
    const int *reader_closed;
    unsigned long long sent, errors;
    unsigned long long checked; /* the python_epoch of checked_valid (inside a Reader's batch) */
    int checked_valid;
} Tx;

/* Python code may have changed what Tx_valid reads whenever it ran: python_ran() counts those
 * moments (every call out of C into Python, every entry from Python) so that inside one Reader
 * batch a leg is checked once until Python runs again, not once per packet. */
static unsigned long long python_epoch = 1;

static inline void python_ran(void) {
    python_epoch++;
}

static int Tx_traverse(Tx *self, visitproc visit, void *arg) {
    Py_VISIT(self->session);
    Py_VISIT(self->dtls);
    Py_VISIT(self->connected);
    Py_VISIT(self->keyed_by);
    Py_VISIT(self->nominated);
    Py_VISIT(self->pair);
    Py_VISIT(self->transport);
    Py_VISIT(self->reader);
    return 0;
}

static int Tx_clear(Tx *self) {
    Py_CLEAR(self->session);
    Py_CLEAR(self->dtls);
    Py_CLEAR(self->connected);
    Py_CLEAR(self->keyed_by);
    Py_CLEAR(self->nominated);
    Py_CLEAR(self->pair);
    Py_CLEAR(self->transport);
    self->reader_closed = NULL;
    Py_CLEAR(self->reader);
    return 0;
}

static void Tx_dealloc(Tx *self) {
    PyObject_GC_UnTrack(self);
    Tx_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *transport_reader(PyObject *transport, const int **closed);

static int Tx_init(Tx *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"session",   "fd",       "host",      "port", "dtls",
                             "connected", "keyed_by", "nominated", "pair", "transport", NULL};
    PyObject *session, *dtls, *connected, *keyed_by, *nominated, *pair, *transport;
    int fd, port;
    const char *host;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!isiOOOO!OO", kwlist, &SessionType,
                                     &session, &fd, &host, &port, &dtls, &connected, &keyed_by,
                                     &PyDict_Type, &nominated, &pair, &transport)) {
        return -1;
    }
    memset(&self->addr, 0, sizeof(self->addr));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&self->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&self->addr;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        self->addrlen = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        self->addrlen = sizeof(*v6);
    } else {
        PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
        return -1;
    }
    self->fd = fd;
    Tx_clear(self);
    Py_INCREF(session);
    self->session = (Session *)session;
    Py_INCREF(dtls);
    self->dtls = dtls;
    Py_INCREF(connected);
    self->connected = connected;
    Py_INCREF(keyed_by);
    self->keyed_by = keyed_by;
    Py_INCREF(nominated);
    self->nominated = nominated;
    Py_INCREF(pair);
    self->pair = pair;
    Py_INCREF(transport);
    self->transport = transport;
    self->reader = transport_reader(transport, &self->reader_closed);
    if (self->reader == NULL && PyErr_Occurred()) {
        return -1;
    }
    self->checked = 0;
    return 0;
}

/* 1 when the leg is still connected on the same pair and socket, 0 when not, -1 on error */
static int Tx_valid(Tx *self) {
    if (self->dtls == NULL) {
        return 0;
    }
    PyObject *state = PyObject_GetAttr(self->dtls, s_state);
    if (state == NULL) {
        return -1;
    }
    Py_DECREF(state);
    if (state != self->connected) {
        return 0;
    }
    PyObject *srtp = PyObject_GetAttr(self->dtls, s_tx_srtp);
    if (srtp == NULL) {
        return -1;
    }
    Py_DECREF(srtp);
    if (srtp != self->keyed_by) {
        return 0; /* aiortc re-keyed (or someone swapped its session): ours is stale */
    }
    if (PyDict_GetItemWithError(self->nominated, one) != self->pair) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (self->reader_closed != NULL) {
        return !*self->reader_closed;
    }
    PyObject *closing = PyObject_CallMethodNoArgs(self->transport, s_is_closing);
    if (closing == NULL) {
        return -1;
    }
    int result = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    return result < 0 ? -1 : !result;
}

/* --- batched output -------------------------------------------------------------------
 *
 * While a Reader drains a socket (one recvmmsg), what the fan-outs of those datagrams protect
 * is queued here instead of sent; at the end of the drain the queue goes out with one
 * sendmmsg per destination, consecutive equal-size packets to one destination as one UDP GSO
 * message (UDP_SEGMENT, Linux >= 4.18). The order of the packets to one destination is kept.
 */

#define OUT_SLOTS 256
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000

typedef struct {
    PyObject *tx; /* Tx, owned */
    int len;
} OutEntry;

static OutEntry out_entries[OUT_SLOTS];
static unsigned char out_bufs[OUT_SLOTS][BUF_SIZE];
static int out_count = 0;
static int defer_depth = 0; /* > 0 while a Reader drains */

/* Tx_valid, remembered inside a Reader's batch until Python runs again (python_ran) */
static int Tx_valid_in_batch(Tx *self) {
    if (self->session == NULL || self->dtls == NULL) {
        return 0; /* cleared (tp_clear) */
    }
    if (defer_depth > 0 && self->checked == python_epoch) {
        return self->checked_valid;
    }
    int valid = Tx_valid(self);
    if (valid >= 0 && defer_depth > 0) {
        /* (is_closing() is Python, but only a question) */
        self->checked = python_epoch;
        self->checked_valid = valid;
    }
    return valid;
}
static int gso_enabled = 1;
static struct {
    unsigned long long reads, datagrams_in, sends, datagrams_out, gso_messages, gso_failures,
        truncated;
} counters;

static void out_flush(void);

/* protect buf[0:len] in place and send it; errors of the socket are counted, not raised */
static int Tx_protect_send(Tx *self, unsigned char *buf, int len) {
    if (defer_depth > 0) {
        if (out_count == OUT_SLOTS) {
            out_flush();
        }
        unsigned char *slot = out_bufs[out_count];
        memcpy(slot, buf, (size_t)len);
        if (srtp_protect(self->session->ctx, slot, &len) != srtp_err_status_ok) {
            self->errors++;
            return -1;
        }
        Py_INCREF(self);
        out_entries[out_count].tx = (PyObject *)self;
        out_entries[out_count].len = len;
        out_count++;
        return 0;
    }
    srtp_err_status_t status = srtp_protect(self->session->ctx, buf, &len);
    if (status != srtp_err_status_ok) {
        self->errors++;
        return -1;
    }
    counters.sends++;
    counters.datagrams_out++;
    if (sendto(self->fd, buf, (size_t)len, MSG_DONTWAIT, (struct sockaddr *)&self->addr,
               self->addrlen) < 0) {
        self->errors++;
        return -1;
    }
    self->sent++;
    return 0;
}

static PyObject *Tx_send(Tx *self, PyObject *arg) {
    int valid = Tx_valid(self);
    if (valid < 0) {
        return NULL;
    }
    if (!valid) {
        PyErr_SetString(PyExc_ConnectionError, "not connected");
        return NULL;
    }
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (in.len < 12 || in.len > MAX_PACKET) {
        PyBuffer_Release(&in);
        PyErr_SetString(AccelError, "RTP packet size out of range");
        return NULL;
    }
    unsigned char buf[BUF_SIZE];
    memcpy(buf, in.buf, in.len);
    int len = (int)in.len;
    PyBuffer_Release(&in);
    srtp_err_status_t status = srtp_protect(self->session->ctx, buf, &len);
    if (status != srtp_err_status_ok) {
        self->errors++;
        PyErr_Format(AccelError, "srtp_protect failed (%d)", (int)status);
        return NULL;
    }
    if (sendto(self->fd, buf, (size_t)len, MSG_DONTWAIT, (struct sockaddr *)&self->addr,
               self->addrlen) < 0) {
        self->errors++;
    } else {
        self->sent++;
    }
    Py_RETURN_NONE;
}

static PyObject *Tx_get_valid(Tx *self, void *closure) {
    int valid = Tx_valid(self);
    if (valid < 0) {
        return NULL;
    }
    return PyBool_FromLong(valid);
}

static PyMethodDef Tx_methods[] = {
    {"send", (PyCFunction)Tx_send, METH_O,
     "SRTP-protect and send one RTP packet (ConnectionError when the leg is gone)."},
    {NULL}};

static PyMemberDef Tx_members[] = {
    {"sent", T_ULONGLONG, offsetof(Tx, sent), READONLY, "datagrams sent"},
    {"errors", T_ULONGLONG, offsetof(Tx, errors), READONLY, "protect or sendto failures"},
    {NULL}};

static PyGetSetDef Tx_getset[] = {
    {"valid", (getter)Tx_get_valid, NULL, "still connected on the same pair and socket", NULL},
    {NULL}};

static PyTypeObject TxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parley.relay._accel.Tx",
    .tp_basicsize = sizeof(Tx),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Tx(session, fd, host, port, dtls, connected, keyed_by, nominated, pair, transport)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tx_init,
    .tp_dealloc = (destructor)Tx_dealloc,
    .tp_traverse = (traverseproc)Tx_traverse,
    .tp_clear = (inquiry)Tx_clear,
    .tp_methods = Tx_methods,
    .tp_members = Tx_members,
    .tp_getset = Tx_getset,
};

static int same_destination(const Tx *a, const Tx *b) {
    return a == b || (a->fd == b->fd && a->addrlen == b->addrlen &&
                      memcmp(&a->addr, &b->addr, a->addrlen) == 0);
}

static void out_count_sent(const int *idx, int first, int segments, int ok) {
    for (int s = 0; s < segments; s++) {
        Tx *tx = (Tx *)out_entries[idx[first + s]].tx;
        if (ok) {
            tx->sent++;
        } else {
            tx->errors++;
        }
    }
    if (ok) {
        counters.datagrams_out += (unsigned long long)segments;
    }
}

/* Send what the drain queued: per destination one sendmmsg, runs of equal-size packets (the
 * last of a run may be shorter) as one GSO message each. No Python code runs in here. */
static void out_flush(void) {
    int n = out_count;
    if (n == 0) {
        return;
    }
    static char done[OUT_SLOTS];
    static int idx[OUT_SLOTS], msg_first[OUT_SLOTS], msg_segments[OUT_SLOTS];
    static struct iovec iovs[OUT_SLOTS];
    static struct mmsghdr msgs[OUT_SLOTS];
    static union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control[OUT_SLOTS];
    PyObject *refs[OUT_SLOTS];
    memset(done, 0, (size_t)n);
    for (int i = 0; i < n; i++) {
        if (done[i]) {
            continue;
        }
        Tx *tx = (Tx *)out_entries[i].tx;
        int count = 0;
        for (int j = i; j < n; j++) {
            if (!done[j] && same_destination(tx, (Tx *)out_entries[j].tx)) {
                done[j] = 1;
                idx[count] = j;
                iovs[count].iov_base = out_bufs[j];
                iovs[count].iov_len = (size_t)out_entries[j].len;
                count++;
            }
        }
        int m = 0;
        for (int k = 0; k < count;) {
            size_t segment = iovs[k].iov_len, total = segment;
            int run = 1;
            if (gso_enabled) {
                while (k + run < count && run < GSO_MAX_SEGMENTS &&
                       total + iovs[k + run].iov_len <= GSO_MAX_BYTES &&
                       iovs[k + run].iov_len <= segment) {
                    size_t len = iovs[k + run].iov_len;
                    run++;
                    total += len;
                    if (len < segment) {
                        break; /* only the last segment may be shorter */
                    }
                }
            }
            struct msghdr *h = &msgs[m].msg_hdr;
            memset(h, 0, sizeof(*h));
            h->msg_name = &tx->addr;
            h->msg_namelen = tx->addrlen;
            h->msg_iov = &iovs[k];
            h->msg_iovlen = (size_t)run;
            if (run > 1) {
                h->msg_control = control[m].buf;
                h->msg_controllen = sizeof(control[m].buf);
                struct cmsghdr *c = CMSG_FIRSTHDR(h);
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t size16 = (uint16_t)segment;
                memcpy(CMSG_DATA(c), &size16, sizeof(size16));
            }
            msg_first[m] = k;
            msg_segments[m] = run;
            m++;
            k += run;
        }
        for (int done_msgs = 0; done_msgs < m;) {
            int sent = sendmmsg(tx->fd, msgs + done_msgs, (unsigned int)(m - done_msgs),
                                MSG_DONTWAIT);
            counters.sends++;
            if (sent > 0) {
                for (int s = done_msgs; s < done_msgs + sent; s++) {
                    out_count_sent(idx, msg_first[s], msg_segments[s], 1);
                    if (msg_segments[s] > 1) {
                        counters.gso_messages++;
                    }
                }
                done_msgs += sent;
                continue;
            }
            /* msgs[done_msgs] failed */
            int err = errno;
            int s = done_msgs++;
            if (msg_segments[s] > 1 &&
                (err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP)) {
                /* no UDP GSO here (old kernel, or a device without checksum offload): one by
                 * one from now on */
                gso_enabled = 0;
                counters.gso_failures++;
                for (int seg = 0; seg < msg_segments[s]; seg++) {
                    struct iovec *v = &iovs[msg_first[s] + seg];
                    counters.sends++;
                    int ok = sendto(tx->fd, v->iov_base, v->iov_len, MSG_DONTWAIT,
                                    (struct sockaddr *)&tx->addr, tx->addrlen) >= 0;
                    out_count_sent(idx, msg_first[s] + seg, 1, ok);
                }
            } else {
                out_count_sent(idx, msg_first[s], msg_segments[s], 0);
            }
        }
    }
    for (int i = 0; i < n; i++) {
        refs[i] = out_entries[i].tx;
        out_entries[i].tx = NULL;
    }
    out_count = 0;
    for (int i = 0; i < n; i++) {
        Py_DECREF(refs[i]); /* last: a finalizer may run Python code (and queue again) */
    }
}

/* --- FastIn: the fast receive path of one ICE connection, taken by its Readers ---------------
 *
 * relay._aiortc.FastReceive in C, for the datagrams a Reader has in its buffers: an SRTP packet
 * (RTP, not RTCP) is unprotected in place, parsed into an RtpIn and routed through aiortc's
 * RtpRouter tables (the SSRC is known and its payload type is the receiver's: route_rtp's first
 * case) to the receiver's ``_parley_forward``, without a bytes object or a Python frame of ours.
 * What the tables do not settle goes to ``route(packet)`` (FastReceive.routed: route_rtp itself).
 * Until FastReceive has set ``session`` (the keys exist) every datagram takes the Python path.
 */

typedef struct Inbound Inbound;
static PyTypeObject InboundType;
static PyObject *Inbound_forward(Inbound *self, PyObject *packet, long long pt, long long ssrc,
                                 Fields *f);

typedef struct {
    PyObject_HEAD
    PyObject *session;    /* Session, or NULL: the Python path until the keys exist */
    PyObject *ssrc_table; /* RtpRouter.ssrc_table: {ssrc: receiver} */
    PyObject *pt_table;   /* RtpRouter.payload_type_table: {pt: {receiver}} */
    PyObject *route;      /* route(packet): what the tables do not settle */
    PyObject *failed;     /* failed(addr): a handler raised (DatagramStats.failed) */
    int audio_level_id;
    uint32_t last_ssrc;
    PyObject *last_key; /* the int of last_ssrc, or NULL: one allocation less per packet */
    /* the last lookup's receiver, while no Python has run since (python_epoch): the tables
     * only change when Python runs, so the rest of a frame's packets skip the two lookups */
    PyObject *found;
    uint32_t found_ssrc;
    int found_pt;
    unsigned long long found_epoch;
    unsigned long long taken, unprotect_errors, malformed, routed;
} FastIn;

static PyObject *s_parley_forward;

static int FastIn_traverse(FastIn *self, visitproc visit, void *arg) {
    Py_VISIT(self->session);
    Py_VISIT(self->ssrc_table);
    Py_VISIT(self->pt_table);
    Py_VISIT(self->route);
    Py_VISIT(self->failed);
    Py_VISIT(self->last_key);
    Py_VISIT(self->found);
    return 0;
}

static int FastIn_clear(FastIn *self) {
    Py_CLEAR(self->session);
    Py_CLEAR(self->ssrc_table);
    Py_CLEAR(self->pt_table);
    Py_CLEAR(self->route);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->last_key);
    Py_CLEAR(self->found);
    return 0;
}

static void FastIn_dealloc(FastIn *self) {
    PyObject_GC_UnTrack(self);
    FastIn_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int FastIn_init(FastIn *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"route", "failed", NULL};
    PyObject *route, *failed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &route, &failed)) {
        return -1;
    }
    if (!PyCallable_Check(route) || !PyCallable_Check(failed)) {
        PyErr_SetString(PyExc_TypeError, "FastIn(route, failed): both callable");
        return -1;
    }
    FastIn_clear(self);
    self->route = Py_NewRef(route);
    self->failed = Py_NewRef(failed);
    return 0;
}

/* set_keys(session, ssrc_table, payload_type_table): from now on RTP takes this path */
static PyObject *FastIn_set_keys(FastIn *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !Py_IS_TYPE(args[0], &SessionType) || !PyDict_Check(args[1]) ||
        !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "set_keys(session: Session, ssrc_table: dict, payload_type_table: dict)");
        return NULL;
    }
    Py_XSETREF(self->session, Py_NewRef(args[0]));
    Py_XSETREF(self->ssrc_table, Py_NewRef(args[1]));
    Py_XSETREF(self->pt_table, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static inline int FastIn_wants(const FastIn *self, const unsigned char *data, unsigned int len) {
    /* RTP, not RTCP (RFC 5761 §4: payload types 192-223), as DatagramGuard decides */
    return self->session != NULL && self->route != NULL && self->failed != NULL && len > 12 && len <= MAX_PACKET + SRTP_MAX_TRAILER_LEN &&
           data[0] > 127 && data[0] < 192 && !(data[1] > 191 && data[1] < 224);
}

/* the receiver route_rtp would return without changing its tables (a new reference), or NULL
 * (with an exception set only when something failed) */
static PyObject *FastIn_lookup(FastIn *self, uint32_t ssrc, int pt) {
    if (self->found != NULL && self->found_epoch == python_epoch && self->found_ssrc == ssrc &&
        self->found_pt == pt) {
        return Py_NewRef(self->found);
    }
    if (self->last_key == NULL || self->last_ssrc != ssrc) {
        PyObject *new_key = PyLong_FromUnsignedLong(ssrc);
        if (new_key == NULL) {
            return NULL;
        }
        Py_XSETREF(self->last_key, new_key);
        self->last_ssrc = ssrc;
    }
    PyObject *key = Py_NewRef(self->last_key);
    PyObject *receiver = PyDict_GetItemWithError(self->ssrc_table, key);
    Py_DECREF(key);
    if (receiver == NULL) {
        return NULL;
    }
    Py_INCREF(receiver); /* the set's lookup below may run a __hash__ or __eq__ */
    key = PyLong_FromLong(pt);
    if (key == NULL) {
        Py_DECREF(receiver);
        return NULL;
    }
    PyObject *receivers = PyDict_GetItemWithError(self->pt_table, key);
    Py_DECREF(key);
    Py_XINCREF(receivers);
    int found = receivers != NULL && PyAnySet_Check(receivers) ? PySet_Contains(receivers, receiver)
                                                               : 0;
    Py_XDECREF(receivers);
    if (found != 1) {
        Py_DECREF(receiver);
        PyErr_Clear(); /* not settled here: route_rtp decides */
        return NULL;
    }
    PyObject *old = self->found;
    self->found = Py_NewRef(receiver);
    self->found_ssrc = ssrc;
    self->found_pt = pt;
    self->found_epoch = python_epoch;
    if (old != NULL && old != receiver && Py_REFCNT(old) == 1) {
        Py_DECREF(old); /* its finalizer may run Python */
        python_ran();
    } else {
        Py_XDECREF(old);
    }
    return receiver;
}

/* one datagram (modified in place); 0, or -1 with an exception set (a handler raised) */
static int FastIn_take(FastIn *self, unsigned char *data, unsigned int size) {
    self->taken++;
    int len = (int)size;
    if (srtp_unprotect(((Session *)self->session)->ctx, data, &len) != srtp_err_status_ok) {
        self->unprotect_errors++;
        return 0;
    }
    int malformed;
    Fields f;
    PyObject *packet = parse_packet(data, len, 0, self->audio_level_id, &malformed, &f);
    if (packet == NULL) {
        if (malformed) {
            self->malformed++;
            return 0;
        }
        return -1;
    }
    uint32_t ssrc = (uint32_t)data[8] << 24 | (uint32_t)data[9] << 16 | (uint32_t)data[10] << 8 |
                    (uint32_t)data[11];
    int pt = data[1] & 0x7F;
    PyObject *result = NULL;
    PyObject *receiver = FastIn_lookup(self, ssrc, pt);
    if (receiver == NULL) {
        Fields_release(&f);
        if (PyErr_Occurred()) {
            Py_DECREF(packet);
            return -1;
        }
        self->routed++;
        result = PyObject_CallOneArg(self->route, packet);
        python_ran();
    } else {
        PyObject *forward = PyObject_GetAttr(receiver, s_parley_forward);
        Py_DECREF(receiver);
        if (forward == NULL) {
            Fields_release(&f);
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                Py_DECREF(packet);
                return -1;
            }
            PyErr_Clear(); /* a receiver without the fast path: dropped, as FastReceive does */
            Py_DECREF(packet);
            return 0;
        }
        if (Py_IS_TYPE(forward, &InboundType)) {
            /* the producer's own: its common case without a call through Python */
            result = Inbound_forward((Inbound *)forward, packet, pt, ssrc, &f);
        } else {
            Fields_release(&f);
            result = PyObject_CallOneArg(forward, packet);
            python_ran();
        }
        Py_DECREF(forward);
    }
    Py_DECREF(packet);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static PyObject *FastIn_get_audio_level_id(FastIn *self, void *closure) {
    return PyLong_FromLong(self->audio_level_id);
}

static int FastIn_set_audio_level_id(FastIn *self, PyObject *value, void *closure) {
    long id = value == NULL ? -1 : PyLong_AsLong(value);
    if (id == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (id < 0 || id > 255) {
        PyErr_SetString(PyExc_ValueError, "audio_level_id: 0-255");
        return -1;
    }
    self->audio_level_id = (int)id;
    return 0;
}

static PyObject *FastIn_get_keyed(FastIn *self, void *closure) {
    return PyBool_FromLong(self->session != NULL);
}

static PyMethodDef FastIn_methods[] = {
    {"set_keys", (PyCFunction)(void (*)(void))FastIn_set_keys, METH_FASTCALL,
     "set_keys(session, ssrc_table, payload_type_table): take RTP from now on"},
    {NULL}};

static PyMemberDef FastIn_members[] = {
    {"taken", T_ULONGLONG, offsetof(FastIn, taken), READONLY, "datagrams taken"},
    {"unprotect_errors", T_ULONGLONG, offsetof(FastIn, unprotect_errors), READONLY,
     "SRTP unprotect failures"},
    {"malformed", T_ULONGLONG, offsetof(FastIn, malformed), READONLY, "unparseable RTP"},
    {"routed", T_ULONGLONG, offsetof(FastIn, routed), READONLY,
     "packets the tables did not settle (given to route)"},
    {NULL}};

static PyGetSetDef FastIn_getset[] = {
    {"audio_level_id", (getter)FastIn_get_audio_level_id, (setter)FastIn_set_audio_level_id,
     "the negotiated audio level extension id (0: none)", NULL},
    {"keyed", (getter)FastIn_get_keyed, NULL, "whether set_keys was called", NULL},
    {NULL}};

static PyTypeObject FastInType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parley.relay._accel.FastIn",
    .tp_basicsize = sizeof(FastIn),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "FastIn(route, failed): a Reader's fast receive path of one ICE connection.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastIn_init,
    .tp_dealloc = (destructor)FastIn_dealloc,
    .tp_traverse = (traverseproc)FastIn_traverse,
    .tp_clear = (inquiry)FastIn_clear,
    .tp_methods = FastIn_methods,
    .tp_members = FastIn_members,
    .tp_getset = FastIn_getset,
};

/* --- Reader --------------------------------------------------------------------------------
 *
 * The socket callback of a relay media socket (loop.add_reader(fd, reader)): one recvmmsg of up
 * to READ_BATCH datagrams per wakeup, each handed to protocol.datagram_received(data, addr) as
 * uvloop would; what their fan-outs send goes out batched at the end (out_flush). The receive
 * buffers are shared by every Reader and hold the batch while its handlers run, so a Reader called
 * from inside another's batch (never by the event loop) reads nothing: the socket stays readable.
 */

#define READ_BATCH 32
#define READ_SMALL 2048           /* media datagrams: contiguous slots, few cache lines */
#define READ_LARGE (65536 - READ_SMALL) /* the rest of a larger one (never touched otherwise) */

static unsigned char read_small[READ_BATCH][READ_SMALL];
static unsigned char read_large[READ_BATCH][READ_LARGE];

typedef struct {
    PyObject_HEAD
    int fd;
    int closed;
    PyObject *protocol;
    struct sockaddr_storage last;
    socklen_t last_len;
    PyObject *last_addr; /* the address tuple of the last sender (almost always the same) */
    PyObject *fast;      /* FastIn or NULL: SRTP packets taken in C */
    unsigned long long reads, datagrams, taken;
} Reader;

static int Reader_traverse(Reader *self, visitproc visit, void *arg) {
    Py_VISIT(self->protocol);
    Py_VISIT(self->last_addr);
    Py_VISIT(self->fast);
    return 0;
}

static int Reader_clear(Reader *self) {
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->last_addr);
    Py_CLEAR(self->fast);
    return 0;
}

static void Reader_dealloc(Reader *self) {
    PyObject_GC_UnTrack(self);
    Reader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "protocol", NULL};
    int fd;
    PyObject *protocol;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO", kwlist, &fd, &protocol)) {
        return -1;
    }
    Reader_clear(self);
    self->fd = fd;
    self->closed = 0;
    self->last_len = 0;
    Py_INCREF(protocol);
    self->protocol = protocol;
    return 0;
}

static PyObject *Reader_address(Reader *self, const struct sockaddr_storage *name,
                                socklen_t len) {
    if (self->last_addr != NULL && len == self->last_len && memcmp(name, &self->last, len) == 0) {
        Py_INCREF(self->last_addr);
        return self->last_addr;
    }
    char host[INET6_ADDRSTRLEN];
    PyObject *addr;
    if (name->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)name;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
        addr = Py_BuildValue("(si)", host, (int)ntohs(v4->sin_port));
    } else if (name->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)name;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
        addr = Py_BuildValue("(siII)", host, (int)ntohs(v6->sin6_port),
                             (unsigned int)ntohl(v6->sin6_flowinfo),
                             (unsigned int)v6->sin6_scope_id);
    } else {
        Py_RETURN_NONE;
    }
    if (addr != NULL) {
        memcpy(&self->last, name, len);
        self->last_len = len;
        Py_INCREF(addr);
        Py_XSETREF(self->last_addr, addr);
    }
    return addr;
}

static PyObject *Reader_call(Reader *self, PyObject *args, PyObject *kwds) {
    if (self->closed || self->protocol == NULL || defer_depth > 0) {
        Py_RETURN_NONE;
    }
    struct mmsghdr msgs[READ_BATCH];
    struct iovec iov[READ_BATCH][2];
    struct sockaddr_storage names[READ_BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < READ_BATCH; i++) {
        iov[i][0].iov_base = read_small[i];
        iov[i][0].iov_len = READ_SMALL;
        iov[i][1].iov_base = read_large[i];
        iov[i][1].iov_len = READ_LARGE;
        msgs[i].msg_hdr.msg_name = &names[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        msgs[i].msg_hdr.msg_iov = iov[i];
        msgs[i].msg_hdr.msg_iovlen = 2;
    }
    python_ran(); /* the event loop ran Python since the last batch */
    int n = recvmmsg(self->fd, msgs, READ_BATCH, MSG_DONTWAIT, NULL);
    counters.reads++;
    self->reads++;
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            Py_RETURN_NONE;
        }
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", errno, strerror(errno));
        if (exc == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
            Py_RETURN_NONE;
        }
        PyObject *result = PyObject_CallMethod(self->protocol, "error_received", "O", exc);
        Py_DECREF(exc);
        if (result == NULL) {
            PyErr_WriteUnraisable(self->protocol);
        }
        Py_XDECREF(result);
        Py_RETURN_NONE;
    }
    /* in arrival order: SRTP packets through the fast path straight from the buffer, the rest
     * as bytes to the protocol */
    PyObject *handler = NULL;
    defer_depth++;
    int stop = 0; /* a KeyboardInterrupt or SystemExit goes on to the event loop */
    for (int i = 0; i < n && !stop && !self->closed; i++) {
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
            counters.truncated++;
            continue;
        }
        counters.datagrams_in++;
        self->datagrams++;
        unsigned int len = msgs[i].msg_len;
        FastIn *fast = (FastIn *)self->fast;
        if (fast != NULL && len <= READ_SMALL && FastIn_wants(fast, read_small[i], len)) {
            Py_INCREF(fast);
            self->taken++;
            if (FastIn_take(fast, read_small[i], len) < 0) {
                if (PyErr_ExceptionMatches(PyExc_Exception)) {
                    PyErr_Clear();
                    PyObject *addr = Reader_address(self, &names[i], msgs[i].msg_hdr.msg_namelen);
                    PyObject *result =
                        addr != NULL ? PyObject_CallOneArg(fast->failed, addr) : NULL;
                    python_ran();
                    if (result == NULL) {
                        PyErr_WriteUnraisable(fast->failed);
                    }
                    Py_XDECREF(result);
                    Py_XDECREF(addr);
                } else {
                    stop = 1;
                }
            }
            Py_DECREF(fast);
            continue;
        }
        PyObject *data;
        if (len <= READ_SMALL) {
            data = PyBytes_FromStringAndSize((char *)read_small[i], len);
        } else {
            data = PyBytes_FromStringAndSize(NULL, len);
            if (data != NULL) {
                memcpy(PyBytes_AS_STRING(data), read_small[i], READ_SMALL);
                memcpy(PyBytes_AS_STRING(data) + READ_SMALL, read_large[i], len - READ_SMALL);
            }
        }
        PyObject *addr =
            data ? Reader_address(self, &names[i], msgs[i].msg_hdr.msg_namelen) : NULL;
        if (addr == NULL) {
            Py_XDECREF(data);
            PyErr_WriteUnraisable((PyObject *)self);
            continue;
        }
        if (handler == NULL) {
            handler = PyObject_GetAttr(self->protocol, s_datagram_received);
        }
        if (handler == NULL) {
            PyErr_WriteUnraisable(self->protocol);
        } else {
            PyObject *item[2] = {data, addr};
            PyObject *result = PyObject_Vectorcall(handler, item, 2, NULL);
            python_ran();
            if (result == NULL) {
                if (PyErr_ExceptionMatches(PyExc_Exception)) {
                    PyErr_WriteUnraisable(handler);
                } else {
                    stop = 1;
                }
            }
            Py_XDECREF(result);
        }
        Py_DECREF(data);
        Py_DECREF(addr);
    }
    defer_depth--;
    out_flush();
    Py_XDECREF(handler);
    if (stop) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Reader_close(Reader *self, PyObject *unused) {
    self->closed = 1;
    Reader_clear(self);
    Py_RETURN_NONE;
}

static PyMethodDef Reader_methods[] = {
    {"close", (PyCFunction)Reader_close, METH_NOARGS, "Deliver nothing more."},
    {NULL}};

static PyMemberDef Reader_members[] = {
    {"reads", T_ULONGLONG, offsetof(Reader, reads), READONLY, "recvmmsg calls"},
    {"datagrams", T_ULONGLONG, offsetof(Reader, datagrams), READONLY, "datagrams read"},
    {"taken", T_ULONGLONG, offsetof(Reader, taken), READONLY,
     "datagrams its FastIn took (the others went to the protocol)"},
    {NULL}};

static PyObject *Reader_get_fast(Reader *self, void *closure) {
    return Py_NewRef(self->fast != NULL ? self->fast : Py_None);
}

static int Reader_set_fast(Reader *self, PyObject *value, void *closure) {
    if (value != NULL && value != Py_None && !Py_IS_TYPE(value, &FastInType)) {
        PyErr_SetString(PyExc_TypeError, "Reader.fast must be a FastIn or None");
        return -1;
    }
    Py_XSETREF(self->fast, value != NULL && value != Py_None ? Py_NewRef(value) : NULL);
    return 0;
}

static PyGetSetDef Reader_getset[] = {
    {"fast", (getter)Reader_get_fast, (setter)Reader_set_fast,
     "the FastIn that takes this socket's SRTP packets, or None", NULL},
    {NULL}};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parley.relay._accel.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Reader(fd, protocol): reader() drains fd with recvmmsg into "
              "protocol.datagram_received(data, addr).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_call = (ternaryfunc)Reader_call,
    .tp_methods = Reader_methods,
    .tp_members = Reader_members,
    .tp_getset = Reader_getset,
};

/* relay/udp.py's BatchedDatagramTransport is closing exactly when its Reader (``_reader``) is
 * closed (its close() does both, with no packet path in between): a Tx on such a transport
 * reads that flag instead of calling is_closing() through Python. NULL (no error set) for any
 * other transport. */
static PyObject *transport_reader(PyObject *transport, const int **closed) {
    *closed = NULL;
    PyObject *reader = PyObject_GetAttrString(transport, "_reader");
    if (reader == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    if (!Py_IS_TYPE(reader, &ReaderType)) {
        Py_DECREF(reader);
        return NULL;
    }
    *closed = &((Reader *)reader)->closed;
    return reader;
}

/* --- Route -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    uint32_t ssrc;
    int payload_type;
    unsigned char mid_element[18];
    int mid_len;
    int abs_send_time_id, audio_level_id;
    unsigned long seq_offset, ts_offset;
    PyObject *tx; /* Tx or None */
    PyObject **ring;
    long *ring_ast; /* the abs-send-time each kept packet went out with (a resend is the same) */
    Py_ssize_t mask;
    PyObject *last;
    unsigned long long packets, octets;
} Route;

static int Route_traverse(Route *self, visitproc visit, void *arg) {
    Py_VISIT(self->tx);
    Py_VISIT(self->last);
    if (self->ring != NULL) {
        for (Py_ssize_t i = 0; i <= self->mask; i++) {
            Py_VISIT(self->ring[i]);
        }
    }
    return 0;
}

static void Route_clear_ring(Route *self) {
    if (self->ring != NULL) {
        for (Py_ssize_t i = 0; i <= self->mask; i++) {
            Py_CLEAR(self->ring[i]);
        }
    }
}

static int Route_clear(Route *self) {
    Py_CLEAR(self->tx);
    Py_CLEAR(self->last);
    Route_clear_ring(self);
    return 0;
}

static void Route_dealloc(Route *self) {
    PyObject_GC_UnTrack(self);
    Route_clear(self);
    PyMem_Free(self->ring);
    PyMem_Free(self->ring_ast);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Route_init(Route *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ssrc",           "payload_type", "mid_element", "abs_send_time_id",
                             "audio_level_id", "history_size", NULL};
    unsigned long ssrc;
    int pt, ast_id, level_id;
    Py_ssize_t history;
    Py_buffer mid;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "kiy*iin", kwlist, &ssrc, &pt, &mid, &ast_id,
                                     &level_id, &history)) {
        return -1;
    }
    if (mid.len > 17 || history < 1 || (history & (history - 1)) != 0 || pt < 0 || pt > 127 ||
        ast_id < 0 || ast_id > 14 || level_id < 0 || level_id > 14) {
        PyBuffer_Release(&mid);
        PyErr_SetString(PyExc_ValueError, "bad route parameters");
        return -1;
    }
    memcpy(self->mid_element, mid.buf, mid.len);
    self->mid_len = (int)mid.len;
    PyBuffer_Release(&mid);
    self->ssrc = (uint32_t)ssrc;
    self->payload_type = pt;
    self->abs_send_time_id = ast_id;
    self->audio_level_id = level_id;
    Route_clear(self);
    PyMem_Free(self->ring);
    PyMem_Free(self->ring_ast);
    self->ring = PyMem_Calloc((size_t)history, sizeof(PyObject *));
    self->ring_ast = PyMem_Calloc((size_t)history, sizeof(long));
    if (self->ring == NULL || self->ring_ast == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->mask = history - 1;
    Py_INCREF(Py_None);
    self->tx = Py_None;
    return 0;
}

static int get_long(PyObject *obj, PyObject *name, Py_ssize_t offset, unsigned long *out) {
    PyObject *value = get_slot(obj, name, offset);
    if (value == NULL) {
        return -1;
    }
    *out = PyLong_AsUnsignedLongMask(value);
    Py_DECREF(value);
    return PyErr_Occurred() ? -1 : 0;
}

/* the fields of a packet the rewrite reads, fetched once per fan-out */
static int Fields_read(Fields *f, PyObject *packet) {
    unsigned long marker, padding;
    memset(f, 0, sizeof(*f));
    if (get_long(packet, s_marker, o_marker, &marker) < 0 ||
        get_long(packet, s_sequence_number, o_sequence_number, &f->seq) < 0 ||
        get_long(packet, s_timestamp, o_timestamp, &f->ts) < 0 ||
        get_long(packet, s_padding_size, o_padding_size, &padding) < 0) {
        return -1;
    }
    f->marker = marker ? 1 : 0;
    f->padding = (int)(padding & 0xFF);
    f->payload = get_slot(packet, s_payload, o_payload);
    if (f->payload == NULL) {
        return -1;
    }
    if (!PyBytes_Check(f->payload)) {
        PyErr_SetString(PyExc_TypeError, "packet.payload must be bytes");
        goto fail;
    }
    f->csrc = get_slot(packet, s_csrc, o_csrc);
    if (f->csrc == NULL) {
        goto fail;
    }
    f->cc = PySequence_Size(f->csrc);
    if (f->cc < 0) {
        goto fail;
    }
    if (f->cc > 15) {
        PyErr_SetString(PyExc_ValueError, "more than 15 CSRCs");
        goto fail;
    }
    PyObject *level = get_slot(packet, s_audio_level, o_audio_level);
    if (level == NULL) {
        goto fail;
    }
    if (level != Py_None) {
        PyObject *voice = PySequence_GetItem(level, 0);
        PyObject *value = voice ? PySequence_GetItem(level, 1) : NULL;
        if (value == NULL) {
            Py_XDECREF(voice);
            Py_DECREF(level);
            goto fail;
        }
        f->has_level = 1;
        f->level_voice = PyObject_IsTrue(voice) ? 1 : 0;
        f->level = (int)(PyLong_AsLong(value) & 0x7F);
        Py_DECREF(voice);
        Py_DECREF(value);
        if (PyErr_Occurred()) {
            Py_DECREF(level);
            goto fail;
        }
    }
    Py_DECREF(level);
    if (12 + 4 * f->cc + 4 + 24 + PyBytes_GET_SIZE(f->payload) + f->padding > MAX_PACKET) {
        PyErr_SetString(PyExc_ValueError, "RTP packet too large");
        goto fail;
    }
    return 0;
fail:
    Fields_release(f);
    return -1;
}

static inline void put16(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void put32(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* write the rewritten packet into buf; returns its length (relay.rtp.RtpRewriter.rewrite) */
static int Route_write(Route *self, const Fields *f, long abs_send_time, unsigned char *buf) {
    unsigned char ext[32];
    int ext_len = 0;
    if (self->mid_len) {
        memcpy(ext, self->mid_element, self->mid_len);
        ext_len = self->mid_len;
    }
    if (abs_send_time >= 0 && self->abs_send_time_id) {
        ext[ext_len++] = (unsigned char)((self->abs_send_time_id << 4) | 2);
        ext[ext_len++] = (unsigned char)(abs_send_time >> 16);
        ext[ext_len++] = (unsigned char)(abs_send_time >> 8);
        ext[ext_len++] = (unsigned char)abs_send_time;
    }
    if (f->has_level && self->audio_level_id) {
        ext[ext_len++] = (unsigned char)(self->audio_level_id << 4);
        ext[ext_len++] = (unsigned char)((f->level_voice ? 0x80 : 0) | f->level);
    }
    unsigned char first = 0x80 | (unsigned char)f->cc;
    if (f->padding) {
        first |= 0x20;
    }
    if (ext_len) {
        first |= 0x10;
    }
    buf[0] = first;
    buf[1] = (unsigned char)((f->marker << 7) | self->payload_type);
    put16(buf + 2, (f->seq + self->seq_offset) & 0xFFFF);
    put32(buf + 4, (f->ts + self->ts_offset) & 0xFFFFFFFFUL);
    put32(buf + 8, self->ssrc);
    int pos = 12;
    for (Py_ssize_t i = 0; i < f->cc; i++) {
        PyObject *item = PySequence_GetItem(f->csrc, i);
        unsigned long value = item ? PyLong_AsUnsignedLongMask(item) : 0;
        Py_XDECREF(item);
        put32(buf + pos, value);
        pos += 4;
    }
    if (ext_len) {
        int pad = (4 - ext_len % 4) % 4;
        memset(ext + ext_len, 0, pad);
        ext_len += pad;
        buf[pos] = 0xBE;
        buf[pos + 1] = 0xDE;
        put16(buf + pos + 2, (unsigned long)(ext_len / 4));
        memcpy(buf + pos + 4, ext, ext_len);
        pos += 4 + ext_len;
    }
    Py_ssize_t plen = PyBytes_GET_SIZE(f->payload);
    memcpy(buf + pos, PyBytes_AS_STRING(f->payload), plen);
    pos += (int)plen;
    if (f->padding) {
        memset(buf + pos, 0, f->padding - 1);
        buf[pos + f->padding - 1] = (unsigned char)f->padding;
        pos += f->padding;
    }
    return pos;
}

static void Route_remember(Route *self, PyObject *packet, const Fields *f, long ast) {
    Py_ssize_t slot = (Py_ssize_t)((f->seq + self->seq_offset) & 0xFFFF) & self->mask;
    Py_INCREF(packet);
    Py_XSETREF(self->ring[slot], packet);
    self->ring_ast[slot] = ast;
    Py_INCREF(packet);
    Py_XSETREF(self->last, packet);
    self->packets++;
    self->octets += (unsigned long long)PyBytes_GET_SIZE(f->payload);
}

static long abs_send_time_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    /* 6.18 fixed point seconds (NTP epoch; only differences matter to receivers) */
    unsigned long long secs = (unsigned long long)now.tv_sec + 2208988800ULL;
    unsigned long long frac = ((unsigned long long)now.tv_nsec << 18) / 1000000000ULL;
    return (long)(((secs << 18) | frac) & 0xFFFFFF);
}

static PyObject *Route_rewrite(Route *self, PyObject *args) {
    PyObject *packet;
    long abs_send_time;
    if (!PyArg_ParseTuple(args, "Ol", &packet, &abs_send_time)) {
        return NULL;
    }
    Fields f;
    if (Fields_read(&f, packet) < 0) {
        return NULL;
    }
    unsigned char buf[BUF_SIZE];
    int len = Route_write(self, &f, abs_send_time, buf);
    Fields_release(&f);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyBytes_FromStringAndSize((char *)buf, len);
}

static PyObject *Route_remember_py(Route *self, PyObject *args) {
    PyObject *packet;
    long ast;
    if (!PyArg_ParseTuple(args, "Ol", &packet, &ast)) {
        return NULL;
    }
    Fields f;
    if (Fields_read(&f, packet) < 0) {
        return NULL;
    }
    Route_remember(self, packet, &f, ast);
    Fields_release(&f);
    Py_RETURN_NONE;
}

static PyObject *Route_history(Route *self, PyObject *arg) {
    unsigned long seq = PyLong_AsUnsignedLongMask(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    seq &= 0xFFFF;
    if (self->ring == NULL) {
        Py_RETURN_NONE;
    }
    Py_ssize_t slot = (Py_ssize_t)seq & self->mask;
    PyObject *packet = self->ring[slot];
    if (packet == NULL) {
        Py_RETURN_NONE;
    }
    unsigned long in_seq;
    if (get_long(packet, s_sequence_number, o_sequence_number, &in_seq) < 0) {
        return NULL;
    }
    if (((in_seq + self->seq_offset) & 0xFFFF) != seq) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(Ol)", packet, self->ring_ast[slot]);
}

static PyObject *Route_clear_py(Route *self, PyObject *unused) {
    Route_clear_ring(self);
    Py_RETURN_NONE;
}

static PyMethodDef Route_methods[] = {
    {"rewrite", (PyCFunction)Route_rewrite, METH_VARARGS,
     "rewrite(packet, abs_send_time) -> bytes (abs_send_time < 0: none)"},
    {"remember", (PyCFunction)Route_remember_py, METH_VARARGS,
     "remember(packet, abs_send_time): count a forwarded packet and keep it for NACKs."},
    {"history", (PyCFunction)Route_history, METH_O,
     "(packet, abs_send_time) forwarded with outgoing sequence number seq, or None."},
    {"clear", (PyCFunction)Route_clear_py, METH_NOARGS, "Forget the NACK history."},
    {NULL}};

static PyMemberDef Route_members[] = {
    {"ssrc", T_UINT, offsetof(Route, ssrc), READONLY, "outgoing SSRC"},
    {"payload_type", T_INT, offsetof(Route, payload_type), READONLY, "outgoing payload type"},
    {"seq_offset", T_ULONG, offsetof(Route, seq_offset), 0, "added to sequence numbers"},
    {"ts_offset", T_ULONG, offsetof(Route, ts_offset), 0, "added to timestamps"},
    {"tx", T_OBJECT_EX, offsetof(Route, tx), 0, "the Tx to send on, or None"},
    {"last", T_OBJECT, offsetof(Route, last), READONLY, "the last packet forwarded"},
    {"packets", T_ULONGLONG, offsetof(Route, packets), READONLY, "packets forwarded"},
    {"octets", T_ULONGLONG, offsetof(Route, octets), READONLY, "payload octets forwarded"},
    {NULL}};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parley.relay._accel.Route",
    .tp_basicsize = sizeof(Route),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Route(ssrc, payload_type, mid_element, abs_send_time_id, audio_level_id, "
              "history_size)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Route_init,
    .tp_dealloc = (destructor)Route_dealloc,
    .tp_traverse = (traverseproc)Route_traverse,
    .tp_clear = (inquiry)Route_clear,
    .tp_methods = Route_methods,
    .tp_members = Route_members,
};

/* --- fan_out ------------------------------------------------------------------------------ */

/* rewrite, remember, protect and send ``packet`` (its fields in ``f``) to every consumer whose
 * route can send; the others are appended to ``*slow`` (a new list when it is NULL) */
static int fan_out_fields(PyObject *packet, const Fields *f, PyObject *consumers,
                          long abs_send_time, PyObject **slow) {
    Py_ssize_t count = PyTuple_GET_SIZE(consumers);
    unsigned char buf[BUF_SIZE];
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *consumer = PyTuple_GET_ITEM(consumers, i);
        PyObject *obj = PyObject_GetAttr(consumer, s_route);
        if (obj == NULL) {
            return -1;
        }
        int fast = 0;
        if (Py_IS_TYPE(obj, &RouteType)) {
            Route *route = (Route *)obj;
            if (Py_IS_TYPE(route->tx, &TxType)) {
                int valid = Tx_valid_in_batch((Tx *)route->tx);
                if (valid < 0) {
                    Py_DECREF(obj);
                    return -1;
                }
                if (valid) {
                    int len = Route_write(route, f, abs_send_time, buf);
                    if (PyErr_Occurred()) {
                        Py_DECREF(obj);
                        return -1;
                    }
                    Route_remember(route, packet, f, abs_send_time);
                    Tx_protect_send((Tx *)route->tx, buf, len);
                    fast = 1;
                }
            }
        }
        Py_DECREF(obj);
        if (!fast) {
            if (*slow == NULL && (*slow = PyList_New(0)) == NULL) {
                return -1;
            }
            if (PyList_Append(*slow, consumer) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

static PyObject *fan_out(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fan_out(packet, consumers, abs_send_time)");
        return NULL;
    }
    python_ran(); /* called from Python: what it did since is unseen */
    PyObject *packet = args[0], *consumers = args[1];
    long abs_send_time = PyLong_AsLong(args[2]);
    if (abs_send_time == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyTuple_Check(consumers)) {
        PyErr_SetString(PyExc_TypeError, "consumers must be a tuple");
        return NULL;
    }
    if (PyTuple_GET_SIZE(consumers) == 0) {
        Py_RETURN_NONE;
    }
    Fields f;
    if (Fields_read(&f, packet) < 0) {
        return NULL;
    }
    PyObject *slow = NULL;
    int rc = fan_out_fields(packet, &f, consumers, abs_send_time, &slow);
    Fields_release(&f);
    if (rc < 0) {
        Py_XDECREF(slow);
        return NULL;
    }
    if (slow == NULL) {
        Py_RETURN_NONE;
    }
    return slow;
}

/* --- ReceiveStatistics: RFC 3550 A.1 / A.3 / A.8 as aiortc's StreamStatistics ------------- */

#define PACKETS_LOST_MIN (-(1LL << 23))
#define PACKETS_LOST_MAX ((1LL << 23) - 1)
#define RTP_HISTORY_SIZE 128

static inline int seq_newer(long a, long b) {
    long d = (a - b) & 0xFFFF;
    return d > 0 && d < 0x8000;
}

typedef struct {
    PyObject_HEAD
    long long base_seq, max_seq; /* -1: no packet yet */
    long long cycles, packets_received;
    long long clockrate;
    long long jitter_q4, last_arrival, last_timestamp;
    int has_timestamp;
    long long expected_prior, received_prior;
} ReceiveStatistics;

static int ReceiveStatistics_init(ReceiveStatistics *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"clockrate", NULL};
    long long clockrate;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L", kwlist, &clockrate)) {
        return -1;
    }
    if (clockrate < 0 || clockrate > 10000000) {
        PyErr_SetString(PyExc_ValueError, "bad clock rate");
        return -1;
    }
    self->clockrate = clockrate;
    self->base_seq = self->max_seq = -1;
    self->cycles = self->packets_received = 0;
    self->jitter_q4 = self->last_arrival = self->last_timestamp = 0;
    self->has_timestamp = 0;
    self->expected_prior = self->received_prior = 0;
    return 0;
}

static void ReceiveStatistics_update(ReceiveStatistics *self, long seq, long long timestamp,
                                     double now) {
    long long max_seq = self->max_seq;
    self->packets_received++;
    if (max_seq < 0) {
        self->base_seq = seq;
    } else if (!seq_newer(seq, (long)max_seq)) {
        return; /* a duplicate, a reordered or a very old packet */
    }
    long long arrival = (long long)(now * (double)self->clockrate);
    if (max_seq >= 0 && seq < max_seq) {
        self->cycles += 1 << 16;
    }
    self->max_seq = seq;
    if ((!self->has_timestamp || timestamp != self->last_timestamp) &&
        self->packets_received > 1) {
        long long diff = (arrival - self->last_arrival) - (timestamp - self->last_timestamp);
        if (diff < 0) {
            diff = -diff;
        }
        self->jitter_q4 += diff - ((self->jitter_q4 + 8) >> 4);
    }
    self->last_arrival = arrival;
    self->last_timestamp = timestamp;
    self->has_timestamp = 1;
}

static PyObject *ReceiveStatistics_add(ReceiveStatistics *self, PyObject *const *args,
                                       Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "add(seq, timestamp, now)");
        return NULL;
    }
    long seq = (long)(PyLong_AsUnsignedLongMask(args[0]) & 0xFFFF);
    long long timestamp = (long long)(PyLong_AsUnsignedLongMask(args[1]) & 0xFFFFFFFFUL);
    double now = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    ReceiveStatistics_update(self, seq, timestamp, now);
    Py_RETURN_NONE;
}

static long long ReceiveStatistics_expected(ReceiveStatistics *self) {
    return self->cycles + self->max_seq - self->base_seq + 1;
}

static PyObject *ReceiveStatistics_get_fraction_lost(ReceiveStatistics *self, void *closure) {
    if (self->max_seq < 0) {
        PyErr_SetString(PyExc_TypeError, "no packet received yet");
        return NULL;
    }
    long long expected = ReceiveStatistics_expected(self);
    long long expected_interval = expected - self->expected_prior;
    self->expected_prior = expected;
    long long received_interval = self->packets_received - self->received_prior;
    self->received_prior = self->packets_received;
    long long lost_interval = expected_interval - received_interval;
    if (expected_interval == 0 || lost_interval <= 0) {
        return PyLong_FromLong(0);
    }
    /* floor division as Python's // (expected_interval may be negative after a restart) */
    long long num = lost_interval << 8, q = num / expected_interval;
    if ((num % expected_interval != 0) && ((num < 0) != (expected_interval < 0))) {
        q--;
    }
    return PyLong_FromLongLong(q);
}

static PyObject *ReceiveStatistics_get_jitter(ReceiveStatistics *self, void *closure) {
    return PyLong_FromLongLong(self->jitter_q4 >> 4);
}

static PyObject *ReceiveStatistics_get_expected(ReceiveStatistics *self, void *closure) {
    if (self->max_seq < 0) {
        PyErr_SetString(PyExc_TypeError, "no packet received yet");
        return NULL;
    }
    return PyLong_FromLongLong(ReceiveStatistics_expected(self));
}

static PyObject *ReceiveStatistics_get_lost(ReceiveStatistics *self, void *closure) {
    if (self->max_seq < 0) {
        PyErr_SetString(PyExc_TypeError, "no packet received yet");
        return NULL;
    }
    long long lost = ReceiveStatistics_expected(self) - self->packets_received;
    if (lost < PACKETS_LOST_MIN) {
        lost = PACKETS_LOST_MIN;
    } else if (lost > PACKETS_LOST_MAX) {
        lost = PACKETS_LOST_MAX;
    }
    return PyLong_FromLongLong(lost);
}

static PyObject *optional_ll(long long value) {
    if (value < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLongLong(value);
}

static PyObject *ReceiveStatistics_get_base_seq(ReceiveStatistics *self, void *closure) {
    return optional_ll(self->base_seq);
}

static PyObject *ReceiveStatistics_get_max_seq(ReceiveStatistics *self, void *closure) {
    return optional_ll(self->max_seq);
}

static PyObject *ReceiveStatistics_get_last_timestamp(ReceiveStatistics *self, void *closure) {
    return self->has_timestamp ? PyLong_FromLongLong(self->last_timestamp) : optional_ll(-1);
}

static PyMethodDef ReceiveStatistics_methods[] = {
    {"add", (PyCFunction)(void (*)(void))ReceiveStatistics_add, METH_FASTCALL,
     "add(seq, timestamp, now): one received packet, arriving at ``now`` (time.time())"},
    {NULL}};

static PyMemberDef ReceiveStatistics_members[] = {
    {"cycles", T_LONGLONG, offsetof(ReceiveStatistics, cycles), READONLY,
     "sequence number wraps, times 65536"},
    {"packets_received", T_LONGLONG, offsetof(ReceiveStatistics, packets_received), READONLY,
     "packets received (duplicates included)"},
    {"_clockrate", T_LONGLONG, offsetof(ReceiveStatistics, clockrate), READONLY, "Hz"},
    {"_jitter_q4", T_LONGLONG, offsetof(ReceiveStatistics, jitter_q4), READONLY,
     "jitter in timestamp units, Q4"},
    {"_last_arrival", T_LONGLONG, offsetof(ReceiveStatistics, last_arrival), READONLY,
     "arrival of the highest packet, in timestamp units"},
    {"_expected_prior", T_LONGLONG, offsetof(ReceiveStatistics, expected_prior), READONLY,
     "packets expected at the previous fraction_lost"},
    {"_received_prior", T_LONGLONG, offsetof(ReceiveStatistics, received_prior), READONLY,
     "packets received at the previous fraction_lost"},
    {NULL}};

static PyGetSetDef ReceiveStatistics_getset[] = {
    {"base_seq", (getter)ReceiveStatistics_get_base_seq, NULL, "first sequence number", NULL},
    {"max_seq", (getter)ReceiveStatistics_get_max_seq, NULL, "highest sequence number", NULL},
    {"_last_timestamp", (getter)ReceiveStatistics_get_last_timestamp, NULL,
     "RTP timestamp of the highest packet", NULL},
    {"fraction_lost", (getter)ReceiveStatistics_get_fraction_lost, NULL,
     "loss since the previous read, in 1/256 (reading it starts a new interval)", NULL},
    {"jitter", (getter)ReceiveStatistics_get_jitter, NULL, "interarrival jitter", NULL},
    {"packets_expected", (getter)ReceiveStatistics_get_expected, NULL,
     "extended highest sequence number - first + 1", NULL},
    {"packets_lost", (getter)ReceiveStatistics_get_lost, NULL,
     "cumulative loss, clamped to 24 bits signed", NULL},
    {NULL}};

static PyTypeObject ReceiveStatisticsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parley.relay._accel.ReceiveStatistics",
    .tp_basicsize = sizeof(ReceiveStatistics),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ReceiveStatistics(clockrate): one SSRC's receive statistics "
              "(relay.rtpstats.PyReceiveStatistics)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ReceiveStatistics_init,
    .tp_methods = ReceiveStatistics_methods,
    .tp_members = ReceiveStatistics_members,
    .tp_getset = ReceiveStatistics_getset,
};

/* --- MissingPackets: the NACK generator (aiortc's NackGenerator) -------------------------- */

typedef struct {
    PyObject_HEAD
    long max_seq;        /* -1: no packet yet */
    uint64_t window[2];  /* bit i: max_seq - 1 - i is missing (i < 128) */
} MissingPackets;

static int MissingPackets_init(MissingPackets *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) {
        return -1;
    }
    self->max_seq = -1;
    self->window[0] = self->window[1] = 0;
    return 0;
}

static int MissingPackets_update(MissingPackets *self, long seq) {
    if (self->max_seq < 0) {
        self->max_seq = seq;
        return 0;
    }
    long ahead = (seq - self->max_seq) & 0xFFFF;
    if (ahead > 0 && ahead < 0x8000) {
        long gap = ahead - 1;
        uint64_t lo = self->window[0], hi = self->window[1];
        if (ahead >= 128) {
            lo = hi = 0;
        } else if (ahead >= 64) {
            hi = lo << (ahead - 64);
            lo = 0;
        } else {
            hi = (hi << ahead) | (lo >> (64 - ahead));
            lo <<= ahead;
        }
        if (gap >= 128) {
            lo = hi = UINT64_MAX;
        } else if (gap >= 64) {
            lo = UINT64_MAX;
            hi |= gap == 64 ? 0 : (UINT64_MAX >> (128 - gap));
        } else if (gap > 0) {
            lo |= UINT64_MAX >> (64 - gap);
        }
        self->window[0] = lo;
        self->window[1] = hi;
        self->max_seq = seq;
        return gap > 0;
    }
    long behind = (self->max_seq - 1 - seq) & 0xFFFF;
    if (behind < RTP_HISTORY_SIZE) {
        self->window[behind >> 6] &= ~((uint64_t)1 << (behind & 63));
    }
    return 0;
}

static PyObject *MissingPackets_add(MissingPackets *self, PyObject *arg) {
    long seq = (long)(PyLong_AsUnsignedLongMask(arg) & 0xFFFF);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyBool_FromLong(MissingPackets_update(self, seq));
}

static PyObject *MissingPackets_get_missing(MissingPackets *self, void *closure) {
    PyObject *out = PySet_New(NULL);
    if (out == NULL || self->max_seq < 0) {
        return out;
    }
    for (int i = 0; i < RTP_HISTORY_SIZE; i++) {
        if (self->window[i >> 6] >> (i & 63) & 1) {
            PyObject *seq = PyLong_FromLong((self->max_seq - 1 - i) & 0xFFFF);
            if (seq == NULL || PySet_Add(out, seq) < 0) {
                Py_XDECREF(seq);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(seq);
        }
    }
    return out;
}

static PyObject *MissingPackets_get_max_seq(MissingPackets *self, void *closure) {
    return optional_ll(self->max_seq);
}

static Py_ssize_t MissingPackets_len(MissingPackets *self) {
    return __builtin_popcountll(self->window[0]) + __builtin_popcountll(self->window[1]);
}

static PyMethodDef MissingPackets_methods[] = {
    {"add", (PyCFunction)MissingPackets_add, METH_O,
     "add(seq) -> True when it showed packets missing (a gap before it)"},
    {NULL}};

static PyGetSetDef MissingPackets_getset[] = {
    {"missing", (getter)MissingPackets_get_missing, NULL, "the missing sequence numbers (a new set)",
     NULL},
    {"max_seq", (getter)MissingPackets_get_max_seq, NULL, "highest sequence number", NULL},
    {NULL}};

static PySequenceMethods MissingPackets_as_sequence = {.sq_length = (lenfunc)MissingPackets_len};

static PyTypeObject MissingPacketsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parley.relay._accel.MissingPackets",
    .tp_basicsize = sizeof(MissingPackets),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MissingPackets(): the NACK generator (relay.rtpstats.PyMissingPackets)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MissingPackets_init,
    .tp_methods = MissingPackets_methods,
    .tp_getset = MissingPackets_getset,
    .tp_as_sequence = &MissingPackets_as_sequence,
};

/* --- Inbound: one producer's per-packet bookkeeping and fan-out in one call --------------- */

#define IN_PYTHON 1   /* not the common case: nothing was done, the Python path takes it */
#define IN_NACK 2     /* packets went missing: send a NACK */
#define IN_QUALITY 4  /* relay.quality needs this packet (a key frame's start, a level) */
#define IN_SLOW 8     /* consumers left to the Python path: ``slow``, with ``abs_send_time`` */
#define IN_SINKS 32   /* recorders to write the packet to (from ``extra``) */

#define QUALITY_NONE 0
#define QUALITY_VIDEO 1 /* frame ends (marker): counted here, in ``frames`` and ``frame_ts`` */
#define QUALITY_VP8 2   /* frame ends, and key frames' first packets (their resolution) */
#define QUALITY_AUDIO 3 /* packets with an audio level */

/* The forward-latency histogram of the process (relay.quality.FORWARD_LATENCY reads it): the 1 in
 * ``latency_every`` packets each Inbound samples are counted here, in C, with no Python call.
 * The bounds are relay.quality.LatencyHistogram.BOUNDS (relay/accel.py checks they agree); a
 * sample falls into the first bucket whose bound is >= it (``bisect_left``), the last is +Inf. */
static const double latency_bounds[] = {2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3,
                                        2e-3, 5e-3, 1e-2, 2e-2, 5e-2};
#define LATENCY_BUCKETS ((int)(sizeof(latency_bounds) / sizeof(latency_bounds[0])) + 1)
static unsigned long long latency_counts[LATENCY_BUCKETS];
static double latency_total;

static inline void latency_observe(double seconds) {
    int i = 0;
    while (i < LATENCY_BUCKETS - 1 && latency_bounds[i] < seconds) {
        i++;
    }
    latency_counts[i]++;
    latency_total += seconds;
}

struct Inbound {
    PyObject_HEAD
    long payload_type;
    long long media_ssrc; /* -1: none yet */
    PyObject *stats;      /* ReceiveStatistics of media_ssrc, or None */
    PyObject *nack;       /* MissingPackets, or None */
    int quality;
    unsigned long latency_every; /* a power of two */
    unsigned long long tick, packets, octets;
    unsigned long long frames; /* frame ends (marker bits) of video, here and from Python */
    long long frame_ts;        /* the last one's RTP timestamp; -1: none yet */
    double latency;
    long abs_send_time;
    PyObject *slow;     /* list or None */
    PyObject *view;     /* has ``consumers`` (a tuple): read by __call__ */
    PyObject *fallback; /* fallback(packet, flags): what __call__ leaves to Python */
    char hold;          /* __call__ hands every packet to fallback(packet, IN_PYTHON) */
    long extra;         /* flags __call__ adds to every packet's (IN_SINKS) */
};

static int Inbound_traverse(Inbound *self, visitproc visit, void *arg) {
    Py_VISIT(self->stats);
    Py_VISIT(self->nack);
    Py_VISIT(self->slow);
    Py_VISIT(self->view);
    Py_VISIT(self->fallback);
    return 0;
}

static int Inbound_clear(Inbound *self) {
    Py_CLEAR(self->stats);
    Py_CLEAR(self->nack);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->view);
    Py_CLEAR(self->fallback);
    return 0;
}

static void Inbound_dealloc(Inbound *self) {
    PyObject_GC_UnTrack(self);
    Inbound_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Inbound_init(Inbound *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"payload_type", "quality", "latency_every", NULL};
    long pt;
    int quality;
    unsigned long every;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "lik", kwlist, &pt, &quality, &every)) {
        return -1;
    }
    if (pt < 0 || pt > 127 || quality < QUALITY_NONE || quality > QUALITY_AUDIO || every < 1 ||
        (every & (every - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "bad inbound parameters");
        return -1;
    }
    Inbound_clear(self);
    self->payload_type = pt;
    self->quality = quality;
    self->latency_every = every;
    self->media_ssrc = -1;
    self->tick = self->packets = self->octets = self->frames = 0;
    self->frame_ts = -1;
    self->latency = 0.0;
    self->abs_send_time = 0;
    Py_INCREF(Py_None);
    self->stats = Py_None;
    Py_INCREF(Py_None);
    self->nack = Py_None;
    Py_INCREF(Py_None);
    self->slow = Py_None;
    self->view = Py_NewRef(Py_None);
    self->fallback = Py_NewRef(Py_None);
    self->hold = 0;
    self->extra = 0;
    return 0;
}

static inline double timespec_seconds(const struct timespec *t) {
    return (double)t->tv_sec + (double)t->tv_nsec * 1e-9;
}

static long abs_send_time_of(const struct timespec *now) {
    /* 6.18 fixed point seconds (NTP epoch; only differences matter to receivers) */
    unsigned long long secs = (unsigned long long)now->tv_sec + 2208988800ULL;
    unsigned long long frac = ((unsigned long long)now->tv_nsec << 18) / 1000000000ULL;
    return (long)(((secs << 18) | frac) & 0xFFFFFF);
}

/* whether relay.quality.vp8_resolution finds a key frame's size in this payload (RFC 6386 9.1,
 * RFC 7741 4.2): the first packet of a key frame */
static int vp8_keyframe_start(const unsigned char *p, Py_ssize_t n) {
    if (n < 2) {
        return 0;
    }
    unsigned char first = p[0];
    if (!(first & 0x10) || (first & 0x07)) {
        return 0;
    }
    Py_ssize_t pos = 1;
    if (first & 0x80) {
        unsigned char ext = p[1];
        pos = 2;
        if (ext & 0x80) {
            if (n <= pos) {
                return 0;
            }
            pos += (p[pos] & 0x80) ? 2 : 1;
        }
        if (ext & 0x40) {
            pos++;
        }
        if (ext & 0x30) {
            pos++;
        }
    }
    if (n - pos < 10) {
        return 0;
    }
    const unsigned char *h = p + pos;
    return !(h[0] & 0x01) && h[3] == 0x9d && h[4] == 0x01 && h[5] == 0x2a;
}

static int get_small(PyObject *obj, PyObject *name, Py_ssize_t offset, long long *out) {
    PyObject *value = get_slot(obj, name, offset);
    if (value == NULL) {
        return -1;
    }
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* whether the rewrite of a packet with these fields fits a buffer (Fields_read refuses the rest) */
static inline int Fields_fit(const Fields *f) {
    return f->cc <= 15 &&
           12 + 4 * f->cc + 4 + 24 + PyBytes_GET_SIZE(f->payload) + f->padding <= MAX_PACKET;
}

/* the common case of one packet whose fields are read (and released here): its IN_* flags, or
 * -1 with an exception */
static long Inbound_take_fields(Inbound *self, PyObject *packet, Fields *f, PyObject *consumers) {
    long flags = 0;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    ReceiveStatistics_update((ReceiveStatistics *)self->stats, (long)(f->seq & 0xFFFF),
                             (long long)(f->ts & 0xFFFFFFFFUL), timespec_seconds(&now));
    if (Py_IS_TYPE(self->nack, &MissingPacketsType) &&
        MissingPackets_update((MissingPackets *)self->nack, (long)(f->seq & 0xFFFF))) {
        flags |= IN_NACK;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(f->payload);
    self->packets++;
    self->octets += (unsigned long long)size;
    switch (self->quality) {
    case QUALITY_VP8:
        if (vp8_keyframe_start((const unsigned char *)PyBytes_AS_STRING(f->payload), size)) {
            flags |= IN_QUALITY;
        }
        /* fall through */
    case QUALITY_VIDEO:
        if (f->marker) {
            self->frames++;
            self->frame_ts = (long long)(f->ts & 0xFFFFFFFFUL);
        }
        break;
    case QUALITY_AUDIO:
        if (f->has_level) {
            flags |= IN_QUALITY;
        }
        break;
    }
    if (self->slow != Py_None) {
        Py_SETREF(self->slow, Py_NewRef(Py_None));
    }
    if (PyTuple_GET_SIZE(consumers) > 0) {
        long ast = abs_send_time_of(&now);
        PyObject *slow = NULL;
        int rc = fan_out_fields(packet, f, consumers, ast, &slow);
        if (rc < 0) {
            Py_XDECREF(slow);
            Fields_release(f);
            return -1;
        }
        if (slow != NULL) {
            Py_SETREF(self->slow, slow);
            self->abs_send_time = ast;
            flags |= IN_SLOW;
        }
    }
    Fields_release(f);
    if ((++self->tick & (self->latency_every - 1)) == 0) {
        struct timespec end;
        clock_gettime(CLOCK_REALTIME, &end);
        double latency = timespec_seconds(&end) - timespec_seconds(&now);
        self->latency = latency > 0 ? latency : 0.0;
        latency_observe(self->latency);
    }
    return flags;
}

/* whether a packet of this payload type and SSRC is the common case */
static inline int Inbound_expects(const Inbound *self, long long pt, long long ssrc) {
    return pt == self->payload_type && ssrc == self->media_ssrc &&
           Py_IS_TYPE(self->stats, &ReceiveStatisticsType);
}

/* the common case of one packet: its IN_* flags, or -1 with an exception */
static long Inbound_take(Inbound *self, PyObject *packet, PyObject *consumers) {
    long long pt, ssrc;
    if (get_small(packet, s_payload_type, o_payload_type, &pt) < 0 ||
        get_small(packet, s_ssrc, o_ssrc, &ssrc) < 0) {
        return -1;
    }
    if (!Inbound_expects(self, pt, ssrc)) {
        return IN_PYTHON;
    }
    Fields f;
    if (Fields_read(&f, packet) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            return -1;
        }
        PyErr_Clear(); /* too large or too many CSRCs: the Python path says so */
        return IN_PYTHON;
    }
    return Inbound_take_fields(self, packet, &f, consumers);
}

/* the consumers of the view (a new reference to a tuple), or NULL with an exception */
static PyObject *Inbound_consumers(Inbound *self) {
    PyObject *consumers;
    if (o_consumers > 0 && Py_IS_TYPE(self->view, view_type) &&
        (consumers = *(PyObject **)((char *)self->view + o_consumers)) != NULL &&
        PyTuple_CheckExact(consumers)) {
        return Py_NewRef(consumers); /* straight from the slot: no attribute lookup */
    }
    consumers = PyObject_GetAttr(self->view, s_consumers);
    if (consumers != NULL && !PyTuple_Check(consumers)) {
        Py_DECREF(consumers);
        PyErr_SetString(PyExc_TypeError, "view.consumers must be a tuple");
        return NULL;
    }
    return consumers;
}

/* what __call__ returns once the flags are known: None, or fallback(packet, flags) */
static PyObject *Inbound_finish(Inbound *self, PyObject *packet, long flags) {
    if (flags == 0) {
        Py_RETURN_NONE;
    }
    PyObject *value = PyLong_FromLong(flags);
    if (value == NULL) {
        return NULL;
    }
    PyObject *out = PyObject_CallFunctionObjArgs(self->fallback, packet, value, NULL);
    python_ran();
    Py_DECREF(value);
    return out;
}

/* __call__(packet) for a packet FastIn has parsed (its payload type, SSRC and fields, released
 * here): the same, without reading them back from the packet object */
static PyObject *Inbound_forward(Inbound *self, PyObject *packet, long long pt, long long ssrc,
                                 Fields *f) {
    if (self->view == NULL || self->fallback == NULL) {
        Fields_release(f);
        PyErr_SetString(PyExc_TypeError, "Inbound has no view or fallback");
        return NULL;
    }
    long flags = IN_PYTHON;
    if (!self->hold) {
        PyObject *consumers = Inbound_consumers(self);
        if (consumers == NULL) {
            Fields_release(f);
            return NULL;
        }
        if (Inbound_expects(self, pt, ssrc) && Fields_fit(f)) {
            flags = Inbound_take_fields(self, packet, f, consumers);
        } else {
            Fields_release(f); /* the Python path says what is wrong with it */
        }
        Py_DECREF(consumers);
        if (flags < 0) {
            return NULL;
        }
        flags |= self->extra;
    } else {
        Fields_release(f);
    }
    return Inbound_finish(self, packet, flags);
}

static PyObject *Inbound_receive(Inbound *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "receive(packet, consumers: tuple)");
        return NULL;
    }
    python_ran();
    long flags = Inbound_take(self, args[0], args[1]);
    return flags < 0 ? NULL : PyLong_FromLong(flags);
}

/* the fast receive path's entry (``_parley_forward``): the common case here, the rest, and the
 * flags of what is left, to ``fallback(packet, flags)`` */
static PyObject *Inbound_call(Inbound *self, PyObject *args, PyObject *kwds) {
    PyObject *packet;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds) != 0) ||
        !PyArg_UnpackTuple(args, "Inbound", 1, 1, &packet)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "Inbound(packet) takes no keywords");
        }
        return NULL;
    }
    python_ran(); /* called from Python: what it did since is unseen */
    if (self->view == NULL || self->fallback == NULL) {
        PyErr_SetString(PyExc_TypeError, "Inbound has no view or fallback");
        return NULL;
    }
    long flags = IN_PYTHON;
    if (!self->hold) {
        PyObject *consumers = Inbound_consumers(self);
        if (consumers == NULL) {
            return NULL;
        }
        flags = Inbound_take(self, packet, consumers);
        Py_DECREF(consumers);
        if (flags < 0) {
            return NULL;
        }
        flags |= self->extra;
    }
    return Inbound_finish(self, packet, flags);
}

static PyObject *Inbound_get_media_ssrc(Inbound *self, void *closure) {
    return optional_ll(self->media_ssrc);
}

/* a 32-bit field that may be unset (-1, None in Python) */
static int set_optional_u32(long long *slot, PyObject *value, const char *what) {
    if (value == NULL || value == Py_None) {
        *slot = -1;
        return 0;
    }
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < 0 || v > 0xFFFFFFFFLL) {
        PyErr_Format(PyExc_ValueError, "bad %s", what);
        return -1;
    }
    *slot = v;
    return 0;
}

static int Inbound_set_media_ssrc(Inbound *self, PyObject *value, void *closure) {
    return set_optional_u32(&self->media_ssrc, value, "SSRC");
}

static int Inbound_set_object(PyObject **slot, PyObject *value, PyTypeObject *type,
                              const char *what) {
    if (value == NULL) {
        value = Py_None;
    }
    if (value != Py_None && !Py_IS_TYPE(value, type)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s or None", what, type->tp_name);
        return -1;
    }
    Py_SETREF(*slot, Py_NewRef(value));
    return 0;
}

static PyObject *Inbound_get_frame_ts(Inbound *self, void *closure) {
    return optional_ll(self->frame_ts);
}

static int Inbound_set_frame_ts(Inbound *self, PyObject *value, void *closure) {
    return set_optional_u32(&self->frame_ts, value, "RTP timestamp");
}

static PyObject *Inbound_get_stats(Inbound *self, void *closure) {
    return Py_NewRef(self->stats);
}

static int Inbound_set_stats(Inbound *self, PyObject *value, void *closure) {
    return Inbound_set_object(&self->stats, value, &ReceiveStatisticsType, "stats");
}

static PyObject *Inbound_get_nack(Inbound *self, void *closure) {
    return Py_NewRef(self->nack);
}

static int Inbound_set_nack(Inbound *self, PyObject *value, void *closure) {
    return Inbound_set_object(&self->nack, value, &MissingPacketsType, "nack");
}

static PyMethodDef Inbound_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))Inbound_receive, METH_FASTCALL,
     "receive(packet, consumers) -> flags (relay.accel.PyInbound.receive)"},
    {NULL}};

static PyMemberDef Inbound_members[] = {
    {"payload_type", T_LONG, offsetof(Inbound, payload_type), 0, "the media payload type"},
    {"packets", T_ULONGLONG, offsetof(Inbound, packets), READONLY,
     "packets taken by the common case"},
    {"octets", T_ULONGLONG, offsetof(Inbound, octets), READONLY, "their payload octets"},
    {"frames", T_ULONGLONG, offsetof(Inbound, frames), 0,
     "video frame ends (marker bits): the common case's, and the Python path's it adds"},
    {"latency", T_DOUBLE, offsetof(Inbound, latency), READONLY,
     "the last sampled forward latency, seconds"},
    {"abs_send_time", T_LONG, offsetof(Inbound, abs_send_time), READONLY,
     "the abs-send-time the slow consumers are to be sent with"},
    {"slow", T_OBJECT, offsetof(Inbound, slow), READONLY,
     "consumers the last packet left to the Python path, or None"},
    {"view", T_OBJECT, offsetof(Inbound, view), 0, "whose ``consumers`` __call__ fans out to"},
    {"fallback", T_OBJECT, offsetof(Inbound, fallback), 0,
     "fallback(packet, flags): what __call__ leaves to Python"},
    {"hold", T_BOOL, offsetof(Inbound, hold), 0,
     "__call__ hands every packet to fallback(packet, IN_PYTHON)"},
    {"extra", T_LONG, offsetof(Inbound, extra), 0, "flags __call__ adds to every packet's"},
    {NULL}};

static PyGetSetDef Inbound_getset[] = {
    {"media_ssrc", (getter)Inbound_get_media_ssrc, (setter)Inbound_set_media_ssrc,
     "the SSRC whose media packets take the common case, or None", NULL},
    {"frame_ts", (getter)Inbound_get_frame_ts, (setter)Inbound_set_frame_ts,
     "the RTP timestamp of the last frame end counted in ``frames``, or None", NULL},
    {"stats", (getter)Inbound_get_stats, (setter)Inbound_set_stats,
     "the ReceiveStatistics of media_ssrc, or None", NULL},
    {"nack", (getter)Inbound_get_nack, (setter)Inbound_set_nack,
     "the MissingPackets of media_ssrc, or None", NULL},
    {NULL}};

static PyTypeObject InboundType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parley.relay._accel.Inbound",
    .tp_basicsize = sizeof(Inbound),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Inbound(payload_type, quality, latency_every): one producer's common case "
              "(relay.accel.PyInbound)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Inbound_init,
    .tp_traverse = (traverseproc)Inbound_traverse,
    .tp_clear = (inquiry)Inbound_clear,
    .tp_dealloc = (destructor)Inbound_dealloc,
    .tp_call = (ternaryfunc)Inbound_call,
    .tp_methods = Inbound_methods,
    .tp_members = Inbound_members,
    .tp_getset = Inbound_getset,
};

static PyObject *abs_send_time_py(PyObject *module, PyObject *unused) {
    return PyLong_FromLong(abs_send_time_now());
}

static PyObject *stats_py(PyObject *module, PyObject *unused) {
    return Py_BuildValue("{sKsKsKsKsKsKsKsi}", "reads", counters.reads, "datagrams_in",
                         counters.datagrams_in, "sends", counters.sends, "datagrams_out",
                         counters.datagrams_out, "gso_messages", counters.gso_messages,
                         "gso_failures", counters.gso_failures, "truncated", counters.truncated,
                         "gso", gso_enabled);
}

static PyObject *set_gso_py(PyObject *module, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) {
        return NULL;
    }
    gso_enabled = on;
    Py_RETURN_NONE;
}

static PyObject *forward_latency_py(PyObject *module, PyObject *unused) {
    PyObject *counts = PyTuple_New(LATENCY_BUCKETS);
    if (counts == NULL) {
        return NULL;
    }
    for (int i = 0; i < LATENCY_BUCKETS; i++) {
        PyObject *count = PyLong_FromUnsignedLongLong(latency_counts[i]);
        if (count == NULL) {
            Py_DECREF(counts);
            return NULL;
        }
        PyTuple_SET_ITEM(counts, i, count);
    }
    return Py_BuildValue("(Nd)", counts, latency_total);
}

static PyMethodDef module_methods[] = {
    {"stats", stats_py, METH_NOARGS,
     "process-wide counters: reads (recvmmsg), datagrams_in, sends (send system calls), "
     "datagrams_out, gso_messages, gso_failures, truncated, gso (on or off)"},
    {"parse", parse_py, METH_VARARGS,
     "parse(data, abs_send_time_id, audio_level_id) -> RtpIn or None (relay.rtp.parse_rtp)"},
    {"set_packet_type", set_packet_type_py, METH_O, "the class parse() fills (relay.rtp.RtpIn)"},
    {"set_view_type", set_view_type_py, METH_O,
     "the class of Inbound.view whose ``consumers`` slot is read directly "
     "(relay.fanout.ConsumerView)"},
    {"set_gso", set_gso_py, METH_O, "send runs of equal-size packets as UDP GSO (default on)"},
    {"fan_out", (PyCFunction)(void (*)(void))fan_out, METH_FASTCALL,
     "fan_out(packet, consumers, abs_send_time) -> consumers left to the Python path, or None"},
    {"abs_send_time_now", abs_send_time_py, METH_NOARGS, "24-bit abs-send-time of now"},
    {"forward_latency", forward_latency_py, METH_NOARGS,
     "(counts per bucket, total seconds) the Inbounds of this process sampled: the buckets of "
     "FORWARD_LATENCY_BOUNDS and one above them"},
    {NULL}};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT, "parley.relay._accel", "The compiled packet path.", -1,
    module_methods};

PyMODINIT_FUNC PyInit__accel(void) {
    if (srtp_init() != srtp_err_status_ok) {
        PyErr_SetString(PyExc_ImportError, "srtp_init failed");
        return NULL;
    }
    const char *gcm = install_gcm();
    if (PyType_Ready(&SessionType) < 0 || PyType_Ready(&TxType) < 0 ||
        PyType_Ready(&RouteType) < 0 || PyType_Ready(&ReaderType) < 0 ||
        PyType_Ready(&FastInType) < 0 ||
        PyType_Ready(&ReceiveStatisticsType) < 0 || PyType_Ready(&MissingPacketsType) < 0 ||
        PyType_Ready(&InboundType) < 0) {
        return NULL;
    }
#define INTERN(var, text)                                                                        \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_marker, "marker");
    INTERN(s_sequence_number, "sequence_number");
    INTERN(s_timestamp, "timestamp");
    INTERN(s_csrc, "csrc");
    INTERN(s_payload, "payload");
    INTERN(s_padding_size, "padding_size");
    INTERN(s_audio_level, "audio_level");
    INTERN(s_route, "_route");
    INTERN(s_state, "_state");
    INTERN(s_tx_srtp, "_tx_srtp");
    INTERN(s_is_closing, "is_closing");
    INTERN(s_datagram_received, "datagram_received");
    INTERN(s_parley_forward, "_parley_forward");
    INTERN(s_payload_type, "payload_type");
    INTERN(s_ssrc, "ssrc");
    INTERN(s_abs_send_time, "abs_send_time");
    INTERN(s_consumers, "consumers");
    empty_tuple = PyTuple_New(0);
    one = PyLong_FromLong(1);
    PyObject *m = PyModule_Create(&accel_module);
    if (m == NULL) {
        return NULL;
    }
    AccelError = PyErr_NewException("parley.relay._accel.Error", PyExc_ValueError, NULL);
    Py_INCREF(AccelError);
    PyModule_AddObject(m, "Error", AccelError);
    Py_INCREF(&SessionType);
    PyModule_AddObject(m, "Session", (PyObject *)&SessionType);
    Py_INCREF(&TxType);
    PyModule_AddObject(m, "Tx", (PyObject *)&TxType);
    Py_INCREF(&RouteType);
    PyModule_AddObject(m, "Route", (PyObject *)&RouteType);
    Py_INCREF(&ReaderType);
    PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType);
    Py_INCREF(&FastInType);
    PyModule_AddObject(m, "FastIn", (PyObject *)&FastInType);
    Py_INCREF(&ReceiveStatisticsType);
    PyModule_AddObject(m, "ReceiveStatistics", (PyObject *)&ReceiveStatisticsType);
    Py_INCREF(&MissingPacketsType);
    PyModule_AddObject(m, "MissingPackets", (PyObject *)&MissingPacketsType);
    Py_INCREF(&InboundType);
    PyModule_AddObject(m, "Inbound", (PyObject *)&InboundType);
    PyModule_AddIntConstant(m, "MAX_TRAILER", SRTP_MAX_TRAILER_LEN);
    PyModule_AddStringConstant(m, "SRTP_CRYPTO", PARLEY_SRTP_CRYPTO);
    PyModule_AddStringConstant(m, "SRTP_GCM", gcm);
    PyObject *bounds = PyTuple_New(LATENCY_BUCKETS - 1);
    if (bounds == NULL) {
        return NULL;
    }
    for (int i = 0; i < LATENCY_BUCKETS - 1; i++) {
        PyObject *bound = PyFloat_FromDouble(latency_bounds[i]);
        if (bound == NULL) {
            Py_DECREF(bounds);
            return NULL;
        }
        PyTuple_SET_ITEM(bounds, i, bound);
    }
    PyModule_AddObject(m, "FORWARD_LATENCY_BOUNDS", bounds);
    return m;
}
