/* mcpm MiniCPM-V vision-encoder inputs in plain C11: the three inputs of the plan entry `vision` for one image slice
 * (docs/minicpmv.md), equal to the NumPy reference export/models/minicpmv/vision_inputs.py:
 *   - mcpm_vision_patchify      == patchify (zero-padded on the right / bottom like vision_inputs)
 *   - mcpm_vision_aa_matrix     == aa_bicubic_matrix (PyTorch's antialiased bicubic weights, float64 -> float32)
 *   - mcpm_vision_pos_interp    == pos_interp
 *   - mcpm_vision_key_pos       == key_pos (resampler.sincos_2d: float64 sin/cos, stored as float32)
 * Used by mcpm_encode_image (mcpm_session.c); exported for the tests. No global mutable state; reentrant.
 * Built without floating-point contraction (the file sets #pragma STDC FP_CONTRACT OFF; gcc -std=c11 implies it)
 * and without -ffast-math. */
#ifndef MCPM_VISION_H
#define MCPM_VISION_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MCPM_VISION_API __attribute__((visibility("default")))
#else
#define MCPM_VISION_API
#endif

/* pixels float32[3][h][w] (normalized, channels first) -> out float32[rows*cols][3*patch*patch] with
 * rows = ceil(h / patch), cols = ceil(w / patch): out[r*cols + c][ch*p*p + ky*p + kx] = pixels[ch][r*p+ky][c*p+kx]
 * (0 outside the image). Returns rows * cols, or -1 for a side or patch <= 0 or NULL buffers. */
MCPM_VISION_API int mcpm_vision_patchify(const float* pixels, int w, int h, int patch, float* out);

/* out float32[n_out][n_in]: F.interpolate(v, n_out, mode="bicubic", antialias=True, align_corners=False) = out @ v.
 * Returns 0, or -1 for n_in or n_out <= 0 or out == NULL. */
MCPM_VISION_API int mcpm_vision_aa_matrix(int n_in, int n_out, float* out);

/* out float32[rows*cols][grid*grid]: row r*cols + c holds wy[r][gy] * wx[c][gx] at column gy*grid + gx
 * (wy = aa_matrix(grid, rows), wx = aa_matrix(grid, cols)). Allocates the two small matrices with malloc.
 * Returns 0, or -1 for a size <= 0, out == NULL or out of memory. */
MCPM_VISION_API int mcpm_vision_pos_interp(int rows, int cols, int grid, float* out);

/* out float32[rows*cols][dim]: the 2-D sin-cos table of a rows x cols grid (first dim/2 columns the column index,
 * the last dim/2 the row index; each half sin then cos). dim must be a positive multiple of 4. Allocates two small
 * tables with malloc. Returns 0, or -1 for bad sizes, out == NULL or out of memory. */
MCPM_VISION_API int mcpm_vision_key_pos(int dim, int rows, int cols, float* out);

/* The size a w x h image is downscaled to so that w * h <= max_pixels, aspect kept:
 * s = sqrt(max_pixels / (w * h)), *ow = max(1, floor(w * s)), *oh = max(1, floor(h * s)) (then one side shrunk by
 * one pixel at a time while still too large). Returns 1 when the image must be downscaled (*ow, *oh set), 0 when
 * it fits (w * h <= max_pixels or max_pixels <= 0: *ow = w, *oh = h), -1 for w or h <= 0. */
MCPM_VISION_API int mcpm_vision_fit_pixels(int w, int h, int64_t max_pixels, int* ow, int* oh);

/* Test hooks (the library's sessions and models are opaque; these read what the tests compare):
 * the features of the images attached with mcpm_encode_image and not used yet, float32[rows][D] (rows = the sum
 * over the images of runs * query_num) into out float32[max_rows][D] (out may be NULL to count); returns rows, or
 * -1 when they do not fit max_rows or session is NULL. */
struct mcpm_session;
struct mcpm_model;
MCPM_VISION_API int mcpm_vision_session_features(const struct mcpm_session* session, float* out, int max_rows);
/* The logits the last mcpm_generate (or chat turn) sampled its last token from, float32[vocab] into out; -1 when
 * there was none or model / out is NULL. */
MCPM_VISION_API int mcpm_vision_model_logits(const struct mcpm_model* model, float* out);

#ifdef __cplusplus
}
#endif

#endif /* MCPM_VISION_H */
