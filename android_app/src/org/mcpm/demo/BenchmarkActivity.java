package org.mcpm.demo;

import android.app.Activity;
import android.content.Context;
import android.os.Build;
import android.os.Bundle;
import android.os.PowerManager;
import android.util.Log;
import android.view.WindowManager;
import android.widget.TextView;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

import java.io.File;
import java.io.IOException;
import java.util.Locale;

/**
 * Started by adb (contract: android_app/README.md):
 * {@code am start -n org.mcpm.demo/.BenchmarkActivity --es model_dir <dir|name> --ei prompt_tokens 128
 * --ei gen_tokens 64 --ei threads 4 --es device cpu|gpu|auto}. Writes the runtime's stats JSON plus
 * {@code "requested_device"} and {@code "kernel_times"} (GPU kernel times, slowest first; [] on the CPU) to
 * {@code <external files dir>/bench/latest.json} and {@code bench/<unix-millis>.json}, logs {@code MCPM_BENCH {json}}
 * (tag mcpm), or on failure writes {@code {"error": "..."}} there and logs {@code MCPM_BENCH_ERROR <message>}; then
 * finishes. With {@code --es image <file>} (a MiniCPM-V model) the image is decoded like in the chat screen and
 * encoded once before the text benchmark: the JSON gains {@code image_encode_ms}, {@code image_slices},
 * {@code image_patches}, {@code image_width}, {@code image_height}, {@code image_path} (and {@code image_notice}).
 * A benchmark runs alone: the chat's model is freed first (ChatEngine.pauseForBenchmark; `mcpm android bench` also
 * force-stops the app with {@code am start -S}), the screen is kept on, and the JSON records
 * {@code thermal_status_before} / {@code thermal_status_after} (PowerManager, Android 10+; "unknown" below) and
 * {@code chat_model_freed}. The JSON always has {@code kernel_variants} (the bundle's CPU kernel sets and whether this
 * phone runs each); with {@code --ez selftest true} also {@code self_test}: the bundle's golden check on the loaded
 * model (McpmNative.selfTest, docs/self-test.md), run after the load and before the benchmark.
 * Only the shell (adb) can start it: the manifest protects it with android.permission.DUMP, which apps cannot get.
 */
public class BenchmarkActivity extends Activity {
    public static final String TAG = "mcpm";
    public static final String EXTRA_MODEL_DIR = "model_dir";
    public static final String EXTRA_PROMPT_TOKENS = "prompt_tokens";
    public static final String EXTRA_GEN_TOKENS = "gen_tokens";
    public static final String EXTRA_THREADS = "threads";
    public static final String EXTRA_DEVICE = "device";
    public static final String EXTRA_IMAGE = "image";
    /** "i8mm", "dotprod" or "neon": benchmark that CPU kernel set (absent: the best one the phone supports). */
    public static final String EXTRA_KERNEL_VARIANT = "kernel_variant";
    /** true: run the bundle's self-test (docs/self-test.md) after the load, before the benchmark. */
    public static final String EXTRA_SELF_TEST = "selftest";

