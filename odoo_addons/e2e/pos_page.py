"""The Odoo POS as a cashier sees it: headless Chromium (Debian's /usr/bin/chromium) over the DevTools protocol.

The browser itself is ``tests/chromium.py`` of the bridge's source (loaded by path: the status page's tests use it
too); this module adds what a cashier does in Odoo's web client and POS: log in, open the register, tap a
product, *Payment*, a payment method, a dialog's button, and screenshots the size of a page of docs.
Selectors are those of Odoo's own tours (the same on 18.0 and 19.0).
"""

import base64
import importlib.util
import json
import os
import time

#: The browser's window; screenshots are scaled down to SHOT_WIDTH pixels wide.
WIDTH, HEIGHT = 1200, 800
SHOT_WIDTH = 900


def _load_chromium(source):
    path = os.path.join(source, "tests", "chromium.py")
    spec = importlib.util.spec_from_file_location("terminal_bridge_e2e_chromium", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The POS loads a big bundle (built at the first visit after a start): a step may take longer than the
    # status page's.
    module.STEP_TIMEOUT = 120.0
    return module


class PageTimeout(Exception):
    """What the page should show did not come: its text is in the message."""


class PosPage:
    def __init__(self, source, base, shots=None):
        chromium = _load_chromium(source)
        reason = chromium.available()
        if reason:
            raise RuntimeError(reason)
        self.base = base
        self.shots = shots
        self.browser = chromium.Chromium("", width=WIDTH, height=HEIGHT)

    def close(self):
        self.browser.close()

    # -- looking at the page ------------------------------------------------------------------------------

    def _find(self, selector, text):
        return (f"[...document.querySelectorAll({json.dumps(selector)})].find((el) => el.offsetParent !== null "
                f"&& el.textContent.includes({json.dumps(text or '')}))")

    def has(self, selector, text=None):
        """Whether a visible element matches ``selector`` and holds ``text``."""
        return bool(self.browser.evaluate(f"!!({self._find(selector, text)})"))

    def text_of(self, selector):
        return self.browser.evaluate(
            f"[...document.querySelectorAll({json.dumps(selector)})].map((el) => el.innerText).join('\\n')") or ""

    def wait(self, selector, text=None, timeout=60.0):
        """Wait until a visible element matches ``selector`` and holds ``text``; returns how long it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                if self.has(selector, text):
                    return time.monotonic() - started
            except RuntimeError:  # the page is being replaced (a reload, a redirect)
                pass
            time.sleep(0.2)
        raise PageTimeout(f"no {selector!r} holding {text!r} within {timeout:.0f} s; the page shows:\n"
                          f"{self.visible_text()[:1500]}")

    def visible_text(self):
        try:
            return self.browser.evaluate("document.body ? document.body.innerText : ''") or ""
        except RuntimeError as error:
            return f"(no text: {error})"

    def click(self, selector, text=None, timeout=60.0):
        """Click the visible element matching ``selector`` that holds ``text`` (waiting for it)."""
        self.wait(selector, text, timeout)
        self.browser.evaluate(f"{self._find(selector, text)}.click()")

    # -- what a person does ---------------------------------------------------------------------------

    def login(self, database, login, password):
        self.browser.goto(f"{self.base}/web/login?db={database}")
        self.browser.submit(
            f"document.querySelector('input[name=login]').value = {json.dumps(login)};"
            f"document.querySelector('input[name=password]').value = {json.dumps(password)};"
            "document.querySelector('form.oe_login_form button[type=submit]').click();")

    def goto(self, path):
        self.browser.goto(self.base + path)

    def open_register(self, config_id):
        """Open the POS of ``config_id`` and its register, as the cashier does at the start of the day."""
        self.goto(f"/pos/ui?config_id={config_id}")
        self.wait(".pos :is(.screen-login .open-register-btn, .product-screen)", timeout=180)
        if self.has(".screen-login .open-register-btn"):
            self.click(".screen-login .open-register-btn")
        self.wait(".pos :is(.modal .modal-footer .btn-primary, .product-screen)")
        if self.has(".modal .modal-footer .btn-primary", "Open Register"):
            self.click(".modal .modal-footer .btn-primary", "Open Register")
        self.wait(".product-screen article.product")

    def sell(self, product):
        """One ``product`` on a new order, then the payment screen."""
        self.click("article.product .product-content .product-name", product)
        self.click(".product-screen .pay-order-button")
        self.wait(".pos-content .payment-screen")

    def pay_with(self, method):
        self.click(".paymentmethods .button.paymentmethod .payment-name", method)

    def line_status(self):
        return self.text_of(".paymentline .electronic_status").strip()

    def dialog_text(self):
        return self.text_of(".modal-dialog").strip()

    def dialog_button(self, words, timeout=60.0):
        self.click(".modal-dialog .modal-footer button", words, timeout)

    def numpad(self, key):
        """Tap ``key`` on the numpad (its exact text: "1" is not "+10")."""
        self.wait("div.numpad button", key)
        self.browser.evaluate(f"[...document.querySelectorAll('div.numpad button')].find((el) => el.innerText.trim() "
                              f"=== {json.dumps(key)}).click()")

    def field_value(self, name):
        """What a backend form's field shows (a many2one's or a char's input, or the checked radio's label)."""
        return self.browser.evaluate(
            f"(() => {{ const w = document.querySelector('.o_form_view .o_field_widget[name={name}]');"
            "if (!w) return null; const checked = w.querySelector('input:checked');"
            "if (checked) return w.querySelector(`label[for='${checked.id}']`)?.innerText || checked.value;"
            "const input = w.querySelector('input'); return input ? input.value : w.innerText; })()")

    def next_order(self):
        self.click(".receipt-screen :is(.button.next, button.validation, .btn-primary)", "New Order")
        self.wait(".product-screen")

    # -- screenshots --------------------------------------------------------------------------------------

    def shot(self, name):
        """The window as ``<shots>/<name>.png``, SHOT_WIDTH pixels wide (nothing without a screenshots folder)."""
        if not self.shots:
            return None
        time.sleep(0.5)  # let an opening dialog or a notification finish its animation
        scale = SHOT_WIDTH / WIDTH
        shot = self.browser.call("Page.captureScreenshot", {
            "format": "png", "clip": {"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT, "scale": scale}})
        os.makedirs(self.shots, exist_ok=True)
        path = os.path.join(self.shots, f"{name}.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path
