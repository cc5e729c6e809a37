package org.mcpm.demo;

import android.content.Context;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.graphics.Matrix;
import android.media.ExifInterface;
import android.net.Uri;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.Locale;

/**
 * Images for MiniCPM-V models: decodes a file with BitmapFactory (ARGB_8888) using inSampleSize so that the bitmap
 * has at most the model's {@link McpmNative#maxImagePixels} pixels (the bundle's vision.max_pixels), turns it upright by its EXIF orientation, and gives the ARGB ints that
 * {@link McpmNative#encodeImage} takes. Every failure is an McpmException with a one-line message.
 * Picked content (a content:// Uri) is first copied to the cache dir: API 23's ExifInterface reads files only.
 */
final class ImageLoader {
    static final int THUMBNAIL_SIDE = 256;

    /** A decoded, upright ARGB_8888 image with a small thumbnail for the UI. */
    static final class Picture implements ChatEngine.ImageSource {
        final Bitmap bitmap;
        final Bitmap thumbnail;
        final int sourceWidth;   // as stored in the file (0 when unknown)
        final int sourceHeight;
        final String source;     // file name or "camera"
        final long maxPixels;    // the model's limit it was decoded for (McpmNative.maxImagePixels)

        Picture(Bitmap bitmap, Bitmap thumbnail, int sourceWidth, int sourceHeight, String source, long maxPixels) {
            this.maxPixels = maxPixels;
            this.bitmap = bitmap;
            this.thumbnail = thumbnail;
            this.sourceWidth = sourceWidth;
            this.sourceHeight = sourceHeight;
            this.source = source;
        }

        @Override
        public int width() {
            return bitmap.getWidth();
        }

        @Override
        public int height() {
            return bitmap.getHeight();
        }

        @Override
        public int[] argb() throws McpmException {
            return ImageLoader.argb(bitmap);
        }

        /** True when decoding reduced the image (inSampleSize) to stay within maxPixels. */
        boolean reduced() {
            return (long) sourceWidth * sourceHeight > (long) width() * height();
        }

        /** "image 8000x6000 reduced to 4000x3000" when it was reduced, else "". */
        String reductionNote() {
            if (!reduced()) {
                return "";
            }
            return String.format(Locale.US, "image %dx%d reduced to %dx%d (at most %d pixels)", sourceWidth,
                    sourceHeight, width(), height(), maxPixels);
        }

        /** One line for the UI: source, size, and the reduction when there was one. */
        String describe() {
            String note = reductionNote();
            return String.format(Locale.US, "%s, %dx%d", source, width(), height())
                    + (note.isEmpty() ? "" : " (" + note + ")");
        }
    }

    private ImageLoader() {
    }

    /** The smallest power of two s with ceil(w / s) * ceil(h / s) <= maxPixels (what inSampleSize takes). */
    static int sampleSizeFor(int width, int height, long maxPixels) {
        int s = 1;
        while ((long) ((width + s - 1) / s) * ((height + s - 1) / s) > maxPixels && s < (1 << 16)) {
            s *= 2;
        }
        return s;
    }

