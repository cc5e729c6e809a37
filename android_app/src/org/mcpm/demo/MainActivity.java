package org.mcpm.demo;

import android.app.Activity;
import android.content.Intent;
import android.graphics.Color;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.view.View;
import android.widget.AdapterView;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ImageView;
import android.widget.ScrollView;
import android.widget.Spinner;
import android.widget.TextView;

import java.io.File;
import java.util.ArrayList;
import java.util.List;

/**
 * The chat screen, and only the screen: a model picker, the conversation with streaming tokens, Send / Stop,
 * New chat, Settings and (MiniCPM-V models) Image. The model, the conversation and the running reply live in the
 * process's {@link ChatEngine}: this Activity attaches to it when created and detaches when destroyed, so being
 * recreated (rotation, dark mode, font size, locale, ...) loses nothing; the model is freed only when the user
 * leaves the chat for good (the Activity finishes). Pictures come through {@link ImageIntake}.
 */
public class MainActivity extends Activity {
    private static final int COLOR_STATUS = 0xFF666666;

    private final Handler ui = new Handler(Looper.getMainLooper());
    private final List<ModelStore.Model> models = new ArrayList<ModelStore.Model>();
    private ChatEngine engine;

    private Spinner modelSpinner;
    private ArrayAdapter<ModelStore.Model> modelAdapter;
    private TextView statusText;
    private TextView chatText;
    private ScrollView chatScroll;
    private EditText inputText;
    private Button sendButton;
    private Button stopButton;
    private Button imageButton;
    private View imageRow;
    private ImageView imageThumb;
    private TextView imageInfo;

    /** Shows the engine's events on the UI thread (they arrive on the engine's threads). */
    private final ChatEngine.Listener view = new ChatEngine.Listener() {
        @Override
        public void onStatus(final String text, final boolean error) {
            ui.post(new Runnable() {
                @Override
                public void run() {
                    statusText.setText(text);
                    statusText.setTextColor(error ? Color.RED : COLOR_STATUS);
                }
            });
        }

        @Override
        public void onText(final String piece) {
            ui.post(new Runnable() {
                @Override
                public void run() {
                    chatText.append(piece);
                    scrollToEnd();
                }
            });
        }

        @Override
        public void onTranscript(final String text) {
            ui.post(new Runnable() {
                @Override
                public void run() {
                    chatText.setText(text);
                    scrollToEnd();
                }
            });
        }

        @Override
        public void onBusy(final boolean busy) {
            ui.post(new Runnable() {
                @Override
                public void run() {
                    sendButton.setEnabled(!busy);
                    stopButton.setEnabled(busy);
                }
            });
        }

        @Override
        public void onVision(final boolean vision) {
            ui.post(new Runnable() {
                @Override
                public void run() {
                    imageButton.setVisibility(vision ? View.VISIBLE : View.GONE);
                }
            });
        }

        @Override
        public void onImage(final ChatEngine.ImageSource image) {
            ui.post(new Runnable() {
                @Override
                public void run() {
                    showImage(image instanceof ImageLoader.Picture ? (ImageLoader.Picture) image : null);
                }
            });
        }
    };

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        engine = ChatEngine.shared();
        modelSpinner = (Spinner) findViewById(R.id.model_spinner);
        statusText = (TextView) findViewById(R.id.status_text);
        chatText = (TextView) findViewById(R.id.chat_text);
        chatScroll = (ScrollView) findViewById(R.id.chat_scroll);
        inputText = (EditText) findViewById(R.id.input_text);
        sendButton = (Button) findViewById(R.id.send_button);
        stopButton = (Button) findViewById(R.id.stop_button);
        imageButton = (Button) findViewById(R.id.image_button);
        imageRow = findViewById(R.id.image_row);
        imageThumb = (ImageView) findViewById(R.id.image_thumb);
        imageInfo = (TextView) findViewById(R.id.image_info);

