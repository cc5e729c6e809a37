"""The Android app's logic outside the screens, on the host JVM: org.mcpm.demo.ChatEngine (the model, the
conversation and the running reply, kept out of the Activity) over the real JNI library and the shipped default
model, and DecimalInput (settings typed in comma locales). What only a phone shows (the Activity being recreated
by the system) is simulated by what it does to the engine: the screen's listener is detached and a new one
attached mid-reply. Android's own org.json (Debian's libandroid-json-java) is on the class path."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import python_chat
from tests.test_android_native import JAVA_SRC, JNI_C, _host_jni_includes

ORG_JSON = Path("/usr/share/java/com.android.json.jar")
NEEDS_JAVA = pytest.mark.skipif(not (shutil.which("javac") and shutil.which("java") and shutil.which("gcc")
                                     and ORG_JSON.is_file()),
                                reason="javac, java, gcc or libandroid-json-java missing (make setup)")
MESSAGES = ("What is the state of the Union?", "And the economy?")
MAX_NEW = 12

HARNESS = r"""
package org.mcpm.demo;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.json.JSONArray;
import org.json.JSONObject;

public final class EngineHarness {
    /** A screen: what it shows, rebuilt from the events like MainActivity does. */
    static final class Screen implements ChatEngine.Listener {
        final StringBuilder chat = new StringBuilder();
        final List<String> statuses = new ArrayList<String>();
        final List<Boolean> errors = new ArrayList<Boolean>();
        boolean busy, vision, hasImage;
        int events;
        final CountDownLatch firstText = new CountDownLatch(1);
        public synchronized void onStatus(String t, boolean e) { statuses.add(t); errors.add(e); events++; }
        public synchronized void onText(String p) { chat.append(p); events++; firstText.countDown(); }
        public synchronized void onTranscript(String t) { chat.setLength(0); chat.append(t); events++; }
        public synchronized void onBusy(boolean b) { busy = b; events++; }
        public synchronized void onVision(boolean v) { vision = v; events++; }
        public synchronized void onImage(ChatEngine.ImageSource i) { hasImage = i != null; events++; }
        synchronized JSONObject json() throws Exception {
            JSONObject o = new JSONObject().put("chat", chat.toString()).put("busy", busy).put("vision", vision)
                .put("image", hasImage).put("events", events);
            JSONArray s = new JSONArray();
            for (int i = 0; i < statuses.size(); i++) s.put(new JSONArray().put(statuses.get(i)).put(errors.get(i)));
            return o.put("statuses", s);
        }
        synchronized String lastStatus() { return statuses.isEmpty() ? "" : statuses.get(statuses.size() - 1); }
    }

    static ChatEngine.ModelRequest request(String key, final String dir) {
        return new ChatEngine.ModelRequest(key, key, 2, "cpu", null, new ChatEngine.Preparer() {
            public File prepare(ChatEngine.Progress p) { p.onProgress("Preparing " + dir); return new File(dir); }
        });
    }

    /** A model whose preparation signals {@code started}, then blocks until {@code release} (the engine is busy). */
    static ChatEngine.ModelRequest blockingRequest(String key, final String dir, final CountDownLatch started,
                                                   final CountDownLatch release) {
        return new ChatEngine.ModelRequest(key, key, 2, "cpu", null, new ChatEngine.Preparer() {
            public File prepare(ChatEngine.Progress p) {
                started.countDown();
                try { release.await(60, TimeUnit.SECONDS); } catch (InterruptedException e) { }
                return new File(dir);
            }
        });
    }

    static final ChatEngine.Sampling GREEDY = new ChatEngine.Sampling(MAX_NEW, 0f, 0, 1f, 0L);

    static void idle(ChatEngine e) {
        if (!e.awaitIdle(120000)) throw new IllegalStateException("the engine did not finish in 120 s");
    }

