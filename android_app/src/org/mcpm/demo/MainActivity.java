package org.mcpm.demo;

import android.app.Activity;
import android.app.AlertDialog;
import android.content.ActivityNotFoundException;
import android.content.DialogInterface;
import android.content.Intent;
import android.graphics.Bitmap;
import android.graphics.Color;
import android.net.Uri;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.provider.MediaStore;
import android.view.View;
import android.widget.AdapterView;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ImageView;
import android.widget.ScrollView;
import android.widget.Spinner;
import android.widget.TextView;

import org.json.JSONException;
import org.json.JSONObject;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * The chat screen: a model picker, the conversation with streaming tokens, Send / Stop, New chat and Settings.
 * All native calls run on one background thread (so they never overlap); every error is shown, never thrown.
 * The model runs where Settings says (CPU, GPU or Auto); when Auto falls back to the CPU, the runtime's reason is
 * shown in the status line. For a MiniCPM-V model an Image button attaches a picture (gallery or camera) to the next
 * message: decoded by ImageLoader off the UI thread, encoded by the runtime on Send (encode time in the status).
 */
public class MainActivity extends Activity {
    private static final int COLOR_STATUS = 0xFF666666;
    private static final int REQUEST_GALLERY = 1;
    private static final int REQUEST_CAMERA = 2;

    private final Handler ui = new Handler(Looper.getMainLooper());
    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final ExecutorService decoder = Executors.newSingleThreadExecutor(); // image files, off the UI thread
    private final List<ModelStore.Model> models = new ArrayList<ModelStore.Model>();

    private Spinner modelSpinner;
    private ArrayAdapter<ModelStore.Model> modelAdapter;
    private TextView statusText;
    private TextView chatText;
    private ScrollView chatScroll;
    private EditText inputText;
    private Button sendButton;
    private Button stopButton;
    private Button resetButton;
    private Button imageButton;
    private View imageRow;
    private ImageView imageThumb;
    private TextView imageInfo;

    private volatile boolean stopRequested;
    private boolean busy; // UI thread only
    private ImageLoader.Picture pendingImage; // UI thread only: attached to the next message
    // The loaded model's image size limit (McpmNative.maxImagePixels; 0 = no images): set by the worker, read by
    // the image decoder thread.
    private volatile long maxImagePixels;
    // The loaded model's handle for Stop from the UI thread (McpmNative.stop): set after a load, cleared before the
    // model is freed, both under handleLock, so stop() never sees a freed handle.
    private final Object handleLock = new Object();
    private long liveHandle; // guarded by handleLock

    // Worker thread only.
    private long handle;
    private String loadedKey;
    private int loadedThreads;
    private String loadedDevice; // the device setting it was loaded with
    private String runsOn = "";  // "CPU" or "GPU", for the status line

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        modelSpinner = (Spinner) findViewById(R.id.model_spinner);
        statusText = (TextView) findViewById(R.id.status_text);
        chatText = (TextView) findViewById(R.id.chat_text);
        chatScroll = (ScrollView) findViewById(R.id.chat_scroll);
        inputText = (EditText) findViewById(R.id.input_text);
        sendButton = (Button) findViewById(R.id.send_button);
        stopButton = (Button) findViewById(R.id.stop_button);
        resetButton = (Button) findViewById(R.id.reset_button);
        imageButton = (Button) findViewById(R.id.image_button);
        imageRow = findViewById(R.id.image_row);
        imageThumb = (ImageView) findViewById(R.id.image_thumb);
        imageInfo = (TextView) findViewById(R.id.image_info);

