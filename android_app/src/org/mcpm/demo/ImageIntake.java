package org.mcpm.demo;

import android.app.Activity;
import android.app.AlertDialog;
import android.content.ActivityNotFoundException;
import android.content.Context;
import android.content.DialogInterface;
import android.content.Intent;
import android.graphics.Bitmap;
import android.net.Uri;
import android.provider.MediaStore;

import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ThreadFactory;

/**
 * A picture for the next message (MiniCPM-V models): Gallery or Camera, then the picked file is decoded off the UI
 * thread (ImageLoader, at the loaded model's size limit) and attached to the ChatEngine, so a screen recreated
 * meanwhile still gets it. Every failure is a status line.
 */
final class ImageIntake {
    static final int REQUEST_GALLERY = 1;
    static final int REQUEST_CAMERA = 2;

    /** One decoder thread for the process: a decode that ends after its screen was recreated still attaches. */
    private static final ExecutorService DECODER = Executors.newSingleThreadExecutor(new ThreadFactory() {
        @Override
        public Thread newThread(Runnable r) {
            Thread t = new Thread(r, "mcpm-image");
            t.setDaemon(true);
            return t;
        }
    });

    private ImageIntake() {
    }

    /** Asks Gallery or Camera; the picker's answer comes to the activity's onActivityResult. */
    static void choose(final Activity activity, final ChatEngine engine) {
        String[] choices = {activity.getString(R.string.image_gallery), activity.getString(R.string.image_camera)};
        new AlertDialog.Builder(activity)
                .setTitle(R.string.image_pick_title)
                .setItems(choices, new DialogInterface.OnClickListener() {
                    @Override
                    public void onClick(DialogInterface dialog, int which) {
                        if (which == 0) {
                            pickFromGallery(activity, engine);
                        } else {
                            takePhoto(activity, engine);
                        }
                    }
                })
                .show();
    }

    private static void pickFromGallery(Activity activity, ChatEngine engine) {
        Intent get = new Intent(Intent.ACTION_GET_CONTENT);
        get.setType("image/*");
        get.addCategory(Intent.CATEGORY_OPENABLE);
        try {
            activity.startActivityForResult(Intent.createChooser(get, activity.getString(R.string.image_pick_title)),
                    REQUEST_GALLERY);
            return;
        } catch (ActivityNotFoundException e) {
            // Try the older picker below.
        }
        try {
            activity.startActivityForResult(new Intent(Intent.ACTION_PICK,
                    MediaStore.Images.Media.EXTERNAL_CONTENT_URI), REQUEST_GALLERY);
        } catch (ActivityNotFoundException e) {
            engine.status("No gallery app to pick an image with", true);
        }
    }

    /** The camera app's preview-size photo (the "data" extra): a full-size one would need a FileProvider. */
    private static void takePhoto(Activity activity, ChatEngine engine) {
        try {
            activity.startActivityForResult(new Intent(MediaStore.ACTION_IMAGE_CAPTURE), REQUEST_CAMERA);
        } catch (ActivityNotFoundException e) {
            engine.status("No camera app on this phone", true);
        } catch (SecurityException e) {
            engine.status("The camera cannot be used: " + e.getMessage(), true);
        }
    }

    /** The picker's result: decodes it off the UI thread and attaches it. False when requestCode is not ours. */
    static boolean onResult(Context context, int requestCode, int resultCode, Intent data, final ChatEngine engine) {
        if (requestCode != REQUEST_GALLERY && requestCode != REQUEST_CAMERA) {
            return false;
        }
        if (resultCode != Activity.RESULT_OK) {
            engine.status("No image attached", false);
            return true;
        }
        final Context app = context.getApplicationContext(); // not the Activity: it may be recreated meanwhile
        final boolean camera = requestCode == REQUEST_CAMERA;
        final Uri uri = data != null ? data.getData() : null;
        final Object extra = camera && data != null && data.getExtras() != null ? data.getExtras().get("data") : null;
        engine.status("Reading the image...", false);
        DECODER.execute(new Runnable() {
            @Override
            public void run() {
                try {
                    long maxPixels = engine.maxImagePixels();
                    ImageLoader.Picture picture;
                    if (camera) {
                        picture = ImageLoader.fromBitmap(extra instanceof Bitmap ? (Bitmap) extra : null, "camera",
                                maxPixels);
                    } else if (uri == null) {
                        throw new McpmException("the gallery returned no image");
                    } else {
                        String name = uri.getLastPathSegment();
                        picture = ImageLoader.decodeFile(ImageLoader.copyToCache(app, uri),
                                name != null ? name : "image", maxPixels);
                    }
                    engine.attachImage(picture);
                    String note = picture.reductionNote();
                    engine.status(note.isEmpty() ? "Image attached: it goes with your next message"
                            : "Image attached; " + note + " to fit in memory", false);
                } catch (Throwable t) {
                    engine.status("Image not attached: " + ChatEngine.describe(t), true);
                }
            }
        });
        return true;
    }
}
