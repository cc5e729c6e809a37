#!/usr/bin/env bash
# System packages mcpm needs (Debian/Ubuntu, run as root): host C compilers, the Android build tools without
# the SDK/NDK (aapt, zipalign, apksigner, dx, android.jar, clang+lld, jni.h and android/log.h), the aarch64 cross
# compiler and qemu-user for emulated ARM64 tests, libFuzzer (libclang-rt-14-dev, `make fuzz`), cmake and pkg-config (the standalone C runtime build), Android's org.json for the app's Java logic on the host JVM (libandroid-json-java), Chromium (headless: renders
# the self-test report in a test), PoCL (OpenCL on the CPU) for GPU-path tests. android.jar (libandroid-23-java) and dx (dalvik-exchange) are
# not in bookworm: their two .deb files come from bullseye through a private apt configuration (the system's
# sources are never changed). Not root: prints what is missing and exits 1 (MCPM_SKIP_SYSTEM_PACKAGES=1 makes that a
# warning, for a machine whose tools come from elsewhere). Exits 1 when a package is still missing after installing.
set -euo pipefail

BOOKWORM="gcc clang lld llvm openjdk-17-jdk-headless aapt zipalign apksigner dexdump \
android-libnativehelper-dev android-liblog-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user \
pocl-opencl-icd ocl-icd-opencl-dev clinfo libclang-rt-14-dev cmake make pkg-config libandroid-json-java chromium"
BULLSEYE="libandroid-23-java dalvik-exchange"

missing=""
for p in $BOOKWORM $BULLSEYE; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "mcpm setup: please install (as root):$missing  (see tools/setup-system.sh)" >&2
  [ "${MCPM_SKIP_SYSTEM_PACKAGES:-0}" = 1 ] && exit 0
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
need_bookworm=""; need_bullseye=""
for p in $missing; do case " $BULLSEYE " in *" $p "*) need_bullseye="$need_bullseye $p";; *) need_bookworm="$need_bookworm $p";; esac; done
if [ -n "$need_bookworm" ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $need_bookworm >/dev/null
fi
if [ -n "$need_bullseye" ]; then
  tmp=$(mktemp -d); chmod 755 "$tmp"
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
  echo "deb http://deb.debian.org/debian bullseye main" > "$tmp/sources.list"
  opts=(-o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$tmp/lists"
        -o Dir::Cache::Archives="$tmp/archives" -o APT::Get::List-Cleanup=0)
  apt-get "${opts[@]}" update -qq
  (cd "$tmp" && apt-get "${opts[@]}" download $need_bullseye)
  apt-get install -y -qq --no-install-recommends "$tmp"/*.deb >/dev/null
  rm -rf "$tmp"
fi
still=""
for p in $missing; do dpkg -s "$p" >/dev/null 2>&1 || still="$still $p"; done
if [ -n "$still" ]; then echo "mcpm setup: could not install:$still" >&2; exit 1; fi
echo "mcpm setup: installed$missing"
