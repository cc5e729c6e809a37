package org.mcpm.demo;

import android.app.Activity;
import android.content.SharedPreferences;
import android.os.Bundle;
import android.view.View;
import android.widget.EditText;
import android.widget.RadioGroup;
import android.widget.Toast;

import java.util.Locale;

/** Threads, max new tokens, temperature, top-k, top-p, seed and the device (CPU / GPU / Auto), stored in
 * SharedPreferences "mcpm". */
public class SettingsActivity extends Activity {
    private EditText threads;
    private EditText maxTokens;
    private EditText temperature;
    private EditText topK;
    private EditText topP;
    private EditText seed;
    private RadioGroup device;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_settings);
        threads = (EditText) findViewById(R.id.threads_edit);
        maxTokens = (EditText) findViewById(R.id.max_tokens_edit);
        temperature = (EditText) findViewById(R.id.temperature_edit);
        topK = (EditText) findViewById(R.id.top_k_edit);
        topP = (EditText) findViewById(R.id.top_p_edit);
        seed = (EditText) findViewById(R.id.seed_edit);
        device = (RadioGroup) findViewById(R.id.device_group);

        Prefs p = Prefs.load(this);
        threads.setText(String.valueOf(p.threads));
        maxTokens.setText(String.valueOf(p.maxNewTokens));
        temperature.setText(DecimalInput.format(p.temperature, Locale.getDefault()));
        topK.setText(String.valueOf(p.topK));
        topP.setText(DecimalInput.format(p.topP, Locale.getDefault()));
        seed.setText(String.valueOf(p.seed));
        device.check(Prefs.DEVICE_GPU.equals(p.device) ? R.id.device_gpu
                : Prefs.DEVICE_AUTO.equals(p.device) ? R.id.device_auto : R.id.device_cpu);

        findViewById(R.id.save_button).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                if (save()) {
                    Toast.makeText(SettingsActivity.this, "Saved", Toast.LENGTH_SHORT).show();
                    finish();
                }
            }
        });
    }

    /** Validates every field (marking the bad ones) and stores them; false when one is invalid. */
    private boolean save() {
        int cores = Math.max(Runtime.getRuntime().availableProcessors(), 1);
        Integer t = intIn(threads, 0, Math.max(cores, 16)); // 0 = automatic (the big cores)
        Integer m = intIn(maxTokens, 1, 1 << 20);
        Float temp = floatIn(temperature, 0f, 10f);
        Integer k = intIn(topK, 0, 1 << 20);
        Float pp = floatIn(topP, 0f, 1f);
        Long s = longValue(seed);
        if (t == null || m == null || temp == null || k == null || pp == null || s == null) {
            return false;
        }
        if (pp <= 0f) {
            topP.setError("must be above 0 (1 = off)");
            return false;
        }
        SharedPreferences.Editor e = Prefs.shared(this).edit();
        e.putInt(Prefs.THREADS, t);
        e.putInt(Prefs.MAX_NEW_TOKENS, m);
        e.putFloat(Prefs.TEMPERATURE, temp);
        e.putInt(Prefs.TOP_K, k);
        e.putFloat(Prefs.TOP_P, pp);
        e.putLong(Prefs.SEED, s);
        int checked = device.getCheckedRadioButtonId();
        e.putString(Prefs.DEVICE, checked == R.id.device_gpu ? Prefs.DEVICE_GPU
                : checked == R.id.device_auto ? Prefs.DEVICE_AUTO : Prefs.DEVICE_CPU);
        return e.commit();
    }

    private static Integer intIn(EditText field, int lo, int hi) {
        try {
            int v = Integer.parseInt(field.getText().toString().trim());
            if (v >= lo && v <= hi) {
                return v;
            }
        } catch (NumberFormatException e) {
            // Reported below.
        }
        field.setError("a whole number from " + lo + " to " + hi);
        return null;
    }

    /** A decimal in [lo, hi], typed with ',' or '.' (the layout accepts both keys: android:digits). */
    private static Float floatIn(EditText field, float lo, float hi) {
        Float v = DecimalInput.parse(field.getText().toString());
        if (v != null && v >= lo && v <= hi) {
            return v;
        }
        Locale l = Locale.getDefault();
        field.setError("a number from " + DecimalInput.format(lo, l) + " to " + DecimalInput.format(hi, l));
        return null;
    }

    private static Long longValue(EditText field) {
        try {
            return Long.parseLong(field.getText().toString().trim());
        } catch (NumberFormatException e) {
            field.setError("a whole number (negative = random)");
            return null;
        }
    }
}