        modelAdapter = new ArrayAdapter<ModelStore.Model>(this, android.R.layout.simple_spinner_item, models);
        modelAdapter.setDropDownViewResource(android.R.layout.simple_spinner_dropdown_item);
        modelSpinner.setAdapter(modelAdapter);
        modelSpinner.setOnItemSelectedListener(new AdapterView.OnItemSelectedListener() {
            @Override
            public void onItemSelected(AdapterView<?> parent, View v, int position, long id) {
                if (position >= 0 && position < models.size()) {
                    ModelStore.Model m = models.get(position);
                    Prefs.shared(MainActivity.this).edit().putString(Prefs.LAST_MODEL, m.key()).apply();
                    engine.load(request(m));
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
                engine.stop();
                engine.status("Stopping...", false);
            }
        });
        findViewById(R.id.reset_button).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                engine.newChat();
            }
        });
        findViewById(R.id.selftest_button).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                ModelStore.Model model = selectedModel();
                if (model == null) {
                    engine.status("No model selected to self-test", true);
                } else {
                    engine.selfTest(request(model));
                }
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
                ImageIntake.choose(MainActivity.this, engine);
            }
        });
        findViewById(R.id.image_remove).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                engine.attachImage(null);
                engine.status("Image removed", false);
            }
        });
        engine.attach(view);
        try {
            McpmNative.ensureLoaded();
        } catch (McpmException e) {
            engine.status(e.getMessage(), true);
        }
    }

    @Override
    protected void onResume() {
        super.onResume();
        refreshModels();
    }

    @Override
    protected void onDestroy() {
        engine.detach(view);
        if (isFinishing() && !isChangingConfigurations()) {
            engine.close(); // the user left the chat: stop the reply and free the model's memory
        }
        super.onDestroy();
    }

    @Override
    protected void onActivityResult(int requestCode, int resultCode, Intent data) {
        if (!ImageIntake.onResult(this, requestCode, resultCode, data, engine)) {
            super.onActivityResult(requestCode, resultCode, data);
        }
    }

    /** Lists the models again (pushed ones may have appeared) and keeps or restores the selection. */
    private void refreshModels() {
        ModelStore.Model current = selectedModel();
        String wanted = current != null ? current.key() : Prefs.shared(this).getString(Prefs.LAST_MODEL, null);
        models.clear();
        models.addAll(ModelStore.list(this));
        modelAdapter.notifyDataSetChanged();
        if (models.isEmpty()) {
            engine.status("No model found. Looked in " + ModelStore.searchPlaces(this)
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
            engine.load(request(models.get(index))); // no selection event; reloads if threads/device changed
        } else {
            modelSpinner.setSelection(index);
        }
    }

    private ModelStore.Model selectedModel() {
        int pos = modelSpinner.getSelectedItemPosition();
        return pos >= 0 && pos < models.size() ? models.get(pos) : null;
    }

    /** The engine's request for model with the current Settings (copying a bundled model out of the APK). */
    private ChatEngine.ModelRequest request(final ModelStore.Model model) {
        final Prefs prefs = Prefs.load(this);
        final android.content.Context app = getApplicationContext();
        File cache = getCacheDir(); // the runtime keeps the compiled OpenCL program in <cache>/opencl/
        return new ChatEngine.ModelRequest(model.key(), model.name, prefs.threads, prefs.device,
                cache != null ? cache.getAbsolutePath() : null, new ChatEngine.Preparer() {
                    @Override
                    public File prepare(final ChatEngine.Progress progress) throws McpmException {
                        if (model.bundled) {
                            progress.onProgress("Preparing " + model.name + "...");
                        }
                        return ModelStore.prepare(app, model, new ModelStore.Progress() {
                            @Override
                            public void onProgress(String message) {
                                progress.onProgress(message);
                            }
                        });
                    }
                });
    }

    private void send() {
        String message = inputText.getText().toString().trim();
        if (message.isEmpty()) {
            if (engine.attachedImage() != null) {
                engine.status("Type a question about the image, then Send", true);
            }
            return;
        }
        ModelStore.Model model = selectedModel();
        if (model == null) {
            engine.status("No model selected: push one with `mcpm android push-model` (looked in "
                    + ModelStore.searchPlaces(this) + ")", true);
            return;
        }
        Prefs prefs = Prefs.load(this);
        ChatEngine.Sampling sampling = new ChatEngine.Sampling(prefs.maxNewTokens, prefs.temperature, prefs.topK,
                prefs.topP, prefs.effectiveSeed());
        if (engine.send(message, request(model), sampling)) {
            inputText.setText("");
        }
    }

    /** UI thread: the thumbnail row of the attached picture (null: hidden). */
    private void showImage(ImageLoader.Picture picture) {
        imageThumb.setImageBitmap(picture != null ? picture.thumbnail : null);
        imageInfo.setText(picture != null ? picture.describe() : "");
        imageRow.setVisibility(picture != null ? View.VISIBLE : View.GONE);
    }

    private void scrollToEnd() {
        chatScroll.post(new Runnable() {
            @Override
            public void run() {
                chatScroll.scrollTo(0, chatText.getBottom());
            }
        });
    }
}
