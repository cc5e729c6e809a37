"""Python binding of the C runtime (arrives with the runtime issue)."""
