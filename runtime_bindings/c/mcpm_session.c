/* mcpm text sessions: chat template + tokenizer + streaming text over mcpm_generate (see mcpm.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpm_image.h"
#include "mcpm_internal.h"
#include "mcpm_json.h"
#include "mcpm_tokenizer.h"
#include "mcpm_vision.h"

struct mcpm_session {
    mcpm_model* model;
    mcpm_tokenizer* tok;
    json_doc cfg;             /* mcpm-config.json; the strings below point into cfg.text */
    const char* user_fmt;     /* chat_template.roles.user, with {content} */
    const char* gen_prompt;   /* chat_template.generation_prompt */
    int add_bos;
    int32_t bos;              /* bos_token_id, -1 if none */
    int n_stop;
    int32_t* stop;            /* int32[n_stop] */
    int n_added;
    const char** added_text;  /* [n_added], sorted by byte length, longest first */
    size_t* added_len;        /* size_t[n_added] */
    int32_t* added_id;        /* int32[n_added] */
    int has_pending;
    int32_t pending;          /* the previous reply's last token: sampled, not yet fed */
    /* MiniCPM-V: mcpm-config.json "vision" (has_vision = 0 when absent) */
    int has_vision;
    int max_slices, scale_resolution, slice_mode, patch, query_num;
    int64_t max_pixels;       /* images with more pixels are downscaled first (>= 1) */
    mcpm_image_tokens_t image_tokens;
    /* images attached with mcpm_encode_image for the next chat turn */
    int n_images, images_cap;
    mcpm_image_plan_t* image_plans; /* mcpm_image_plan_t[images_cap]: the slice plan of each, in attach order */
    float* feats;             /* float32[feat_cap]: the features of every run of every image, in order, [rows, D] */
    size_t feat_rows, feat_cap; /* rows used (each D floats); floats allocated */
};

