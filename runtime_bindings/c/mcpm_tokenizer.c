/* mcpm tokenizer: SentencePiece BPE in C11 (see mcpm_tokenizer.h).
 * Mirrors sentencepiece's normalizer.cc (identity charsmap), bpe_model.cc (Encode) and
 * sentencepiece_processor.cc (PopulateSentencePieceText, Decode). The ModelProto is read with a minimal
 * protobuf wire-format reader; field numbers follow sentencepiece_model.proto. */
#include "mcpm_tokenizer.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T_NORMAL = 1, T_UNKNOWN = 2, T_CONTROL = 3, T_USER = 4, T_UNUSED = 5, T_BYTE = 6 };
enum { MODEL_BPE = 2 };
#define MAX_TEXT_BYTES (256u << 20)

static const char SPACE_SYM[] = "\xe2\x96\x81"; /* U+2581 */
static const char REPLACEMENT[] = "\xef\xbf\xbd"; /* U+FFFD */

struct mcpm_tokenizer {
    int n;                  /* pieces */
    char** piece;           /* n NUL-terminated strings */
    uint32_t* plen;         /* uint32[n], byte lengths */
    float* score;           /* float[n] */
    uint8_t* type;          /* uint8[n], T_* */
    int16_t* byte_value;    /* int16[n]: 0..255 for BYTE pieces, else -1 */
    uint32_t cap;           /* hash slots, power of two */
    int32_t* norm_slots;    /* int32[cap]: NORMAL/USER_DEFINED/UNUSED pieces (sentencepiece pieces_), -1 empty */
    int32_t* resv_slots;    /* int32[cap]: UNKNOWN/CONTROL/BYTE pieces (reserved_id_map_), -1 empty */
    int32_t byte_id[256];   /* id of "<0xXX>" via piece_to_id */
    uint32_t max_user_len;  /* longest USER_DEFINED piece, 0 if none */
    int32_t unk_id, bos_id, eos_id;
    int byte_fallback, add_dummy_prefix, remove_extra_ws, escape_ws;
    char* unk_surface;      /* NUL-terminated */
    size_t unk_surface_len;
};

static void seterr(char* err, size_t err_len, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char* err, size_t err_len, const char* fmt, ...) {
    if (!err || !err_len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- protobuf wire format */

typedef struct {
    const unsigned char* p;
    const unsigned char* end;
} pb_reader;

static int pb_varint(pb_reader* r, uint64_t* v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return -1;
        unsigned char c = *r->p++;
        x |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) { *v = x; return 0; }
    }
    return -1;
}

/* One field: *field, *wire; for wire 2 *data, *len is the payload, for 0 *v the varint, for 5 *v the 32 bits. */
static int pb_next(pb_reader* r, uint32_t* field, int* wire, uint64_t* v, const unsigned char** data) {
    uint64_t key;
    if (pb_varint(r, &key)) return -1;
    *field = (uint32_t)(key >> 3);
    *wire = (int)(key & 7);
    if (*field == 0 || key >> 3 > 0x1FFFFFFF) return -1;
    switch (*wire) {
    case 0: return pb_varint(r, v);
    case 1:
        if (r->end - r->p < 8) return -1;
        r->p += 8;
        return 0;
    case 2:
        if (pb_varint(r, v) || *v > (uint64_t)(r->end - r->p)) return -1;
        *data = r->p;
        r->p += *v;
        return 0;
    case 5: {
        if (r->end - r->p < 4) return -1;
        uint32_t u = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24;
        *v = u;
        r->p += 4;
        return 0;
    }
    default: return -1; /* groups (3, 4) and reserved types are not used by ModelProto */
    }
}

/* ---------------------------------------------------------------- hash map piece -> id */

static uint64_t hash_bytes(const char* s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int32_t map_find(const mcpm_tokenizer* t, const int32_t* slots, const char* s, size_t n) {
    uint32_t mask = t->cap - 1;
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        int32_t id = slots[i];
        if (id < 0) return -1;
        if (t->plen[id] == n && !memcmp(t->piece[id], s, n)) return id;
    }
}

