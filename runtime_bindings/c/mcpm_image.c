/* mcpm image preprocessing (see mcpm_image.h): slice plan, RGB conversion, Pillow-exact bicubic resize,
 * normalization and placeholder ids, equal to export/models/minicpmv/preprocess.py. Only malloc/free and <math.h>. */
#include "mcpm_image.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>

/* The resize weights must be computed with separately rounded multiplies and adds, as Pillow's C does on x86-64. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define PRECISION_BITS (32 - 8 - 2) /* Pillow's fixed point for 8-bit resampling */

/* ---- one-line error messages without stdio */

typedef struct {
    char* buf; /* char[len] or NULL */
    size_t len;
    size_t pos;
} msg_t;

static void msg_str(msg_t* m, const char* s) {
    if (!m->buf || m->len == 0) return;
    for (; *s && m->pos + 1 < m->len; s++) m->buf[m->pos++] = *s;
    m->buf[m->pos] = '\0';
}

static void msg_int(msg_t* m, long long v) {
    char tmp[24]; /* char[24]: digits of a 64-bit value, reversed */
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u && n < 22);
    if (v < 0) tmp[n++] = '-';
    char out[24]; /* char[24]: the digits in order + NUL */
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    msg_str(m, out);
}

static msg_t msg_begin(char* err, size_t err_len) {
    msg_t m = {err, err_len, 0};
    if (err && err_len) err[0] = '\0';
    return m;
}

/* "<a><w>x<h><b>" and -1 */
static int fail_size(char* err, size_t err_len, const char* a, long long w, long long h, const char* b) {
    msg_t m = msg_begin(err, err_len);
    msg_str(&m, a);
    msg_int(&m, w);
    msg_str(&m, "x");
    msg_int(&m, h);
    msg_str(&m, b);
    return -1;
}

static int fail(char* err, size_t err_len, const char* text) {
    msg_t m = msg_begin(err, err_len);
    msg_str(&m, text);
    return -1;
}

/* ---- slice plan */

/* Python's round() of a double: halves go to the even neighbour (independent of the FPU rounding mode). */
static double round_half_even(double x) {
    double f = floor(x);
    double d = x - f; /* exact */
    if (d > 0.5) return f + 1.0;
    if (d < 0.5) return f;
    return fmod(f, 2.0) == 0.0 ? f : f + 1.0;
}

/* ensure_divide: max(round(length / patch) * patch, patch) */
static double ensure_divide(double length, int patch) {
    double v = round_half_even(length / (double)patch) * (double)patch;
    return v > (double)patch ? v : (double)patch;
}

/* best_resize; width and height are integral or (refine cells) quotients, as in the Python code. */
static void best_resize(double width, double height, int scale_resolution, int patch, int allow_upscale,
                        double* out_w, double* out_h) {
    double s = (double)scale_resolution;
    if (width * height > s * s || allow_upscale) {
        double r = width / height;
        height = trunc(s / sqrt(r));
        width = trunc(height * r);
    }
    *out_w = ensure_divide(width, patch);
    *out_h = ensure_divide(height, patch);
}

int mcpm_image_plan(int w, int h, int max_slices, int scale_resolution, int patch, int never_split,
                    mcpm_image_plan_t* out, char* err, size_t err_len) {
    if (!out) return fail(err, err_len, "mcpm_image_plan: out is NULL");
    if (w <= 0 || h <= 0) return fail_size(err, err_len, "the image is empty (", w, h, " pixels)");
    if (scale_resolution <= 0 || scale_resolution > (1 << 20) || patch <= 0 || patch > scale_resolution)
        return fail_size(err, err_len, "bad slicing settings (scale_resolution x patch = ", scale_resolution, patch,
                         "; want 0 < patch <= scale_resolution <= 1048576)");
    mcpm_image_plan_t p = {0};
    double log_ratio = log((double)w / (double)h);
    double s2 = (double)scale_resolution * (double)scale_resolution; /* exact: < 2^41 */
    double ratio = (double)((int64_t)w * (int64_t)h) / s2;          /* w*h < 2^62; exact below 2^53 */
    double c = ceil(ratio);
    int multiple = c < (double)max_slices ? (int)c : max_slices;
    double ow, oh;
    if (multiple <= 1 || never_split) {
        best_resize((double)w, (double)h, scale_resolution, patch, 1, &ow, &oh);
    } else {
        best_resize((double)w, (double)h, scale_resolution, patch, 0, &ow, &oh);
        int cols = 1, rows = 1;
        double best = INFINITY;
        for (int n = multiple - 1; n <= multiple + 1; n++) {
            if (n == 1 || n > max_slices || n < 1) continue;
            for (int m = 1; m <= n; m++) {
                if (n % m) continue;
                double e = fabs(log_ratio - log((double)m / (double)(n / m)));
                if (e < best) {
                    cols = m;
                    rows = n / m;
                    best = e;
                }
            }
        }
        double rw = ensure_divide((double)w, cols), rh = ensure_divide((double)h, rows); /* may pass INT_MAX */
        double cw, ch;
        best_resize(rw / (double)cols, rh / (double)rows, scale_resolution, patch, 1, &cw, &ch);
        if (cw * cols > (double)INT_MAX || ch * rows > (double)INT_MAX)
            return fail_size(err, err_len, "the image is too large (", w, h, " pixels)");
        p.cols = cols;
        p.rows = rows;
        p.slice_w = (int)cw;
        p.slice_h = (int)ch;
        p.refine_w = p.slice_w * cols;
        p.refine_h = p.slice_h * rows;
    }
    if (ow > (double)INT_MAX || oh > (double)INT_MAX)
        return fail_size(err, err_len, "the image is too large (", w, h, " pixels)");
    p.overview_w = (int)ow;
    p.overview_h = (int)oh;
    p.num_images = 1 + p.cols * p.rows;
    *out = p;
    if (err && err_len) err[0] = '\0';
    return 0;
}

