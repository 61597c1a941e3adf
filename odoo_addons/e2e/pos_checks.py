"""The POS in headless Chromium against the served odoo-bin: Odoo killed mid-payment, and what the cashier sees.

Run by odoo_e2e.py after its JSON-RPC checks, in the same database (DB2: point_of_sale and pos_terminal_bridge
installed, the real daemon paired with it). A POS config *Shop* gets three payment methods of the Terminal bridge
type, one per simulated Caisse-AP terminal of the box (TERMINALS); the admin logs in and opens the register in
the browser, then, as a cashier:

1. pays on a terminal that declines (the dialog shows the bridge's sentence), then on one that drops the link
   (unknown: *Paid on the terminal* / *Not paid*), answers *Paid on the terminal*: the order validates;
2. pays on the slow terminal; while the terminal holds the card, odoo-bin is killed (SIGKILL); the terminal
   approves while Odoo is down; odoo-bin starts again; the same page (never reloaded: a marker set on the page
   before the kill is still there) shows the order paid (the POS validates it itself, as it does for any approved
   terminal payment); the terminal was asked once, Odoo holds one approved payment with one feedback, and the
   order's payment line carries the payment's card details;
3. refunds that order from the POS's paid orders, on the same method: the bridge pays it back through the
   original payment (payment.refund), the terminal asked once more.

Screenshots (when a folder is given) are named as in docs/images: odoo-payment-method, odoo-pos-waiting,
odoo-pos-approved, odoo-pos-declined, odoo-pos-unknown, odoo-pos-refund-waiting,
odoo-pos-refund.
"""

import time

from pos_page import PageTimeout, PosPage

#: The box's terminals for the POS: name -> arguments of `terminal-bridge simulate caisse-ap`.
TERMINALS = {
    "till-pos": ["--outcome", "approve", "--delay", "8"],  # the card is read slowly: time to kill odoo-bin
    "till-pos-2": ["--outcome", "decline", "--af", "04", "--delay", "0.5"],
    "till-pos-3": ["--disconnect", "--delay", "0.5"],  # the link drops after the request: unknown
}
#: The POS's payment methods (the names the cashier taps): name -> terminal.
METHODS = {"Card": "till-pos", "Card (till 2)": "till-pos-2", "Card (till 3)": "till-pos-3"}
PRODUCT = "Desk Pad"


