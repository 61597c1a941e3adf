/**
 * Paying in the POS on a terminal of the shop's bridge, for Odoo 18 and 19 alike.
 *
 * The two versions name the same things differently (18: send_payment_request, set_payment_status, get_order;
 * 19: sendPaymentRequest, setPaymentStatus, getOrder) and import the payment interface and the POS store from
 * different paths. This module imports neither: static/src/odoo18 and static/src/odoo19 each hand it their
 * version's PaymentInterface, PosStore and register_payment_method (see installTerminalBridge).
 *
 * The command id of a payment is the POS payment line's uuid (its first attempt) or "<uuid>/<n>" (the n-th
 * attempt after a decline or a cancel): asking again with the same id never charges twice.
 */
import { _t } from "@web/core/l10n/translation";
import { AlertDialog, ConfirmationDialog } from "@web/core/confirmation_dialog/confirmation_dialog";
import { patch } from "@web/core/utils/patch";
import { PaymentScreen } from "@point_of_sale/app/screens/payment_screen/payment_screen";

export const TERMINAL = "terminal_bridge";
export const NOTIFICATION = "TERMINAL_BRIDGE_PAYMENT";
const FINAL = new Set(["approved", "declined", "cancelled", "failed", "unknown"]);
const WAITING = new Set(["waiting", "waitingCard", "waitingCancel"]);
/** How far an attempt has gone (the server's _RANK): news of an earlier step of the same attempt is stale. */
const rank = (state) => ({ queued: 0, accepted: 1, in_progress: 2 })[state] ?? 3;
/** While a payment waits, the POS also asks the server this often, in case a bus message was missed. */
const POLL_MS = 4000;

// The same calls under 18's and 19's names.
const call = (obj, camel, snake, ...args) => (obj[camel] ? obj[camel](...args) : obj[snake](...args));
export const getStatus = (line) => call(line, "getPaymentStatus", "get_payment_status");
export const setStatus = (line, status) => call(line, "setPaymentStatus", "set_payment_status", status);
const setReceiptInfo = (line, text) => call(line, "setReceiptInfo", "set_receipt_info", text);
const currentOrder = (pos) => call(pos, "getOrder", "get_order");
const cashierName = (pos) => call(pos, "getCashier", "get_cashier")?.name || "";

/** "<uuid>/3" -> ["<uuid>", 3]; "<uuid>" -> ["<uuid>", 1]. */
export function splitCommandId(commandId) {
    const [uuid, attempt] = (commandId || "").split("/");
    return [uuid, attempt ? parseInt(attempt, 10) : 1];
}

export function isTerminalBridgeLine(line) {
    return line?.payment_method_id?.use_payment_terminal === TERMINAL;
}

