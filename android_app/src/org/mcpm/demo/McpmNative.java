package org.mcpm.demo;

/**
 * The C runtime's JNI surface (runtime_bindings/jni/mcpm_jni.c). Contract: android_app/README.md.
 * This is the only class with native methods; the JNI functions are Java_org_mcpm_demo_McpmNative_&lt;method&gt;.
 * A handle is one loaded model with its text session; calls on one handle must not overlap.
 */
public final class McpmNative {
    /** Receives generated text as it is decoded; return false to stop generating. */
    public interface TextSink {
        boolean onText(String piece);
    }

    private static Throwable loadError;

    static {
        try {
            System.loadLibrary("mcpm");
        } catch (Throwable t) { // UnsatisfiedLinkError, SecurityException: reported by ensureLoaded()
            loadError = t;
        }
    }

    private McpmNative() {
    }

    /** Throws McpmException (with the linker's message) when libmcpm.so could not be loaded. */
    public static void ensureLoaded() throws McpmException {
        if (loadError != null) {
            throw new McpmException("cannot load libmcpm.so: " + loadError, loadError);
        }
    }

    /**
     * Loads a bundle folder (mcpm-config.json, plan.json, weights.bin, tokenizer); returns a handle.
     * device: "cpu", "gpu" (the bundle's OpenCL kernels; an error when the bundle has none or OpenCL fails) or
     * "auto" (the GPU when that works, else the CPU: the reason is the stats' "notice"). cacheDir: where the
     * compiled OpenCL program is kept (the app's cache dir; null = none). profile: time every GPU kernel for
     * {@link #kernelTimes} (benchmarks only: it waits for the GPU after every step). threads: 0 = automatic (the
     * big cores). kernelVariant: null = the best CPU kernel set the phone supports; "i8mm", "dotprod" or "neon"
     * forces one (an error when the CPU lacks its instructions): to benchmark each set on one phone.
     */
    static native long load(String bundleDir, int threads, String device, String kernelVariant, String cacheDir,
            boolean profile) throws McpmException;

    /** One chat turn (the model's chat template); returns the number of tokens generated. */
    static native int chat(long handle, String message, int maxTokens, float temperature, int topK, float topP,
                           long seed, TextSink sink) throws McpmException;

    /** Plain completion of a prompt; returns the number of tokens generated. */
    static native int complete(long handle, String prompt, int maxTokens, float temperature, int topK, float topP,
                               long seed, TextSink sink) throws McpmException;

    /** Forgets the conversation (and the images attached to the next turn). */
    static native void reset(long handle);

    /**
     * The Stop button: callable from any thread while the handle is alive (not after {@link #free}). A running
     * chat, complete, encodeImage or bench stops at its next cancel point (each prefill chunk, each vision run of
     * an image, each token): a prompt or image being fed is dropped and the call throws McpmException("cancelled:
     * ..."); a reply being generated ends with the tokens made so far. No-op for handle 0.
     */
    static native void stop(long handle);

    /** True when the bundle has a vision encoder (MiniCPM-V): encodeImage works. False for handle 0. */
    static native boolean hasVision(long handle);

    /**
     * The most pixels (width * height) an image is encoded at: the bundle's vision.max_pixels. Larger images are
     * downscaled by the runtime, so the app decodes pictures to at most this size. 0 without a vision encoder and
     * for handle 0.
     */
    static native long maxImagePixels(long handle);

    /**
     * Runs the vision encoder on an image and attaches it to the next {@link #chat} turn. argb: width * height
     * pixels as {@code Bitmap.getPixels(argb, 0, width, 0, 0, width, height)} gives them (ARGB_8888; alpha is
     * ignored). Returns the vision runs (overview + slices); the time is the stats' "image_encode_ms". Images larger
     * than {@link #maxImagePixels} are downscaled by the runtime (the stats' "notice" says so).
     */
    static native int encodeImage(long handle, int[] argb, int width, int height) throws McpmException;

    /** Drops the images attached to the next turn. */
    static native void clearImages(long handle);

    /** The runtime's statistics as JSON (mcpm_stats_json). */
    static native String stats(long handle);

    /** Prefill promptTokens and decode genTokens synthetic tokens; returns the stats JSON. */
    static native String bench(long handle, int promptTokens, int genTokens) throws McpmException;

    /**
     * GPU kernel times of the last bench or generation as a JSON array, slowest first:
     * [{"kernel", "count", "launches", "ms"}, ...]; "[]" on the CPU or without profile.
     */
    static native String kernelTimes(long handle);

    /**
     * The bundle's golden check on this model (mcpm_self_test_json, docs/self-test.md): a JSON object with "pass",
     * "reason", "kernel_variant", "device", "steps", "near_ties", "max_logit_diff", "tolerance", "tokenizer", "ms".
     * Throws when the test cannot run (no golden results in the bundle: re-export it).
     */
    static native String selfTest(long handle) throws McpmException;

    /** The bundle's CPU kernel sets, [{"name", "supported"}, ...] in preference order; "[]" with one set. */
    static native String kernelVariants(long handle);

    /** Releases the model; the handle is invalid afterwards. */
    static native void free(long handle);
}