class PosChecks:
    def __init__(self, run, shots):
        self.run = run
        self.checks = run.checks
        self.shots = shots
        self.page = None

    def close(self):
        if self.page:
            self.page.close()

    # -- Odoo's side, over JSON-RPC ------------------------------------------------------------------------

    def rpc(self, *args, **kwargs):
        return self.run.rpc2(*args, **kwargs)

    def set_up(self):
        rpc = self.rpc
        journal = rpc("account.journal", "search", [("type", "=", "bank")], limit=1)
        self.checks.must("DB2 has a bank journal (the chart of accounts odoo-bin -i installed)", bool(journal))
        rpc("product.product", "create", {"name": PRODUCT, "list_price": 1.98, "available_in_pos": True,
                                          "taxes_id": [(6, 0, [])]})
        self.methods = {}
        for name, terminal in METHODS.items():
            terminal_id = rpc("terminal.bridge.terminal", "create", {"bridge_id": self.run.bridge_id,
                                                                    "name": terminal})
            self.methods[name] = rpc("pos.payment.method", "create", {
                "name": name, "journal_id": journal[0], "payment_method_type": "terminal",
                "use_payment_terminal": "terminal_bridge",
                "tb_bridge_id": self.run.bridge_id, "tb_terminal_id": terminal_id})
        self.config_id = rpc("pos.config", "create", {"name": "Shop",
                                                      "payment_method_ids": [(6, 0, list(self.methods.values()))]})
        self.checks.check("a POS config with three Terminal bridge payment methods, created over JSON-RPC", True,
                          f"pos.config {self.config_id}, methods {self.methods}")

    def payments_on(self, terminal):
        return self.rpc("terminal.bridge.payment", "search_read",
                        [("pos_config_id", "=", self.config_id), ("terminal_id.name", "=", terminal)],
                        ["command_id", "state", "message", "authorization", "card_masked", "brand", "pay_ref",
                         "feedback_ids", "resolution_note", "resolved_by"], order="id")

    def orders(self):
        return self.rpc("pos.order", "search_read", [("config_id", "=", self.config_id)],
                        ["name", "state", "payment_ids"], order="id")

    def payment_lines(self, order):
        return self.rpc("pos.payment", "search_read", [("id", "in", order["payment_ids"])],
                        ["uuid", "payment_method_id", "transaction_id", "card_no", "payment_method_authcode",
                         "payment_status"])

    # -- the browser -------------------------------------------------------------------------------------

    def open_pos(self):
        self.page = PosPage(self.run.source, self.run.base, self.shots)
        self.page.login(self.run.db2, "admin", "admin")
        # The backend form of the payment method, as the shop's manager fills it in.
        self.page.goto(f"/odoo/action-point_of_sale.action_pos_payment_method_form/{self.methods['Card']}")
        self.page.wait(".o_form_view .o_field_widget[name=tb_terminal_id]", timeout=120)
        form = {name: self.page.field_value(name) for name in ("tb_bridge_id", "tb_terminal_id", "tb_method")}
        self.checks.check("the payment method's form shows its bridge, its terminal and Pay by",
                          form["tb_bridge_id"] == "E2E shop" and "till-pos" in (form["tb_terminal_id"] or "") and
                          form["tb_method"] == "Card", repr(form))
        self.page.shot("odoo-payment-method")
        started = time.monotonic()
        self.page.open_register(self.config_id)
        self.checks.check("the POS opens in Chromium and its register is opened (a POS session)", True,
                          f"{time.monotonic() - started:.1f} s")

    def declined_then_unknown(self):
        page = self.page
        page.sell(PRODUCT)
        page.pay_with("Card (till 2)")
        page.wait(".modal-dialog", "Payment declined")
        declined = self.payments_on("till-pos-2")
        text = page.dialog_text()
        self.checks.check("declined: the POS shows the bridge's sentence in a dialog",
                          len(declined) == 1 and declined[0]["state"] == "declined" and declined[0]["message"] and
                          declined[0]["message"] in text, f"dialog {text!r}, Odoo {declined}")
        page.shot("odoo-pos-declined")
        page.dialog_button("Ok")
        page.wait(".paymentline .electronic_status", "Transaction cancelled")
        page.click(".paymentline .payment-infos ~ .delete-button")
        page.pay_with("Card (till 3)")
        page.wait(".modal-dialog", "Did the terminal take the payment?")
        text = page.dialog_text()
        words = ("may have charged the card", "Paid on the terminal", "Not paid")
        self.checks.check("unknown: the POS asks whether the terminal took the payment (Paid on the terminal / "
                          "Not paid)", all(word in text for word in words), repr(text))
        page.shot("odoo-pos-unknown")
        page.dialog_button("Paid on the terminal")
        page.wait(".receipt-screen")
        unknown = self.payments_on("till-pos-3")
        self.checks.check("answered Paid on the terminal: approved in Odoo with the cashier's note, the order paid",
                          len(unknown) == 1 and unknown[0]["state"] == "approved" and unknown[0]["resolved_by"] and
                          self.orders()[-1]["state"] in ("paid", "done", "invoiced"),
                          f"{unknown}, orders {self.orders()}")
        page.next_order()

    def odoo_restarted(self):
        run, page = self.run, self.page
        page.sell(PRODUCT)
        page.pay_with("Card")
        page.wait(".paymentline .electronic_status", "Waiting for card")
        run.wait("the slow terminal has the POS's payment request",
                 lambda: len(run.requests_of("till-pos")) == 1, timeout=60)
        page.browser.evaluate("window.tbE2EMarker = 'not reloaded'")
        run.kill_odoo()  # at once: the terminal answers 8 s after it got the request
        self.checks.check("odoo-bin killed (SIGKILL) while the terminal holds the POS's payment",
                          not run.odoo.alive and len(run.requests_of("till-pos")) == 1,
                          f"the line says {page.line_status()!r}")
        page.shot("odoo-pos-waiting")  # what the cashier sees, Odoo up or down alike
        run.wait("the terminal approves while Odoo is down; the result waits on the box",
                 lambda: run.uplink_status().get("feedback_waiting") == 1, timeout=60)
        status = page.line_status()
        self.checks.check("while Odoo is down the POS keeps waiting (it claims nothing)",
                          "Waiting for card" in status and not page.has(".receipt-screen"), repr(status))
        time.sleep(2)  # the POS and the bridge try again while Odoo is still down
        run.start_odoo()
        back = time.monotonic()
        try:
            page.wait(".receipt-screen", timeout=120)
        except PageTimeout as error:
            self.checks.check("after odoo-bin starts again, the same POS page shows the order paid", False,
                              f"{error}\n{run.logs()}")
            raise
        marker = page.browser.evaluate("window.tbE2EMarker || ''")
        self.checks.check("after odoo-bin starts again, the same POS page (not reloaded) shows the order paid",
                          marker == "not reloaded", f"{time.monotonic() - back:.1f} s after Odoo answered again")
        page.shot("odoo-pos-approved")
        run.wait("the box has no result left to send", lambda: run.uplink_status().get("feedback_waiting") == 0,
                 timeout=60)
        time.sleep(3)  # a doubled delivery would land meanwhile
        payments = self.payments_on("till-pos")
        payment = payments[0] if payments else {}
        self.checks.check("the terminal was asked once; Odoo holds one approved payment, with one feedback",
                          len(run.requests_of("till-pos")) == 1 and len(payments) == 1 and
                          payment["state"] == "approved" and len(payment["feedback_ids"]) == 1,
                          f"requests {len(run.requests_of('till-pos'))}, payments {payments}")
        order = self.orders()[-1]
        lines = self.payment_lines(order)
        self.checks.check("the order is paid; its payment line is the payment (uuid) with its card details",
                          order["state"] in ("paid", "done", "invoiced") and len(lines) == 1 and
                          lines[0]["uuid"] == payment.get("command_id") and
                          lines[0]["transaction_id"] == payment.get("pay_ref") and
                          lines[0]["payment_method_authcode"] == payment.get("authorization") and
                          lines[0]["card_no"] == (payment.get("card_masked") or "")[-4:],
                          f"order {order}, lines {lines}")

    def refund(self):
        """The order paid across the restart, refunded in full through the bridge (payment.refund of its payment)."""
        page, run = self.page, self.run
        order = self.orders()[-1]
        original = self.payments_on("till-pos")[0]
        page.next_order()
        if page.has(".pos-leftheader .orders-button"):  # 19.0: Orders, then the paid ones
            page.click(".pos-leftheader .orders-button")
            page.click(".pos-search-bar .filter")
            page.click(".pos-search-bar .filter ul li", "Paid")
        else:  # 18.0: Actions, Refund (the paid orders)
            page.click(".control-buttons button", "Actions")
            page.click(".control-buttons button", "Refund")
        details = self.rpc("pos.order", "read", [order["id"]], ["pos_reference", "tracking_number"])[0]
        row = next(filter(None, (details.get("tracking_number"), details.get("pos_reference"))), "1.98")
        row = str(row).split(" ")[-1]
        page.click(".ticket-screen .order-row", row)
        page.wait(".ticket-screen .order-row.highlight", row)  # selected: its lines are shown
        page.numpad("1")
        page.click(".ticket-screen .btn-primary.pay-order-button:not([disabled]):not(.disabled)")
        page.wait(".pos-content :is(.payment-screen, .product-screen .pay-order-button)")
        if not page.has(".payment-screen"):  # 18.0 goes back to the products first
            page.click(".product-screen .pay-order-button")
            page.wait(".pos-content .payment-screen")
        page.pay_with("Card")
        # The line appears a moment after the tap: 19.0 then waits for the cashier's "Refund" on it, 18.0 sends
        # at once (its line says Waiting for card). Looking before the line is there would skip 19.0's button.
        page.wait(".payment-screen :is(.send_refund_request, .paymentline .electronic_status)")
        if page.has(".payment-screen .send_refund_request"):
            page.click(".payment-screen .send_refund_request")
        run.wait("the terminal has the refund request", lambda: len(run.requests_of("till-pos")) == 2, timeout=60)
        page.shot("odoo-pos-refund-waiting")
        page.wait(".receipt-screen", timeout=90)
        page.shot("odoo-pos-refund")
        refunds = self.rpc("terminal.bridge.payment", "search_read",
                           [("pos_config_id", "=", self.config_id), ("kind", "=", "refund")],
                           ["state", "amount", "refund_of_id"])
        self.checks.check("a refund from the POS pays back through the original payment (payment.refund), once",
                          len(refunds) == 1 and refunds[0]["state"] == "approved" and
                          (refunds[0]["refund_of_id"] or [None])[0] == original["id"] and
                          len(run.requests_of("till-pos")) == 2, f"refunds {refunds}, original {original['id']}")

    def run_all(self):
        self.set_up()
        self.open_pos()
        self.declined_then_unknown()
        self.odoo_restarted()
        self.refund()