/* 0 on insert, -1 if the string is already there */
static int map_insert(mcpm_tokenizer* t, int32_t* slots, int32_t id) {
    uint32_t mask = t->cap - 1;
    for (uint32_t i = (uint32_t)hash_bytes(t->piece[id], t->plen[id]) & mask;; i = (i + 1) & mask) {
        int32_t o = slots[i];
        if (o < 0) { slots[i] = id; return 0; }
        if (t->plen[o] == t->plen[id] && !memcmp(t->piece[o], t->piece[id], t->plen[id])) return -1;
    }
}

/* sentencepiece PieceToId: reserved pieces first, then normal ones, else unk. */
static int32_t piece_id(const mcpm_tokenizer* t, const char* s, size_t n) {
    int32_t id = map_find(t, t->resv_slots, s, n);
    if (id >= 0) return id;
    id = map_find(t, t->norm_slots, s, n);
    return id >= 0 ? id : t->unk_id;
}

/* ---------------------------------------------------------------- load */

static int parse_piece(mcpm_tokenizer* t, int i, const unsigned char* d, uint64_t len) {
    pb_reader r = {d, d + len};
    t->type[i] = T_NORMAL;
    t->score[i] = 0.0f;
    const unsigned char* str = NULL;
    uint64_t slen = 0;
    while (r.p < r.end) {
        uint32_t f; int w; uint64_t v = 0; const unsigned char* data = NULL;
        if (pb_next(&r, &f, &w, &v, &data)) return -1;
        if (f == 1) { if (w != 2) return -1; str = data; slen = v; }
        else if (f == 2) { if (w != 5) return -1; uint32_t u = (uint32_t)v; memcpy(&t->score[i], &u, 4); }
        else if (f == 3) { if (w != 0 || v < 1 || v > 6) return -1; t->type[i] = (uint8_t)v; }
    }
    if (slen > 0xFFFFFF) return -1;
    t->piece[i] = malloc((size_t)slen + 1);
    if (!t->piece[i]) return -1;
    if (slen) memcpy(t->piece[i], str, (size_t)slen);
    t->piece[i][slen] = '\0';
    t->plen[i] = (uint32_t)slen;
    return 0;
}

typedef struct {
    const unsigned char *trainer, *normalizer, *denormalizer;
    uint64_t trainer_len, normalizer_len, denormalizer_len;
} model_parts;

static mcpm_tokenizer* load_fail(mcpm_tokenizer* t) {
    mcpm_tokenizer_free(t);
    return NULL;
}

static int32_t id_or_minus1(const mcpm_tokenizer* t, int64_t v) { return v >= 0 && v < t->n ? (int32_t)v : -1; }

