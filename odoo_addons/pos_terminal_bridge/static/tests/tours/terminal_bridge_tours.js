/**
 * The cashier's side of paying through the bridge, for Odoo 18 and 19: odoo18/ and odoo19/ hand these tours
 * their version's tour helpers (the same names, in other folders). The Python tests start the real bridge
 * daemon and its simulated terminals; each tour waits for what the bridge does, as a cashier would.
 */
import { registry } from "@web/core/registry";

/** How long a step may wait for the bridge and the terminal (ms): a payment takes about a second here. */
const BRIDGE = 30000;

export function registerTerminalBridgeTours({
    Chrome, Dialog, ProductScreen, PaymentScreen, ReceiptScreen, TicketScreen, openRefunds, major,
}) {
    const open = () => [Chrome.startPoS(), Dialog.confirm("Open Register")].flat();
    const sell = () =>
        [
            ProductScreen.addOrderline("Desk Pad", "1"),
            ProductScreen.clickPayButton(),
            PaymentScreen.isShown(),
        ].flat();
    const status = (words, timeout = BRIDGE) => ({
        content: `the payment line says "${words}"`,
        trigger: `.paymentline .electronic_status:contains("${words}")`,
        timeout,
    });
    const notification = (words, timeout = BRIDGE) => ({
        content: `the POS tells the cashier "${words}"`,
        trigger: `.o_notification:contains("${words}")`,
        timeout,
    });
    const dialog = (words, timeout = BRIDGE) => ({
        content: `a dialog says "${words}"`,
        trigger: `.modal-dialog:contains("${words}")`,
        timeout,
    });
    const button = (words, timeout = BRIDGE) => ({
        content: `click "${words}"`,
        trigger: `.modal-dialog .modal-footer button:contains("${words}")`,
        run: "click",
        timeout,
    });
    const lineButton = (selector, words) => ({
        content: `click "${words}" on the payment line`,
        trigger: `.paymentline ${selector}:contains("${words}")`,
        run: "click",
    });
    const toPayment = () => ({
        content: "on the payment screen (from the products if need be)",
        trigger: ".pos-content :is(.payment-screen, .product-screen .pay-order-button)",
        run: () => document.querySelector(".product-screen .pay-order-button")?.click(),
    });
    const received = () => ({ ...ReceiptScreen.isShown()[0], timeout: BRIDGE });
    const reload = () => {
        const step = {
            content: "reload the POS page in the middle of the payment",
            trigger: `.paymentline .electronic_status:contains("Waiting for card")`,
            run: () => {
                document.body.classList.add("tb-before-reload");
                window.location.reload();
            },
        };
        if (major >= 19) {
            step.expectUnloadPage = true;
        }
        return step;
    };
    const staleNewsSaysNothing = () => ({
        content: "older news of the payment (a slow poll's answer) after newer news tells the cashier nothing again",
        trigger: ".paymentline",
        run: () => {
            let terminal, news;
            for (const method of window.posmodel.models["pos.payment.method"].getAll()) {
                for (const payment of Object.values(method.payment_terminal?.tbLast || {})) {
                    if (["accepted", "in_progress"].includes(payment.state)) {
                        [terminal, news] = [method.payment_terminal, payment];
                    }
                }
            }
            if (!news) {
                throw new Error("no payment under way on a bridge terminal");
            }
            const said = [];
            const notify = terminal.tbNotify;
            terminal.tbNotify = (text) => said.push(text);
            try {
                terminal.tbUpdate({ ...news, state: "queued" });
                terminal.tbUpdate({ ...news, state: "in_progress" });
            } finally {
                terminal.tbNotify = notify;
            }
            if (said.length) {
                throw new Error(`stale news made the POS say again: ${said.join(" / ")}`);
            }
        },
    });
    const add = (name, steps) => registry.category("web_tour.tours").add(name, { steps: () => steps().flat() });

    add("TerminalBridgeCancelBeforeSend", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card approves"),
        status("Waiting for card"),
        lineButton(".send_payment_cancel", "Cancel"),
        notification("before it reached the terminal"),
        { trigger: `.paymentline .send_payment_request:contains("Retry")` },
    ]);

    add("TerminalBridgePayApproved", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card approves"),
        received(),
        {
            content: "the receipt shows the card and its authorisation once, whole (nothing cut at the edge)",
            trigger: `.pos-payment-terminal-receipt pre:contains("auth")`,
            run: () => {
                const pre = document.querySelector(".pos-payment-terminal-receipt pre");
                if (pre.scrollWidth > pre.clientWidth + 1) {
                    throw new Error(`the receipt cuts the terminal's lines: ${pre.textContent}`);
                }
                if (pre.textContent.split("auth").length !== 2) {
                    throw new Error(`the authorisation is printed more than once: ${pre.textContent}`);
                }
            },
        },
    ]);

    add("TerminalBridgeDeclinedThenPaid", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card declines"),
        dialog("Payment declined"),
        button("Ok"),
        status("Transaction cancelled"),
        {
            content: "delete the declined line",
            trigger: `.paymentline .payment-infos:contains("Card declines") ~ .delete-button`,
            run: "click",
        },
        PaymentScreen.clickPaymentMethod("Card approves"),
        received(),
    ]);

    add("TerminalBridgeAbandonedThenRetried", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card abandons"),
        dialog("Payment cancelled"),
        button("Ok"),
        lineButton(".send_payment_request", "Retry"),
        dialog("Payment cancelled"),
        button("Ok"),
        status("Transaction cancelled"),
    ]);

    add("TerminalBridgeCancelOnTerminal", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card waits"),
        notification("The bridge took the payment"),
        staleNewsSaysNothing(),
        lineButton(".send_payment_cancel", "Cancel"),
        // A Caisse-AP terminal over TCP has no cancel message: the POS says only the terminal can cancel (when
        // the bridge's answer comes before the terminal's) and waits until the terminal confirms (here the
        // simulated customer presses the red button).
        notification("The terminal confirmed the cancel"),
        status("Transaction cancelled"),
    ]);

    for (const [answer, end] of [
        ["Paid on the terminal", received],
        ["Not paid", () => status("Transaction cancelled")],
    ]) {
        add(`TerminalBridgeUnknown${answer === "Not paid" ? "NotPaid" : "Paid"}`, () => [
            open(),
            sell(),
            PaymentScreen.clickPaymentMethod("Card loses link"),
            dialog("The terminal may have charged the card"),
            button(answer),
            end(),
        ]);
    }

    add("TerminalBridgeReload", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card slow"),
        status("Waiting for card"),
        reload(),
        // The POS comes back with the order, and learns from the server how its payment ended while the page
        // was away (the marker class is gone once the page was really reloaded).
        {
            ...toPayment(),
            content: "the reloaded POS: back to the payment screen",
            trigger: `body:not(.tb-before-reload) ${toPayment().trigger}`,
            timeout: BRIDGE,
        },
        status("Payment Successful"),
        PaymentScreen.clickValidate(),
        received(),
    ]);

    add("TerminalBridgeBridgeStartsLate", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card approves"),
        status("Waiting for card"),
        received(),
    ]);

    add("TerminalBridgeRefund", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card approves"),
        received(),
        ReceiptScreen.clickNextOrder(),
        openRefunds(),
        TicketScreen.selectOrderByPrice("1.98"),
        ProductScreen.clickNumpad("1"),
        TicketScreen.confirmRefund(),
        toPayment(), // Odoo 19 goes to the payment screen, Odoo 18 back to the products
        PaymentScreen.isShown(),
        PaymentScreen.clickPaymentMethod("Card approves"),
        // Odoo 19 waits for the cashier's "Refund" click on a refund order; Odoo 18 sends it at once.
        major >= 19 ? { content: "send the refund", trigger: ".payment-screen .send_refund_request", run: "click" } : [],
        // Refunded on the terminal: the order validates itself, as a paid one does.
        received(),
    ]);

    add("TerminalBridgePartialRefund", () => [
        open(),
        ProductScreen.addOrderline("Desk Pad", "2"),
        ProductScreen.clickPayButton(),
        PaymentScreen.isShown(),
        PaymentScreen.clickPaymentMethod("Card approves"),
        received(),
        ReceiptScreen.clickNextOrder(),
        openRefunds(),
        TicketScreen.selectOrderByPrice("3.96"),
        ProductScreen.clickNumpad("1"), // one of the two desk pads comes back
        TicketScreen.confirmRefund(),
        toPayment(),
        PaymentScreen.isShown(),
        PaymentScreen.clickPaymentMethod("Card approves"),
        major >= 19 ? { content: "send the refund", trigger: ".payment-screen .send_refund_request", run: "click" } : [],
        received(),
    ]);

    // The other screen on the same order is the Python test's own client (see test_tours.py): this one pays.
    add("TerminalBridgeSecondScreen", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card slow"),
        status("Waiting for card"),
        received(),
    ]);

    add("TerminalBridgeForceDoneGuard", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card waits long"),
        status("Waiting for card"),
        // Odoo 19 offers "Force done" while the line waits for the card; Odoo 18 only on a line whose payment
        // interface reported a connection error (status force_done): put the line there, as such an error would.
        major >= 19
            ? []
            : {
                  content: "Odoo 18: the line says it lost the connection, and offers Force done",
                  trigger: ".paymentline .electronic_status",
                  run: () => {
                      const line = window.posmodel.get_order().payment_ids.find((l) => l.payment_method_id.name === "Card waits long");
                      line.set_payment_status("force_done");
                  },
              },
        lineButton(".send_force_done", "Force done"),
        dialog("The payment is not done"),
        button("Ok"),
        {
            content: "the line is still waiting for the terminal, not paid",
            trigger: ".payment-screen .paymentline .send_force_done",
        },
        // The customer walks away: the terminal ends it, nothing was paid.
        dialog("Payment cancelled"),
        button("Ok"),
        status("Transaction cancelled"),
    ]);

    // Odoo 19 only (18 offers no Force done on a waiting line): an unknown payment, its question closed unanswered.
    add("TerminalBridgeForceDoneUnknown", () => [
        open(),
        sell(),
        PaymentScreen.clickPaymentMethod("Card loses link"),
        dialog("The terminal may have charged the card"),
        {
            content: "close the question without answering",
            trigger: ".modal-dialog:contains('The terminal may have charged the card') .modal-header .btn-close",
            run: "click",
        },
        lineButton(".send_force_done", "Force done"),
        // Not paid: the question comes back, and the line still waits for the cashier's answer.
        dialog("The terminal may have charged the card"),
        { content: "the line is not paid", trigger: ".paymentline .electronic_status:contains('Waiting for card')" },
        button("Not paid"),
        status("Transaction cancelled"),
    ]);
}