        modelAdapter = new ArrayAdapter<ModelStore.Model>(this, android.R.layout.simple_spinner_item, models);
        modelAdapter.setDropDownViewResource(android.R.layout.simple_spinner_dropdown_item);
        modelSpinner.setAdapter(modelAdapter);
        modelSpinner.setOnItemSelectedListener(new AdapterView.OnItemSelectedListener() {
            @Override
            public void onItemSelected(AdapterView<?> parent, View view, int position, long id) {
                if (position >= 0 && position < models.size()) {
                    ModelStore.Model m = models.get(position);
                    Prefs.shared(MainActivity.this).edit().putString(Prefs.LAST_MODEL, m.key()).apply();
                    loadInBackground(m);
                }
            }

            @Override
            public void onNothingSelected(AdapterView<?> parent) {
            }
        });
        sendButton.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                send();
            }
        });
        stopButton.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                requestStop();
                setStatus("Stopping...", false);
            }
        });
        resetButton.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                newChat();
            }
        });
        findViewById(R.id.settings_button).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                startActivity(new Intent(MainActivity.this, SettingsActivity.class));
            }
        });
        imageButton.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                chooseImageSource();
            }
        });
        findViewById(R.id.image_remove).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                removeImage();
                setStatus("Image removed", false);
            }
        });
        try {
            McpmNative.ensureLoaded();
        } catch (McpmException e) {
            setStatus(e.getMessage(), true);
        }
    }

    @Override
    protected void onResume() {
        super.onResume();
        refreshModels();
    }

    @Override
    protected void onDestroy() {
        requestStop();
        try {
            worker.execute(new Runnable() {
                @Override
                public void run() {
                    freeModel();
                }
            });
        } catch (RuntimeException e) {
            // Already shut down.
        }
        worker.shutdown();
        decoder.shutdownNow();
        super.onDestroy();
    }

    /** Lists the models again (pushed ones may have appeared) and keeps or restores the selection. */
    private void refreshModels() {
        ModelStore.Model current = selectedModel();
        String wanted = current != null ? current.key() : Prefs.shared(this).getString(Prefs.LAST_MODEL, null);
        models.clear();
        models.addAll(ModelStore.list(this));
        modelAdapter.notifyDataSetChanged();
        if (models.isEmpty()) {
            setStatus("No model found. Looked in " + ModelStore.searchPlaces(this)
                    + ". Push one with `mcpm android push-model`, or build the APK with a bundle.", true);
            return;
        }
        int index = 0;
        for (int i = 0; i < models.size(); i++) {
            if (models.get(i).key().equals(wanted)) {
                index = i;
                break;
            }
        }
        if (modelSpinner.getSelectedItemPosition() == index) {
            loadInBackground(models.get(index)); // same item: no selection event; reloads if threads/device changed
        } else {
            modelSpinner.setSelection(index);
        }
    }

    private ModelStore.Model selectedModel() {
        int pos = modelSpinner.getSelectedItemPosition();
        return pos >= 0 && pos < models.size() ? models.get(pos) : null;
    }

    private void loadInBackground(final ModelStore.Model model) {
        final Prefs prefs = Prefs.load(this);
        runTask(new Runnable() {
            @Override
            public void run() {
                try {
                    ensureModel(model, prefs.threads, prefs.device);
                } catch (Throwable t) {
                    reportError("Loading " + model.name + " failed", t);
                }
            }
        }, false);
    }

    /** Worker thread: loads model with the given thread count and device unless it is loaded already. */
    private void ensureModel(ModelStore.Model model, int threads, String device) throws McpmException {
        if (handle != 0 && model.key().equals(loadedKey) && threads == loadedThreads && device.equals(loadedDevice)) {
            return;
        }
        freeModel();
        McpmNative.ensureLoaded();
        if (model.bundled) {
            setStatus("Preparing " + model.name + "...", false);
        }
        File dir = ModelStore.prepare(this, model, new ModelStore.Progress() {
            @Override
            public void onProgress(String message) {
                setStatus(message, false);
            }
        });
        setStatus("Loading " + model.name + " (" + threads + " threads, device " + device + ")...", false);
        long t0 = System.nanoTime();
        File cache = getCacheDir(); // the runtime keeps the compiled OpenCL program in <cache>/opencl/
        try {
            handle = McpmNative.load(dir.getAbsolutePath(), threads, device, null,
                    cache != null ? cache.getAbsolutePath() : null, false);
        } catch (McpmException e) {
            if (Prefs.DEVICE_GPU.equals(device)) {
                throw new McpmException(e.getMessage() + " (Settings: choose CPU or Auto)", e);
            }
            throw e;
        }
        synchronized (handleLock) {
            liveHandle = handle;
        }
        loadedKey = model.key();
        loadedThreads = threads;
        loadedDevice = device;
        boolean vision = false;
        try {
            vision = McpmNative.hasVision(handle);
            maxImagePixels = vision ? McpmNative.maxImagePixels(handle) : 0;
        } catch (Throwable t) {
            // An old libmcpm.so without image input: no Image button.
        }
        showImageButton(vision);
        double seconds = (System.nanoTime() - t0) / 1e9;
        String runsOnDevice = "cpu";
        String gpuName = "";
        String notice = "";
        try {
            JSONObject stats = new JSONObject(McpmNative.stats(handle));
            runsOnDevice = stats.optString("device", "cpu");
            gpuName = stats.optString("gpu_device", "");
            notice = stats.optString("notice", "");
        } catch (JSONException e) {
            // Older runtime without these keys: the CPU, no notice.
        } catch (RuntimeException e) {
            // stats() returned null.
        }
        runsOn = "gpu".equals(runsOnDevice) ? "GPU" : "CPU";
        String where = "gpu".equals(runsOnDevice) ? (gpuName.isEmpty() ? "GPU" : gpuName) : threads + " threads";
        String line = String.format(Locale.US, "%s loaded in %.1f s (%s)", model.name, seconds, where);
        if (!notice.isEmpty()) {
            line += "\n" + notice; // device auto fell back to the CPU: say why
        }
        setStatus(line, false);
    }

    /** Any thread: the reply stops (the sink says so) and so does a prompt or image being fed (McpmNative.stop). */
    private void requestStop() {
        stopRequested = true;
        synchronized (handleLock) {
            if (liveHandle != 0) {
                McpmNative.stop(liveHandle);
            }
        }
    }

    /** A McpmException of a call that Stop interrupted ("cancelled: ..."). */
    private boolean stoppedByUser(Throwable t) {
        return stopRequested && t instanceof McpmException && String.valueOf(t.getMessage()).startsWith("cancelled");
    }

    /** Worker thread. */
    private void freeModel() {
        if (handle != 0) {
            showImageButton(false);
            maxImagePixels = 0;
            long h = handle;
            synchronized (handleLock) {
                liveHandle = 0;
            }
            handle = 0;
            loadedKey = null;
            loadedDevice = null;
            try {
                McpmNative.free(h);
            } catch (Throwable t) {
                // Nothing useful to show while switching models or closing.
            }
        }
    }

    private void send() {
        if (busy) {
            return;
        }
        final String message = inputText.getText().toString().trim();
        if (message.isEmpty()) {
            if (pendingImage != null) {
                setStatus("Type a question about the image, then Send", true);
            }
            return;
        }
        final ModelStore.Model model = selectedModel();
        if (model == null) {
            setStatus("No model selected: push one with `mcpm android push-model` (looked in "
                    + ModelStore.searchPlaces(this) + ")", true);
            return;
        }
        final Prefs prefs = Prefs.load(this);
        final ImageLoader.Picture picture = pendingImage;
        removeImage();
        inputText.setText("");
        String imageTag = picture == null ? ""
                : String.format(Locale.US, "[image %dx%d] ", picture.width(), picture.height());
        appendChat((chatText.length() == 0 ? "" : "\n\n") + "You: " + imageTag + message + "\n\n" + model.name
                + ": ");
        stopRequested = false;
        runTask(new Runnable() {
            @Override
            public void run() {
                try {
                    ensureModel(model, prefs.threads, prefs.device);
                    String imageLine = "";
                    if (picture != null) {
                        try {
                            imageLine = encodeImage(model, picture);
                        } catch (Throwable t) {
                            appendChat(stoppedByUser(t) ? "[stopped: image not sent]" : "[image not sent]");
                            if (stoppedByUser(t)) {
                                setStatus("Stopped", false);
                            } else {
                                reportError("Image encoding failed", t);
                            }
                            return;
                        }
                    }
                    setStatus("Generating..." + imageLine, false);
                    McpmNative.TextSink sink = new McpmNative.TextSink() {
                        @Override
                        public boolean onText(final String piece) {
                            if (piece != null && !piece.isEmpty()) {
                                appendChat(piece);
                            }
                            return !stopRequested;
                        }
                    };
                    long t0 = System.nanoTime();
                    int n = McpmNative.chat(handle, message, prefs.maxNewTokens, prefs.temperature, prefs.topK,
                            prefs.topP, prefs.effectiveSeed(), sink);
                    double seconds = Math.max((System.nanoTime() - t0) / 1e9, 1e-9);
                    setStatus(String.format(Locale.US, "%d tokens in %.1f s (%.1f tokens/s, %s)%s%s", n, seconds,
                            n / seconds, runsOn, stopRequested ? ", stopped" : "", imageLine), false);
                } catch (Throwable t) {
                    if (stoppedByUser(t)) { // stopped while the message was being read: it was not sent
                        appendChat("\n[stopped]");
                        setStatus("Stopped", false);
                    } else {
                        appendChat("\n[error]");
                        reportError("Generation failed", t);
                    }
                }
            }
        }, true);
    }

    /**
     * Worker thread: encodes picture for the next chat turn (McpmNative.encodeImage); returns the status line's
     * image part ("; image: 3 vision runs, encoded in 812 ms").
     */
    private String encodeImage(ModelStore.Model model, ImageLoader.Picture picture) throws McpmException {
        if (!McpmNative.hasVision(handle)) {
            throw new McpmException(model.name + " has no vision encoder: images need a MiniCPM-V model "
                    + "(export one with mcpm-export)");
        }
        setStatus(String.format(Locale.US, "Encoding the image (%dx%d)...", picture.width(), picture.height()),
                false);
        int[] argb = ImageLoader.argb(picture.bitmap);
        int runs = McpmNative.encodeImage(handle, argb, picture.width(), picture.height());
        double ms = -1;
        String notice = "";
        try {
            JSONObject stats = new JSONObject(McpmNative.stats(handle));
            ms = stats.optDouble("image_encode_ms", -1);
            notice = stats.optString("notice", "");
        } catch (JSONException e) {
            // No timing: the line says only the runs.
        } catch (RuntimeException e) {
            // stats() returned null.
        }
        String line = String.format(Locale.US, "; image: %d vision runs", runs);
        if (ms >= 0) {
            line += String.format(Locale.US, ", encoded in %.0f ms", ms);
        }
        if (notice.contains("image")) {
            line += " (" + notice + ")"; // the runtime downscaled it
        }
        return line;
    }

    /** Gallery or camera. */
    private void chooseImageSource() {
        String[] choices = {getString(R.string.image_gallery), getString(R.string.image_camera)};
        new AlertDialog.Builder(this)
                .setTitle(R.string.image_pick_title)
                .setItems(choices, new DialogInterface.OnClickListener() {
                    @Override
                    public void onClick(DialogInterface dialog, int which) {
                        if (which == 0) {
                            pickFromGallery();
                        } else {
                            takePhoto();
                        }
                    }
                })
                .show();
    }

    private void pickFromGallery() {
        Intent get = new Intent(Intent.ACTION_GET_CONTENT);
        get.setType("image/*");
        get.addCategory(Intent.CATEGORY_OPENABLE);
        try {
            startActivityForResult(Intent.createChooser(get, getString(R.string.image_pick_title)), REQUEST_GALLERY);
            return;
        } catch (ActivityNotFoundException e) {
            // Try the older picker below.
        }
        try {
            startActivityForResult(new Intent(Intent.ACTION_PICK, MediaStore.Images.Media.EXTERNAL_CONTENT_URI),
                    REQUEST_GALLERY);
        } catch (ActivityNotFoundException e) {
            setStatus("No gallery app to pick an image with", true);
        }
    }

    /** The camera app's preview-size photo (the "data" extra): a full-size one would need a FileProvider. */
    private void takePhoto() {
        try {
            startActivityForResult(new Intent(MediaStore.ACTION_IMAGE_CAPTURE), REQUEST_CAMERA);
        } catch (ActivityNotFoundException e) {
            setStatus("No camera app on this phone", true);
        } catch (SecurityException e) {
            setStatus("The camera cannot be used: " + e.getMessage(), true);
        }
    }

    @Override
    protected void onActivityResult(int requestCode, int resultCode, final Intent data) {
        if (requestCode != REQUEST_GALLERY && requestCode != REQUEST_CAMERA) {
            super.onActivityResult(requestCode, resultCode, data);
            return;
        }
        if (resultCode != RESULT_OK) {
            setStatus("No image attached", false);
            return;
        }
        final boolean camera = requestCode == REQUEST_CAMERA;
        final Uri uri = data != null ? data.getData() : null;
        final Object extra = camera && data != null && data.getExtras() != null ? data.getExtras().get("data") : null;
        setStatus("Reading the image...", false);
        try {
            decoder.execute(new Runnable() {
                @Override
                public void run() {
                    try {
                        final ImageLoader.Picture picture;
                        if (camera) {
                            picture = ImageLoader.fromBitmap(extra instanceof Bitmap ? (Bitmap) extra : null,
                                    "camera", maxImagePixels);
                        } else if (uri == null) {
                            throw new McpmException("the gallery returned no image");
                        } else {
                            String name = uri.getLastPathSegment();
                            picture = ImageLoader.decodeFile(ImageLoader.copyToCache(MainActivity.this, uri),
                                    name != null ? name : "image", maxImagePixels);
                        }
                        ui.post(new Runnable() {
                            @Override
                            public void run() {
                                attachImage(picture);
                            }
                        });
                    } catch (Throwable t) {
                        reportError("Image not attached", t);
                    }
                }
            });
        } catch (RuntimeException e) { // RejectedExecutionException after onDestroy
            setStatus("Image not attached: the screen is closing", true);
        }
    }

    /** UI thread: shows the thumbnail; the image goes with the next message. */
    private void attachImage(ImageLoader.Picture picture) {
        pendingImage = picture;
        imageThumb.setImageBitmap(picture.thumbnail);
        imageInfo.setText(picture.describe());
        imageRow.setVisibility(View.VISIBLE);
        String note = picture.reductionNote();
        setStatus(note.isEmpty() ? "Image attached: it goes with your next message"
                : "Image attached; " + note + " to fit in memory", false);
    }

    /** UI thread. */
    private void removeImage() {
        pendingImage = null;
        imageThumb.setImageBitmap(null);
        imageRow.setVisibility(View.GONE);
    }

    /** Any thread: the Image button is there only for models with a vision encoder. */
    private void showImageButton(final boolean vision) {
        ui.post(new Runnable() {
            @Override
            public void run() {
                imageButton.setVisibility(vision ? View.VISIBLE : View.GONE);
                if (!vision) {
                    removeImage();
                }
            }
        });
    }

    private void newChat() {
        requestStop();
        chatText.setText("");
        removeImage();
        runTask(new Runnable() {
            @Override
            public void run() {
                try {
                    if (handle != 0) {
                        McpmNative.reset(handle);
                    }
                    setStatus("New conversation", false);
                } catch (Throwable t) {
                    reportError("Reset failed", t);
                }
            }
        }, false);
    }

    /** Runs a task on the worker; while a generating task runs, Send is disabled and Stop enabled. */
    private void runTask(final Runnable task, final boolean generating) {
        if (generating) {
            busy = true;
            sendButton.setEnabled(false);
            stopButton.setEnabled(true);
        }
        try {
            worker.execute(new Runnable() {
                @Override
                public void run() {
                    try {
                        task.run();
                    } catch (Throwable t) {
                        reportError("Unexpected error", t);
                    } finally {
                        if (generating) {
                            ui.post(new Runnable() {
                                @Override
                                public void run() {
                                    busy = false;
                                    sendButton.setEnabled(true);
                                    stopButton.setEnabled(false);
                                }
                            });
                        }
                    }
                }
            });
        } catch (RuntimeException e) { // RejectedExecutionException after onDestroy
            busy = false;
        }
    }

    /** Any thread: shows an error as one line (McpmException message, out of memory, missing native code). */
    private void reportError(String what, Throwable t) {
        String detail;
        if (t instanceof McpmException) {
            detail = t.getMessage();
        } else if (t instanceof OutOfMemoryError) {
            detail = "out of memory: the model does not fit in this phone's memory (try a smaller or more "
                    + "quantized model, fewer tokens, or close other apps)";
        } else if (t instanceof UnsatisfiedLinkError) {
            detail = "native library problem (libmcpm.so does not match this app): " + t.getMessage();
        } else {
            detail = t.toString();
        }
        setStatus(what + ": " + detail, true);
    }

    /** Any thread. */
    private void setStatus(final String text, final boolean error) {
        ui.post(new Runnable() {
            @Override
            public void run() {
                statusText.setText(text);
                statusText.setTextColor(error ? Color.RED : COLOR_STATUS);
            }
        });
    }

    /** Any thread: appends to the conversation and scrolls to the end. */
    private void appendChat(final String text) {
        ui.post(new Runnable() {
            @Override
            public void run() {
                chatText.append(text);
                chatScroll.post(new Runnable() {
                    @Override
                    public void run() {
                        chatScroll.scrollTo(0, chatText.getBottom());
                    }
                });
            }
        });
    }
}