mcpm_tokenizer* mcpm_tokenizer_load(const char* path, char* err, size_t err_len) {
    seterr(err, err_len, "%s", "");
    FILE* fp = fopen(path, "rb");
    if (!fp) { seterr(err, err_len, "%s: cannot open tokenizer model", path); return NULL; }
    unsigned char* buf = NULL; /* uint8[size]: the whole file */
    size_t size = 0, cap = 0;
    for (;;) {
        if (size == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            unsigned char* nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(fp); seterr(err, err_len, "%s: out of memory", path); return NULL; }
            buf = nb;
        }
        size_t got = fread(buf + size, 1, cap - size, fp);
        size += got;
        if (got == 0) break;
    }
    int read_err = ferror(fp);
    fclose(fp);
    if (read_err) { free(buf); seterr(err, err_len, "%s: read error", path); return NULL; }

    mcpm_tokenizer* t = calloc(1, sizeof(*t));
    if (!t) { free(buf); seterr(err, err_len, "out of memory"); return NULL; }
    model_parts mp = {0};
    /* pass 1: count pieces, locate the specs */
    pb_reader r = {buf, buf + size};
    int npieces = 0;
    while (r.p < r.end) {
        uint32_t f; int w; uint64_t v = 0; const unsigned char* data = NULL;
        if (pb_next(&r, &f, &w, &v, &data) || (f <= 5 && w != 2)) {
            seterr(err, err_len, "%s: not a sentencepiece model (corrupted or truncated protobuf at byte %zu)", path,
                   (size_t)(r.p - buf));
            free(buf);
            return load_fail(t);
        }
        if (f == 1) {
            if (npieces == INT32_MAX / 4) { free(buf); seterr(err, err_len, "%s: too many pieces", path); return load_fail(t); }
            npieces++;
        } else if (f == 2) { mp.trainer = data; mp.trainer_len = v; }
        else if (f == 3) { mp.normalizer = data; mp.normalizer_len = v; }
        else if (f == 5) { mp.denormalizer = data; mp.denormalizer_len = v; }
    }
    if (npieces == 0 || !mp.trainer) {
        seterr(err, err_len, "%s: not a sentencepiece model (%s)", path, npieces ? "no trainer_spec" : "no pieces");
        free(buf);
        return load_fail(t);
    }
    t->n = npieces;
    t->piece = calloc((size_t)npieces, sizeof(char*));
    t->plen = calloc((size_t)npieces, sizeof(uint32_t));
    t->score = calloc((size_t)npieces, sizeof(float));
    t->type = calloc((size_t)npieces, 1);
    t->byte_value = calloc((size_t)npieces, sizeof(int16_t));
    t->cap = 16;
    while (t->cap < (uint32_t)npieces * 2u) t->cap *= 2;
    t->norm_slots = malloc(t->cap * sizeof(int32_t));
    t->resv_slots = malloc(t->cap * sizeof(int32_t));
    if (!t->piece || !t->plen || !t->score || !t->type || !t->byte_value || !t->norm_slots || !t->resv_slots) {
        free(buf);
        seterr(err, err_len, "%s: out of memory", path);
        return load_fail(t);
    }
    memset(t->norm_slots, 0xFF, t->cap * sizeof(int32_t));
    memset(t->resv_slots, 0xFF, t->cap * sizeof(int32_t));
    /* pass 2: pieces */
    r.p = buf;
    int i = 0;
    while (r.p < r.end) {
        uint32_t f; int w; uint64_t v = 0; const unsigned char* data = NULL;
        pb_next(&r, &f, &w, &v, &data); /* validated in pass 1 */
        if (f != 1) continue;
        if (parse_piece(t, i, data, v)) {
            seterr(err, err_len, "%s: piece %d is corrupted", path, i);
            free(buf);
            return load_fail(t);
        }
        i++;
    }
    /* trainer_spec */
    int64_t model_type = 1, bos = 1, eos = 2;
    int ws_suffix = 0;
    const unsigned char* unk_surface = (const unsigned char*)" \xe2\x81\x87 ";
    uint64_t unk_surface_len = 5;
    r = (pb_reader){mp.trainer, mp.trainer + mp.trainer_len};
    while (r.p < r.end) {
        uint32_t f; int w; uint64_t v = 0; const unsigned char* data = NULL;
        int bad = pb_next(&r, &f, &w, &v, &data);
        if (!bad && (f == 3 || f == 24 || f == 35 || f == 41 || f == 42)) {
            bad = w != 0;
            if (f == 3) model_type = (int64_t)v;
            else if (f == 24) ws_suffix = v != 0;
            else if (f == 35) t->byte_fallback = v != 0;
            else if (f == 41) bos = (int64_t)(int32_t)v;
            else eos = (int64_t)(int32_t)v;
        } else if (!bad && f == 44) {
            bad = w != 2;
            unk_surface = data;
            unk_surface_len = v;
        }
        if (bad) { seterr(err, err_len, "%s: trainer_spec is corrupted", path); free(buf); return load_fail(t); }
    }
    /* normalizer_spec (absent = defaults: identity is not the default, so an absent spec means no normalization
     * rules were stored, i.e. identity) */
    char norm_name[64] = "";
    uint64_t charsmap_len = 0;
    t->add_dummy_prefix = t->remove_extra_ws = t->escape_ws = 1;
    r = (pb_reader){mp.trainer, mp.trainer}; /* empty when absent */
    if (mp.normalizer) r = (pb_reader){mp.normalizer, mp.normalizer + mp.normalizer_len};
    while (r.p < r.end) {
        uint32_t f; int w; uint64_t v = 0; const unsigned char* data = NULL;
        int bad = pb_next(&r, &f, &w, &v, &data);
        if (!bad && f >= 1 && f <= 2) {
            bad = w != 2;
            if (f == 1) {
                size_t k = v < sizeof(norm_name) - 1 ? (size_t)v : sizeof(norm_name) - 1;
                memcpy(norm_name, data, k);
                norm_name[k] = '\0';
            } else charsmap_len = v;
        } else if (!bad && f >= 3 && f <= 5) {
            bad = w != 0;
            if (f == 3) t->add_dummy_prefix = v != 0;
            else if (f == 4) t->remove_extra_ws = v != 0;
            else t->escape_ws = v != 0;
        }
        if (bad) { seterr(err, err_len, "%s: normalizer_spec is corrupted", path); free(buf); return load_fail(t); }
    }
    uint64_t denorm_charsmap_len = 0;
    r = (pb_reader){mp.trainer, mp.trainer};
    if (mp.denormalizer) r = (pb_reader){mp.denormalizer, mp.denormalizer + mp.denormalizer_len};
    while (r.p < r.end) {
        uint32_t f; int w; uint64_t v = 0; const unsigned char* data = NULL;
        if (pb_next(&r, &f, &w, &v, &data) || (f == 2 && w != 2)) {
            seterr(err, err_len, "%s: denormalizer_spec is corrupted", path);
            free(buf);
            return load_fail(t);
        }
        if (f == 2) denorm_charsmap_len = v;
    }
    t->unk_surface = malloc((size_t)unk_surface_len + 1);
    if (!t->unk_surface) { free(buf); seterr(err, err_len, "out of memory"); return load_fail(t); }
    memcpy(t->unk_surface, unk_surface, (size_t)unk_surface_len);
    t->unk_surface[unk_surface_len] = '\0';
    t->unk_surface_len = (size_t)unk_surface_len;
    free(buf);

    if (model_type != MODEL_BPE) {
        static const char* names[] = {"?", "UNIGRAM", "BPE", "WORD", "CHAR"};
        seterr(err, err_len, "%s: model_type %s is not supported, only BPE", path,
               model_type >= 1 && model_type <= 4 ? names[model_type] : "unknown");
        return load_fail(t);
    }
    if (charsmap_len) {
        seterr(err, err_len, "%s: normalizer '%s' is not supported, only identity normalization", path,
               norm_name[0] ? norm_name : "(custom rules)");
        return load_fail(t);
    }
    if (denorm_charsmap_len) {
        seterr(err, err_len, "%s: a denormalizer is not supported", path);
        return load_fail(t);
    }
    if (ws_suffix) {
        seterr(err, err_len, "%s: treat_whitespace_as_suffix is not supported", path);
        return load_fail(t);
    }
    /* maps and piece checks (sentencepiece ModelInterface::InitializePieces) */
    t->unk_id = -1;
    for (i = 0; i < t->n; i++) {
        int ty = t->type[i];
        t->byte_value[i] = -1;
        if (t->plen[i] == 0) { seterr(err, err_len, "%s: piece %d is empty", path, i); return load_fail(t); }
        int normal = ty == T_NORMAL || ty == T_USER || ty == T_UNUSED;
        if (map_insert(t, normal ? t->norm_slots : t->resv_slots, i)) {
            seterr(err, err_len, "%s: piece '%s' is defined twice", path, t->piece[i]);
            return load_fail(t);
        }
        if (ty == T_USER && t->plen[i] > t->max_user_len) t->max_user_len = t->plen[i];
        if (ty == T_UNKNOWN) {
            if (t->unk_id >= 0) { seterr(err, err_len, "%s: more than one unknown piece", path); return load_fail(t); }
            t->unk_id = i;
        }
        if (ty == T_BYTE) {
            const char* p = t->piece[i];
            unsigned hi = 0;
            int ok = t->plen[i] == 6 && !memcmp(p, "<0x", 3) && p[5] == '>';
            for (int k = 3; ok && k < 5; k++) {
                char c = p[k];
                int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                if (d < 0) ok = 0;
                else hi = hi * 16 + (unsigned)d;
            }
            if (!ok) { seterr(err, err_len, "%s: byte piece '%s' is not of the form <0xXX>", path, p); return load_fail(t); }
            if (!t->byte_fallback) {
                seterr(err, err_len, "%s: byte piece '%s' found although byte_fallback is off", path, p);
                return load_fail(t);
            }
            t->byte_value[i] = (int16_t)hi;
        }
    }
    if (t->unk_id < 0) { seterr(err, err_len, "%s: the model has no unknown piece", path); return load_fail(t); }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", b);
        t->byte_id[b] = piece_id(t, name, 6);
    }
    t->bos_id = id_or_minus1(t, bos);
    t->eos_id = id_or_minus1(t, eos);
    return t;
}

