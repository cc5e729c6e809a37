package org.mcpm.demo;

import android.content.Context;
import android.content.SharedPreferences;

import java.util.Locale;

/** Generation settings and the device (CPU / GPU / Auto), stored in SharedPreferences "mcpm" (SettingsActivity). */
public final class Prefs {
    public static final String NAME = "mcpm";
    public static final String THREADS = "threads";
    public static final String MAX_NEW_TOKENS = "max_new_tokens";
    public static final String TEMPERATURE = "temperature";
    public static final String TOP_K = "top_k";
    public static final String TOP_P = "top_p";
    public static final String SEED = "seed";
    public static final String LAST_MODEL = "last_model";
    public static final String DEVICE = "device";

    /** The runtime's device names: the CPU kernels, the bundle's OpenCL kernels, or the GPU when it works. */
    public static final String DEVICE_CPU = "cpu";
    public static final String DEVICE_GPU = "gpu";
    public static final String DEVICE_AUTO = "auto";

    public static final int DEFAULT_THREADS = 0; // automatic: the big cores (the runtime reads cpufreq)
    public static final int DEFAULT_MAX_NEW_TOKENS = 256;
    public static final float DEFAULT_TEMPERATURE = 0.7f;
    public static final int DEFAULT_TOP_K = 40;
    public static final float DEFAULT_TOP_P = 0.9f;
    public static final long DEFAULT_SEED = -1L;
    public static final String DEFAULT_DEVICE = DEVICE_CPU;

    public final int threads;
    public final int maxNewTokens;
    public final float temperature;
    public final int topK;
    public final float topP;
    public final long seed;
    public final String device;

    private Prefs(SharedPreferences p) {
        threads = p.getInt(THREADS, DEFAULT_THREADS);
        maxNewTokens = p.getInt(MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS);
        temperature = p.getFloat(TEMPERATURE, DEFAULT_TEMPERATURE);
        topK = p.getInt(TOP_K, DEFAULT_TOP_K);
        topP = p.getFloat(TOP_P, DEFAULT_TOP_P);
        seed = p.getLong(SEED, DEFAULT_SEED);
        device = validDevice(p.getString(DEVICE, DEFAULT_DEVICE));
    }

    /** "cpu", "gpu" or "auto" (case-insensitive); anything else is the default, "cpu". */
    public static String validDevice(String device) {
        String d = device == null ? "" : device.trim().toLowerCase(Locale.US);
        if (DEVICE_GPU.equals(d) || DEVICE_AUTO.equals(d)) {
            return d;
        }
        return DEVICE_CPU;
    }

    public static SharedPreferences shared(Context context) {
        return context.getSharedPreferences(NAME, Context.MODE_PRIVATE);
    }

    public static Prefs load(Context context) {
        return new Prefs(shared(context));
    }

    /** The seed to pass to the runtime: the stored one, or a fresh random one when it is negative. */
    public long effectiveSeed() {
        if (seed >= 0) {
            return seed;
        }
        return (System.nanoTime() ^ System.currentTimeMillis()) & 0x7fffffffffffL;
    }
}
