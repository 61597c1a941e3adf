// Odoo 19's module paths (models/ir_asset.py loads this folder on Odoo 19 only).
import { PaymentInterface } from "@point_of_sale/app/utils/payment/payment_interface";
import { PosStore, register_payment_method } from "@point_of_sale/app/services/pos_store";
import { installTerminalBridge } from "@pos_terminal_bridge/core/payment_terminal_bridge";

installTerminalBridge({ PaymentInterface, PosStore, register_payment_method });