export function makeTerminalBridgePayment(PaymentInterface) {
    return class PaymentTerminalBridge extends PaymentInterface {
        setup() {
            super.setup(...arguments);
            this.tbWaiters = {}; // line uuid -> {commandId, resolve}
            this.tbCancelWaiters = {}; // line uuid -> resolve
            this.tbCancelAsked = {}; // line uuid -> the command id the cashier asked to cancel
            this.tbLast = {}; // line uuid -> the last payment dict seen (any attempt)
            this.tbDialogs = {}; // line uuid -> the unknown dialog is open
            this.tbSending = {}; // line uuid -> settles once the server answered the pay request
        }

        // Odoo 19's names
        get fastPayments() {
            return true;
        }
        sendPaymentRequest(uuid) {
            return this.tbPay(uuid);
        }
        sendPaymentCancel(order, uuid) {
            return this.tbCancel(uuid);
        }
        // Odoo 18's names
        send_payment_request(uuid) {
            return this.tbPay(uuid);
        }
        send_payment_cancel(order, uuid) {
            return this.tbCancel(uuid);
        }

        tbLine(uuid) {
            return this.pos.models["pos.payment"].find((line) => line.uuid === uuid);
        }

        tbRpc(method, args) {
            return this.env.services.orm.silent.call("pos.payment.method", method, [
                [this.payment_method_id.id],
                ...args,
            ]);
        }

        /** The command id of the next attempt on this line: the same as the last one unless it ended unpaid. */
        tbNextCommandId(line) {
            const last = this.tbLast[line.uuid];
            if (!last || !last.command_id) {
                return line.uuid;
            }
            const [, attempt] = splitCommandId(last.command_id);
            if (["declined", "cancelled", "failed"].includes(last.state)) {
                return `${line.uuid}/${attempt + 1}`;
            }
            return last.command_id;
        }

        tbRefundOf(line) {
            const order = line.pos_order_id;
            const refunded = order?.lines?.find((l) => l.refunded_orderline_id)?.refunded_orderline_id
                ?.order_id;
            if (!refunded) {
                return {};
            }
            const paid = (refunded.payment_ids || []).find(
                (l) => isTerminalBridgeLine(l) && l.amount > 0
            );
            return { refund_of: paid?.uuid || false, refunded_order_id: refunded.id || false };
        }

        async tbPay(uuid) {
            const line = this.tbLine(uuid);
            setStatus(line, "waitingCard");
            let result;
            let answered;
            this.tbSending[uuid] = new Promise((resolve) => (answered = resolve));
            try {
                // A line sent before (then reloaded) may already have attempts: learn the newest before choosing
                // the id. A new line has none, and saves this round trip.
                const fresh = [undefined, null, "", "pending"].includes(line.tbStatusBeforeSend);
                if (!this.tbLast[uuid] && !fresh) {
                    const known = await this.tbRpc("tb_status", [uuid]);
                    if (known.state) {
                        this.tbLast[uuid] = known;
                    }
                }
                const order = line.pos_order_id || currentOrder(this.pos);
                const data = {
                    command_id: this.tbNextCommandId(line),
                    amount: Math.abs(line.amount),
                    currency: this.pos.currency.name,
                    reference: order?.pos_reference || order?.name || "",
                    order_uuid: order?.uuid || "",
                    pos_config_id: this.pos.config.id,
                };
                if (line.amount < 0) {
                    Object.assign(data, this.tbRefundOf(line));
                    result = await this.tbRpc("tb_refund", [data]);
                } else {
                    result = await this.tbRpc("tb_send_payment", [data]);
                }
            } catch {
                this.tbAlert(
                    _t("Odoo cannot be reached"),
                    _t(
                        "The payment may or may not have reached the terminal. Press Retry when the connection is back: the same payment is asked again, it is never charged twice."
                    )
                );
                return false;
            } finally {
                // A cancel clicked meanwhile goes on once this function has recorded the answer (below, in the
                // same run of code: the cancel's await resumes only after it).
                delete this.tbSending[uuid];
                answered();
            }
            if (result.error) {
                this.tbAlert(_t("The payment did not start"), result.error);
                return false;
            }
            return this.tbWait(line, result);
        }

        /** A promise of true (paid) or false (not paid: the cashier may try again), settled by tbUpdate. */
        tbWait(line, payment) {
            return new Promise((resolve) => {
                const waiter = this.tbWaiters[line.uuid] || { resolvers: [], timer: null };
                waiter.resolvers.push(resolve);
                this.tbWaiters[line.uuid] = waiter;
                this.tbUpdate(payment);
                this.tbPoll(line.uuid);
            });
        }

        tbPoll(uuid) {
            const waiter = this.tbWaiters[uuid];
            if (!waiter || waiter.timer) {
                return;
            }
            waiter.timer = setTimeout(async () => {
                waiter.timer = null;
                if (this.tbWaiters[uuid] !== waiter) {
                    return;
                }
                try {
                    this.tbUpdate(await this.tbRpc("tb_status", [uuid]));
                } catch {
                    // Odoo unreachable: the next tick tries again; the bus catches up when it is back.
                }
                this.tbPoll(uuid);
            }, POLL_MS);
        }

        /** Apply what the server says of a payment (a bus message, a poll, an RPC's answer). */
        tbUpdate(payment) {
            if (!payment || !payment.command_id) {
                return;
            }
            const [uuid, attempt] = splitCommandId(payment.command_id);
            const last = this.tbLast[uuid];
            if (last && splitCommandId(last.command_id)[1] > attempt) {
                return; // news of an older attempt
            }
            if (last?.command_id === payment.command_id && rank(payment.state) < rank(last.state)) {
                // Older news of this attempt (a poll's answer sent before the bus message that overtook it):
                // taking it would step back, and the next news would tell the cashier again what they know.
                return;
            }
            const settled =
                last?.command_id === payment.command_id &&
                last.state === payment.state &&
                FINAL.has(payment.state) &&
                payment.state !== "unknown";
            if (settled && !this.tbWaiters[uuid] && !this.tbCancelWaiters[uuid]) {
                return; // already shown (a bus message and an answer can bring the same news)
            }
            this.tbLast[uuid] = payment;
            const line = this.tbLine(uuid);
            if (!line) {
                return;
            }
            const waiter = this.tbWaiters[uuid];
            if (payment.cancel_status && this.tbCancelWaiters[uuid] && !payment.is_final) {
                this.tbCancelAnswer(uuid, payment);
            }
            if (["accepted", "in_progress"].includes(payment.state) && !["accepted", "in_progress"].includes(last?.state)) {
                // The bridge answered: from now on a cancel needs the terminal.
                this.tbNotify(_t("The bridge took the payment: follow the terminal."), "info");
            }
            if (!FINAL.has(payment.state)) {
                if (!waiter && !line.isDone?.() && getStatus(line) !== "done") {
                    setStatus(line, "waitingCard");
                }
                return;
            }
            if (payment.state === "unknown") {
                if (!payment.resolution_pending) {
                    this.tbAskUnknown(line, payment); // not while an answer goes to the bridge
                }
                return;
            }
            const paid = payment.state === "approved";
            if (paid) {
                this.tbFillLine(line, payment);
            }
            const cancelWaiter = this.tbCancelWaiters[uuid];
            if (cancelWaiter || this.tbCancelAsked[uuid] === payment.command_id) {
                // The cashier asked to cancel: say whether the terminal confirmed it.
                delete this.tbCancelWaiters[uuid];
                delete this.tbCancelAsked[uuid];
                this.tbNotify(this.tbCancelOutcome(payment), paid ? "warning" : "success");
                cancelWaiter?.(!paid);
            } else if (!paid) {
                this.tbAlert(this.tbTitle(payment), payment.message || payment.state);
            }
            if (waiter) {
                delete this.tbWaiters[uuid];
                clearTimeout(waiter.timer);
                waiter.resolvers.forEach((resolve) => resolve(paid));
            } else if (WAITING.has(getStatus(line))) {
                // No click is waiting for it (the page was reloaded): settle the line here.
                call(line, "handlePaymentResponse", "handle_payment_response", paid);
            }
        }

        tbCancelOutcome(payment) {
            if (payment.state === "approved") {
                return _t("Too late to cancel: the terminal had approved the payment.");
            }
            if (payment.cancel_status === "before_send") {
                return payment.message || _t("Cancelled before it reached the terminal: nothing was charged.");
            }
            if (payment.state === "cancelled") {
                return _t("The terminal confirmed the cancel: nothing was charged. %s", payment.message || "");
            }
            return _t("The payment ended before the cancel: %s", payment.message || payment.state);
        }

        tbTitle(payment) {
            return (
                {
                    declined: _t("Payment declined"),
                    cancelled: _t("Payment cancelled"),
                    failed: _t("Payment failed, nothing was charged"),
                }[payment.state] || _t("Payment")
            );
        }

        tbFillLine(line, payment) {
            const digits = (payment.card_masked || "").replace(/\D/g, "").slice(-4);
            line.transaction_id = payment.pay_ref || payment.command_id;
            line.payment_ref_no = payment.command_id;
            line.payment_method_authcode = payment.authorization || "";
            line.card_no = digits;
            line.card_brand = payment.brand || "";
            line.card_type = payment.brand || "";
            const parts = [payment.brand, payment.card_masked, payment.authorization && _t("auth %s", payment.authorization)];
            // One per line: the receipt prints it as preformatted text, which does not wrap (a long card line
            // cut the authorisation off); and only once, since Odoo appends it to the line's ticket.
            const info = parts.filter(Boolean).join("\n");
            if (info && !(line.ticket || "").includes(info)) {
                setReceiptInfo(line, info);
            }
        }

        tbAskUnknown(line, payment) {
            const uuid = line.uuid;
            if (this.tbDialogs[uuid]) {
                return;
            }
            this.tbDialogs[uuid] = true;
            const amount = this.env.utils?.formatCurrency
                ? this.env.utils.formatCurrency(payment.amount / 10 ** (this.pos.currency.decimal_places ?? 2))
                : String(payment.amount);
            const body = _t(
                "The terminal may have charged the card: the bridge does not know how the payment of %(amount)s ended. What the bridge knows: %(message)s Look at the terminal's screen or its last receipt, then say what it shows.",
                { amount, message: payment.message || "" }
            );
            const answer = async (paidOnTerminal) => {
                try {
                    const result = await this.tbRpc("tb_resolve", [
                        payment.command_id,
                        paidOnTerminal ? "paid" : "not_paid",
                        cashierName(this.pos),
                    ]);
                    this.tbDialogs[uuid] = false;
                    this.tbUpdate(result);
                } catch {
                    this.tbDialogs[uuid] = false;
                    this.tbAlert(
                        _t("Odoo cannot be reached"),
                        _t("Your answer was not recorded. It is asked again when Odoo is back.")
                    );
                }
            };
            this.env.services.dialog.add(ConfirmationDialog, {
                title: _t("Did the terminal take the payment?"),
                body,
                confirmLabel: _t("Paid on the terminal"),
                cancelLabel: _t("Not paid"),
                confirm: () => answer(true),
                cancel: () => answer(false),
                // Closed without an answer: asked again at the next check.
                dismiss: () => {
                    this.tbDialogs[uuid] = false;
                },
            });
        }

        async tbCancel(uuid) {
            if (this.tbSending[uuid]) {
                // Cancel clicked before the server answered the pay request: the payment may be queued already.
                await this.tbSending[uuid];
            }
            const last = this.tbLast[uuid];
            if (!last) {
                return true; // never started
            }
            if (last.state === "unknown") {
                if (!last.resolution_pending) {
                    this.tbDialogs[uuid] = false;
                    this.tbAskUnknown(this.tbLine(uuid), last);
                }
                return false;
            }
            let result;
            try {
                result = await this.tbRpc("tb_cancel", [last.command_id]);
            } catch {
                this.tbAlert(
                    _t("Odoo cannot be reached"),
                    _t("The cancel was not sent. The terminal may still take the card.")
                );
                return false;
            }
            if (result.error) {
                this.tbNotify(result.error, "warning");
            }
            if (!result.state) {
                return true; // never started: nothing to cancel
            }
            this.tbCancelAsked[uuid] = result.command_id;
            return new Promise((resolve) => {
                this.tbCancelWaiters[uuid] = resolve;
                this.tbUpdate(result);
            });
        }

        /** The bridge's answer to payment.cancel, while the payment goes on. */
        tbCancelAnswer(uuid, payment) {
            const resolve = this.tbCancelWaiters[uuid];
            if (payment.cancel_status === "on_terminal") {
                delete this.tbCancelWaiters[uuid];
                this.tbNotify(
                    payment.cancel_message ||
                        _t("Only the terminal can cancel now: press its red button."),
                    "warning"
                );
                resolve(false);
            } else if (payment.cancel_status === "requested") {
                this.tbNotify(_t("Cancel asked: waiting for the terminal to confirm."), "info");
            }
        }

        tbNotify(message, type) {
            this.env.services.notification.add(message, { type });
        }

        tbAlert(title, body) {
            this.env.services.dialog.add(AlertDialog, { title, body });
        }

        /** After a reload: find where each unsettled line of this method stands. */
        async tbRecover(line) {
            let payment;
            try {
                payment = await this.tbRpc("tb_status", [line.uuid]);
            } catch {
                return;
            }
            if (!payment.state) {
                if (WAITING.has(getStatus(line))) {
                    setStatus(line, "retry"); // it never reached the server: nothing was started
                }
                return;
            }
            if (!FINAL.has(payment.state) || payment.state === "unknown") {
                setStatus(line, "waitingCard");
                this.tbWait(line, payment).then((paid) =>
                    call(line, "handlePaymentResponse", "handle_payment_response", paid)
                );
                return;
            }
            this.tbUpdate(payment);
        }
    };
}