static int seterr(mcpm_session* s, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int seterr(mcpm_session* s, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mcpm_model_error_buffer(s->model), MCPM_ERR_LEN, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- growable buffers */

typedef struct {
    char* p;    /* char[cap] */
    size_t n, cap;
} sbuf;

static int sbuf_reserve(sbuf* b, size_t need) {
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char* p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int sbuf_add(sbuf* b, const char* text, size_t len) {
    if (sbuf_reserve(b, b->n + len + 1)) return -1;
    memcpy(b->p + b->n, text, len);
    b->n += len;
    b->p[b->n] = '\0';
    return 0;
}

typedef struct {
    int32_t* p; /* int32[cap] */
    int n, cap;
} ibuf;

static int ibuf_reserve(ibuf* b, int need) {
    if (need <= b->cap) return 0;
    int cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    int32_t* p = realloc(b->p, sizeof(int32_t) * (size_t)cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int ibuf_add(ibuf* b, int32_t id) {
    if (ibuf_reserve(b, b->n + 1)) return -1;
    b->p[b->n++] = id;
    return 0;
}

/* ---- loading */

static const json_node* get_typed(const json_doc* d, const json_node* obj, const char* key, json_type t) {
    const json_node* n = obj ? json_get(d, obj, key) : NULL;
    return n && n->type == t ? n : NULL;
}

/* A JSON integer in 0..vocab-1. */
static int is_token_id(const json_node* n, int vocab) {
    return n->type == JSON_NUMBER && n->is_int && n->i >= 0 && n->i < vocab;
}

/* Id of a stop string: an added token, else a piece of the model (not the unk id unless it is "<unk>"); -1. */
static int32_t token_id(const mcpm_session* s, const char* text) {
    size_t len = strlen(text);
    for (int i = 0; i < s->n_added; i++)
        if (s->added_len[i] == len && !memcmp(s->added_text[i], text, len)) return s->added_id[i];
    int32_t id = mcpm_tokenizer_piece_to_id(s->tok, text, len);
    if (id == mcpm_tokenizer_unk_id(s->tok) && strcmp(text, "<unk>")) return -1;
    return id;
}

/* An int field of obj in lo..hi into *out; -1 when missing or out of range. */
static int cfg_int(const json_doc* d, const json_node* obj, const char* key, int64_t lo, int64_t hi, int64_t* out) {
    const json_node* n = get_typed(d, obj, key, JSON_NUMBER);
    if (!n || !n->is_int || n->i < lo || n->i > hi) return -1;
    *out = n->i;
    return 0;
}

/* mcpm-config.json "vision" (docs/minicpmv.md), optional: absent in LM bundles. */
static int load_vision_config(mcpm_session* s, const char* path, const json_node* root) {
    const json_doc* d = &s->cfg;
    const json_node* v = json_get(d, root, "vision");
    if (!v) return 0;
    if (v->type != JSON_OBJECT) return seterr(s, "%s: \"vision\" is not an object", path);
    static const char* keys[5] = {"max_slices", "scale_resolution", "patch", "query_num", "max_pixels"};
    int64_t x[5] = {MCPM_IMAGE_MAX_SLICES, MCPM_IMAGE_SCALE_RESOLUTION, MCPM_IMAGE_PATCH, 0, 0};
    for (int k = 0; k < 5; k++) /* query_num and max_pixels (the apps' image size limit too) are required */
        if ((json_get(d, v, keys[k]) || k >= 3) && cfg_int(d, v, keys[k], 1, k == 4 ? INT64_MAX : 1 << 20, &x[k]))
            return seterr(s, "%s: vision.%s is missing or out of range", path, keys[k]);
    s->max_slices = (int)x[0];
    s->scale_resolution = (int)x[1];
    s->patch = (int)x[2];
    s->query_num = (int)x[3];
    s->max_pixels = x[4];
    const json_node* sm = get_typed(d, v, "slice_mode", JSON_BOOL);
    s->slice_mode = sm ? (int)sm->i : 1;
    const json_node* it = get_typed(d, v, "image_tokens", JSON_OBJECT);
    static const char* tk[6] = {"image_start", "image_end", "slice_start", "slice_end", "unk", "newline"};
    int32_t* ids[6] = {&s->image_tokens.image_start, &s->image_tokens.image_end, &s->image_tokens.slice_start,
                       &s->image_tokens.slice_end, &s->image_tokens.unk, &s->image_tokens.newline};
    for (int k = 0; k < 6; k++) {
        int64_t id;
        if (cfg_int(d, it, tk[k], 0, mcpm_vocab_size(s->model) - 1, &id))
            return seterr(s, "%s: vision.image_tokens.%s is missing or not a token id", path, tk[k]);
        *ids[k] = (int32_t)id;
    }
    s->has_vision = 1;
    return 0;
}

static int load_config(mcpm_session* s, const char* dir) {
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/mcpm-config.json", dir);
    char* text = NULL;
    size_t len = 0;
    if (!(text = mcpm_read_file(path, &len))) return seterr(s, "cannot read %s", path);
    int rc = json_parse(&s->cfg, text, len, err, sizeof err);
    free(text);
    if (rc) return seterr(s, "%s: invalid JSON: %s", path, err);
    const json_doc* d = &s->cfg;
    const json_node* root = &d->nodes[0];
    if (root->type != JSON_OBJECT) return seterr(s, "%s: not a JSON object", path);
    const json_node* version = json_get(d, root, "format_version");
    if (!version || version->type != JSON_NUMBER || !version->is_int || version->i != 1)
        return seterr(s, "%s: format_version is not 1 (re-export the bundle with this mcpm)", path);
    const json_node* tmpl = get_typed(d, root, "chat_template", JSON_OBJECT);
    const json_node* roles = get_typed(d, tmpl, "roles", JSON_OBJECT);
    const json_node* user = get_typed(d, roles, "user", JSON_STRING);
    const json_node* gen = get_typed(d, tmpl, "generation_prompt", JSON_STRING);
    if (!user || !gen)
        return seterr(s, "%s: chat_template needs roles.user and generation_prompt strings", path);
    if (!strstr(user->str, "{content}")) return seterr(s, "%s: chat_template.roles.user has no {content}", path);
    s->user_fmt = user->str;
    s->gen_prompt = gen->str;
    const json_node* add_bos = get_typed(d, tmpl, "add_bos", JSON_BOOL);
    s->add_bos = add_bos ? (int)add_bos->i : 0;
    int vocab = mcpm_vocab_size(s->model);
    const json_node* ctx = json_get(d, root, "context_length"); /* a copy of plan.json's max_ctx: must agree */
    if (ctx && (ctx->type != JSON_NUMBER || !ctx->is_int || ctx->i != mcpm_context_length(s->model)))
        return seterr(s, "%s: context_length does not match plan.json's max_ctx %d: the bundle's files come from "
                      "different exports (re-export the bundle)", path, mcpm_context_length(s->model));
    const json_node* bos = json_get(d, root, "bos_token_id");
    if (bos && bos->type != JSON_NULL && !is_token_id(bos, vocab))
        return seterr(s, "%s: bos_token_id is not a token id in 0..%d (re-export the bundle)", path, vocab - 1);
    s->bos = bos && bos->type != JSON_NULL ? (int32_t)bos->i : -1;

    const json_node* tk = get_typed(d, root, "tokenizer", JSON_OBJECT);
    const json_node* kind = get_typed(d, tk, "kind", JSON_STRING);
    const json_node* file = get_typed(d, tk, "file", JSON_STRING);
    if (!kind || !file) return seterr(s, "%s: tokenizer needs kind and file strings", path);
    if (strcmp(kind->str, "sentencepiece"))
        return seterr(s, "%s: tokenizer kind %s is not supported by the C session (only sentencepiece)", path,
                      kind->str);
    if (!mcpm_plain_file_name(file->str))
        return seterr(s, "%s: tokenizer file '%.200s' is not a file name inside the bundle (re-export the bundle)", path,
                      file->str);
    char tpath[4096];
    snprintf(tpath, sizeof tpath, "%s/%s", dir, file->str);
    s->tok = mcpm_tokenizer_load(tpath, err, sizeof err);
    if (!s->tok) return seterr(s, "cannot load the tokenizer: %s", err);

    const json_node* added = get_typed(d, tk, "added_tokens", JSON_OBJECT);
    int n = added ? added->count : 0;
    s->added_text = calloc((size_t)n + 1, sizeof *s->added_text);
    s->added_len = calloc((size_t)n + 1, sizeof *s->added_len);
    s->added_id = calloc((size_t)n + 1, sizeof *s->added_id);
    if (!s->added_text || !s->added_len || !s->added_id) return seterr(s, "out of memory");
    for (const json_node* a = added ? json_child(d, added) : NULL; a; a = json_next(d, a)) {
        if (a->type != JSON_NUMBER || !a->is_int || a->i < 0 || a->i >= mcpm_vocab_size(s->model))
            return seterr(s, "%s: added token %s has no valid id", path, a->key);
        size_t alen = strlen(a->key);
        if (!alen) continue;
        int j = s->n_added++; /* insertion sort: longest first, stable otherwise */
        while (j > 0 && s->added_len[j - 1] < alen) {
            s->added_text[j] = s->added_text[j - 1];
            s->added_len[j] = s->added_len[j - 1];
            s->added_id[j] = s->added_id[j - 1];
            j--;
        }
        s->added_text[j] = a->key;
        s->added_len[j] = alen;
        s->added_id[j] = (int32_t)a->i;
    }

    const json_node* stops = get_typed(d, root, "stop_token_ids", JSON_ARRAY);
    const json_node* stop_text = get_typed(d, tmpl, "stop", JSON_ARRAY);
    int cap = (stops ? stops->count : 0) + (stop_text ? stop_text->count : 0);
    s->stop = calloc((size_t)cap + 1, sizeof *s->stop);
    if (!s->stop) return seterr(s, "out of memory");
    if (json_get(d, root, "stop_token_ids") && !stops)
        return seterr(s, "%s: stop_token_ids is not a list (re-export the bundle)", path);
    for (const json_node* e = stops ? json_child(d, stops) : NULL; e; e = json_next(d, e)) {
        if (!is_token_id(e, vocab))
            return seterr(s, "%s: stop_token_ids holds something that is not a token id in 0..%d (re-export the "
                          "bundle)", path, vocab - 1);
        s->stop[s->n_stop++] = (int32_t)e->i;
    }
    if (!s->n_stop) /* older bundles: the template's stop strings */
        for (const json_node* e = stop_text ? json_child(d, stop_text) : NULL; e; e = json_next(d, e)) {
            int32_t id = e->type == JSON_STRING ? token_id(s, e->str) : -1;
            if (id >= 0 && id < mcpm_vocab_size(s->model)) s->stop[s->n_stop++] = id;
        }
    return load_vision_config(s, path, root);
}

/* Ids past the tokenizer's pieces that are not added tokens have no text (padded vocabularies): the model's sampler
 * never draws them. */
static int mask_undecodable(mcpm_session* s) {
    int vocab = mcpm_vocab_size(s->model), pieces = mcpm_tokenizer_vocab_size(s->tok);
    if (pieces >= vocab) return mcpm_set_sampleable(s->model, NULL, vocab);
    unsigned char* allowed = calloc((size_t)vocab, 1); /* uint8[vocab] */
    if (!allowed) return seterr(s, "out of memory");
    memset(allowed, 1, (size_t)pieces);
    for (int i = 0; i < s->n_added; i++)
        if (s->added_id[i] >= 0 && s->added_id[i] < vocab) allowed[s->added_id[i]] = 1;
    int rc = mcpm_set_sampleable(s->model, allowed, vocab);
    free(allowed);
    return rc;
}

mcpm_session* mcpm_session_new(mcpm_model* model) {
    if (!model) return NULL;
    mcpm_session* s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(mcpm_model_error_buffer(model), MCPM_ERR_LEN, "out of memory");
        return NULL;
    }
    s->model = model;
    if (load_config(s, mcpm_model_bundle_dir(model)) || mask_undecodable(s)) {
        mcpm_session_free(s);
        return NULL;
    }
    return s;
}

void mcpm_session_free(mcpm_session* s) {
    if (!s) return;
    mcpm_tokenizer_free(s->tok);
    json_free(&s->cfg);
    free(s->added_text);
    free(s->added_len);
    free(s->added_id);
    free(s->stop);
    free(s->image_plans);
    free(s->feats);
    free(s);
}

void mcpm_session_clear_images(mcpm_session* s) {
    if (!s) return;
    s->n_images = 0;
    s->feat_rows = 0;
    s->feat_cap = 0;
    free(s->feats); /* float32[Q * D] per vision run: large, freed rather than kept */
    s->feats = NULL;
}

void mcpm_session_reset(mcpm_session* s) {
    if (!s) return;
    mcpm_reset(s->model);
    s->has_pending = 0;
    mcpm_session_clear_images(s);
}

int64_t mcpm_session_max_pixels(const mcpm_session* s) { return s && s->query_num > 0 ? s->max_pixels : 0; }

const char* mcpm_session_last_error(const mcpm_session* s) { return s ? mcpm_last_error(s->model) : ""; }

/* ---- images (MiniCPM-V) */

/* Patch grid of a vision run over a w x h image: rows, cols (ceil, as the vision tower pads). */
static int patch_count(int w, int h, int p) { return ((h + p - 1) / p) * ((w + p - 1) / p); }

int mcpm_encode_image(mcpm_session* s, const uint8_t* rgb, int w, int h) {
    if (!s) return -1;
    mcpm_model* m = s->model;
    mcpm_model_error_buffer(m)[0] = '\0';
    const mcpm_vision_info* vi = mcpm_model_vision_info(m);
    if (!vi) return seterr(s, "mcpm_encode_image: this bundle has no vision encoder: export a MiniCPM-V model");
    if (!s->has_vision)
        return seterr(s, "mcpm_encode_image: mcpm-config.json has no \"vision\" section: re-export the bundle");
    if (s->patch != vi->patch || s->query_num != vi->query_num)
        return seterr(s, "mcpm_encode_image: mcpm-config.json vision (patch %d, query_num %d) does not match plan.json "
                      "(patch %d, query_num %d): re-export the bundle", s->patch, s->query_num, vi->patch, vi->query_num);
    if (!rgb) return seterr(s, "mcpm_encode_image: rgb is NULL");
    if (w <= 0 || h <= 0) return seterr(s, "mcpm_encode_image: the image is empty (%dx%d pixels)", w, h);
    double t0 = mcpm_now_ms();
    char err[256];
    int p = vi->patch, q = vi->query_num, dim = vi->hidden, g = vi->pos_grid;
    uint8_t* small = NULL;   /* uint8[sh][sw][3]: the downscaled image, when over max_pixels */
    uint8_t* refine = NULL;  /* uint8[refine_h][refine_w][3] */
    uint8_t* overview = NULL; /* uint8[overview_h][overview_w][3] */
    float *chw = NULL, *patches = NULL, *pos = NULL, *key = NULL;
    char notice[128] = "";
    int rc = -1, sw = w, sh = h;
    if (mcpm_vision_fit_pixels(w, h, s->max_pixels, &sw, &sh) == 1) {
        small = malloc((size_t)sw * (size_t)sh * 3);
        if (!small) { seterr(s, "out of memory"); goto done; }
        if (mcpm_image_resize_rgb8(rgb, w, h, small, sw, sh, err, sizeof err)) {
            seterr(s, "mcpm_encode_image: %s", err);
            goto done;
        }
        snprintf(notice, sizeof notice, "image %dx%d downscaled to %dx%d", w, h, sw, sh);
        rgb = small;
    }
    mcpm_image_plan_t plan;
    if (mcpm_image_plan(sw, sh, s->max_slices, s->scale_resolution, p, !s->slice_mode, &plan, err, sizeof err)) {
        seterr(s, "mcpm_encode_image: %s", err);
        goto done;
    }
    /* every run must fit the vision entry: checked before any work */
    int n_over = patch_count(plan.overview_w, plan.overview_h, p);
    int n_slice = plan.cols > 0 ? patch_count(plan.slice_w, plan.slice_h, p) : 0;
    int n_most = n_over > n_slice ? n_over : n_slice;
    if (n_most > vi->max_patches) {
        int big = n_over >= n_slice;
        seterr(s, "mcpm_encode_image: the %dx%d image needs %s of %dx%d pixels = %d patches, more than the vision "
               "encoder's max_patches %d (too elongated; re-export with a larger --max-patches)", sw, sh,
               big ? "an overview" : "slices", big ? plan.overview_w : plan.slice_w,
               big ? plan.overview_h : plan.slice_h, n_most, vi->max_patches);
        goto done;
    }
    size_t rows_needed = s->feat_rows + (size_t)plan.num_images * (size_t)q;
    if (rows_needed * (size_t)dim > s->feat_cap) {
        size_t cap = rows_needed * (size_t)dim * 2;
        float* f = realloc(s->feats, sizeof(float) * cap);
        if (!f) { seterr(s, "out of memory"); goto done; }
        s->feats = f;
        s->feat_cap = cap;
    }
    if (s->n_images == s->images_cap) {
        int cap = s->images_cap ? 2 * s->images_cap : 4;
        mcpm_image_plan_t* ps = realloc(s->image_plans, sizeof(mcpm_image_plan_t) * (size_t)cap);
        if (!ps) { seterr(s, "out of memory"); goto done; }
        s->image_plans = ps;
        s->images_cap = cap;
    }
    int max_w = plan.overview_w > plan.slice_w ? plan.overview_w : plan.slice_w;
    int max_h = plan.overview_h > plan.slice_h ? plan.overview_h : plan.slice_h;
    chw = malloc(sizeof(float) * 3 * (size_t)max_w * (size_t)max_h);           /* float32[3][h][w] of one run */
    patches = malloc(sizeof(float) * (size_t)n_most * 3 * (size_t)p * (size_t)p); /* float32[n, 3*p*p] */
    pos = malloc(sizeof(float) * (size_t)n_most * (size_t)g * (size_t)g);         /* float32[n, G*G] */
    key = malloc(sizeof(float) * (size_t)n_most * (size_t)dim);                   /* float32[n, D] */
    overview = malloc((size_t)plan.overview_w * (size_t)plan.overview_h * 3);
    if (plan.cols > 0) refine = malloc((size_t)plan.refine_w * (size_t)plan.refine_h * 3);
    if (!chw || !patches || !pos || !key || !overview || (plan.cols > 0 && !refine)) { seterr(s, "out of memory"); goto done; }
    if (mcpm_image_resize_rgb8(rgb, sw, sh, overview, plan.overview_w, plan.overview_h, err, sizeof err) ||
        (refine && mcpm_image_resize_rgb8(rgb, sw, sh, refine, plan.refine_w, plan.refine_h, err, sizeof err))) {
        seterr(s, "mcpm_encode_image: %s", err);
        goto done;
    }
    int total_patches = 0;
    for (int i = 0; i < plan.num_images; i++) {
        const uint8_t* src = i == 0 ? overview : refine;
        int src_w = i == 0 ? plan.overview_w : plan.refine_w, src_h = i == 0 ? plan.overview_h : plan.refine_h;
        int x0 = 0, y0 = 0, iw = src_w, ih = src_h;
        if (i > 0) {
            int r = (i - 1) / plan.cols, c = (i - 1) % plan.cols;
            x0 = c * plan.slice_w;
            y0 = r * plan.slice_h;
            iw = plan.slice_w;
            ih = plan.slice_h;
        }
        int rows = (ih + p - 1) / p, cols = (iw + p - 1) / p, n = rows * cols;
        if (mcpm_image_normalize_chw(src, src_w, src_h, x0, y0, iw, ih, chw, err, sizeof err)) {
            seterr(s, "mcpm_encode_image: %s", err);
            goto done;
        }
        if (mcpm_vision_patchify(chw, iw, ih, p, patches) != n || mcpm_vision_pos_interp(rows, cols, g, pos) ||
            mcpm_vision_key_pos(dim, rows, cols, key)) {
            seterr(s, "mcpm_encode_image: cannot prepare the vision inputs (out of memory)");
            goto done;
        }
        float* out = s->feats + (s->feat_rows + (size_t)i * (size_t)q) * (size_t)dim; /* float32[Q, D] */
        if (mcpm_model_aborted(m)) { /* the cancel point of each vision run: nothing is attached */
            seterr(s, "cancelled: the image was not attached (stopped after %d of %d vision runs)", i, plan.num_images);
            goto done;
        }
        if (mcpm_model_vision_run(m, patches, pos, key, n, out)) goto done;
        total_patches += n;
    }
    s->feat_rows = rows_needed;
    s->image_plans[s->n_images++] = plan;
    if (notice[0]) mcpm_model_set_notice(m, notice);
    mcpm_model_set_image_stats(m, mcpm_now_ms() - t0, plan.num_images, total_patches);
    rc = plan.num_images;
done:
    free(small);
    free(refine);
    free(overview);
    free(chw);
    free(patches);
    free(pos);
    free(key);
    return rc;
}

int mcpm_vision_session_features(const mcpm_session* s, float* out, int max_rows) {
    if (!s) return -1;
    const mcpm_vision_info* vi = mcpm_model_vision_info(s->model);
    if (!out || !vi) return (int)s->feat_rows;
    if ((size_t)max_rows < s->feat_rows) return -1;
    if (s->feat_rows) memcpy(out, s->feats, sizeof(float) * s->feat_rows * (size_t)vi->hidden);
    return (int)s->feat_rows;
}

/* ---- encode / decode */

static int encode_plain(mcpm_session* s, const char* text, size_t len, ibuf* out) {
    if (!len) return 0;
    int n = mcpm_tokenizer_encode(s->tok, text, len, NULL, 0);
    if (n < 0 || ibuf_reserve(out, out->n + n)) return seterr(s, "cannot encode the text (out of memory)");
    if (mcpm_tokenizer_encode(s->tok, text, len, out->p + out->n, n) != n) return seterr(s, "cannot encode the text");
    out->n += n;
    return 0;
}

/* Added tokens first (leftmost, longest first), the text between them through SentencePiece. */
static int encode(mcpm_session* s, const char* text, size_t len, ibuf* out) {
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        for (int k = 0; k < s->n_added; k++) {
            if (s->added_len[k] > len - i || memcmp(text + i, s->added_text[k], s->added_len[k])) continue;
            if (encode_plain(s, text + start, i - start, out) || ibuf_add(out, s->added_id[k]))
                return seterr(s, "cannot encode the text");
            i += s->added_len[k] - 1;
            start = i + 1;
            break;
        }
    }
    return encode_plain(s, text + start, len - start, out);
}

static int added_text_of(const mcpm_session* s, int32_t id) {
    for (int k = 0; k < s->n_added; k++)
        if (s->added_id[k] == id) return k;
    return -1;
}

static int decode_plain(mcpm_session* s, const int32_t* ids, int n, sbuf* out) {
    if (!n) return 0;
    int len = mcpm_tokenizer_decode(s->tok, ids, n, NULL, 0);
    if (len < 0) return seterr(s, "cannot decode the reply: a token id is not in the tokenizer");
    if (sbuf_reserve(out, out->n + (size_t)len + 1)) return seterr(s, "out of memory");
    if (mcpm_tokenizer_decode(s->tok, ids, n, out->p + out->n, (size_t)len + 1) != len)
        return seterr(s, "cannot decode the reply");
    out->n += (size_t)len;
    return 0;
}

/* ids int32[n] -> out (replaced), added tokens as their text. */
static int decode(mcpm_session* s, const int32_t* ids, int n, sbuf* out) {
    out->n = 0;
    if (sbuf_reserve(out, 1)) return seterr(s, "out of memory");
    out->p[0] = '\0';
    int run = 0;
    for (int i = 0; i < n; i++) {
        int k = added_text_of(s, ids[i]);
        if (k < 0) continue;
        if (decode_plain(s, ids + run, i - run, out) || sbuf_add(out, s->added_text[k], s->added_len[k]))
            return seterr(s, "cannot decode the reply");
        run = i + 1;
    }
    return decode_plain(s, ids + run, n - run, out);
}

/* ---- generation with streamed text */

typedef struct {
    mcpm_session* s;
    ibuf ids;           /* anchor (the last fed token) + generated non-stop tokens */
    sbuf text;          /* decode(ids) */
    size_t emitted;     /* bytes of text already given to cb (starting with the anchor's text) */
    int32_t last;       /* the last generated token */
    int n_tokens;
    int failed;
    mcpm_text_callback cb;
    void* user;
} stream;

static const char REPLACEMENT[] = "\xef\xbf\xbd"; /* U+FFFD: an incomplete multi-byte character */

static int on_token(int32_t token, void* user) {
    stream* st = user;
    mcpm_session* s = st->s;
    st->last = token;
    st->n_tokens++;
    for (int i = 0; i < s->n_stop; i++)
        if (s->stop[i] == token) return 0;
    if (ibuf_add(&st->ids, token) || decode(s, st->ids.p, st->ids.n, &st->text)) {
        if (!mcpm_model_error_buffer(s->model)[0]) seterr(s, "out of memory");
        st->failed = 1;
        return 1;
    }
    size_t n = st->text.n;
    if (n >= 3 && !memcmp(st->text.p + n - 3, REPLACEMENT, 3)) return 0; /* wait for the rest of the character */
    if (n <= st->emitted) return 0;
    size_t from = st->emitted;
    st->emitted = n;
    if (!st->cb) return 0;
    char saved = st->text.p[n];
    int stop = st->cb(st->text.p + from, n - from, st->user);
    st->text.p[n] = saved;
    return stop ? 1 : 0;
}

/* Feeds ids int32[n] and generates; keeps the last generated token pending. */
static int run(mcpm_session* s, const int32_t* ids, int n, const mcpm_image_prompt* img, int max_new_tokens,
               const mcpm_sampling* sp, mcpm_text_callback cb, void* user) {
    stream st = {.s = s, .cb = cb, .user = user};
    int rc = -1;
    if (ibuf_add(&st.ids, ids[n - 1]) || decode(s, st.ids.p, 1, &st.text)) {
        if (!mcpm_model_error_buffer(s->model)[0]) seterr(s, "out of memory");
        goto done;
    }
    st.emitted = st.text.n;
    mcpm_model_error_buffer(s->model)[0] = '\0';
    rc = mcpm_generate_image(s->model, ids, n, img, max_new_tokens, sp, s->stop, s->n_stop, on_token, &st);
    if (st.n_tokens > 0) {
        s->has_pending = 1;
        s->pending = st.last;
    } else if (rc >= 0) {
        s->has_pending = 0;
    }
    if (st.failed) rc = -1;
done:
    free(st.ids.p);
    free(st.text.p);
    return rc;
}

static int check_fits(mcpm_session* s, int n) {
    int used = mcpm_position(s->model), ctx = mcpm_context_length(s->model);
    if (n >= ctx && s->n_images > 0)
        return seterr(s, "the message and its %d image(s) are longer than the context (%d tokens; the bundle holds "
                      "%d): attach fewer images, or re-export with a longer --context-length", s->n_images, n, ctx);
    if (n >= ctx)
        return seterr(s, "the message is longer than the context (%d tokens; the bundle holds %d): shorten it, or "
                      "re-export with a longer --context-length", n, ctx);
    if (used + n >= ctx)
        return seterr(s, "the conversation is full (%d of %d tokens used, this message needs %d)", used, ctx, n);
    return 0;
}

/* text (replaced): fmt from its start (with_head) or from after its first {content} (!with_head), every
 * {content} replaced by msg char[len], then tail. */
static int render(sbuf* text, const char* fmt, int with_head, const char* msg, size_t len, const char* tail) {
    text->n = 0;
    if (sbuf_reserve(text, 1)) return -1;
    text->p[0] = '\0';
    const char* f = fmt;
    if (!with_head) f = strstr(fmt, "{content}") + strlen("{content}");
    for (;;) { /* every {content} of the format */
        const char* hole = strstr(f, "{content}");
        if (!hole) break;
        if (sbuf_add(text, f, (size_t)(hole - f)) || sbuf_add(text, msg, len)) return -1;
        f = hole + strlen("{content}");
    }
    return sbuf_add(text, f, strlen(f)) || sbuf_add(text, tail, strlen(tail)) ? -1 : 0;
}

/* The ids of a turn with the pending images (docs/minicpmv.md): encode(user format before {content}),
 * placeholder ids of each image, encode("\n" + message + user format after {content} + generation prompt);
 * image[i] = 1 at the positions strictly inside each <image> ... </image> of the placeholders (uint8[ids->n]). */
static int image_turn(mcpm_session* s, const char* msg, size_t len, ibuf* ids, uint8_t** image) {
    sbuf text = {0};
    int rc = -1;
    const char* hole = strstr(s->user_fmt, "{content}");
    if (encode(s, s->user_fmt, (size_t)(hole - s->user_fmt), ids)) goto done;
    int ph_start = ids->n;
    for (int k = 0; k < s->n_images; k++) {
        int n = mcpm_image_placeholder_ids(&s->image_plans[k], s->query_num, &s->image_tokens, NULL, 0);
        if (n < 0 || ibuf_reserve(ids, ids->n + n)) { seterr(s, "out of memory"); goto done; }
        if (mcpm_image_placeholder_ids(&s->image_plans[k], s->query_num, &s->image_tokens, ids->p + ids->n, n) != n) {
            seterr(s, "cannot build the image placeholders");
            goto done;
        }
        ids->n += n;
    }
    int ph_end = ids->n;
    if (sbuf_add(&text, "\n", 1) || sbuf_add(&text, msg, len)) { seterr(s, "out of memory"); goto done; }
    sbuf rest = {0};
    if (render(&rest, s->user_fmt, 0, msg, len, s->gen_prompt) || sbuf_add(&text, rest.p, rest.n)) {
        free(rest.p);
        seterr(s, "out of memory");
        goto done;
    }
    free(rest.p);
    if (encode(s, text.p, text.n, ids)) goto done;
    *image = calloc((size_t)ids->n + 1, 1);
    if (!*image) { seterr(s, "out of memory"); goto done; }
    int inside = 0;
    for (int i = ph_start; i < ph_end; i++) {
        int32_t t = ids->p[i];
        if (t == s->image_tokens.image_start) inside = 1;
        else if (t == s->image_tokens.image_end) inside = 0;
        else (*image)[i] = (uint8_t)inside;
    }
    rc = 0;
done:
    free(text.p);
    return rc;
}

int mcpm_session_chat(mcpm_session* s, const char* user_message, int max_new_tokens, const mcpm_sampling* sp,
                      mcpm_text_callback cb, void* user) {
    if (!s) return -1;
    if (!user_message) return seterr(s, "mcpm_session_chat: user_message is NULL");
    /* the message, stripped of ASCII whitespace at both ends, in the user format, then the generation prompt */
    const char* ws = " \t\n\r\v\f";
    size_t a = 0, b = strlen(user_message);
    while (a < b && strchr(ws, user_message[a])) a++;
    while (b > a && strchr(ws, user_message[b - 1])) b--;
    sbuf text = {0};
    ibuf ids = {0};
    uint8_t* image = NULL; /* uint8[ids.n]: image positions of a turn with images */
    int rc = -1;
    int first = mcpm_position(s->model) == 0 && !s->has_pending;
    if ((s->has_pending && ibuf_add(&ids, s->pending)) || (first && s->add_bos && s->bos >= 0 && ibuf_add(&ids, s->bos))) {
        seterr(s, "out of memory");
        goto done;
    }
    if (s->n_images > 0) {
        if (image_turn(s, user_message + a, b - a, &ids, &image)) goto done;
    } else {
        if (render(&text, s->user_fmt, 1, user_message + a, b - a, s->gen_prompt)) { seterr(s, "out of memory"); goto done; }
        if (encode(s, text.p, text.n, &ids)) goto done;
    }
    if (check_fits(s, ids.n)) goto done;
    if (!ids.n) { seterr(s, "mcpm_session_chat: the turn is empty (no template text and no message)"); goto done; }
    if (image) {
        mcpm_image_prompt img = {image, s->feats, (int)s->feat_rows};
        rc = run(s, ids.p, ids.n, &img, max_new_tokens, sp, cb, user);
        mcpm_session_clear_images(s); /* the features were fed (or failed to): not kept for another turn */
    } else {
        rc = run(s, ids.p, ids.n, NULL, max_new_tokens, sp, cb, user);
    }
done:
    free(text.p);
    free(ids.p);
    free(image);
    return rc;
}

int mcpm_session_complete(mcpm_session* s, const char* prompt, int max_new_tokens, const mcpm_sampling* sp,
                          mcpm_text_callback cb, void* user) {
    if (!s) return -1;
    if (!prompt) return seterr(s, "mcpm_session_complete: prompt is NULL");
    mcpm_session_reset(s);
    ibuf ids = {0};
    int rc = -1;
    if (s->bos >= 0 && ibuf_add(&ids, s->bos)) { seterr(s, "out of memory"); goto done; }
    if (encode(s, prompt, strlen(prompt), &ids)) goto done;
    if (!ids.n) { seterr(s, "mcpm_session_complete: the prompt is empty and the bundle has no BOS token"); goto done; }
    if (check_fits(s, ids.n)) goto done;
    rc = run(s, ids.p, ids.n, NULL, max_new_tokens, sp, cb, user);
done:
    free(ids.p);
    return rc;
}

/* ---- for the self-test (mcpm_selftest.c) */

mcpm_model* mcpm_session_model(const mcpm_session* s) { return s->model; }

const json_doc* mcpm_session_config(const mcpm_session* s) { return &s->cfg; }

int mcpm_session_encode_bos(mcpm_session* s, const char* text, size_t len, int32_t** ids) {
    ibuf out = {0};
    *ids = NULL;
    if ((s->bos >= 0 && ibuf_add(&out, s->bos)) || encode(s, text, len, &out)) {
        free(out.p);
        return -1;
    }
    *ids = out.p;
    return out.n;
}

int mcpm_session_image_prompt(mcpm_session* s, const char* msg, int32_t** ids, uint8_t** image,
                              mcpm_image_prompt* img) {
    ibuf out = {0};
    *ids = NULL;
    *image = NULL;
    if (s->n_images < 1) return seterr(s, "no image is attached");
    if (s->add_bos && s->bos >= 0 && ibuf_add(&out, s->bos)) return seterr(s, "out of memory");
    if (image_turn(s, msg, strlen(msg), &out, image)) {
        free(out.p);
        return -1;
    }
    img->image = *image;
    img->feats = s->feats;
    img->n_rows = (int)s->feat_rows;
    *ids = out.p;
    return out.n;
}
