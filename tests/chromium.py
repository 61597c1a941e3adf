"""Headless Chromium driven over the DevTools protocol (websocket-client), for the status page's browser tests.

Blocking calls: a trial test runs each step in a thread (``deferToThread``) so that the reactor, which serves the
bridge in the same process, keeps running.  A fresh profile per browser; everything is removed at ``close``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any, Optional

CHROMIUM = "/usr/bin/chromium"
#: How long one step may take before the test gives up (not an assertion on speed: a hung browser).
STEP_TIMEOUT = 30.0


def available() -> Optional[str]:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (Debian package 'chromium')"
    try:
        import websocket  # noqa: F401
    except ImportError:
        return "websocket-client is not installed (Debian package 'python3-websocket')"
    return None


class Chromium:
    def __init__(self, spki_pin: str, width: int = 900, height: int = 900, mobile: bool = False) -> None:
        import websocket

        self.profile = tempfile.mkdtemp(prefix="tb-chromium-")
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                # trust exactly the bridge's own (self-signed) certificate, by its public key
                f"--ignore-certificate-errors-spki-list={spki_pin}", "about:blank"]
        self.log_path = os.path.join(self.profile, "chromium.log")
        with open(self.log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the browser
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        port = self._devtools_port()
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=STEP_TIMEOUT) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=STEP_TIMEOUT,
                                              suppress_origin=True)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": mobile})

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + STEP_TIMEOUT
        seen = b""
        while time.monotonic() < deadline and self.process.poll() is None:
            with open(self.log_path, "rb") as f:
                seen = f.read()
            for line in seen.splitlines():
                if b"DevTools listening on ws://" in line:
                    address = line.split(b"ws://", 1)[1].split(b"/", 1)[0]
                    return int(address.rsplit(b":", 1)[1])
            time.sleep(0.05)
        raise RuntimeError(f"Chromium did not open its DevTools port:\n{seen.decode(errors='replace')}")

    # -- the protocol ---------------------------------------------------------------------------------

    def call(self, method: str, params: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_event(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if event["method"] == name:
                    return self.events.pop(i)
            message = json.loads(self.ws.recv())
            if "method" in message:
                self.events.append(message)
        raise RuntimeError(f"no {name} within {STEP_TIMEOUT} s")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    # -- what a person does ---------------------------------------------------------------------------

    def goto(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def submit(self, expression: str) -> None:
        """Run ``expression`` (fills in and clicks a submit button) and wait for the page it leads to."""
        self.events.clear()
        self.evaluate(expression)
        self.wait_event("Page.loadEventFired")

    def wait_for(self, expression: str) -> None:
        """Wait until ``expression`` is true in the page (e.g. after the page updated itself)."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{expression} did not become true within {STEP_TIMEOUT} s")

    def text(self, selector: str = "body") -> str:
        return self.evaluate(f"document.querySelector({json.dumps(selector)}).innerText")

    def screenshot(self, path: str) -> str:
        """The whole page as a PNG at ``path``."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def spki_pin(cert_path: str) -> str:
    """Base64 SHA-256 of a certificate's public key: what --ignore-certificate-errors-spki-list takes."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