    public static void main(String[] args) throws Exception {
        final String bundle = args[0];
        JSONObject out = new JSONObject();
        final ChatEngine engine = new ChatEngine();
        ChatEngine.ModelRequest model = request("default", bundle);

        // 1. load, then two chat turns; the second is answered while the screen is "recreated": the first
        //    screen detaches after the first piece, a new one attaches and must show the whole conversation
        Screen first = new Screen();
        engine.attach(first);
        engine.load(model);
        idle(engine);
        out.put("after_load", first.json());
        engine.send("MSG0", model, GREEDY);
        idle(engine);
        out.put("turn1", first.json());
        engine.send("MSG1", model, GREEDY);
        first.firstText.await(60, TimeUnit.SECONDS);
        engine.detach(first);
        int frozen = first.json().getInt("events");
        Screen second = new Screen();
        engine.attach(second);
        idle(engine);
        out.put("first_events_after_detach", first.json().getInt("events") - frozen);
        out.put("recreated", second.json());

        // 2. New chat while a reply streams: nothing of that reply reaches the new conversation; a fresh turn
        //    then answers like the first one did
        Screen third = new Screen();
        engine.attach(third);
        engine.send("MSG0", model, new ChatEngine.Sampling(MAX_NEW * 8, 0f, 0, 1f, 0L));
        third.firstText.await(60, TimeUnit.SECONDS);
        engine.newChat();
        idle(engine);
        out.put("after_new_chat", third.json());
        engine.send("MSG0", model, GREEDY);
        idle(engine);
        out.put("fresh_turn", third.json());

        // 3. a second send while one is answered is refused (Send is disabled; the engine refuses too)
        engine.newChat();
        boolean a = engine.send("MSG0", model, GREEDY);
        boolean b = engine.send("MSG1", model, GREEDY);
        idle(engine);
        out.put("double_send", new JSONArray().put(a).put(b));

        // 4. model switch: a slow load, then a broken model, then the good one: the broken request was superseded
        //    before it started, so it is skipped (no error) and the good one ends up loaded
        Screen s4 = new Screen();
        engine.attach(s4);
        final CountDownLatch release = new CountDownLatch(1);
        final CountDownLatch started = new CountDownLatch(1);
        ChatEngine.ModelRequest slow = blockingRequest("slow", bundle, started, release);
        engine.load(slow);
        started.await(60, TimeUnit.SECONDS);
        engine.load(request("broken", bundle + "/does-not-exist"));
        engine.load(request("other", bundle));
        release.countDown();
        idle(engine);
        out.put("switch", s4.json());

        // 5. errors reach the screen: a broken model; an image for a model without a vision encoder
        engine.load(request("broken", bundle + "/does-not-exist"));
        idle(engine);
        out.put("broken", s4.lastStatus());
        out.put("broken_error", s4.json().getJSONArray("statuses").getJSONArray(
            s4.json().getJSONArray("statuses").length() - 1).getBoolean(1));
        engine.newChat();
        engine.attachImage(new ChatEngine.ImageSource() {
            public int width() { return 2; }
            public int height() { return 2; }
            public int[] argb() { return new int[4]; }
        });
        boolean imageShown = s4.json().getBoolean("image");
        engine.send("What is this?", model, GREEDY);
        idle(engine);
        out.put("image_shown", imageShown);
        out.put("image_on_text_model", s4.json());

        // 6. Stop while a long message is read (prefill chunks) or answered: the turn ends stopped, the next works
        engine.newChat();
        idle(engine);
        Screen s6 = new Screen();
        engine.attach(s6);
        engine.send(args[1], model, GREEDY);
        long t0 = System.nanoTime();
        while (engine.isBusy()) { engine.stop(); Thread.sleep(0, 200000); }
        out.put("stop_ms", (System.nanoTime() - t0) / 1e6);
        out.put("stopped", s6.json());
        engine.send("MSG0", model, GREEDY);
        idle(engine);
        out.put("after_stop", s6.lastStatus());

        // 6b. Self-test (docs/self-test.md): the bundle's golden results, verdict in the status line; refused
        //     while a reply runs
        Screen s6b = new Screen();
        engine.attach(s6b);
        final CountDownLatch hold = new CountDownLatch(1);  // the engine stays busy until released: no race
        final CountDownLatch preparing = new CountDownLatch(1);
        ChatEngine.ModelRequest held = blockingRequest("held", bundle, preparing, hold);
        engine.send("MSG0", held, GREEDY);
        preparing.await(60, TimeUnit.SECONDS);
        boolean testWhileBusy = engine.selfTest(model);
        hold.countDown();
        idle(engine);
        boolean tested = engine.selfTest(model);
        idle(engine);
        out.put("self_test", new JSONArray().put(testWhileBusy).put(tested).put(s6b.lastStatus())
            .put(s6b.json().getString("chat")));

        // 7. a benchmark runs alone: the model is freed and not loaded again until resume()
        Screen s7 = new Screen();
        engine.attach(s7);
        out.put("paused", engine.pauseForBenchmark(60000));
        engine.send("MSG0", model, GREEDY);
        idle(engine);
        out.put("while_paused", s7.json());
        engine.resume();
        engine.newChat();
        engine.send("MSG0", model, GREEDY);
        idle(engine);
        out.put("resumed", s7.json());
        engine.close();
        idle(engine);
        engine.stop(); // after the model is freed: a no-op
        System.out.println(out.toString().replace("MSG0", "@0@").replace("MSG1", "@1@"));
    }
}
"""


def _python_replies(bundle: Path, messages: tuple[str, ...]) -> list[str]:
    return python_chat(bundle, messages, MAX_NEW)


@pytest.fixture(scope="module")
def engine_run(default_q4_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mcpm.export.android import native
    from mcpm.runtime.build import CFLAGS, LIBS, SOURCES

    jdk_inc = [inc for inc in _host_jni_includes() if "jvm" in inc[0]]
    assert jdk_inc, "no JDK jni.h under /usr/lib/jvm (make setup)"
    work = tmp_path_factory.mktemp("engine")
    subprocess.run(["gcc", *CFLAGS, *jdk_inc[0], f"-I{native.C_DIR}", "-o", str(work / "libmcpm.so"),
                    *(str(native.C_DIR / s) for s in SOURCES), str(JNI_C), str(default_q4_bundle / "kernels.o"),
                    *LIBS], check=True)
    src = work / "EngineHarness.java"
    src.write_text(HARNESS.replace("MAX_NEW", str(MAX_NEW)).replace('"MSG0"', json.dumps(MESSAGES[0]))
                   .replace('"MSG1"', json.dumps(MESSAGES[1])))
    classes = work / "classes"
    java = [JAVA_SRC / f for f in ("ChatEngine.java", "McpmNative.java", "McpmException.java")]
    subprocess.run(["javac", "-Xlint:all", "-Werror", "-source", "8", "-target", "8", "-Xlint:-options",
                    "-cp", str(ORG_JSON), "-d", str(classes), *map(str, java), str(src)], check=True)
    long_message = " ".join(["Tell me about the state of the economy and the Union."] * 8)  # several chunks
    res = subprocess.run(["java", "-Xcheck:jni", f"-Djava.library.path={work}",
                          "-cp", f"{classes}:{ORG_JSON}", "org.mcpm.demo.EngineHarness", str(default_q4_bundle),
                          long_message], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "WARNING" not in res.stdout + res.stderr, res.stderr  # -Xcheck:jni complaints
    return json.loads(res.stdout.strip().splitlines()[-1])


def _turn(message: str, reply: str, model: str = "default") -> str:
    return f"You: {message}\n\n{model}: {reply}"


@NEEDS_JAVA
def test_chat_turns_equal_the_python_chat(engine_run: dict, default_q4_bundle: Path) -> None:
    """Two turns through the engine show exactly the Python ChatSession's greedy replies, and the status line
    reports the load and the tokens/s."""
    r1, r2 = _python_replies(default_q4_bundle, MESSAGES)
    statuses = [s for s, _ in engine_run["after_load"]["statuses"]]
    loaded = [s for s in statuses if s.startswith("default loaded in")]
    assert loaded and "(2 threads), KV cache " in loaded[0] and loaded[0].endswith(" MiB float16"), statuses
    kv = float(loaded[0].split("KV cache ")[1].split(" MiB")[0])  # the bundle's cache: layers x ctx x kv x 2 x 2 B
    from mcpm.export.bundle.reader import open_bundle

    cfg = open_bundle(default_q4_bundle).config
    mc = cfg["model_config"]
    per_token = 2 * mc["num_hidden_layers"] * mc["num_key_value_heads"] * (mc["hidden_size"] // mc[
        "num_attention_heads"]) * 2
    assert abs(kv - per_token * cfg["context_length"] / 2**20) < 0.06, (kv, per_token)
    assert engine_run["turn1"]["chat"] == _turn("@0@", r1)
    assert "tokens/s, CPU" in engine_run["turn1"]["statuses"][-1][0]
    assert engine_run["recreated"]["chat"] == _turn("@0@", r1) + "\n\n" + _turn("@1@", r2)


@NEEDS_JAVA
def test_a_recreated_screen_loses_nothing(engine_run: dict) -> None:
    """The screen that detached mid-reply gets no more events; the new one shows the whole conversation, with the
    reply that was streaming when it attached, and ends not busy with the last status."""
    assert engine_run["first_events_after_detach"] == 0
    rec = engine_run["recreated"]
    assert rec["busy"] is False and rec["statuses"][-1][1] is False and "tokens/s" in rec["statuses"][-1][0]


@NEEDS_JAVA
def test_new_chat_during_a_reply(engine_run: dict, default_q4_bundle: Path) -> None:
    """New chat while a reply streams: no piece of the old reply reaches the new conversation (the Android twin of
    the iOS index-out-of-range crash); a fresh turn answers like the first turn of a conversation."""
    (r1,) = _python_replies(default_q4_bundle, MESSAGES[:1])
    assert engine_run["after_new_chat"]["chat"] == ""
    assert engine_run["after_new_chat"]["statuses"][-1] == ["New conversation", False]
    assert engine_run["fresh_turn"]["chat"] == _turn("@0@", r1)
    assert engine_run["double_send"] == [True, False]


@NEEDS_JAVA
def test_model_switch_skips_superseded_loads(engine_run: dict) -> None:
    statuses = engine_run["switch"]["statuses"]
    assert not any("broken" in s for s, _ in statuses), statuses  # queued behind the slow load, then superseded
    assert any(s.startswith("slow loaded in") for s, _ in statuses)
    assert [s for s, _ in statuses if " loaded in " in s][-1].startswith("other loaded in")


@NEEDS_JAVA
def test_errors_reach_the_screen(engine_run: dict) -> None:
    assert engine_run["broken"].startswith("Loading broken failed: ") and "does-not-exist" in engine_run["broken"]
    assert engine_run["broken_error"] is True
    assert engine_run["image_shown"] is True
    img = engine_run["image_on_text_model"]
    assert img["image"] is False  # sent with the message, then gone from the screen
    assert img["chat"].endswith("default: [image not sent]") and "[image 2x2] What is this?" in img["chat"]
    last, error = img["statuses"][-1]
    assert error and last.startswith("Image encoding failed: ") and "no vision encoder" in last


@NEEDS_JAVA
def test_stop_ends_a_long_message(engine_run: dict) -> None:
    """Stop pressed over and over from another thread while a long message is read and answered: the turn ends
    as stopped (dropped during the prompt, or cut after a token) and the next message is answered."""
    stopped = engine_run["stopped"]
    print("stop:", engine_run["stop_ms"], "ms;", stopped["statuses"][-1], repr(stopped["chat"][-40:]))
    last, error = stopped["statuses"][-1]
    assert not error and (last == "Stopped" or ", stopped" in last), stopped["statuses"]
    assert stopped["chat"].endswith("[stopped]") or ", stopped" in last
    assert "tokens/s" in engine_run["after_stop"] and "stopped" not in engine_run["after_stop"]


@NEEDS_JAVA
def test_benchmark_pause_frees_the_chat_model(engine_run: dict, default_q4_bundle: Path) -> None:
    (r1,) = _python_replies(default_q4_bundle, MESSAGES[:1])
    assert engine_run["paused"] is True
    paused = engine_run["while_paused"]
    assert ["A benchmark is running: the chat waits until it ends", False] in paused["statuses"]
    assert paused["vision"] is False
    assert paused["chat"].endswith("[error]")
    assert "a benchmark is running" in paused["statuses"][-1][0] and paused["statuses"][-1][1] is True
    assert engine_run["resumed"]["chat"] == _turn("@0@", r1)


@NEEDS_JAVA
def test_decimal_settings_in_a_comma_locale(tmp_path: Path) -> None:
    """Settings typed as "0,7" in a German locale mean 0.7 (and "0.7" too); NaN, infinity, float suffixes, hex and
    grouping are refused; values are shown with the locale's separator."""
    (tmp_path / "D.java").write_text(r"""
package org.mcpm.demo;
import java.util.Locale;
public final class D {
    public static void main(String[] a) {
        StringBuilder b = new StringBuilder();
        for (String s : a) b.append(DecimalInput.parse(s)).append('|');
        b.append(DecimalInput.format(0.7f, Locale.getDefault())).append('|').append(DecimalInput.format(1f, Locale.US));
        System.out.println(b);
    }
}
""")
    subprocess.run(["javac", "-d", str(tmp_path), str(JAVA_SRC / "DecimalInput.java"), str(tmp_path / "D.java")],
                   check=True)
    inputs = ["0,7", "0.7", " 1 ", ",5", "2.", "NaN", "Infinity", "1f", "0x1p3", "1,000.5", "", "-0,25", "1e3"]
    res = subprocess.run(["java", "-Duser.language=de", "-Duser.country=DE", "-cp", str(tmp_path),
                          "org.mcpm.demo.D", *inputs], capture_output=True, text=True, check=True)
    got = res.stdout.strip().split("|")
    assert got == ["0.7", "0.7", "1.0", "0.5", "2.0", "null", "null", "null", "null", "null", "null", "-0.25",
                   "null", "0,7", "1.0"]


@NEEDS_JAVA
def test_self_test_button_shows_the_verdict(engine_run: dict) -> None:
    """The app's Self-test button (ChatEngine.selfTest): PASS on the default bundle, shown in the status line; the
    conversation is cleared; refused while a message is answered."""
    while_busy, tested, status, chat = engine_run["self_test"]
    assert while_busy is False and tested is True
    assert status.startswith("Self-test PASS: kernels default on the cpu, 16 steps (0 near-ties), max logit diff "), \
        status
    assert status.endswith("tokenizer pass") and chat == ""