/* ---- RGB conversion */

/* Pillow's MULDIV255: a*b/255 rounded, in integers */
static int muldiv255(int a, int b) {
    int tmp = a * b + 128;
    return ((tmp >> 8) + tmp) >> 8;
}

int mcpm_image_to_rgb8(const uint8_t* src, int w, int h, int channels, int cmyk, uint8_t* dst, char* err,
                       size_t err_len) {
    if (!src || !dst) return fail(err, err_len, "mcpm_image_to_rgb8: NULL buffer");
    if (w <= 0 || h <= 0) return fail_size(err, err_len, "the image is empty (", w, h, " pixels)");
    if (channels < 1 || channels > 4) {
        msg_t m = msg_begin(err, err_len);
        msg_str(&m, "an image needs 1, 2, 3 or 4 channels, got ");
        msg_int(&m, channels);
        return -1;
    }
    if (cmyk && channels != 4) {
        msg_t m = msg_begin(err, err_len);
        msg_str(&m, "a CMYK image needs 4 channels, got ");
        msg_int(&m, channels);
        return -1;
    }
    if ((const uint8_t*)dst == src && channels != 3)
        return fail(err, err_len, "mcpm_image_to_rgb8: in place only for 3 channels");
    size_t n = (size_t)w * (size_t)h;
    if (channels == 3) {
        if ((const uint8_t*)dst != src)
            for (size_t i = 0; i < n * 3; i++) dst[i] = src[i];
    } else if (channels <= 2) { /* gray (+ alpha, dropped) */
        for (size_t i = 0; i < n; i++) {
            uint8_t g = src[i * (size_t)channels];
            dst[i * 3] = dst[i * 3 + 1] = dst[i * 3 + 2] = g;
        }
    } else if (!cmyk) { /* RGBA: alpha dropped */
        for (size_t i = 0; i < n; i++)
            for (int c = 0; c < 3; c++) dst[i * 3 + (size_t)c] = src[i * 4 + (size_t)c];
    } else { /* CMYK: c' = k' - k'*c/255 with k' = 255 - k */
        for (size_t i = 0; i < n; i++) {
            int nk = 255 - src[i * 4 + 3];
            for (int c = 0; c < 3; c++) {
                int v = nk - muldiv255(src[i * 4 + (size_t)c], nk);
                dst[i * 3 + (size_t)c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    }
    if (err && err_len) err[0] = '\0';
    return 0;
}

/* ---- bicubic resize (Pillow's Resample.c, 8 bits per channel) */

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* The weights of one axis: first[out] (first input index), weights int32[out][ksize] (22-bit fixed point, zero
 * past each output's tap count), as Pillow's precompute_coeffs + normalize_coeffs_8bpc. ksize gets the taps per
 * output. NULL (and *ksize untouched) when out of memory or too large; the caller frees both with free(). */
static int32_t* resize_coefficients(int in_size, int out_size, int** first_out, int* ksize_out) {
    double scale = (double)in_size / (double)out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    double ks = ceil(support) * 2 + 1;
    if (ks > (double)(INT_MAX / 2) || (size_t)ks > SIZE_MAX / sizeof(int32_t) / (size_t)out_size) return NULL;
    int ksize = (int)ks;
    int32_t* weights = calloc((size_t)out_size * (size_t)ksize, sizeof(int32_t)); /* int32[out][ksize] */
    int* first = malloc((size_t)out_size * sizeof(int));                          /* int[out] */
    double* k = malloc((size_t)ksize * sizeof(double));                           /* double[ksize] */
    if (!weights || !first || !k) {
        free(weights);
        free(first);
        free(k);
        return NULL;
    }
    double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = ((double)xx + 0.5) * scale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        if (xmax > ksize) xmax = ksize; /* cannot happen; keeps the writes inside the row */
        for (int x = 0; x < xmax; x++) {
            double wgt = bicubic_filter(((double)x + (double)xmin - center + 0.5) * ss);
            k[x] = wgt;
            ww += wgt;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        int32_t* row = weights + (size_t)xx * (size_t)ksize; /* int32[ksize] */
        for (int x = 0; x < xmax; x++)
            row[x] = k[x] < 0 ? (int32_t)(-0.5 + k[x] * (1 << PRECISION_BITS))
                              : (int32_t)(0.5 + k[x] * (1 << PRECISION_BITS));
        first[xx] = xmin;
        /* taps past xmax stay 0; they read inside the image only if xmin + t < in_size, checked by the passes */
    }
    free(k);
    *first_out = first;
    *ksize_out = ksize;
    return weights;
}

static uint8_t clip8(int64_t acc) {
    if (acc < 0) return 0;
    int64_t v = acc >> PRECISION_BITS;
    return (uint8_t)(v > 255 ? 255 : v);
}

/* src uint8[h][w][3] -> dst uint8[h][ow][3] */
static int resize_horizontal(const uint8_t* src, int w, int h, uint8_t* dst, int ow) {
    int* first = NULL;
    int ksize = 0;
    int32_t* wt = resize_coefficients(w, ow, &first, &ksize); /* int32[ow][ksize] */
    if (!wt) return -1;
    for (int y = 0; y < h; y++) {
        const uint8_t* in = src + (size_t)y * (size_t)w * 3; /* uint8[w][3] */
        uint8_t* out = dst + (size_t)y * (size_t)ow * 3;     /* uint8[ow][3] */
        for (int xx = 0; xx < ow; xx++) {
            const int32_t* k = wt + (size_t)xx * (size_t)ksize;
            int xmin = first[xx];
            int taps = w - xmin < ksize ? w - xmin : ksize;
            int64_t a0 = 1 << (PRECISION_BITS - 1), a1 = a0, a2 = a0;
            for (int t = 0; t < taps; t++) {
                const uint8_t* px = in + (size_t)(xmin + t) * 3;
                a0 += (int64_t)px[0] * k[t];
                a1 += (int64_t)px[1] * k[t];
                a2 += (int64_t)px[2] * k[t];
            }
            out[(size_t)xx * 3] = clip8(a0);
            out[(size_t)xx * 3 + 1] = clip8(a1);
            out[(size_t)xx * 3 + 2] = clip8(a2);
        }
    }
    free(wt);
    free(first);
    return 0;
}

/* src uint8[h][w][3] -> dst uint8[oh][w][3] */
static int resize_vertical(const uint8_t* src, int w, int h, uint8_t* dst, int oh) {
    int* first = NULL;
    int ksize = 0;
    int32_t* wt = resize_coefficients(h, oh, &first, &ksize); /* int32[oh][ksize] */
    if (!wt) return -1;
    size_t row_len = (size_t)w * 3;
    for (int yy = 0; yy < oh; yy++) {
        const int32_t* k = wt + (size_t)yy * (size_t)ksize;
        int ymin = first[yy];
        int taps = h - ymin < ksize ? h - ymin : ksize;
        uint8_t* out = dst + (size_t)yy * row_len; /* uint8[w][3] */
        for (size_t i = 0; i < row_len; i++) {
            int64_t acc = 1 << (PRECISION_BITS - 1);
            const uint8_t* col = src + (size_t)ymin * row_len + i;
            for (int t = 0; t < taps; t++) acc += (int64_t)col[(size_t)t * row_len] * k[t];
            out[i] = clip8(acc);
        }
    }
    free(wt);
    free(first);
    return 0;
}

int mcpm_image_resize_rgb8(const uint8_t* src, int w, int h, uint8_t* dst, int ow, int oh, char* err,
                           size_t err_len) {
    if (!src || !dst) return fail(err, err_len, "mcpm_image_resize_rgb8: NULL buffer");
    if (w <= 0 || h <= 0) return fail_size(err, err_len, "the image is empty (", w, h, " pixels)");
    if (ow <= 0 || oh <= 0) return fail_size(err, err_len, "bad resize target (", ow, oh, " pixels)");
    if ((size_t)w > SIZE_MAX / 3 / (size_t)h || (size_t)ow > SIZE_MAX / 3 / (size_t)h ||
        (size_t)ow > SIZE_MAX / 3 / (size_t)oh)
        return fail_size(err, err_len, "the image is too large (", w, h, " pixels)");
    int rc = 0;
    if ((int64_t)h > (int64_t)w * 100 && oh < h) {
        /* Pillow 12's Image.resize: a very tall image shrunk in height goes through the vertical pass first */
        if (ow == w) {
            rc = resize_vertical(src, w, h, dst, oh);
        } else {
            uint8_t* tmp = malloc((size_t)oh * (size_t)w * 3); /* uint8[oh][w][3]: after the vertical pass */
            if (!tmp) return fail(err, err_len, "out of memory in the image resize");
            rc = resize_vertical(src, w, h, tmp, oh);
            if (rc == 0) rc = resize_horizontal(tmp, w, oh, dst, ow);
            free(tmp);
        }
    } else if (ow != w && oh != h) {
        uint8_t* tmp = malloc((size_t)h * (size_t)ow * 3); /* uint8[h][ow][3]: after the horizontal pass */
        if (!tmp) return fail(err, err_len, "out of memory in the image resize");
        rc = resize_horizontal(src, w, h, tmp, ow);
        if (rc == 0) rc = resize_vertical(tmp, ow, h, dst, oh);
        free(tmp);
    } else if (ow != w) {
        rc = resize_horizontal(src, w, h, dst, ow);
    } else if (oh != h) {
        rc = resize_vertical(src, w, h, dst, oh);
    } else {
        for (size_t i = 0; i < (size_t)w * (size_t)h * 3; i++) dst[i] = src[i];
    }
    if (rc) return fail(err, err_len, "out of memory in the image resize");
    if (err && err_len) err[0] = '\0';
    return 0;
}

/* ---- normalization */

int mcpm_image_normalize_chw(const uint8_t* src, int src_w, int src_h, int x0, int y0, int w, int h, float* dst,
                             char* err, size_t err_len) {
    if (!src || !dst) return fail(err, err_len, "mcpm_image_normalize_chw: NULL buffer");
    if (w <= 0 || h <= 0 || x0 < 0 || y0 < 0 || src_w <= 0 || src_h <= 0 || x0 > src_w - w || y0 > src_h - h) {
        msg_t m = msg_begin(err, err_len);
        msg_str(&m, "rectangle ");
        msg_int(&m, w);
        msg_str(&m, "x");
        msg_int(&m, h);
        msg_str(&m, " at (");
        msg_int(&m, x0);
        msg_str(&m, ", ");
        msg_int(&m, y0);
        msg_str(&m, ") is empty or outside the ");
        msg_int(&m, src_w);
        msg_str(&m, "x");
        msg_int(&m, src_h);
        msg_str(&m, " image");
        return -1;
    }
    float lut[256]; /* float32[256]: value of each byte, as numpy computes it in float32 */
    for (int v = 0; v < 256; v++) {
        float x = (float)v / 255.0f;
        lut[v] = (x - 0.5f) / 0.5f;
    }
    size_t plane = (size_t)w * (size_t)h;
    for (int y = 0; y < h; y++) {
        const uint8_t* in = src + ((size_t)(y0 + y) * (size_t)src_w + (size_t)x0) * 3; /* uint8[w][3] */
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                dst[(size_t)c * plane + (size_t)y * (size_t)w + (size_t)x] = lut[in[(size_t)x * 3 + (size_t)c]];
    }
    if (err && err_len) err[0] = '\0';
    return 0;
}

/* ---- prompt layout */

int mcpm_image_placeholder_ids(const mcpm_image_plan_t* plan, int query_num, const mcpm_image_tokens_t* tokens,
                               int32_t* ids, int max_ids) {
    if (!plan || !tokens || query_num < 0 || query_num > (1 << 24)) return -1;
    int cols = plan->cols > 0 && plan->rows > 0 ? plan->cols : 0, rows = cols ? plan->rows : 0;
    int64_t one = 2 + (int64_t)query_num;
    int64_t total = one + (cols ? 2 + (int64_t)(rows - 1) + one * cols * rows : 0);
    if (total > INT_MAX || (ids && total > max_ids)) return -1;
    if (!ids) return (int)total;
    int64_t n = 0;
#define PUT(v) (ids[n++] = (v))
#define PUT_ONE()                                             \
    do {                                                      \
        PUT(tokens->image_start);                             \
        for (int q_ = 0; q_ < query_num; q_++) PUT(tokens->unk); \
        PUT(tokens->image_end);                               \
    } while (0)
    PUT_ONE();
    if (cols) {
        PUT(tokens->slice_start);
        for (int r = 0; r < rows; r++) {
            if (r) PUT(tokens->newline);
            for (int c = 0; c < cols; c++) PUT_ONE();
        }
        PUT(tokens->slice_end);
    }
#undef PUT_ONE
#undef PUT
    return (int)n;
}