/**
 * The speed benchmark (bench/pos_roundtrip.py): ``count`` payments in a row on a terminal that answers at once.
 * For each, the time of the click on the payment method and the time the line shows "Payment Successful",
 * printed on the console for the Python side. The second is taken by a MutationObserver on the page, at the DOM
 * change itself: the tour engine only looks again some time after the page changed (Odoo 18's waits until the
 * page has been still for 500 ms), which would measure the tour engine, not the POS.
 */
export function registerTerminalBridgeBench({ Chrome, Dialog, ProductScreen, PaymentScreen, ReceiptScreen }, count = 50) {
    const times = [];
    const steps = () => {
        const all = [Chrome.startPoS(), Dialog.confirm("Open Register")];
        for (let i = 0; i < count; i++) {
            all.push(
                ProductScreen.addOrderline("Desk Pad", "1"),
                ProductScreen.clickPayButton(),
                {
                    content: `payment ${i + 1}: click the bridge's payment method`,
                    trigger: `.paymentmethods .button.paymentmethod .payment-name:contains("Card instant")`,
                    run: () => {
                        const entry = { click: Date.now() };
                        times.push(entry);
                        const shown = () =>
                            [...document.querySelectorAll(".paymentline .electronic_status")].some((el) =>
                                el.textContent.includes("Payment Successful")
                            );
                        entry.observer = new MutationObserver(() => {
                            if (!entry.shown && shown()) {
                                entry.shown = Date.now();
                                entry.observer.disconnect();
                            }
                        });
                        entry.observer.observe(document.body, {
                            childList: true,
                            subtree: true,
                            characterData: true,
                        });
                        [...document.querySelectorAll(".paymentmethods .button.paymentmethod")]
                            .find((el) => el.textContent.includes("Card instant"))
                            .click();
                    },
                },
                {
                    content: `payment ${i + 1}: the POS shows it paid`,
                    trigger: `.paymentline .electronic_status:contains("Payment Successful")`,
                    timeout: 30000,
                    run: () => {
                        const entry = times[times.length - 1];
                        entry.observer.disconnect();
                        delete entry.observer;
                        entry.shown = entry.shown || Date.now();
                    },
                },
                PaymentScreen.clickValidate(),
                ReceiptScreen.clickNextOrder()
            );
        }
        all.push({
            content: "report the times",
            trigger: ".product-screen",
            run: () => console.log("TBBENCH " + JSON.stringify(times)),
        });
        return all.flat();
    };
    registry.category("web_tour.tours").add("TerminalBridgeBench", { steps });
}
