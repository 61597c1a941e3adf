// Odoo 18's module paths (models/ir_asset.py loads this folder on Odoo 18 only).
import { PaymentInterface } from "@point_of_sale/app/payment/payment_interface";
import { PosStore, register_payment_method } from "@point_of_sale/app/store/pos_store";
import { installTerminalBridge } from "@pos_terminal_bridge/core/payment_terminal_bridge";

installTerminalBridge({ PaymentInterface, PosStore, register_payment_method });
