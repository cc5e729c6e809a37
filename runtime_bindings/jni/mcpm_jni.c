/* JNI layer of the Android demo app: org.mcpm.demo.McpmNative over the C runtime (mcpm.h).
 * Contract (method names and signatures): android_app/README.md. Plain C11.
 *
 * A Java handle (jlong) is a pointer to one mcpm_jni_handle, created by load() and destroyed by free(); 0 is never
 * a valid handle. Calls on one handle must not overlap (the runtime's one-thread-per-model rule); different
 * handles may be used from different threads.
 *
 * Text crosses the boundary as UTF-16 (GetStringRegion / NewString) and is converted to and from standard UTF-8
 * here: JNI's "modified UTF-8" (GetStringUTFChars / NewStringUTF) encodes characters outside the BMP (emoji) as
 * surrogate pairs, which the tokenizer would not understand, and Android's CheckJNI aborts on a 4-byte sequence
 * passed to NewStringUTF.
 *
 * Errors: the runtime's one-line message is thrown as org.mcpm.demo.McpmException; a Java exception raised by the
 * TextSink stops the generation and is left pending (it reaches the Java caller unchanged).
 */
#include <jni.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpm.h"
#include "mcpm_internal.h"
#include "mcpm_json.h"

#ifdef __ANDROID__
#include <android/log.h>
#define MCPM_LOG_INFO(...) __android_log_print(ANDROID_LOG_INFO, "mcpm", __VA_ARGS__)
#else
#define MCPM_LOG_INFO(...) ((void)fprintf(stderr, __VA_ARGS__), (void)fputc('\n', stderr))
#endif

#define MCPM_EXCEPTION "org/mcpm/demo/McpmException"
#define MCPM_TEXT_SINK "org/mcpm/demo/McpmNative$TextSink"

/* One loaded model with its text session. Owns both; session is freed before model (it uses the model). */
typedef struct mcpm_jni_handle {
    mcpm_model* model;     /* owned */
    mcpm_session* session; /* owned */
    int32_t bos;           /* bos_token_id of mcpm-config.json, -1 if none (used by bench) */
    _Atomic int stop;      /* set by stop() from any thread; cleared when chat, complete, encodeImage or bench starts */
} mcpm_jni_handle;

static mcpm_jni_handle* handle_of(jlong h) { return (mcpm_jni_handle*)(intptr_t)h; }

/* The model's abort callback (mcpm_set_abort_callback): stop() asks for it. */
static int jni_abort(void* user) { return atomic_load(&((mcpm_jni_handle*)user)->stop) != 0; }

/* A long call starts: a stop() before it belongs to the previous one. */
static void clear_stop(mcpm_jni_handle* h) { atomic_store(&h->stop, 0); }

/* Throws McpmException(message); if the class cannot be found, FindClass's own error stays pending. */
static void throw_mcpm(JNIEnv* env, const char* message) {
    if ((*env)->ExceptionCheck(env)) return; /* keep the first exception */
    jclass cls = (*env)->FindClass(env, MCPM_EXCEPTION);
    if (cls) {
        (*env)->ThrowNew(env, cls, message && *message ? message : "unknown mcpm runtime error");
        (*env)->DeleteLocalRef(env, cls);
    }
}

/* The handle of a call that needs a loaded model; NULL with McpmException pending for handle 0. */
static mcpm_jni_handle* loaded_handle(JNIEnv* env, jlong handle) {
    mcpm_jni_handle* h = handle_of(handle);
    if (!h) throw_mcpm(env, "the model is not loaded (handle 0)");
    return h;
}

/* ---------------------------------------------------------------- UTF-16 <-> UTF-8 */

/* Java string -> malloc'ed NUL-terminated standard UTF-8 (caller frees); *len_out (may be NULL) gets the byte
 * length. Lone surrogates become U+FFFD. NULL on out of memory (an exception is then pending) or a null string. */
