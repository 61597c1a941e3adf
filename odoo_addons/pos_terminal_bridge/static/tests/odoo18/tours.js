// Odoo 18's tour helpers (models/ir_asset.py loads this folder on Odoo 18 only).
import * as Chrome from "@point_of_sale/../tests/tours/utils/chrome_util";
import * as Dialog from "@point_of_sale/../tests/tours/utils/dialog_util";
import * as ProductScreen from "@point_of_sale/../tests/tours/utils/product_screen_util";
import * as PaymentScreen from "@point_of_sale/../tests/tours/utils/payment_screen_util";
import * as ReceiptScreen from "@point_of_sale/../tests/tours/utils/receipt_screen_util";
import * as TicketScreen from "@point_of_sale/../tests/tours/utils/ticket_screen_util";
import {
    registerTerminalBridgeBench,
    registerTerminalBridgeTours,
} from "@pos_terminal_bridge/../tests/tours/terminal_bridge_tours";

const openRefunds = () => ProductScreen.clickRefund();
registerTerminalBridgeTours({
    Chrome, Dialog, ProductScreen, PaymentScreen, ReceiptScreen, TicketScreen, openRefunds, major: 18,
});
registerTerminalBridgeBench({ Chrome, Dialog, ProductScreen, PaymentScreen, ReceiptScreen });