void mcpm_tokenizer_free(mcpm_tokenizer* t) {
    if (!t) return;
    for (int i = 0; t->piece && i < t->n; i++) free(t->piece[i]);
    free(t->piece);
    free(t->plen);
    free(t->score);
    free(t->type);
    free(t->byte_value);
    free(t->norm_slots);
    free(t->resv_slots);
    free(t->unk_surface);
    free(t);
}

int mcpm_tokenizer_vocab_size(const mcpm_tokenizer* t) { return t ? t->n : 0; }
int32_t mcpm_tokenizer_bos_id(const mcpm_tokenizer* t) { return t ? t->bos_id : -1; }
int32_t mcpm_tokenizer_eos_id(const mcpm_tokenizer* t) { return t ? t->eos_id : -1; }
int32_t mcpm_tokenizer_unk_id(const mcpm_tokenizer* t) { return t ? t->unk_id : -1; }

const char* mcpm_tokenizer_id_to_piece(const mcpm_tokenizer* t, int32_t id, size_t* len) {
    if (!t || id < 0 || id >= t->n) return NULL;
    if (len) *len = t->plen[id];
    return t->piece[id];
}

int32_t mcpm_tokenizer_piece_to_id(const mcpm_tokenizer* t, const char* piece, size_t len) {
    if (!t) return -1;
    return piece_id(t, piece ? piece : "", piece ? len : 0);
}