static char* utf8_from_jstring(JNIEnv* env, jstring s, size_t* len_out) {
    if (!s) return NULL;
    jsize n = (*env)->GetStringLength(env, s);
    jchar* u = malloc(sizeof(jchar) * ((size_t)n + 1)); /* jchar[n] */
    char* out = malloc((size_t)n * 3 + 1);             /* UTF-8: at most 3 bytes per UTF-16 unit */
    if (!u || !out) {
        free(u);
        free(out);
        throw_mcpm(env, "out of memory");
        return NULL;
    }
    (*env)->GetStringRegion(env, s, 0, n, u);
    size_t k = 0;
    for (jsize i = 0; i < n; i++) {
        uint32_t c = u[i];
        if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n && u[i + 1] >= 0xDC00 && u[i + 1] <= 0xDFFF) {
            c = 0x10000 + ((c - 0xD800) << 10) + (uint32_t)(u[i + 1] - 0xDC00);
            i++;
        } else if (c >= 0xD800 && c <= 0xDFFF) {
            c = 0xFFFD;
        }
        if (c < 0x80) {
            out[k++] = (char)c;
        } else if (c < 0x800) {
            out[k++] = (char)(0xC0 | (c >> 6));
            out[k++] = (char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out[k++] = (char)(0xE0 | (c >> 12));
            out[k++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[k++] = (char)(0x80 | (c & 0x3F));
        } else { /* 4 bytes from 2 units: still within 3 bytes per unit */
            out[k++] = (char)(0xF0 | (c >> 18));
            out[k++] = (char)(0x80 | ((c >> 12) & 0x3F));
            out[k++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[k++] = (char)(0x80 | (c & 0x3F));
        }
    }
    out[k] = '\0';
    free(u);
    if (len_out) *len_out = k;
    return out;
}

/* UTF-8 text char[len] -> a new Java string (a local reference; NULL with an exception pending on failure).
 * Malformed bytes become U+FFFD, one per byte. */
static jstring jstring_from_utf8(JNIEnv* env, const char* text, size_t len) {
    jchar small[256] = {0}; /* zeroed: gcc cannot see that NewString reads only n <= len units */
    jchar* u = len <= sizeof small / sizeof small[0] ? small : malloc(sizeof(jchar) * len); /* jchar[len] */
    if (!u) {
        throw_mcpm(env, "out of memory");
        return NULL;
    }
    const unsigned char* p = (const unsigned char*)text;
    size_t n = 0; /* UTF-16 units written: never more than the bytes read */
    for (size_t i = 0; i < len;) {
        uint32_t c = p[i];
        size_t extra = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 9;
        int ok = extra != 9 && i + extra < len; /* the whole sequence is inside text */
        if (ok) {
            uint32_t v = extra == 0 ? c : extra == 1 ? (c & 0x1F) : extra == 2 ? (c & 0x0F) : (c & 0x07);
            for (size_t j = 1; j <= extra; j++) {
                if ((p[i + j] & 0xC0) != 0x80) {
                    ok = 0;
                    break;
                }
                v = (v << 6) | (p[i + j] & 0x3F);
            }
            /* reject overlong forms, surrogates and values past U+10FFFF */
            if (ok && ((extra == 1 && v < 0x80) || (extra == 2 && v < 0x800) || (extra == 3 && v < 0x10000) ||
                       (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF))
                ok = 0;
            if (ok) {
                if (v >= 0x10000) { /* 4 bytes in, 2 units out */
                    v -= 0x10000;
                    u[n++] = (jchar)(0xD800 + (v >> 10));
                    u[n++] = (jchar)(0xDC00 + (v & 0x3FF));
                } else {
                    u[n++] = (jchar)v;
                }
                i += extra + 1;
                continue;
            }
        }
        u[n++] = 0xFFFD;
        i++;
    }
    jstring s = (*env)->NewString(env, u, (jsize)n);
    if (u != small) free(u);
    return s;
}

/* ---------------------------------------------------------------- streaming to a TextSink */

typedef struct sink_ctx {
    JNIEnv* env;
    jobject sink;      /* McpmNative.TextSink (borrowed local reference) */
    jmethodID on_text; /* boolean onText(String) */
} sink_ctx;

/* mcpm_text_callback: one piece of UTF-8 text to sink.onText; nonzero (cancel) when it returns false or throws. */
static int sink_text(const char* text, size_t len, void* user) {
    sink_ctx* ctx = user;
    JNIEnv* env = ctx->env;
    jstring piece = jstring_from_utf8(env, text, len);
    if (!piece) return 1;
    jboolean more = (*env)->CallBooleanMethod(env, ctx->sink, ctx->on_text, piece);
    (*env)->DeleteLocalRef(env, piece); /* one local ref per piece: long replies must not fill the table */
    if ((*env)->ExceptionCheck(env)) return 1;
    return more ? 0 : 1;
}

typedef int (*session_fn)(mcpm_session*, const char*, int, const mcpm_sampling*, mcpm_text_callback, void*);

/* Shared body of chat() and complete(). Returns the generated token count, or -1 with an exception pending. */
static jint run_text(JNIEnv* env, jlong handle, jstring text, jint max_tokens, jfloat temperature, jint top_k,
                     jfloat top_p, jlong seed, jobject sink, session_fn fn) {
    mcpm_jni_handle* h = loaded_handle(env, handle);
    if (!h) return -1;
    if (!text) {
        throw_mcpm(env, "the text is null");
        return -1;
    }
    sink_ctx ctx = {env, sink, NULL};
    if (sink) {
        jclass cls = (*env)->FindClass(env, MCPM_TEXT_SINK);
        if (!cls) return -1;
        ctx.on_text = (*env)->GetMethodID(env, cls, "onText", "(Ljava/lang/String;)Z");
        (*env)->DeleteLocalRef(env, cls);
        if (!ctx.on_text) return -1;
    }
    char* utf8 = utf8_from_jstring(env, text, NULL);
    if (!utf8) return -1;
    clear_stop(h);
    mcpm_sampling s = mcpm_default_sampling();
    s.temperature = temperature; /* <= 0: greedy */
    s.top_k = top_k;
    s.top_p = top_p;
    s.seed = (uint64_t)seed;
    int n = fn(h->session, utf8, max_tokens, &s, sink ? sink_text : NULL, &ctx);
    free(utf8);
    if ((*env)->ExceptionCheck(env)) return -1; /* the sink threw: rethrown to the caller as is */
    if (n < 0) {
        throw_mcpm(env, mcpm_session_last_error(h->session));
        return -1;
    }
    return n;
}

/* ---------------------------------------------------------------- bundle config */

/* bos_token_id of <dir>/mcpm-config.json if it is an integer in [0, vocab), else -1 (the session has read and
 * checked the same file already; this only repeats the one field the public API does not expose). */
static int32_t read_bos(const char* dir, int vocab) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/mcpm-config.json", dir) >= (int)sizeof path) return -1;
    size_t size = 0;
    char* text = mcpm_read_file(path, &size);
    if (!text) return -1;
    int32_t bos = -1;
    json_doc doc;
    memset(&doc, 0, sizeof doc);
    char err[128];
    if (json_parse(&doc, text, size, err, sizeof err) == 0 && doc.nodes[0].type == JSON_OBJECT) {
        const json_node* b = json_get(&doc, &doc.nodes[0], "bos_token_id");
        if (b && b->type == JSON_NUMBER && b->is_int && b->i >= 0 && b->i < vocab) bos = (int32_t)b->i;
    }
    json_free(&doc);
    free(text);
    return bos;
}

/* ---------------------------------------------------------------- the native methods */

/* An optional Java string argument as malloc'ed UTF-8 in *out (NULL for a null or empty string). Returns -1 with an
 * exception pending on out of memory, else 0. */
static int optional_utf8(JNIEnv* env, jstring s, char** out) {
    *out = NULL;
    if (!s) return 0;
    char* v = utf8_from_jstring(env, s, NULL);
    if (!v) return -1; /* out of memory: an exception is pending */
    if (!*v) {
        free(v);
        return 0;
    }
    *out = v;
    return 0;
}

/* static native long load(String bundleDir, int threads, String device, String cacheDir, boolean profile)
 *     throws McpmException
 * device: "cpu" (also null), "gpu" (the bundle's OpenCL kernels: an error when impossible) or "auto" (the GPU when
 * it works, else the CPU with the reason in the stats' "notice"); cacheDir: the app's cache dir, where the runtime
 * keeps the compiled OpenCL program (<cacheDir>/opencl/; null = no cache); profile: time every GPU kernel launch
 * for kernelTimes() (BenchmarkActivity; it adds a wait after every step, so the chat screen loads without it). */
JNIEXPORT jlong JNICALL Java_org_mcpm_demo_McpmNative_load(JNIEnv* env, jclass cls, jstring bundle_dir,
                                                           jint threads, jstring device, jstring kernel_variant,
                                                           jstring cache_dir, jboolean profile) {
    (void)cls;
    if (!bundle_dir) {
        throw_mcpm(env, "the bundle folder is null");
        return 0;
    }
    char* dev = NULL;
    char* variant = NULL;
    char* cache = NULL;
    if (optional_utf8(env, device, &dev) || optional_utf8(env, kernel_variant, &variant) ||
        optional_utf8(env, cache_dir, &cache)) {
        free(dev);
        free(variant);
        return 0;
    }
    char* dir = utf8_from_jstring(env, bundle_dir, NULL);
    mcpm_jni_handle* h = dir ? calloc(1, sizeof *h) : NULL;
    if (!h) {
        if (dir) throw_mcpm(env, "out of memory");
        free(dir);
        free(dev);
        free(variant);
        free(cache);
        return 0;
    }
    mcpm_params p = mcpm_default_params();
    p.threads = threads > 0 ? threads : 0; /* 0 = automatic: the big cores */
    p.device = dev;                        /* NULL = "cpu"; the runtime rejects other names */
    p.kernel_variant = variant && *variant ? variant : NULL; /* NULL = the best set this CPU supports */
    p.cache_dir = cache;
    p.profile = profile ? 1 : 0;
    h->model = mcpm_model_load(dir, &p);
    free(dev);     /* the runtime reads the params during mcpm_model_load only */
    free(variant);
    free(cache);   /* (the OpenCL program is built or read from the cache then) */
    if (!h->model) {
        throw_mcpm(env, mcpm_last_error(NULL));
        free(h);
        free(dir);
        return 0;
    }
    h->session = mcpm_session_new(h->model);
    if (!h->session) {
        throw_mcpm(env, mcpm_last_error(h->model)); /* ThrowNew copies the message before the model goes */
        mcpm_model_free(h->model);
        free(h);
        free(dir);
        return 0;
    }
    h->bos = read_bos(dir, mcpm_vocab_size(h->model));
    mcpm_set_abort_callback(h->model, jni_abort, h);
    const char* notice = mcpm_model_notice(h->model);
    MCPM_LOG_INFO("loaded %s: vocab %d, context %d, threads %d, device %s%s%s", dir, mcpm_vocab_size(h->model),
                  mcpm_context_length(h->model), (int)threads, mcpm_model_device(h->model), *notice ? "; " : "",
                  notice);
    free(dir);
    return (jlong)(intptr_t)h;
}

/* static native int chat(long handle, String message, int maxTokens, float temperature, int topK, float topP,
 *                        long seed, TextSink sink) throws McpmException */
JNIEXPORT jint JNICALL Java_org_mcpm_demo_McpmNative_chat(JNIEnv* env, jclass cls, jlong handle, jstring message,
                                                          jint max_tokens, jfloat temperature, jint top_k,
                                                          jfloat top_p, jlong seed, jobject sink) {
    (void)cls;
    return run_text(env, handle, message, max_tokens, temperature, top_k, top_p, seed, sink, mcpm_session_chat);
}

/* static native int complete(long handle, String prompt, int maxTokens, float temperature, int topK, float topP,
 *                            long seed, TextSink sink) throws McpmException */
JNIEXPORT jint JNICALL Java_org_mcpm_demo_McpmNative_complete(JNIEnv* env, jclass cls, jlong handle,
                                                              jstring prompt, jint max_tokens, jfloat temperature,
                                                              jint top_k, jfloat top_p, jlong seed, jobject sink) {
    (void)cls;
    return run_text(env, handle, prompt, max_tokens, temperature, top_k, top_p, seed, sink,
                    mcpm_session_complete);
}

/* static native void reset(long handle): forgets the conversation and any images attached to the next turn */
JNIEXPORT void JNICALL Java_org_mcpm_demo_McpmNative_reset(JNIEnv* env, jclass cls, jlong handle) {
    (void)env;
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    if (h) {
        mcpm_session_reset(h->session);
        mcpm_session_clear_images(h->session);
    }
}

/* ---------------------------------------------------------------- images (MiniCPM-V bundles) */

/* static native void stop(long handle): the Stop button, from any thread while the handle is alive: a running
 * chat, complete, encodeImage or bench stops at its next cancel point (each prefill chunk, each vision run, each
 * token). A prompt or image being fed is dropped and the call throws McpmException("cancelled: ..."); a reply
 * being generated ends with the tokens made. No-op for handle 0. */
JNIEXPORT void JNICALL Java_org_mcpm_demo_McpmNative_stop(JNIEnv* env, jclass cls, jlong handle) {
    (void)env;
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    if (h) atomic_store(&h->stop, 1);
}

/* static native boolean hasVision(long handle): true when the bundle has a vision encoder; false for handle 0 */
JNIEXPORT jboolean JNICALL Java_org_mcpm_demo_McpmNative_hasVision(JNIEnv* env, jclass cls, jlong handle) {
    (void)env;
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    return h && mcpm_model_has_vision(h->model) == 1 ? JNI_TRUE : JNI_FALSE;
}

/* static native long maxImagePixels(long handle): the most pixels an image is encoded at (the bundle's
 * vision.max_pixels, mcpm_session_max_pixels): the app decodes pictures to at most this; 0 without a vision
 * encoder or for handle 0 */
JNIEXPORT jlong JNICALL Java_org_mcpm_demo_McpmNative_maxImagePixels(JNIEnv* env, jclass cls, jlong handle) {
    (void)env;
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    return h ? (jlong)mcpm_session_max_pixels(h->session) : 0;
}

/* ARGB_8888 ints (Bitmap.getPixels: 0xAARRGGBB, row-major, stride = width) in JNI_ARGB_CHUNK pieces. */
#define JNI_ARGB_CHUNK 4096

/* static native int encodeImage(long handle, int[] argb, int width, int height) throws McpmException
 * argb int[width * height] as Bitmap.getPixels(argb, 0, width, 0, 0, width, height) fills it; alpha is dropped
 * (RGB8 for the runtime). Runs the vision encoder and attaches the image to the next chat(); returns the vision
 * runs (overview + slices). The encode time is the stats' "image_encode_ms". */
JNIEXPORT jint JNICALL Java_org_mcpm_demo_McpmNative_encodeImage(JNIEnv* env, jclass cls, jlong handle,
                                                                 jintArray argb, jint width, jint height) {
    (void)cls;
    mcpm_jni_handle* h = loaded_handle(env, handle);
    if (!h) return -1;
    clear_stop(h);
    if (!argb) {
        throw_mcpm(env, "the image pixels are null");
        return -1;
    }
    if (width < 1 || height < 1) {
        char msg[128];
        snprintf(msg, sizeof msg, "the image is empty (%dx%d pixels)", (int)width, (int)height);
        throw_mcpm(env, msg);
        return -1;
    }
    int64_t count = (int64_t)width * (int64_t)height;
    jsize length = (*env)->GetArrayLength(env, argb);
    if (count > (int64_t)length) {
        char msg[160];
        snprintf(msg, sizeof msg, "the pixel array has %d ints, a %dx%d image needs %lld", (int)length, (int)width,
                 (int)height, (long long)count);
        throw_mcpm(env, msg);
        return -1;
    }
    if ((uint64_t)count * 3u > (uint64_t)SIZE_MAX / 2u) {
        throw_mcpm(env, "the image is too large");
        return -1;
    }
    uint8_t* rgb = malloc((size_t)count * 3u); /* uint8[height][width][3] */
    if (!rgb) {
        throw_mcpm(env, "out of memory (image pixels)");
        return -1;
    }
    jint chunk[JNI_ARGB_CHUNK];
    for (int64_t at = 0; at < count; at += JNI_ARGB_CHUNK) {
        jsize n = (jsize)(count - at < JNI_ARGB_CHUNK ? count - at : JNI_ARGB_CHUNK);
        (*env)->GetIntArrayRegion(env, argb, (jsize)at, n, chunk);
        if ((*env)->ExceptionCheck(env)) { /* cannot happen after the length check; keep the JVM's exception */
            free(rgb);
            return -1;
        }
        uint8_t* out = rgb + (size_t)at * 3u;
        for (jsize i = 0; i < n; i++) {
            uint32_t px = (uint32_t)chunk[i];
            out[3 * i] = (uint8_t)(px >> 16);
            out[3 * i + 1] = (uint8_t)(px >> 8);
            out[3 * i + 2] = (uint8_t)px;
        }
    }
    int runs = mcpm_encode_image(h->session, rgb, (int)width, (int)height);
    free(rgb);
    if (runs < 0) {
        throw_mcpm(env, mcpm_session_last_error(h->session));
        return -1;
    }
    return runs;
}

/* static native void clearImages(long handle): drops the images attached to the next chat(); 0 is ignored */
JNIEXPORT void JNICALL Java_org_mcpm_demo_McpmNative_clearImages(JNIEnv* env, jclass cls, jlong handle) {
    (void)env;
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    if (h) mcpm_session_clear_images(h->session);
}

/* A runtime function that writes one JSON text of h into buf char[len] (0, or -1 with mcpm_last_error). */
typedef int (*json_writer)(mcpm_jni_handle* h, char* buf, size_t len);
static int write_stats(mcpm_jni_handle* h, char* buf, size_t len) { return mcpm_stats_json(h->model, buf, len); }
static int write_self_test(mcpm_jni_handle* h, char* buf, size_t len) {
    return mcpm_self_test_json(h->session, buf, len);
}

/* write's JSON (at most max bytes: the runtime's bound) as a Java string (NULL with an exception pending on
 * failure). */
static jstring json_string(JNIEnv* env, mcpm_jni_handle* h, json_writer write, size_t max) {
    char* buf = malloc(max); /* char[max] */
    if (!buf) {
        throw_mcpm(env, "out of memory");
        return NULL;
    }
    jstring s = NULL;
    if (write(h, buf, max) == 0) s = jstring_from_utf8(env, buf, strlen(buf));
    else throw_mcpm(env, mcpm_last_error(h->model));
    free(buf);
    return s;
}

/* mcpm_stats_json of h as a Java string (NULL with an exception pending on failure). */
static jstring stats_string(JNIEnv* env, mcpm_jni_handle* h) {
    return json_string(env, h, write_stats, MCPM_STATS_JSON_MAX); /* always enough (mcpm.h) */
}

/* static native String stats(long handle): null for handle 0 */
JNIEXPORT jstring JNICALL Java_org_mcpm_demo_McpmNative_stats(JNIEnv* env, jclass cls, jlong handle) {
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    return h ? stats_string(env, h) : NULL;
}

/* static native String bench(long handle, int promptTokens, int genTokens) throws McpmException
 * Forgets the conversation, feeds a synthetic prompt int32[promptTokens] (BOS, then a fixed pseudo-random sequence
 * of ids in [3, vocab) that avoids the usual special ids 0..2), decodes genTokens tokens greedily with no stop ids,
 * and returns mcpm_stats_json. The conversation is forgotten again afterwards (the next chat starts fresh). */
JNIEXPORT jstring JNICALL Java_org_mcpm_demo_McpmNative_bench(JNIEnv* env, jclass cls, jlong handle,
                                                              jint prompt_tokens, jint gen_tokens) {
    (void)cls;
    mcpm_jni_handle* h = loaded_handle(env, handle);
    if (!h) return NULL;
    clear_stop(h);
    if (prompt_tokens < 1 || gen_tokens < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "bench needs prompt_tokens >= 1 and gen_tokens >= 0 (got %d and %d)",
                 (int)prompt_tokens, (int)gen_tokens);
        throw_mcpm(env, msg);
        return NULL;
    }
    int vocab = mcpm_vocab_size(h->model);
    int32_t* prompt = malloc(sizeof(int32_t) * (size_t)prompt_tokens); /* int32[prompt_tokens] */
    if (!prompt) {
        throw_mcpm(env, "out of memory");
        return NULL;
    }
    uint32_t x = 0x9E3779B9u; /* xorshift32 state: the same sequence on every run and device */
    for (jint i = 0; i < prompt_tokens; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        prompt[i] = vocab > 3 ? (int32_t)(3 + x % (uint32_t)(vocab - 3)) : (int32_t)(x % (uint32_t)vocab);
    }
    if (h->bos >= 0) prompt[0] = h->bos;
    mcpm_session_reset(h->session);
    int n = mcpm_generate(h->model, prompt, prompt_tokens, gen_tokens, NULL, NULL, 0, NULL, NULL);
    free(prompt);
    if (n < 0) {
        throw_mcpm(env, mcpm_last_error(h->model));
        mcpm_session_reset(h->session);
        return NULL;
    }
    jstring s = stats_string(env, h);
    mcpm_session_reset(h->session);
    return s;
}

/* static native String selfTest(long handle) throws McpmException
 * mcpm_self_test_json: the bundle's golden check (docs/self-test.md) on this model; the conversation is forgotten
 * before and after. Throws when the test cannot run (no golden results in the bundle, a Stop). */
JNIEXPORT jstring JNICALL Java_org_mcpm_demo_McpmNative_selfTest(JNIEnv* env, jclass cls, jlong handle) {
    (void)cls;
    mcpm_jni_handle* h = loaded_handle(env, handle);
    if (!h) return NULL;
    clear_stop(h);
    return json_string(env, h, write_self_test, MCPM_SELF_TEST_JSON_MAX); /* always enough (mcpm.h) */
}

/* static native String kernelVariants(long handle): mcpm_kernel_variants_json ([{"name", "supported"}, ...] in
 * preference order; "[]" for a bundle with one kernel set); null for handle 0 or on failure */
JNIEXPORT jstring JNICALL Java_org_mcpm_demo_McpmNative_kernelVariants(JNIEnv* env, jclass cls, jlong handle) {
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    char buf[4096]; /* a handful of {"name": ..., "supported": ...} objects */
    if (!h || mcpm_kernel_variants_json(h->model, buf, sizeof buf)) return NULL;
    return jstring_from_utf8(env, buf, strlen(buf));
}

/* static native String kernelTimes(long handle): mcpm_kernel_times_json (GPU kernel times of the last bench or
 * generation, slowest first; "[]" on the CPU or when loaded without profile); null for handle 0 */
JNIEXPORT jstring JNICALL Java_org_mcpm_demo_McpmNative_kernelTimes(JNIEnv* env, jclass cls, jlong handle) {
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    if (!h) return NULL;
    for (size_t len = 16384; len <= ((size_t)16 << 20); len *= 4) { /* about 100 bytes per plan kernel */
        char* buf = malloc(len); /* char[len] */
        if (!buf) break;
        if (mcpm_kernel_times_json(h->model, buf, len) == 0) {
            jstring s = jstring_from_utf8(env, buf, strlen(buf));
            free(buf);
            return s;
        }
        free(buf);
    }
    throw_mcpm(env, "out of memory (kernel times)");
    return NULL;
}

/* static native void free(long handle): the handle is invalid afterwards; 0 is ignored */
JNIEXPORT void JNICALL Java_org_mcpm_demo_McpmNative_free(JNIEnv* env, jclass cls, jlong handle) {
    (void)env;
    (void)cls;
    mcpm_jni_handle* h = handle_of(handle);
    if (!h) return;
    mcpm_session_free(h->session); /* the session uses the model: free it first */
    mcpm_model_free(h->model);
    free(h);
}
