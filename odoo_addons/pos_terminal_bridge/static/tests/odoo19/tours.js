// Odoo 19's tour helpers (models/ir_asset.py loads this folder on Odoo 19 only).
import * as Chrome from "@point_of_sale/../tests/pos/tours/utils/chrome_util";
import * as Dialog from "@point_of_sale/../tests/generic_helpers/dialog_util";
import * as ProductScreen from "@point_of_sale/../tests/pos/tours/utils/product_screen_util";
import * as PaymentScreen from "@point_of_sale/../tests/pos/tours/utils/payment_screen_util";
import * as ReceiptScreen from "@point_of_sale/../tests/pos/tours/utils/receipt_screen_util";
import * as TicketScreen from "@point_of_sale/../tests/pos/tours/utils/ticket_screen_util";
import {
    registerTerminalBridgeBench,
    registerTerminalBridgeTours,
} from "@pos_terminal_bridge/../tests/tours/terminal_bridge_tours";

const openRefunds = () => [Chrome.clickOrders(), TicketScreen.selectFilter("Paid")].flat();
registerTerminalBridgeTours({
    Chrome, Dialog, ProductScreen, PaymentScreen, ReceiptScreen, TicketScreen, openRefunds, major: 19,
});
registerTerminalBridgeBench({ Chrome, Dialog, ProductScreen, PaymentScreen, ReceiptScreen });
