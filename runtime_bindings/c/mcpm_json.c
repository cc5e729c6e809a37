/* Minimal JSON parser: recursive descent over an owned copy of the text; strings unescaped in place. */
#include "mcpm_json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

typedef struct {
    json_doc* doc;
    char* p;    /* cursor into doc->text */
    char* end;  /* doc->text + len */
    char* base; /* doc->text */
    char* err;
    size_t errlen;
} parser;

static int fail(parser* ps, const char* what) {
    snprintf(ps->err, ps->errlen, "JSON error at byte %ld: %s", (long)(ps->p - ps->base), what);
    return -1;
}

static void skip_ws(parser* ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int new_node(parser* ps, json_type t) {
    json_doc* d = ps->doc;
    if (d->n_nodes == d->cap) {
        int cap = d->cap ? d->cap * 2 : 256;
        json_node* nn = realloc(d->nodes, (size_t)cap * sizeof(json_node));
        if (!nn) return fail(ps, "out of memory");
        d->nodes = nn;
        d->cap = cap;
    }
    json_node* n = &d->nodes[d->n_nodes];
    memset(n, 0, sizeof(*n));
    n->type = t;
    n->first = n->next = -1;
    return d->n_nodes++;
}

static int hex4(const char* s, unsigned* out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Parses a string at ps->p (on the opening quote); returns its unescaped start, NUL-terminated in place. */
static char* parse_string(parser* ps) {
    char* out = ++ps->p;
    char* start = out;
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) { fail(ps, "control character in string"); return NULL; }
        if (c != '\\') { *out++ = *ps->p++; continue; }
        if (ps->p + 1 >= ps->end) break;
        char e = ps->p[1];
        ps->p += 2;
        switch (e) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '/': *out++ = '/'; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (ps->end - ps->p < 4 || hex4(ps->p, &cp)) { fail(ps, "bad \\u escape"); return NULL; }
            ps->p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u' &&
                !hex4(ps->p + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                ps->p += 6;
            }
            if (cp < 0x80) *out++ = (char)cp;
            else if (cp < 0x800) { *out++ = (char)(0xC0 | (cp >> 6)); *out++ = (char)(0x80 | (cp & 0x3F)); }
            else if (cp < 0x10000) {
                *out++ = (char)(0xE0 | (cp >> 12));
                *out++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *out++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *out++ = (char)(0xF0 | (cp >> 18));
                *out++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *out++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *out++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: fail(ps, "bad escape"); return NULL;
        }
    }
    if (ps->p >= ps->end) { fail(ps, "unterminated string"); return NULL; }
    ps->p++;     /* closing quote */
    *out = '\0'; /* out <= closing quote position: in place is safe */
    return start;
}

static int parse_value(parser* ps, int depth);

/* Appends child `c` to container `parent` (tracking the last child through `*last`). */
static void link_child(parser* ps, int parent, int* last, int c) {
    json_node* nodes = ps->doc->nodes;
    if (*last < 0) nodes[parent].first = c;
    else nodes[*last].next = c;
    *last = c;
    nodes[parent].count++;
}