    /** Decodes an image file (JPEG, PNG, WebP, ...) upright, at most maxPixels pixels (McpmNative.maxImagePixels). */
    static Picture decodeFile(File file, String source, long maxPixels) throws McpmException {
        checkMaxPixels(maxPixels);
        if (!file.isFile()) {
            throw new McpmException("image " + file + " does not exist");
        }
        BitmapFactory.Options bounds = new BitmapFactory.Options();
        bounds.inJustDecodeBounds = true;
        BitmapFactory.decodeFile(file.getAbsolutePath(), bounds);
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) {
            throw new McpmException("cannot read image " + source + ": not a picture Android can decode "
                    + "(give a JPEG, PNG or WebP file)");
        }
        BitmapFactory.Options opts = new BitmapFactory.Options();
        opts.inPreferredConfig = Bitmap.Config.ARGB_8888;
        opts.inSampleSize = sampleSizeFor(bounds.outWidth, bounds.outHeight, maxPixels);
        Bitmap decoded;
        try {
            decoded = BitmapFactory.decodeFile(file.getAbsolutePath(), opts);
        } catch (OutOfMemoryError e) {
            throw new McpmException("out of memory decoding image " + source + " (" + bounds.outWidth + "x"
                    + bounds.outHeight + ")");
        }
        if (decoded == null) {
            throw new McpmException("cannot decode image " + source + " (damaged or unsupported file)");
        }
        Bitmap upright = applyExif(argb8888(decoded), readOrientation(file));
        return new Picture(upright, thumbnail(upright, THUMBNAIL_SIDE), bounds.outWidth, bounds.outHeight, source,
                maxPixels);
    }

    /** A Bitmap from elsewhere (the camera's preview in the result's "data" extra). */
    static Picture fromBitmap(Bitmap bitmap, String source, long maxPixels) throws McpmException {
        checkMaxPixels(maxPixels);
        if (bitmap == null || bitmap.getWidth() < 1 || bitmap.getHeight() < 1) {
            throw new McpmException("the " + source + " returned no image");
        }
        Bitmap b = argb8888(bitmap);
        return new Picture(b, thumbnail(b, THUMBNAIL_SIDE), b.getWidth(), b.getHeight(), source, maxPixels);
    }

    /** Copies picked content (content:// or file://) to <cache dir>/picked-image; returns that file. */
    /** maxPixels 0 (McpmNative.maxImagePixels of a model without a vision encoder, or none loaded): no images. */
    private static void checkMaxPixels(long maxPixels) throws McpmException {
        if (maxPixels < 1) {
            throw new McpmException("the loaded model takes no images (choose a MiniCPM-V model)");
        }
    }

    static File copyToCache(Context context, Uri uri) throws McpmException {
        File out = new File(context.getCacheDir(), "picked-image");
        InputStream in = null;
        OutputStream os = null;
        try {
            in = context.getContentResolver().openInputStream(uri);
            if (in == null) {
                throw new McpmException("cannot open the picked image (" + uri + ")");
            }
            os = new FileOutputStream(out);
            byte[] buf = new byte[1 << 16];
            int n;
            while ((n = in.read(buf)) > 0) {
                os.write(buf, 0, n);
            }
        } catch (IOException | SecurityException e) {
            throw new McpmException("cannot read the picked image: " + e.getMessage(), e);
        } finally {
            closeQuietly(in);
            closeQuietly(os);
        }
        return out;
    }

    /** Bitmap.getPixels of the whole image: int[width * height], 0xAARRGGBB, row-major. */
    static int[] argb(Bitmap bitmap) throws McpmException {
        int w = bitmap.getWidth();
        int h = bitmap.getHeight();
        try {
            int[] px = new int[w * h];
            bitmap.getPixels(px, 0, w, 0, 0, w, h);
            return px;
        } catch (OutOfMemoryError e) {
            throw new McpmException("out of memory reading the image's pixels (" + w + "x" + h + ")");
        }
    }

    static Bitmap thumbnail(Bitmap b, int maxSide) {
        int w = b.getWidth();
        int h = b.getHeight();
        if (w <= maxSide && h <= maxSide) {
            return b;
        }
        double scale = (double) maxSide / Math.max(w, h);
        return Bitmap.createScaledBitmap(b, Math.max(1, (int) (w * scale)), Math.max(1, (int) (h * scale)), true);
    }

    private static Bitmap argb8888(Bitmap b) throws McpmException {
        if (b.getConfig() == Bitmap.Config.ARGB_8888) {
            return b;
        }
        Bitmap copy = b.copy(Bitmap.Config.ARGB_8888, false);
        if (copy == null) {
            throw new McpmException("cannot convert the image to ARGB_8888");
        }
        return copy;
    }

    private static int readOrientation(File file) {
        try {
            return new ExifInterface(file.getAbsolutePath()).getAttributeInt(ExifInterface.TAG_ORIENTATION,
                    ExifInterface.ORIENTATION_NORMAL);
        } catch (IOException | RuntimeException e) {
            return ExifInterface.ORIENTATION_NORMAL; // no EXIF (PNG, WebP) or unreadable: as stored
        }
    }

    /** The bitmap turned upright by an EXIF orientation (1..8). */
    static Bitmap applyExif(Bitmap b, int orientation) throws McpmException {
        Matrix m = new Matrix();
        switch (orientation) {
            case ExifInterface.ORIENTATION_FLIP_HORIZONTAL:
                m.setScale(-1, 1);
                break;
            case ExifInterface.ORIENTATION_ROTATE_180:
                m.setRotate(180);
                break;
            case ExifInterface.ORIENTATION_FLIP_VERTICAL:
                m.setScale(1, -1);
                break;
            case ExifInterface.ORIENTATION_TRANSPOSE:
                m.setRotate(90);
                m.postScale(-1, 1);
                break;
            case ExifInterface.ORIENTATION_ROTATE_90:
                m.setRotate(90);
                break;
            case ExifInterface.ORIENTATION_TRANSVERSE:
                m.setRotate(-90);
                m.postScale(-1, 1);
                break;
            case ExifInterface.ORIENTATION_ROTATE_270:
                m.setRotate(-90);
                break;
            default:
                return b;
        }
        try {
            Bitmap turned = Bitmap.createBitmap(b, 0, 0, b.getWidth(), b.getHeight(), m, true);
            if (turned != b) {
                b.recycle();
            }
            return argb8888(turned);
        } catch (OutOfMemoryError e) {
            throw new McpmException("out of memory turning the image upright (" + b.getWidth() + "x"
                    + b.getHeight() + ")");
        }
    }

    private static void closeQuietly(java.io.Closeable c) {
        if (c != null) {
            try {
                c.close();
            } catch (IOException e) {
                // Nothing to do.
            }
        }
    }
}
