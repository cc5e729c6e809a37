/* mcpm MiniCPM-V vision-encoder inputs (see mcpm_vision.h): patchify, PyTorch's antialiased bicubic weights,
 * the position-table interpolation matrix and the resampler's 2-D sin-cos key positions. */
#include "mcpm_vision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* gcc: -std=c11 implies -ffp-contract=off; clang needs the pragma */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define BICUBIC_A (-0.5) /* Keys' cubic convolution parameter of PyTorch's antialiased bicubic filter */

int mcpm_vision_patchify(const float* pixels, int w, int h, int patch, float* out) {
    if (!pixels || !out || w <= 0 || h <= 0 || patch <= 0) return -1;
    int rows = (h + patch - 1) / patch, cols = (w + patch - 1) / patch;
    size_t pp = (size_t)patch * (size_t)patch, plane = (size_t)w * (size_t)h;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            float* dst = out + ((size_t)r * (size_t)cols + (size_t)c) * 3 * pp; /* float[3*p*p] */
            for (int ch = 0; ch < 3; ch++)
                for (int ky = 0; ky < patch; ky++) {
                    int y = r * patch + ky;
                    float* row = dst + (size_t)ch * pp + (size_t)ky * (size_t)patch; /* float[p] */
                    for (int kx = 0; kx < patch; kx++) {
                        int x = c * patch + kx;
                        row[kx] = y < h && x < w ? pixels[(size_t)ch * plane + (size_t)y * (size_t)w + (size_t)x] : 0.0f;
                    }
                }
        }
    return rows * cols;
}

static double cubic(double x) {
    const double a = BICUBIC_A;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    return 0.0;
}

/* NumPy's pairwise summation of float64 (np.sum of a contiguous 1-D array), so that the normalized weights are
 * bit-exact with the reference. v: double[n]. */
static double pairwise_sum(const double* v, long n) {
    if (n < 8) {
        double res = 0.0;
        for (long i = 0; i < n; i++) res += v[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; j++) r[j] = v[j];
        long i;
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += v[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += v[i];
        return res;
    }
    long n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(v, n2) + pairwise_sum(v + n2, n - n2);
}

int mcpm_vision_aa_matrix(int n_in, int n_out, float* out) {
    if (n_in <= 0 || n_out <= 0 || !out) return -1;
    double scale = (double)n_in / (double)n_out;
    double support = scale >= 1.0 ? 2.0 * scale : 2.0;
    double inv = scale >= 1.0 ? 1.0 / scale : 1.0;
    double* w = malloc(sizeof(double) * ((size_t)n_in + 1)); /* double[n_in]: the weights of one output */
    if (!w) return -1;
    for (int o = 0; o < n_out; o++) {
        float* row = out + (size_t)o * (size_t)n_in; /* float[n_in] */
        memset(row, 0, sizeof(float) * (size_t)n_in);
        double center = scale * (o + 0.5);
        double lo_f = trunc(center - support + 0.5), hi_f = trunc(center + support + 0.5);
        int lo = lo_f < 0.0 ? 0 : lo_f > n_in ? n_in : (int)lo_f;
        int hi = hi_f > n_in ? n_in : hi_f < 0.0 ? 0 : (int)hi_f;
        long k = 0;
        for (int j = lo; j < hi; j++) w[k++] = cubic(((double)j - center + 0.5) * inv);
        double total = pairwise_sum(w, k);
        for (long i = 0; i < k; i++) row[lo + i] = (float)(total != 0.0 ? w[i] / total : w[i]);
    }
    free(w);
    return 0;
}

int mcpm_vision_pos_interp(int rows, int cols, int grid, float* out) {
    if (rows <= 0 || cols <= 0 || grid <= 0 || !out) return -1;
    float* wy = malloc(sizeof(float) * (size_t)rows * (size_t)grid); /* float[rows][grid] */
    float* wx = malloc(sizeof(float) * (size_t)cols * (size_t)grid); /* float[cols][grid] */
    int rc = -1;
    if (wy && wx && !mcpm_vision_aa_matrix(grid, rows, wy) && !mcpm_vision_aa_matrix(grid, cols, wx)) {
        size_t gg = (size_t)grid * (size_t)grid;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                float* dst = out + ((size_t)r * (size_t)cols + (size_t)c) * gg; /* float[grid*grid] */
                const float* y = wy + (size_t)r * (size_t)grid;                /* float[grid] */
                const float* x = wx + (size_t)c * (size_t)grid;                /* float[grid] */
                for (int gy = 0; gy < grid; gy++)
                    for (int gx = 0; gx < grid; gx++) dst[(size_t)gy * (size_t)grid + (size_t)gx] = y[gy] * x[gx];
            }
        rc = 0;
    }
    free(wy);
    free(wx);
    return rc;
}

/* out float[half]: [sin(p * w_k), cos(p * w_k)] for k < half/2, omega double[half/2] = w_k. */
static void sincos_1d(int half, const double* omega, double p, float* out) {
    int q = half / 2;
    for (int k = 0; k < q; k++) {
        double v = p * omega[k];
        out[k] = (float)sin(v);
        out[q + k] = (float)cos(v);
    }
}

int mcpm_vision_key_pos(int dim, int rows, int cols, float* out) {
    if (dim <= 0 || dim % 4 || rows <= 0 || cols <= 0 || !out) return -1;
    int half = dim / 2, q = dim / 4;
    double* omega = malloc(sizeof(double) * (size_t)q);             /* double[D/4]: w_k = 1 / 10000^(k / (D/4)) */
    float* xs = malloc(sizeof(float) * (size_t)cols * (size_t)half); /* float[cols][D/2]: the column halves */
    float* ys = malloc(sizeof(float) * (size_t)rows * (size_t)half); /* float[rows][D/2]: the row halves */
    int rc = -1;
    if (omega && xs && ys) {
        for (int k = 0; k < q; k++) omega[k] = 1.0 / pow(10000.0, (double)k / ((double)half / 2.0));
        for (int c = 0; c < cols; c++) sincos_1d(half, omega, (double)c, xs + (size_t)c * (size_t)half);
        for (int r = 0; r < rows; r++) sincos_1d(half, omega, (double)r, ys + (size_t)r * (size_t)half);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                float* dst = out + ((size_t)r * (size_t)cols + (size_t)c) * (size_t)dim; /* float[dim] */
                memcpy(dst, xs + (size_t)c * (size_t)half, sizeof(float) * (size_t)half);
                memcpy(dst + half, ys + (size_t)r * (size_t)half, sizeof(float) * (size_t)half);
            }
        rc = 0;
    }
    free(omega);
    free(xs);
    free(ys);
    return rc;
}

int mcpm_vision_fit_pixels(int w, int h, int64_t max_pixels, int* ow, int* oh) {
    if (w <= 0 || h <= 0 || !ow || !oh) return -1;
    *ow = w;
    *oh = h;
    if (max_pixels <= 0 || (int64_t)w * h <= max_pixels) return 0;
    double s = sqrt((double)max_pixels / ((double)w * (double)h));
    double fw = floor((double)w * s), fh = floor((double)h * s);
    int nw = fw < 1.0 ? 1 : (int)fw, nh = fh < 1.0 ? 1 : (int)fh;
    while ((int64_t)nw * nh > max_pixels && (nw > 1 || nh > 1)) {
        if (nw >= nh && nw > 1) nw--;
        else nh--;
    }
    *ow = nw;
    *oh = nh;
    return 1;
}