static int parse_container(parser* ps, int depth, int is_obj) {
    int self = new_node(ps, is_obj ? JSON_OBJECT : JSON_ARRAY);
    if (self < 0) return -1;
    char close = is_obj ? '}' : ']';
    int last = -1;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) { ps->p++; return self; }
    for (;;) {
        const char* key = NULL;
        skip_ws(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected member name");
            if (!(key = parse_string(ps))) return -1;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "expected ':'");
            ps->p++;
        }
        int c = parse_value(ps, depth + 1);
        if (c < 0) return -1;
        ps->doc->nodes[c].key = key;
        link_child(ps, self, &last, c);
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == close) { ps->p++; return self; }
        return fail(ps, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_number(parser* ps) {
    char* s = ps->p;
    char* q = s;
    if (q < ps->end && *q == '-') q++;
    if (q >= ps->end || *q < '0' || *q > '9') return fail(ps, "unexpected character");
    while (q < ps->end && ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' || *q == '+' || *q == '-'))
        q++;
    char buf[64];
    size_t len = (size_t)(q - s);
    if (len >= sizeof(buf)) return fail(ps, "number too long");
    memcpy(buf, s, len);
    buf[len] = '\0';
    int self = new_node(ps, JSON_NUMBER);
    if (self < 0) return -1;
    json_node* n = &ps->doc->nodes[self];
    char* e;
    n->d = strtod(buf, &e);
    if (*e) return fail(ps, "bad number");
    if (!strpbrk(buf, ".eE")) {
        errno = 0;
        long long v = strtoll(buf, &e, 10);
        if (!*e && errno == 0) { n->is_int = 1; n->i = v; }
    }
    ps->p = q;
    return self;
}

static int parse_literal(parser* ps, const char* word, json_type t, int64_t v) {
    size_t len = strlen(word);
    if ((size_t)(ps->end - ps->p) < len || memcmp(ps->p, word, len)) return fail(ps, "unexpected character");
    ps->p += len;
    int self = new_node(ps, t);
    if (self >= 0) ps->doc->nodes[self].i = v;
    return self;
}

static int parse_value(parser* ps, int depth) {
    if (depth > JSON_MAX_DEPTH) return fail(ps, "nested too deeply");
    skip_ws(ps);
    if (ps->p >= ps->end) return fail(ps, "unexpected end of input");
    switch (*ps->p) {
    case '{': return parse_container(ps, depth, 1);
    case '[': return parse_container(ps, depth, 0);
    case '"': {
        int self = new_node(ps, JSON_STRING);
        if (self < 0) return -1;
        const char* s = parse_string(ps);
        if (!s) return -1;
        ps->doc->nodes[self].str = s;
        return self;
    }
    case 't': return parse_literal(ps, "true", JSON_BOOL, 1);
    case 'f': return parse_literal(ps, "false", JSON_BOOL, 0);
    case 'n': return parse_literal(ps, "null", JSON_NULL, 0);
    default: return parse_number(ps);
    }
}

int json_parse(json_doc* doc, const char* text, size_t len, char* err, size_t errlen) {
    memset(doc, 0, sizeof(*doc));
    doc->text = malloc(len + 1);
    if (!doc->text) { snprintf(err, errlen, "JSON error: out of memory"); return -1; }
    memcpy(doc->text, text, len);
    doc->text[len] = '\0';
    parser ps = {doc, doc->text, doc->text + len, doc->text, err, errlen};
    if (parse_value(&ps, 0) < 0) { json_free(doc); return -1; }
    skip_ws(&ps);
    if (ps.p != ps.end) { fail(&ps, "trailing characters"); json_free(doc); return -1; }
    return 0;
}

void json_free(json_doc* doc) {
    free(doc->text);
    free(doc->nodes);
    memset(doc, 0, sizeof(*doc));
}

const json_node* json_child(const json_doc* doc, const json_node* n) {
    return (n && n->first >= 0) ? &doc->nodes[n->first] : NULL;
}

const json_node* json_next(const json_doc* doc, const json_node* n) {
    return (n && n->next >= 0) ? &doc->nodes[n->next] : NULL;
}

const json_node* json_get(const json_doc* doc, const json_node* obj, const char* key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    const json_node* found = NULL; /* last duplicate wins, like Python's json */
    for (const json_node* c = json_child(doc, obj); c; c = json_next(doc, c))
        if (!strcmp(c->key, key)) found = c;
    return found;
}

const json_node* json_at(const json_doc* doc, const json_node* arr, int index) {
    if (!arr || arr->type != JSON_ARRAY || index < 0 || index >= arr->count) return NULL;
    const json_node* c = json_child(doc, arr);
    for (int i = 0; i < index; i++) c = json_next(doc, c);
    return c;
}