/* ---------------------------------------------------------------- UTF-8 (sentencepiece string_util) */

/* Length of a valid UTF-8 character at s (uint8[n], n >= 1), or 0 if malformed
 * (IsValidDecodeUTF8: U+FFFD itself counts as valid). */
static size_t utf8_valid_len(const unsigned char* s, size_t n) {
    uint32_t c;
    if (s[0] < 0x80) return 1;
    if (n >= 2 && (s[0] & 0xE0) == 0xC0 && (s[1] & 0xC0) == 0x80) {
        c = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
        return c >= 0x80 ? 2 : 0;
    }
    if (n >= 3 && (s[0] & 0xF0) == 0xE0 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
        c = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
        return c >= 0x800 && (c < 0xD800 || c >= 0xE000) ? 3 : 0;
    }
    if (n >= 4 && (s[0] & 0xF8) == 0xF0 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80) {
        c = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
        return c >= 0x10000 && c <= 0x10FFFF ? 4 : 0;
    }
    return 0;
}

/* Longest USER_DEFINED piece that prefixes s (uint8[n]); 0 if none. */
static size_t user_match(const mcpm_tokenizer* t, const char* s, size_t n) {
    size_t l = n < t->max_user_len ? n : t->max_user_len;
    for (; l > 0; l--) {
        int32_t id = map_find(t, t->norm_slots, s, l);
        if (id >= 0 && t->type[id] == T_USER) return l;
    }
    return 0;
}

/* ---------------------------------------------------------------- encode */

/* Normalizer::NormalizePrefix with an empty charsmap: the user-defined symbol, the valid UTF-8 character,
 * or U+FFFD for one malformed byte. *out, *out_len = normalized text, returns input bytes consumed. */