/** Wire the payment method into the POS, given this Odoo version's modules. */
export function installTerminalBridge({ PaymentInterface, PosStore, register_payment_method }) {
    register_payment_method(TERMINAL, makeTerminalBridgePayment(PaymentInterface));

    patch(PosStore.prototype, {
        async setup() {
            await super.setup(...arguments);
            const onPayment = (payload) => {
                const [uuid] = splitCommandId(payload?.command_id);
                const line = this.models["pos.payment"].find((l) => l.uuid === uuid);
                if (line && isTerminalBridgeLine(line)) {
                    line.payment_method_id.payment_terminal.tbUpdate(payload);
                }
            };
            if (this.data?.connectWebSocket) {
                this.data.connectWebSocket(NOTIFICATION, onPayment);
            } else {
                this.onNotified(NOTIFICATION, onPayment);
            }
            // Lines left waiting by a reload or a crash: ask the server where their payments stand.
            for (const line of this.models["pos.payment"].filter(isTerminalBridgeLine)) {
                if (WAITING.has(getStatus(line))) {
                    line.payment_method_id.payment_terminal?.tbRecover(line);
                }
            }
            this.tbRestoreLostLines();
        },

        /** Put back the payment lines a reload lost before the POS saved them (their payments go on). */
        async tbRestoreLostLines() {
            let lost = [];
            try {
                lost = await this.env.services.orm.silent.call("pos.payment.method", "tb_lost_lines", [
                    this.config.id,
                ]);
            } catch {
                return;
            }
            for (const payment of lost) {
                if (this.models["pos.payment"].find((l) => l.uuid === payment.line_uuid)) {
                    continue;
                }
                const order = this.models["pos.order"].find((o) => o.uuid === payment.pos_order_uuid);
                const method = this.models["pos.payment.method"].get(payment.payment_method_id);
                const decimals = this.currency.decimal_places ?? 2;
                const amount = (payment.amount / 10 ** decimals) * (payment.kind === "refund" ? -1 : 1);
                if (!order || !method || order.finalized || (order.state && order.state !== "draft")) {
                    this.env.services.notification.add(
                        _t("A card payment of %(amount)s (%(state)s) belongs to no open order of this POS: look at the bridge's payments.", {
                            amount: this.env.utils.formatCurrency(amount),
                            state: payment.state,
                        }),
                        { type: "warning", sticky: true }
                    );
                    continue;
                }
                const line = this.models["pos.payment"].create({
                    uuid: payment.line_uuid,
                    pos_order_id: order,
                    payment_method_id: method,
                    amount,
                });
                setStatus(line, "waitingCard");
                call(order, "selectPaymentline", "select_paymentline", line); // its status shows when selected
                method.payment_terminal?.tbRecover(line);
            }
        },
    });

    patch(PaymentScreen.prototype, {
        async sendPaymentRequest(line) {
            if (isTerminalBridgeLine(line)) {
                line.tbStatusBeforeSend = getStatus(line); // pay() sets "waiting" before the interface sees it
            }
            return super.sendPaymentRequest(...arguments);
        },
        /** Never a blind "Force done": the line is paid only when the bridge or the cashier's answer says so. */
        async sendForceDone(line) {
            if (!isTerminalBridgeLine(line)) {
                return super.sendForceDone(...arguments);
            }
            const terminal = line.payment_method_id.payment_terminal;
            const payment = await terminal.tbRpc("tb_status", [line.uuid]);
            if (payment.state === "approved" || payment.state === "unknown") {
                terminal.tbDialogs[line.uuid] = false;
                terminal.tbUpdate(payment);
                return;
            }
            terminal.tbAlert(
                _t("The payment is not done"),
                payment.message ||
                    _t("The bridge has no approved payment for this line: it cannot be marked as paid.")
            );
        },
    });
}
