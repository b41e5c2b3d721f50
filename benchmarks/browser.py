"""The demo page as a user meets it, for the browser tests and benchmarks/demo_latency.py:
`python demo.py` started on a free local port, and headless Chromium (Debian's package, driven
by Playwright; Playwright's own browser download is not needed)."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]


def chromium_path():
    """$CHROMIUM, else the chromium on the PATH, else ''."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") or ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def demo_server(*flags, timeout=120):
    """`python demo.py --port P *flags` until the page answers: (its address, the file of its output)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix=f"demo_{port}_", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "demo.py", "--port", str(port), *flags], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"demo.py did not serve: {Path(log.name).read_text()[-2000:]}") from None
                time.sleep(0.25)
        yield url, Path(log.name)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        os.unlink(log.name)


@contextmanager
def chromium():
    """Headless Chromium under Playwright."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url):
    """A new browser session (its own cookies and results) on the page, once it is ready."""
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


# Milliseconds from a click on #button to a new, loaded picture in #target, timed in the page (an error
# after a minute without one).
CLICK_TO_PICTURE = """async ([button, target]) => {
    const src = () => {
        const i = document.querySelector('#' + target + ' img');
        return i && i.complete ? i.src : null;
    };
    const old = src(), start = performance.now();
    document.querySelector('#' + button).click();
    while (src() === old || src() === null) {
        if (performance.now() - start > 60000) throw new Error('no new picture in #' + target + ' after a minute');
        await new Promise(r => setTimeout(r, 2));
    }
    return performance.now() - start;
}"""
