"""Android packaging: native library without the NDK (native.py), APK (apk.py), adb wrapper (adb.py)."""
