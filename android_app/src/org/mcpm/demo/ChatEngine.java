package org.mcpm.demo;

import org.json.JSONException;
import org.json.JSONObject;

import java.io.File;
import java.util.Locale;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * The chat's model and conversation, kept outside any Activity (one per process: {@link #shared()}), so that an
 * Activity recreated for any reason (rotation, dark mode, font size, locale, the system reclaiming it) finds the
 * model loaded, the conversation and the reply still streaming. The screen attaches a {@link Listener} and detaches
 * it when destroyed. Pure Java (no android.*): tested on the host JVM over the real JNI library.
 *
 * <p>Threads: every native call runs on one worker thread (calls on a handle never overlap); {@link #stop} is the
 * only one made from the caller's thread (McpmNative.stop, guarded so it never sees a freed handle). Errors are
 * never thrown at the screen: each becomes a one-line status with {@code error = true}.
 */
public final class ChatEngine {
    /**
     * What the screen shows. Called with the engine's lock held, on the worker or the caller's thread: post to the
     * UI thread, never block, never call back into the engine from here except {@link #stop}.
     */
    public interface Listener {
        void onStatus(String text, boolean error);

        /** Text appended to the conversation. */
        void onText(String piece);

        /** The whole conversation (on attach and on New chat). */
        void onTranscript(String text);

        /** A message is being answered (Send disabled, Stop enabled) or not. */
        void onBusy(boolean busy);

        /** The loaded model takes images (the Image button shows) or not. */
        void onVision(boolean vision);

        /** The image attached to the next message changed (null: none). */
        void onImage(ImageSource image);
    }

    /** Progress of a step that takes a while (copying a bundled model out of the APK). */
    public interface Progress {
        void onProgress(String message);
    }

    /** Returns the bundle folder to load (a bundled model is copied out of the APK first). */
    public interface Preparer {
        File prepare(Progress progress) throws McpmException;
    }

    /** A picture for the next message: ARGB_8888 pixels as Bitmap.getPixels gives them. */
    public interface ImageSource {
        int width();

        int height();

        int[] argb() throws McpmException;
    }

    /** Which model to run and how. */
    public static final class ModelRequest {
        final String key;
        final String name;
        final int threads;
        final String device;
        final String cacheDir;
        final Preparer preparer;

        /** key: stable id of the model; threads 0 = automatic; device cpu|gpu|auto; cacheDir may be null. */
        public ModelRequest(String key, String name, int threads, String device, String cacheDir, Preparer preparer) {
            this.key = key;
            this.name = name;
            this.threads = threads;
            this.device = device;
            this.cacheDir = cacheDir;
            this.preparer = preparer;
        }
    }

    /** Sampling for one message (temperature <= 0: greedy). */
    public static final class Sampling {
        final int maxNewTokens;
        final float temperature;
        final int topK;
        final float topP;
        final long seed;

        public Sampling(int maxNewTokens, float temperature, int topK, float topP, long seed) {
            this.maxNewTokens = maxNewTokens;
            this.temperature = temperature;
            this.topK = topK;
            this.topP = topP;
            this.seed = seed;
        }
    }

    private static ChatEngine shared;

    private final ExecutorService worker;
    private final Object lock = new Object();

    // Guarded by lock: what a newly attached screen shows.
    private Listener listener;
    private final StringBuilder transcript = new StringBuilder();
    private String status = "";
    private boolean statusError;
    private boolean busy;
    private boolean vision;
    private ImageSource attachedImage;
    private boolean paused;       // a benchmark runs alone: no model is loaded until resume()
    private long conversation;    // New chat starts another: a reply of an older one is not shown
    private long loadSerial;      // the newest load request: an older one still queued is skipped
    private long liveHandle;      // the worker's handle, for stop() from other threads

    private volatile boolean stopRequested;
    private volatile long maxImagePixels; // the loaded model's vision.max_pixels (0: no images)

    // Worker thread only.
    private long handle;
    private String loadedKey;
    private int loadedThreads;
    private String loadedDevice;
    private String runsOn = "CPU";

    public ChatEngine() {
        worker = Executors.newSingleThreadExecutor(new ThreadFactory() {
            @Override
            public Thread newThread(Runnable r) {
                Thread t = new Thread(r, "mcpm-chat");
                t.setDaemon(true);
                return t;
            }
        });
    }

    /** The process's engine (survives every Activity). */
    public static synchronized ChatEngine shared() {
        if (shared == null) {
            shared = new ChatEngine();
        }
        return shared;
    }

    /** Shows this screen everything so far (conversation, status, busy, vision, image), then every change. */
    public void attach(Listener l) {
        synchronized (lock) {
            listener = l;
            l.onTranscript(transcript.toString());
            l.onStatus(status, statusError);
            l.onBusy(busy);
            l.onVision(vision);
            l.onImage(attachedImage);
        }
    }

    /** The screen is gone: nothing more is shown to it (the work goes on). */
    public void detach(Listener l) {
        synchronized (lock) {
            if (listener == l) {
                listener = null;
            }
        }
    }

    /** The model's image size limit (McpmNative.maxImagePixels; 0 when none is loaded or it takes no images). */
    public long maxImagePixels() {
        return maxImagePixels;
    }

    /** The image that goes with the next message (null: none). */
    public ImageSource attachedImage() {
        synchronized (lock) {
            return attachedImage;
        }
    }

    public void attachImage(ImageSource image) {
        synchronized (lock) {
            attachedImage = image;
            if (listener != null) {
                listener.onImage(image);
            }
        }
    }

    public boolean isBusy() {
        synchronized (lock) {
            return busy;
        }
    }

    /** Loads the model (unless loaded like that already); a newer request makes a queued older one a no-op. */
    public void load(final ModelRequest request) {
        final long serial;
        synchronized (lock) {
            serial = ++loadSerial;
        }
        submit(new Runnable() {
            @Override
            public void run() {
                synchronized (lock) {
                    if (serial != loadSerial) {
                        return; // the user picked another model meanwhile
                    }
                }
                try {
                    ensureModel(request);
                } catch (Throwable t) {
                    status("Loading " + request.name + " failed: " + describe(t), true);
                }
            }
        });
    }

    /**
     * Sends a message (with the attached image, if any) and streams the reply into the conversation. Returns false
     * (and changes nothing) while another message is being answered or the message is empty.
     */
    public boolean send(final String message, final ModelRequest request, final Sampling sampling) {
        final ImageSource image;
        final long turnOf;
        synchronized (lock) {
            if (busy || message.trim().isEmpty()) {
                return false;
            }
            image = attachedImage;
            attachedImage = null;
            turnOf = conversation;
            setBusy(true);
            if (listener != null) {
                listener.onImage(null);
            }
            String imageTag = image == null ? ""
                    : String.format(Locale.US, "[image %dx%d] ", image.width(), image.height());
            append(turnOf, (transcript.length() == 0 ? "" : "\n\n") + "You: " + imageTag + message.trim() + "\n\n"
                    + request.name + ": ");
        }
        stopRequested = false;
        return submitWhileBusy(new Runnable() {
            @Override
            public void run() {
                answer(message.trim(), image, request, sampling, turnOf);
            }
        });
    }

    /** Runs work on the worker thread; busy (set by the caller) is cleared when it ends or could not be queued. */
    private boolean submitWhileBusy(final Runnable work) {
        boolean queued = submit(new Runnable() {
            @Override
            public void run() {
                try {
                    work.run();
                } finally {
                    synchronized (lock) {
                        setBusy(false);
                    }
                }
            }
        });
        if (!queued) {
            synchronized (lock) {
                setBusy(false);
            }
        }
        return queued;
    }

    /**
     * Self-test (docs/self-test.md): loads the model if needed, checks it against the bundle's golden results
     * (McpmNative.selfTest) and shows the verdict in the status line: "Self-test PASS: ..." or "Self-test FAIL: "
     * with the one-line reason (an error status). The conversation is forgotten (the check feeds its own prompt).
     * Returns false (and changes nothing) while a message is being answered.
     */
    public boolean selfTest(final ModelRequest request) {
        synchronized (lock) {
            if (busy) {
                return false;
            }
            setBusy(true);
            conversation++;
            transcript.setLength(0);
            if (listener != null) {
                listener.onTranscript("");
            }
        }
        return submitWhileBusy(new Runnable() {
            @Override
            public void run() {
                try {
                    ensureModel(request);
                    status("Self-test of " + request.name + "...", false);
                    String line = selfTestLine(McpmNative.selfTest(handle));
                    status(line, !line.startsWith(SELF_TEST_PASS));
                } catch (Throwable t) {
                    status("Self-test could not run: " + describe(t), true);
                }
            }
        });
    }

    static final String SELF_TEST_PASS = "Self-test PASS: ";

    /** The self-test JSON as one status line (starting with SELF_TEST_PASS when it passed). */
    static String selfTestLine(String json) {
        try {
            JSONObject o = new JSONObject(json);
            if (!o.optBoolean("pass", false)) {
                return "Self-test FAIL: " + o.optString("reason", "no reason given");
            }
            return SELF_TEST_PASS + String.format(Locale.US, "kernels %s on the %s, %d steps (%d near-ties), max "
                    + "logit diff %.1e (tolerance %.0e), tokenizer %s", o.optString("kernel_variant"),
                    o.optString("device"), o.optInt("steps"), o.optInt("near_ties"), o.optDouble("max_logit_diff"),
                    o.optDouble("tolerance"), o.optString("tokenizer"));
        } catch (JSONException e) {
            return "Self-test: unreadable result: " + e.getMessage();
        }
    }

    /** Stop: ends the reply, or drops the message while its prompt or image is still being read. Any thread. */
    public void stop() {
        stopRequested = true;
        synchronized (lock) {
            if (liveHandle != 0) {
                McpmNative.stop(liveHandle);
            }
        }
    }

    /** Forgets the conversation and the attached image; a reply still streaming is stopped and not shown. */
    public void newChat() {
        stop();
        synchronized (lock) {
            conversation++;
            transcript.setLength(0);
            attachedImage = null;
            if (listener != null) {
                listener.onTranscript("");
                listener.onImage(null);
            }
        }
        submit(new Runnable() {
            @Override
            public void run() {
                try {
                    if (handle != 0) {
                        McpmNative.reset(handle);
                    }
                    status("New conversation", false);
                } catch (Throwable t) {
                    status("Reset failed: " + describe(t), true);
                }
            }
        });
    }

    /**
     * A benchmark is about to run alone: stops any reply, frees the chat's model and loads none until
     * {@link #resume}. Waits (at most timeoutMs) until the model is freed; false when it was not in time.
     */
    public boolean pauseForBenchmark(long timeoutMs) {
        synchronized (lock) {
            paused = true;
        }
        stop();
        boolean queued = submit(new Runnable() {
            @Override
            public void run() {
                freeModel();
                status("A benchmark is running: the chat waits until it ends", false);
            }
        });
        return queued && awaitIdle(timeoutMs);
    }

    /** Waits (at most timeoutMs) until the work asked for so far is done; false when it was not in time. */
    public boolean awaitIdle(long timeoutMs) {
        try {
            worker.submit(new Runnable() {
                @Override
                public void run() {
                }
            }).get(timeoutMs, TimeUnit.MILLISECONDS);
            return true;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        } catch (ExecutionException e) {
            return false;
        } catch (TimeoutException e) {
            return false;
        } catch (RuntimeException e) { // rejected
            return false;
        }
    }

    /** The benchmark ended: the chat may load its model again (on the next load or send). */
    public void resume() {
        synchronized (lock) {
            paused = false;
        }
    }

    /** The app is closing (the chat screen finished): stops the reply and frees the model. */
    public void close() {
        stop();
        submit(new Runnable() {
            @Override
            public void run() {
                freeModel();
            }
        });
    }

    // ---- worker thread ----

    private void answer(String message, ImageSource image, ModelRequest request, Sampling sampling, final long turnOf) {
        try {
            ensureModel(request);
            String imageLine = "";
            if (image != null) {
                try {
                    imageLine = encodeImage(request, image);
                } catch (Throwable t) {
                    boolean stopped = stoppedByUser(t);
                    append(turnOf, stopped ? "[stopped: image not sent]" : "[image not sent]");
                    status(stopped ? "Stopped" : "Image encoding failed: " + describe(t), !stopped);
                    return;
                }
            }
            status("Generating..." + imageLine, false);
            McpmNative.TextSink sink = new McpmNative.TextSink() {
                @Override
                public boolean onText(String piece) {
                    if (piece != null && !piece.isEmpty()) {
                        append(turnOf, piece);
                    }
                    return !stopRequested;
                }
            };
            long t0 = System.nanoTime();
            int n = McpmNative.chat(handle, message, sampling.maxNewTokens, sampling.temperature, sampling.topK,
                    sampling.topP, sampling.seed, sink);
            double seconds = Math.max((System.nanoTime() - t0) / 1e9, 1e-9);
            status(String.format(Locale.US, "%d tokens in %.1f s (%.1f tokens/s, %s)%s%s", n, seconds, n / seconds,
                    runsOn, stopRequested ? ", stopped" : "", imageLine), false);
        } catch (Throwable t) {
            if (stoppedByUser(t)) { // stopped while the message was being read: it was not sent
                append(turnOf, "\n[stopped]");
                status("Stopped", false);
            } else {
                append(turnOf, "\n[error]");
                status("Generation failed: " + describe(t), true);
            }
        }
    }

    /** Loads request's model unless it is loaded with the same threads and device. */
    private void ensureModel(ModelRequest request) throws McpmException {
        synchronized (lock) {
            if (paused) {
                throw new McpmException("a benchmark is running; the chat waits until it ends");
            }
        }
        if (handle != 0 && request.key.equals(loadedKey) && request.threads == loadedThreads
                && request.device.equals(loadedDevice)) {
            return;
        }
        freeModel();
        McpmNative.ensureLoaded();
        File dir = request.preparer.prepare(new Progress() {
            @Override
            public void onProgress(String message) {
                status(message, false);
            }
        });
        status("Loading " + request.name + " (" + request.threads + " threads, device " + request.device + ")...",
                false);
        long t0 = System.nanoTime();
        long h;
        try {
            h = McpmNative.load(dir.getAbsolutePath(), request.threads, request.device, null, request.cacheDir,
                    false);
        } catch (McpmException e) {
            if ("gpu".equals(request.device)) {
                throw new McpmException(e.getMessage() + " (Settings: choose CPU or Auto)", e);
            }
            throw e;
        }
        handle = h;
        loadedKey = request.key;
        loadedThreads = request.threads;
        loadedDevice = request.device;
        boolean hasVision = McpmNative.hasVision(h);
        maxImagePixels = hasVision ? McpmNative.maxImagePixels(h) : 0;
        JSONObject stats = stats(h);
        synchronized (lock) {
            liveHandle = h;
            setVision(hasVision);
        }
        double seconds = (System.nanoTime() - t0) / 1e9;
        boolean gpu = "gpu".equals(stats.optString("device", "cpu"));
        runsOn = gpu ? "GPU" : "CPU";
        String gpuName = stats.optString("gpu_device", "");
        String where = gpu ? (gpuName.isEmpty() ? "GPU" : gpuName) : request.threads + " threads";
        String line = String.format(Locale.US, "%s loaded in %.1f s (%s)%s", request.name, seconds, where,
                kvPart(stats));
        String notice = stats.optString("notice", "");
        status(notice.isEmpty() ? line : line + "\n" + notice, false); // Auto fell back to the CPU: say why
    }

    /** Encodes image for the next chat turn; returns the status line's image part. */
    private String encodeImage(ModelRequest request, ImageSource image) throws McpmException {
        if (!McpmNative.hasVision(handle)) {
            throw new McpmException(request.name + " has no vision encoder: images need a MiniCPM-V model "
                    + "(export one with mcpm-export)");
        }
        status(String.format(Locale.US, "Encoding the image (%dx%d)...", image.width(), image.height()), false);
        int runs = McpmNative.encodeImage(handle, image.argb(), image.width(), image.height());
        JSONObject stats = stats(handle);
        String line = String.format(Locale.US, "; image: %d vision runs", runs);
        double ms = stats.optDouble("image_encode_ms", -1);
        if (ms >= 0) {
            line += String.format(Locale.US, ", encoded in %.0f ms", ms);
        }
        String notice = stats.optString("notice", "");
        return notice.contains("image") ? line + " (" + notice + ")" : line; // the runtime downscaled it
    }

    /** ", KV cache 12.0 MiB float16" from the stats (the cache's memory, which a phone must afford), or "". */
    static String kvPart(JSONObject stats) {
        long bytes = stats.optLong("kv_bytes", -1);
        if (bytes < 0) {
            return "";
        }
        return String.format(Locale.US, ", KV cache %.1f MiB %s", bytes / 1048576.0, stats.optString("kv_dtype", ""))
                .trim();
    }

    private static JSONObject stats(long h) throws McpmException {
        String text = McpmNative.stats(h);
        if (text == null) {
            throw new McpmException("the runtime returned no statistics");
        }
        try {
            return new JSONObject(text);
        } catch (JSONException e) {
            throw new McpmException("the runtime's statistics are not valid JSON: " + e.getMessage(), e);
        }
    }

    private void freeModel() {
        if (handle == 0) {
            return;
        }
        long h = handle;
        synchronized (lock) {
            liveHandle = 0; // stop() cannot reach the handle any more
            setVision(false);
        }
        maxImagePixels = 0;
        handle = 0;
        loadedKey = null;
        loadedDevice = null;
        McpmNative.free(h);
    }

    private boolean stoppedByUser(Throwable t) {
        return stopRequested && t instanceof McpmException && String.valueOf(t.getMessage()).startsWith("cancelled");
    }

    // ---- any thread ----

    private boolean submit(Runnable task) {
        try {
            worker.execute(new Runnable() {
                @Override
                public void run() {
                    try {
                        task.run();
                    } catch (Throwable t) {
                        status("Unexpected error: " + describe(t), true);
                    }
                }
            });
            return true;
        } catch (RuntimeException e) { // RejectedExecutionException: cannot happen for the shared engine
            status("The chat is shutting down: " + e, true);
            return false;
        }
    }

    /** One line for an error: the runtime's message, or what an OutOfMemoryError / a link error means. */
    static String describe(Throwable t) {
        if (t instanceof McpmException) {
            return t.getMessage();
        }
        if (t instanceof OutOfMemoryError) {
            return "out of memory: the model does not fit in this phone's memory (try a smaller or more quantized "
                    + "model, fewer tokens, or close other apps)";
        }
        if (t instanceof UnsatisfiedLinkError) {
            return "native library problem (libmcpm.so does not match this app): " + t.getMessage();
        }
        return t.toString();
    }

    /** Shows a status line (kept for a screen attached later). Any thread. */
    public void status(String text, boolean error) {
        synchronized (lock) {
            status = text;
            statusError = error;
            if (listener != null) {
                listener.onStatus(text, error);
            }
        }
    }

    /** Appends to the conversation turnOf belongs to (nothing when New chat started another). */
    private void append(long turnOf, String text) {
        synchronized (lock) {
            if (turnOf != conversation) {
                return;
            }
            transcript.append(text);
            if (listener != null) {
                listener.onText(text);
            }
        }
    }

    private void setBusy(boolean b) { // lock held
        busy = b;
        if (listener != null) {
            listener.onBusy(b);
        }
    }

    private void setVision(boolean v) { // lock held
        vision = v;
        if (!v) {
            attachedImage = null;
        }
        if (listener != null) {
            listener.onVision(v);
            if (!v) {
                listener.onImage(null);
            }
        }
    }
}