static size_t normalize_prefix(const mcpm_tokenizer* t, const char* s, size_t n, const char** out, size_t* out_len) {
    size_t l = user_match(t, s, n);
    if (l) { *out = s; *out_len = l; return l; }
    l = utf8_valid_len((const unsigned char*)s, n);
    if (!l) { *out = REPLACEMENT; *out_len = 3; return 1; }
    *out = s;
    *out_len = l;
    return l;
}

/* Normalizer::Normalize: writes into out (char[3 * n + 3]), returns the length. */
static size_t normalize(const mcpm_tokenizer* t, const char* s, size_t n, char* out) {
    size_t o = 0;
    const char* sp;
    size_t sl;
    if (t->remove_extra_ws) {
        while (n) {
            size_t c = normalize_prefix(t, s, n, &sp, &sl);
            if (!(sl == 1 && sp[0] == ' ')) break;
            s += c;
            n -= c;
        }
    }
    if (!n) return 0;
    if (t->add_dummy_prefix) {
        if (t->escape_ws) { memcpy(out, SPACE_SYM, 3); o = 3; }
        else out[o++] = ' ';
    }
    int prev_space = t->remove_extra_ws;
    while (n) {
        size_t c = normalize_prefix(t, s, n, &sp, &sl);
        if (prev_space)
            while (sl && sp[0] == ' ') { sp++; sl--; }
        if (sl) {
            for (size_t k = 0; k < sl; k++) {
                if (t->escape_ws && sp[k] == ' ') { memcpy(out + o, SPACE_SYM, 3); o += 3; }
                else out[o++] = sp[k];
            }
            prev_space = sp[sl - 1] == ' ';
        }
        s += c;
        n -= c;
        if (!t->remove_extra_ws) prev_space = 0;
    }
    if (t->remove_extra_ws) {
        if (t->escape_ws)
            while (o >= 3 && !memcmp(out + o - 3, SPACE_SYM, 3)) o -= 3;
        else
            while (o >= 1 && out[o - 1] == ' ') o--;
    }
    return o;
}

typedef struct {
    size_t start;   /* byte offset in the normalized text */
    size_t len;     /* 0 once merged into its left neighbour */
    int prev, next; /* -1 at the ends */
    int freeze;     /* user-defined symbol: never merged */
} symbol;

typedef struct {
    float score;
    int left, right;
    size_t size;
} sym_pair;

typedef struct {
    size_t start, len, left_len; /* rev_merge[normalized[start:start+len]] = split at left_len */
} rev_entry;

typedef struct {
    const mcpm_tokenizer* t;
    const char* text;  /* normalized, char[] */
    symbol* sym;       /* symbol[nsym] */
    sym_pair* heap;    /* sym_pair[heap_cap], max-heap on (score, -left) */
    int heap_n, heap_cap;
    rev_entry* rev;    /* rev_entry[rev_cap] */
    int rev_n, rev_cap;
    int32_t* ids;      /* output, int32[max_ids] or NULL */
    int max_ids, count, overflow, oom, prev_unk;
} enc_state;

static int pair_better(const sym_pair* a, const sym_pair* b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(enc_state* st, sym_pair p) {
    if (st->heap_n == st->heap_cap) {
        int nc = st->heap_cap ? st->heap_cap * 2 : 64;
        sym_pair* nh = realloc(st->heap, (size_t)nc * sizeof(sym_pair));
        if (!nh) { st->oom = 1; return; }
        st->heap = nh;
        st->heap_cap = nc;
    }
    int i = st->heap_n++;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!pair_better(&p, &st->heap[parent])) break;
        st->heap[i] = st->heap[parent];
        i = parent;
    }
    st->heap[i] = p;
}

static sym_pair heap_pop(enc_state* st) {
    sym_pair top = st->heap[0], last = st->heap[--st->heap_n];
    int i = 0, n = st->heap_n;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && pair_better(&st->heap[c + 1], &st->heap[c])) c++;
        if (!pair_better(&st->heap[c], &last)) break;
        st->heap[i] = st->heap[c];
        i = c;
    }
    if (n) st->heap[i] = last;
    return top;
}