    private TextView text;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        text = new TextView(this);
        text.setPadding(32, 32, 32, 32);
        text.setText("mcpm benchmark starting...");
        setContentView(text);
        getWindow().addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON); // no dimming or sleep mid-run

        final String modelDir = getIntent().getStringExtra(EXTRA_MODEL_DIR);
        final int promptTokens = getIntent().getIntExtra(EXTRA_PROMPT_TOKENS, 128);
        final int genTokens = getIntent().getIntExtra(EXTRA_GEN_TOKENS, 64);
        final int threads = getIntent().getIntExtra(EXTRA_THREADS, 0); // 0 = automatic: the big cores
        final String kernelVariant = getIntent().getStringExtra(EXTRA_KERNEL_VARIANT);
        final boolean selfTest = getIntent().getBooleanExtra(EXTRA_SELF_TEST, false);
        String deviceExtra = getIntent().getStringExtra(EXTRA_DEVICE);
        final String device = deviceExtra == null ? Prefs.DEVICE_CPU
                : deviceExtra.trim().toLowerCase(Locale.US);
        String imageExtra = getIntent().getStringExtra(EXTRA_IMAGE);
        final String image = imageExtra == null || imageExtra.trim().isEmpty() ? null : imageExtra.trim();
        Thread worker = new Thread(new Runnable() {
            @Override
            public void run() {
                runBenchmark(modelDir, promptTokens, genTokens, threads, device, kernelVariant, image, selfTest);
            }
        }, "mcpm-bench");
        worker.start();
    }

    private void runBenchmark(String modelDir, int promptTokens, int genTokens, int threads, String device,
                              String kernelVariant, String image, boolean selfTest) {
        String result = null;
        String error = null;
        String thermalBefore;
        JSONObject runFacts;
        try {
            if (promptTokens < 1 || genTokens < 1 || threads < 0) {
                throw new McpmException("prompt_tokens and gen_tokens must be at least 1, threads at least 0 (got "
                        + promptTokens + ", " + genTokens + ", " + threads + ")");
            }
            if (!device.equals(Prefs.validDevice(device))) {
                throw new McpmException("device must be cpu, gpu or auto (got '" + device + "')");
            }
            McpmNative.ensureLoaded();
            if (image != null && !new File(image).isFile()) { // a wrong path fails before the model loads
                throw new McpmException("image " + image + " does not exist");
            }
            ModelStore.Model model = ModelStore.find(this, modelDir);
            show("Freeing the chat's model (a benchmark runs alone)...");
            boolean chatFreed = ChatEngine.shared().pauseForBenchmark(60000);
            thermalBefore = thermalStatus(this);
            File dir = ModelStore.prepare(this, model, new ModelStore.Progress() {
                @Override
                public void onProgress(String message) {
                    show(message);
                }
            });
            show("Loading " + model.name + " (" + threads + " threads, device " + device + ")...");
            File cache = getCacheDir(); // the compiled OpenCL program is kept in <cache>/opencl/
            // profile: OpenCL profiling events time every GPU kernel (kernel_times); no effect on the CPU
            long handle = McpmNative.load(dir.getAbsolutePath(), threads, device, kernelVariant,
                    cache != null ? cache.getAbsolutePath() : null, !Prefs.DEVICE_CPU.equals(device));
            String kernelTimes;
            JSONObject imageStats = null;
            JSONObject selfTestResult = null;
            String variants;
            try {
                variants = McpmNative.kernelVariants(handle);
                if (selfTest) {
                    show("Self-test of " + model.name + " (the export's golden results)...");
                    selfTestResult = runSelfTest(handle);
                }
                if (image != null) { // decoded at the model's size limit (the bundle's vision.max_pixels)
                    show("Reading the image " + image + "...");
                    File file = new File(image);
                    ImageLoader.Picture picture = ImageLoader.decodeFile(file, file.getName(),
                            McpmNative.maxImagePixels(handle));
                    imageStats = encodeImage(handle, model, picture, image);
                }
                show("Benchmarking " + model.name + ": " + promptTokens + " prompt + " + genTokens + " tokens...");
                result = McpmNative.bench(handle, promptTokens, genTokens);
                kernelTimes = McpmNative.kernelTimes(handle);
            } finally {
                McpmNative.free(handle);
            }
            runFacts = new JSONObject().put("thermal_status_before", thermalBefore)
                    .put("thermal_status_after", thermalStatus(this)).put("chat_model_freed", chatFreed)
                    .put("screen_kept_on", true)
                    .put("kernel_variants", variants != null ? new JSONArray(variants) : new JSONArray());
            if (selfTestResult != null) {
                runFacts.put("self_test", selfTestResult);
            }
            if (result == null) {
                throw new McpmException("the runtime returned no statistics");
            }
            result = withKernelTimes(result, device, kernelTimes, imageStats, runFacts);
        } catch (McpmException e) {
            error = e.getMessage();
        } catch (OutOfMemoryError e) {
            error = "out of memory: the model does not fit in this phone's memory";
        } catch (UnsatisfiedLinkError e) {
            error = "native library problem: " + e.getMessage();
        } catch (Throwable t) {
            error = t.toString();
        } finally {
            ChatEngine.shared().resume();
        }
        finishWith(error, error != null ? errorJson(error) : result);
    }

    /** Writes the result files and the logcat line, then finishes the activity. */
    private void finishWith(String error, String body) {
        String line = oneLine(body);
        try {
            writeResults(body);
        } catch (IOException e) {
            if (error == null) {
                error = "cannot write the result file: " + e.getMessage();
            }
        }
        if (error != null) {
            Log.e(TAG, "MCPM_BENCH_ERROR " + error.replace('\n', ' '));
            show("Benchmark failed: " + error);
        } else {
            Log.i(TAG, "MCPM_BENCH " + line);
            show("Benchmark done: " + line);
        }
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                finish();
            }
        });
    }

    private void writeResults(String body) throws IOException {
        File base = getExternalFilesDir(null);
        if (base == null) {
            throw new IOException("shared storage is not mounted (no external files dir)");
        }
        File bench = new File(base, "bench");
        if (!bench.isDirectory() && !bench.mkdirs()) {
            throw new IOException("cannot create " + bench);
        }
        String text = body.endsWith("\n") ? body : body + "\n";
        File stamped = new File(bench, System.currentTimeMillis() + ".json");
        ModelStore.writeSmall(stamped, text);
        File tmp = new File(bench, ".latest.json.tmp");
        ModelStore.writeSmall(tmp, text);
        File latest = new File(bench, "latest.json");
        if (!tmp.renameTo(latest)) {
            ModelStore.writeSmall(latest, text);
            if (!tmp.delete()) {
                tmp.deleteOnExit();
            }
        }
    }

    /**
     * Encodes picture once (the vision encoder, as the chat screen does before a message) and returns the image
     * keys for the result: image_encode_ms, image_slices, image_patches, image_width/height (as encoded),
     * image_path, image_notice (the app's reduction and the runtime's downscale notice, when any).
     */
    private JSONObject encodeImage(long handle, ModelStore.Model model, ImageLoader.Picture picture, String path)
            throws McpmException {
        if (!McpmNative.hasVision(handle)) {
            throw new McpmException(model.name + " has no vision encoder: the image extra needs a MiniCPM-V model");
        }
        show("Encoding the image (" + picture.width() + "x" + picture.height() + ")...");
        int[] argb = ImageLoader.argb(picture.bitmap);
        int runs = McpmNative.encodeImage(handle, argb, picture.width(), picture.height());
        String statsText = McpmNative.stats(handle);
        McpmNative.clearImages(handle); // the text benchmark below stays text-only
        try {
            JSONObject stats = new JSONObject(statsText != null ? statsText : "{}");
            JSONObject o = new JSONObject();
            o.put("image_encode_ms", stats.optDouble("image_encode_ms", -1));
            o.put("image_slices", stats.optInt("image_slices", runs));
            o.put("image_patches", stats.optInt("image_patches", -1));
            o.put("image_width", picture.width());
            o.put("image_height", picture.height());
            o.put("image_path", path);
            String notice = picture.reductionNote();
            String runtimeNotice = stats.optString("notice", "");
            if (runtimeNotice.contains("image")) {
                notice = notice.isEmpty() ? runtimeNotice : notice + "; " + runtimeNotice;
            }
            if (!notice.isEmpty()) {
                o.put("image_notice", notice);
            }
            return o;
        } catch (JSONException e) {
            throw new McpmException("the runtime's statistics are not valid JSON: " + e.getMessage(), e);
        }
    }

    /**
     * McpmNative.selfTest as an object; when the test cannot run (e.g. a bundle exported before golden results
     * existed), {"pass": null, "error": "..."} so that the benchmark still runs and the report says why.
     */
    private static JSONObject runSelfTest(long handle) throws JSONException {
        try {
            return new JSONObject(McpmNative.selfTest(handle));
        } catch (McpmException e) {
            return new JSONObject().put("pass", JSONObject.NULL).put("error", e.getMessage());
        }
    }

    /**
     * The stats JSON with "requested_device", "kernel_times" (the runtime's array; [] when it has none) and the
     * image keys (imageStats, may be null).
     */
    private static String withKernelTimes(String stats, String device, String kernelTimes, JSONObject imageStats,
                                          JSONObject runFacts) throws McpmException {
        try {
            JSONObject o = new JSONObject(stats);
            o.put("requested_device", device);
            o.put("kernel_times", kernelTimes != null ? new JSONArray(kernelTimes) : new JSONArray());
            for (JSONObject extra : new JSONObject[] {imageStats, runFacts}) {
                JSONArray names = extra != null ? extra.names() : null;
                for (int i = 0; names != null && i < names.length(); i++) {
                    String key = names.getString(i);
                    o.put(key, extra.get(key));
                }
            }
            return o.toString();
        } catch (JSONException e) {
            throw new McpmException("the runtime's statistics are not valid JSON: " + e.getMessage(), e);
        }
    }

    /**
     * PowerManager's thermal status (Android 10+, called by reflection: the app compiles against API 23):
     * none, light, moderate, severe, critical, emergency, shutdown; "unknown" where the OS does not say.
     */
    static String thermalStatus(Context context) {
        String[] names = {"none", "light", "moderate", "severe", "critical", "emergency", "shutdown"};
        if (Build.VERSION.SDK_INT < 29) {
            return "unknown";
        }
        try {
            PowerManager pm = (PowerManager) context.getSystemService(Context.POWER_SERVICE);
            int status = (Integer) PowerManager.class.getMethod("getCurrentThermalStatus").invoke(pm);
            return status >= 0 && status < names.length ? names[status] : "unknown";
        } catch (Exception e) { // ReflectiveOperationException, NullPointerException, ClassCastException
            return "unknown";
        }
    }

    private static String errorJson(String message) {
        try {
            return new JSONObject().put("error", message).toString();
        } catch (JSONException e) {
            return "{\"error\": \"unknown error\"}";
        }
    }

    /** The JSON on one line for logcat (compact re-serialization; raw text with newlines removed otherwise). */
    private static String oneLine(String json) {
        try {
            return new JSONObject(json).toString();
        } catch (JSONException e) {
            return json.replace('\n', ' ').replace('\r', ' ');
        }
    }

    private void show(final String message) {
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                text.setText(message);
            }
        });
    }
}
