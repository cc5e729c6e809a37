package org.mcpm.demo;

import android.content.Context;
import android.content.pm.PackageManager;
import android.content.res.AssetManager;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.List;

/**
 * Where models (bundle folders) are found, shared by MainActivity and BenchmarkActivity:
 * <ul>
 * <li>{@code assets/models/<name>/} inside the APK, copied once to {@code <files dir>/models/<name>/} because the
 * runtime mmaps its files (copied again after the app is updated);</li>
 * <li>{@code <external files dir>/models/<name>/}, where {@code mcpm android push-model} puts large ones.</li>
 * </ul>
 * A pushed model wins over a bundled one with the same name.
 */
public final class ModelStore {
    public static final String MODELS = "models";
    public static final String CONFIG = "mcpm-config.json";
    private static final String MARKER = ".mcpm-copied";
    private static final int BUFFER = 1 << 16;
    private static final long REPORT_EVERY = 8L << 20;

    private ModelStore() {
    }

    /** Progress messages while a bundled model is copied out of the APK (called on the copying thread). */
    public interface Progress {
        void onProgress(String message);
    }

    /** A model the picker shows. */
    public static final class Model {
        public final String name;
        public final boolean bundled;
        /** The folder the runtime loads (for a bundled model: where it is copied to). */
        public final File dir;

        Model(String name, boolean bundled, File dir) {
            this.name = name;
            this.bundled = bundled;
            this.dir = dir;
        }

        /** A stable key for preferences: "asset:<name>" or the folder's path. */
        public String key() {
            return bundled ? "asset:" + name : dir.getAbsolutePath();
        }

        @Override
        public String toString() {
            return name + (bundled ? " (in app)" : " (pushed)");
        }
    }

    /** {@code <external files dir>/models}, or null when shared storage is not available. */
    public static File externalModelsDir(Context context) {
        File ext = context.getExternalFilesDir(null);
        return ext == null ? null : new File(ext, MODELS);
    }

    /** {@code <files dir>/models}: where bundled models are copied to. */
    public static File copiedModelsDir(Context context) {
        return new File(context.getFilesDir(), MODELS);
    }

    /** A human-readable list of the places models are looked for. */
    public static String searchPlaces(Context context) {
        File ext = externalModelsDir(context);
        return "assets/" + MODELS + "/<name>/ in the APK, "
                + (ext == null ? "<external files dir>/models/<name>/ (not mounted)" : ext.getAbsolutePath() + "/<name>/");
    }

    /** Every model found, pushed ones first, each group sorted by name. */
    public static List<Model> list(Context context) {
        List<Model> pushed = new ArrayList<Model>();
        File ext = externalModelsDir(context);
        if (ext != null) {
            File[] dirs = ext.listFiles();
            if (dirs != null) {
                for (File d : dirs) {
                    if (d.isDirectory() && !d.getName().startsWith(".")) {
                        pushed.add(new Model(d.getName(), false, d));
                    }
                }
            }
        }
        List<Model> bundled = new ArrayList<Model>();
        AssetManager am = context.getAssets();
        try {
            String[] names = am.list(MODELS);
            if (names != null) {
                File copies = copiedModelsDir(context);
                for (String name : names) {
                    String[] files = am.list(MODELS + "/" + name);
                    if (files != null && files.length > 0) {
                        bundled.add(new Model(name, true, new File(copies, name)));
                    }
                }
            }
        } catch (IOException e) {
            // An APK without assets/models: nothing bundled.
        }
        Comparator<Model> byName = new Comparator<Model>() {
            @Override
            public int compare(Model a, Model b) {
                return a.name.compareTo(b.name);
            }
        };
        Collections.sort(pushed, byName);
        Collections.sort(bundled, byName);
        List<Model> all = new ArrayList<Model>(pushed);
        all.addAll(bundled);
        return all;
    }

    /**
     * The model named {@code nameOrDir} (a pushed or bundled model's name, or "asset:NAME"), or an absolute folder.
     */
    public static Model find(Context context, String nameOrDir) throws McpmException {
        if (nameOrDir == null || nameOrDir.trim().isEmpty()) {
            throw new McpmException("no model given: pass a model name or an absolute bundle folder");
        }
        String want = nameOrDir.trim();
        if (want.startsWith("/")) {
            File dir = new File(want);
            if (!dir.isDirectory()) {
                throw new McpmException("model folder " + want + " does not exist or is not readable by the app");
            }
            return new Model(dir.getName(), false, dir);
        }
        List<Model> all = list(context);
        for (Model m : all) {
            if (m.key().equals(want) || m.name.equals(want)) {
                return m;
            }
        }
        StringBuilder names = new StringBuilder();
        for (Model m : all) {
            names.append(names.length() == 0 ? "" : ", ").append(m.name);
        }
        throw new McpmException("no model named '" + want + "' (found: "
                + (names.length() == 0 ? "none" : names.toString()) + "; looked in " + searchPlaces(context)
                + "; push one with `mcpm android push-model`)");
    }