/* bpe_model.cc MaybeAddNewSymbolPair */
static void maybe_add_pair(enc_state* st, int left, int right) {
    if (left < 0 || right < 0) return;
    const symbol *l = &st->sym[left], *r = &st->sym[right];
    if (l->freeze || r->freeze) return;
    size_t size = l->len + r->len;
    int32_t id = map_find(st->t, st->t->norm_slots, st->text + l->start, size);
    if (id < 0) return;
    heap_push(st, (sym_pair){st->t->score[id], left, right, size});
    if (st->t->type[id] == T_UNUSED) {
        if (st->rev_n == st->rev_cap) {
            int nc = st->rev_cap ? st->rev_cap * 2 : 16;
            rev_entry* nr = realloc(st->rev, (size_t)nc * sizeof(rev_entry));
            if (!nr) { st->oom = 1; return; }
            st->rev = nr;
            st->rev_cap = nc;
        }
        st->rev[st->rev_n++] = (rev_entry){l->start, size, l->len};
    }
}

static void emit(enc_state* st, int32_t id) {
    if (st->ids) {
        if (st->count >= st->max_ids) { st->overflow = 1; return; }
        st->ids[st->count] = id;
    }
    st->count++;
}

/* PopulateSentencePieceText for one (piece, id): byte fallback for unknowns, runs of unknowns merged. */
static void emit_piece(enc_state* st, const char* w, size_t n, int32_t id) {
    const mcpm_tokenizer* t = st->t;
    int is_unk = t->type[id] == T_UNKNOWN;
    if (t->type[id] == T_CONTROL) emit(st, id);
    else if (is_unk && t->byte_fallback)
        for (size_t k = 0; k < n; k++) emit(st, t->byte_id[(unsigned char)w[k]]);
    else if (!(is_unk && st->prev_unk)) emit(st, id);
    st->prev_unk = is_unk;
}

/* bpe_model.cc resegment: UNUSED pieces are split back into the pair they were merged from. */
static void resegment(enc_state* st, size_t start, size_t len, int depth) {
    const char* w = st->text + start;
    int32_t id = piece_id(st->t, w, len);
    if (st->t->type[id] == T_UNUSED && depth < 64) {
        for (int k = st->rev_n - 1; k >= 0; k--) { /* last write wins, as in the flat_hash_map */
            const rev_entry* e = &st->rev[k];
            if (e->len == len && !memcmp(st->text + e->start, w, len)) {
                size_t ll = e->left_len;
                resegment(st, start, ll, depth + 1);
                resegment(st, start + ll, len - ll, depth + 1);
                return;
            }
        }
    }
    emit_piece(st, w, len, id);
}

int mcpm_tokenizer_encode(const mcpm_tokenizer* t, const char* text, size_t len, int32_t* ids, int max_ids) {
    if (!t || (len && !text) || len > MAX_TEXT_BYTES || (ids && max_ids < 0)) return -1;
    if (!len) return 0;
    char* norm = malloc(3 * len + 3); /* char[3 * len + 3]: every input byte grows to at most 3 bytes */
    if (!norm) return -1;
    size_t nlen = normalize(t, text, len, norm);
    enc_state st = {.t = t, .text = norm, .ids = ids, .max_ids = max_ids};
    int nsym = 0;
    st.sym = malloc((nlen ? nlen : 1) * sizeof(symbol)); /* symbol[nlen] at most */
    if (!st.sym) { free(norm); return -1; }
    for (size_t pos = 0; pos < nlen;) {
        size_t l = user_match(t, norm + pos, nlen - pos);
        int freeze = l > 0;
        if (!l) {
            static const unsigned char one_char_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
            l = one_char_len[(unsigned char)norm[pos] >> 4];
            if (l > nlen - pos) l = nlen - pos;
        }
        st.sym[nsym] = (symbol){pos, l, nsym - 1, pos + l < nlen ? nsym + 1 : -1, freeze};
        nsym++;
        pos += l;
    }
    for (int k = 1; k < nsym; k++) maybe_add_pair(&st, k - 1, k);
    while (st.heap_n > 0 && !st.oom) {
        sym_pair top = heap_pop(&st);
        symbol *l = &st.sym[top.left], *r = &st.sym[top.right];
        if (!l->len || !r->len || l->len + r->len != top.size || l->next != top.right) continue;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) st.sym[r->next].prev = top.left;
        r->len = 0;
        maybe_add_pair(&st, l->prev, top.left);
        maybe_add_pair(&st, top.left, l->next);
    }
    for (int k = nsym ? 0 : -1; k >= 0 && !st.oom && !st.overflow; k = st.sym[k].next)
        resegment(&st, st.sym[k].start, st.sym[k].len, 0);
    int ret = st.oom || st.overflow || st.count > INT_MAX - 1 ? -1 : st.count;
    free(st.heap);
    free(st.rev);
    free(st.sym);
    free(norm);
    return ret;
}

