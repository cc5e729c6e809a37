/* mcpm image preprocessing for MiniCPM-V 2.0 in plain C11: slice planning, RGB conversion, bicubic resize and
 * normalization, equal to the Python reference export/models/minicpmv/preprocess.py (and so to the published
 * MiniCPM-V code):
 *   - mcpm_image_plan       == plan_slices (Python round() halves-to-even, first-best grid on ties)
 *   - mcpm_image_to_rgb8    == to_rgb (gray, gray+alpha, RGB, RGBA, CMYK as PIL converts them)
 *   - mcpm_image_resize_rgb8 == resize_bicubic, bit-exact with Pillow 12 Image.resize(..., BICUBIC) on RGB
 *   - mcpm_image_normalize_chw == normalize (x/255 in float32, then (x - 0.5) / 0.5, channels first)
 *   - mcpm_image_placeholder_ids == placeholder_ids (the <image>/<slice> token layout of one image)
 *
 * Pipeline for one image of w x h RGB pixels (what prepare_image does):
 *   plan(w, h) -> overview = resize(rgb, plan.overview_w, plan.overview_h) -> normalize(all of it);
 *   if plan.cols > 0: refine = resize(rgb, plan.refine_w, plan.refine_h), then slice i (row-major, i = r*cols+c)
 *   is the rectangle x0 = c*slice_w, y0 = r*slice_h, slice_w x slice_h of refine -> normalize(that rectangle).
 *
 * Build: gcc -std=c11 -O2 -fPIC -shared -o libmcpm_image.so mcpm_image.c -lm
 * The resize weights are computed in double as Pillow does; build without floating-point contraction into FMA
 * (gcc: -std=c11 implies -ffp-contract=off; clang: the file sets #pragma STDC FP_CONTRACT OFF) and without
 * -ffast-math.
 * Pillow 12's Image.resize does the vertical pass first when h > 100 * w and oh < h (then horizontal); so does
 * mcpm_image_resize_rgb8 (resize_bicubic in preprocess.py does not, as of this writing: tall images differ there).
 * Threading: no global mutable state; every function is reentrant.
 * Errors: functions returning int give 0 on success and -1 on failure with a one-line reason in err
 * (char[err_len], always NUL-terminated when err_len > 0; err may be NULL).
 */
#ifndef MCPM_IMAGE_H
#define MCPM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MCPM_IMG_API __attribute__((visibility("default")))
#else
#define MCPM_IMG_API
#endif

/* MiniCPM-V 2.0 defaults (config.json: max_slice_nums, scale_resolution, patch_size). */
#define MCPM_IMAGE_MAX_SLICES 9
#define MCPM_IMAGE_SCALE_RESOLUTION 448
#define MCPM_IMAGE_PATCH 14

typedef struct mcpm_image_plan_t {
    int overview_w, overview_h; /* size of the overview image (always present) */
    int cols, rows;             /* refine grid; 0, 0 when the image is not sliced */
    int refine_w, refine_h;     /* size of the refine image split into the grid; 0, 0 when not sliced */
    int slice_w, slice_h;       /* refine_w / cols, refine_h / rows; 0, 0 when not sliced */
    int num_images;             /* 1 + cols * rows: how many times the vision tower runs */
} mcpm_image_plan_t;

/* The slice plan of a w x h image (plan_slices). max_slices: at most this many slices (9);
 * scale_resolution: target side of the overview and of each slice (448); patch: sides are multiples of it (14);
 * never_split: 1 = overview only (the config's slice_mode false). Errors: w or h <= 0, scale_resolution or
 * patch <= 0, out == NULL. */
MCPM_IMG_API int mcpm_image_plan(int w, int h, int max_slices, int scale_resolution, int patch, int never_split,
                                 mcpm_image_plan_t* out, char* err, size_t err_len);

/* Any supported 8-bit layout -> RGB (to_rgb). src: uint8[h][w][channels], channels 1 (gray), 2 (gray+alpha,
 * alpha dropped), 3 (RGB), 4 (RGBA with alpha dropped, or CMYK when cmyk = 1); dst: uint8[h][w][3]
 * (dst == src is allowed only for channels == 3). */
MCPM_IMG_API int mcpm_image_to_rgb8(const uint8_t* src, int w, int h, int channels, int cmyk, uint8_t* dst,
                                    char* err, size_t err_len);

/* Bicubic resize of RGB pixels, bit-exact with Pillow 12's Image.resize((ow, oh), BICUBIC) (resize_bicubic).
 * src: uint8[h][w][3]; dst: uint8[oh][ow][3] (must not overlap src). Allocates its scratch (the weights and,
 * when both sides change, a uint8[h][ow][3] intermediate) with malloc and frees it before returning.
 * Errors: a side <= 0, NULL buffers, out of memory. */
MCPM_IMG_API int mcpm_image_resize_rgb8(const uint8_t* src, int w, int h, uint8_t* dst, int ow, int oh,
                                        char* err, size_t err_len);

/* The rectangle x0, y0, w x h of an RGB image src (uint8[src_h][src_w][3]) -> dst float32[3][h][w],
 * (x/255 - 0.5) / 0.5 in float32, exactly as normalize(). Pass 0, 0, src_w, src_h for the whole image; a slice of
 * the refine image is x0 = c*slice_w, y0 = r*slice_h, slice_w x slice_h. Errors: an empty or out-of-bounds
 * rectangle, NULL buffers. */
MCPM_IMG_API int mcpm_image_normalize_chw(const uint8_t* src, int src_w, int src_h, int x0, int y0, int w, int h,
                                          float* dst, char* err, size_t err_len);

/* Token ids of the image markers in the tokenizer (ImageTokens). */
typedef struct mcpm_image_tokens_t {
    int32_t image_start, image_end, slice_start, slice_end, unk, newline;
} mcpm_image_tokens_t;

/* The placeholder ids of one image (placeholder_ids): <image> unk*query_num </image>, then when sliced
 * (plan->cols > 0) <slice>, the rows of cols such groups separated by newline, </slice>.
 * ids: int32[max_ids], may be NULL to only count. Returns the number of ids, or -1 if they do not fit in max_ids
 * or query_num < 0 or plan / tokens is NULL. */
MCPM_IMG_API int mcpm_image_placeholder_ids(const mcpm_image_plan_t* plan, int query_num,
                                            const mcpm_image_tokens_t* tokens, int32_t* ids, int max_ids);

#ifdef __cplusplus
}
#endif

#endif /* MCPM_IMAGE_H */