    /**
     * The folder to load: a pushed model's own folder, or a bundled model copied out of the APK (once per install or
     * update). Synchronized so that two activities never copy at the same time.
     */
    public static synchronized File prepare(Context context, Model model, Progress progress)
            throws McpmException {
        if (!model.bundled) {
            checkBundle(model.dir);
            return model.dir;
        }
        String stamp = apkStamp(context);
        File marker = new File(model.dir, MARKER);
        if (marker.isFile() && stamp.equals(readSmall(marker))) {
            return model.dir;
        }
        File parent = copiedModelsDir(context);
        File tmp = new File(parent, "." + model.name + ".partial");
        deleteRecursive(tmp);
        deleteRecursive(model.dir);
        if (!tmp.mkdirs()) {
            throw new McpmException("cannot create " + tmp.getAbsolutePath());
        }
        long[] copied = new long[] {0L, 0L};
        try {
            copyAssetDir(context.getAssets(), MODELS + "/" + model.name, tmp, model.name, progress, copied);
            writeSmall(new File(tmp, MARKER), stamp);
        } catch (IOException e) {
            deleteRecursive(tmp);
            throw new McpmException("copying model " + model.name + " out of the APK failed: " + e.getMessage()
                    + " (is the storage full?)", e);
        }
        if (!tmp.renameTo(model.dir)) {
            deleteRecursive(tmp);
            throw new McpmException("cannot rename the copy of " + model.name + " into " + model.dir);
        }
        if (progress != null) {
            progress.onProgress("Copied " + model.name + " (" + (copied[0] >> 20) + " MiB)");
        }
        checkBundle(model.dir);
        return model.dir;
    }

    private static void checkBundle(File dir) throws McpmException {
        if (!new File(dir, CONFIG).isFile()) {
            throw new McpmException(dir.getAbsolutePath() + " is not an mcpm bundle: " + CONFIG
                    + " is missing (export one with mcpm-export and push it with `mcpm android push-model`)");
        }
    }

    private static String apkStamp(Context context) {
        try {
            return String.valueOf(context.getPackageManager()
                    .getPackageInfo(context.getPackageName(), 0).lastUpdateTime);
        } catch (PackageManager.NameNotFoundException e) {
            return "0";
        }
    }

    private static void copyAssetDir(AssetManager am, String path, File to, String name, Progress progress,
                                     long[] copied) throws IOException {
        String[] entries = am.list(path);
        if (entries == null) {
            return;
        }
        for (String entry : entries) {
            String child = path + "/" + entry;
            String[] grand = am.list(child);
            if (grand != null && grand.length > 0) {
                File sub = new File(to, entry);
                if (!sub.isDirectory() && !sub.mkdirs()) {
                    throw new IOException("cannot create " + sub);
                }
                copyAssetDir(am, child, sub, name, progress, copied);
            } else {
                copyAsset(am, child, new File(to, entry), name, progress, copied);
            }
        }
    }

    private static void copyAsset(AssetManager am, String path, File to, String name, Progress progress,
                                  long[] copied) throws IOException {
        InputStream in = am.open(path, AssetManager.ACCESS_STREAMING);
        try {
            OutputStream out = new FileOutputStream(to);
            try {
                byte[] buf = new byte[BUFFER];
                int n;
                while ((n = in.read(buf)) > 0) {
                    out.write(buf, 0, n);
                    copied[0] += n;
                    if (progress != null && copied[0] - copied[1] >= REPORT_EVERY) {
                        copied[1] = copied[0];
                        progress.onProgress("Copying " + name + " out of the APK: " + (copied[0] >> 20) + " MiB");
                    }
                }
            } finally {
                out.close();
            }
        } finally {
            in.close();
        }
    }

    static String readSmall(File f) {
        try {
            InputStream in = new java.io.FileInputStream(f);
            try {
                byte[] buf = new byte[256];
                int n = in.read(buf);
                return n <= 0 ? "" : new String(buf, 0, n, "UTF-8").trim();
            } finally {
                in.close();
            }
        } catch (IOException e) {
            return "";
        }
    }

    static void writeSmall(File f, String text) throws IOException {
        OutputStream out = new FileOutputStream(f);
        try {
            out.write(text.getBytes("UTF-8"));
        } finally {
            out.close();
        }
    }

    static void deleteRecursive(File f) {
        File[] children = f.listFiles();
        if (children != null) {
            for (File c : children) {
                deleteRecursive(c);
            }
        }
        if (f.exists() && !f.delete()) {
            f.deleteOnExit();
        }
    }
}