/* ---------------------------------------------------------------- decode */

typedef struct {
    char* out; /* char[cap] or NULL (measure only) */
    size_t cap, n;
    int overflow;
} out_buf;

static void put(out_buf* b, const char* s, size_t n) {
    if (b->out) {
        if (n > b->cap - b->n || b->cap - b->n - n < 1) { b->overflow = 1; return; } /* keep room for the NUL */
        memcpy(b->out + b->n, s, n);
    }
    b->n += n;
}

/* ProcessBytePieces: bytes (uint8[n]) as UTF-8, one U+FFFD per malformed byte */
static void put_bytes(out_buf* b, const unsigned char* bytes, size_t n) {
    for (size_t off = 0; off < n;) {
        size_t l = utf8_valid_len(bytes + off, n - off);
        if (!l) { put(b, REPLACEMENT, 3); off++; }
        else { put(b, (const char*)bytes + off, l); off += l; }
    }
}

int mcpm_tokenizer_decode(const mcpm_tokenizer* t, const int32_t* ids, int n, char* out, size_t out_len) {
    if (!t || n < 0 || (n && !ids) || (out && !out_len)) return -1;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n) return -1;
    out_buf b = {out, out_len, 0, 0};
    unsigned char* bytes = malloc((size_t)n + 1); /* uint8[n]: the pending run of byte pieces */
    if (!bytes) return -1;
    size_t nbytes = 0;
    int is_bos_ws = 1, bos_ws_seen = 0;
    for (int i = 0; i < n && !b.overflow; i++) {
        int32_t id = ids[i];
        if (t->type[id] == T_BYTE) { bytes[nbytes++] = (unsigned char)t->byte_value[id]; continue; }
        put_bytes(&b, bytes, nbytes);
        nbytes = 0;
        if (bos_ws_seen || b.n > 0) is_bos_ws = 0;
        bos_ws_seen = 0;
        if (t->type[id] == T_CONTROL) continue;
        if (t->type[id] == T_UNKNOWN) { put(&b, t->unk_surface, t->unk_surface_len); continue; }
        const char* p = t->piece[id];
        size_t pl = t->plen[id];
        if (is_bos_ws && (t->add_dummy_prefix || t->remove_extra_ws) && pl >= 3 && !memcmp(p, SPACE_SYM, 3)) {
            p += 3;
            pl -= 3;
            bos_ws_seen = !t->remove_extra_ws;
        }
        size_t run = 0; /* bytes of p not yet written */
        for (size_t k = 0; k < pl;) {
            if (pl - k >= 3 && !memcmp(p + k, SPACE_SYM, 3)) {
                put(&b, p + k - run, run);
                put(&b, " ", 1);
                run = 0;
                k += 3;
            } else { run++; k++; }
        }
        put(&b, p + pl - run, run);
    }
    put_bytes(&b, bytes, nbytes);
    free(bytes);
    if (b.overflow || b.n > INT_MAX - 1) return -1;
    if (out) out[b.n] = '\0';
    return (int)b.n;
}
