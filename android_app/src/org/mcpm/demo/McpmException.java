package org.mcpm.demo;

/** An error reported by the C runtime (bad bundle, out of memory, ...): its one-line message. */
public class McpmException extends Exception {
    private static final long serialVersionUID = 1L;

    /** Used by the JNI layer (ThrowNew) and by the app itself. */
    public McpmException(String message) {
        super(message);
    }

    public McpmException(String message, Throwable cause) {
        super(message, cause);
    }
}
