{
    "name": "POS Terminal Bridge",
    "version": "1.0.0",
    "category": "Sales/Point of Sale",
    "summary": "Pay in the Odoo POS on the shop's card terminal (Caisse-AP, Stripe) through terminal-bridge",
    "author": "terminal-bridge",
    "license": "LGPL-3",
    "depends": ["point_of_sale", "terminal_bridge"],
    "data": [
        "security/ir.model.access.csv",
        "views/pos_payment_method_views.xml",
    ],
    # Odoo 18 and 19 name the payment interface's and the POS store's JavaScript modules differently. The
    # shared code lives in static/src/core; odoo18/ and odoo19/ hold one small file each that imports those two
    # modules from the paths of its version. Both folders are listed here; models/ir_asset.py drops the folder
    # of the other version when the bundle is built.
    "assets": {
        "point_of_sale._assets_pos": [
            "pos_terminal_bridge/static/src/core/**/*",
            "pos_terminal_bridge/static/src/odoo18/**/*",
            "pos_terminal_bridge/static/src/odoo19/**/*",
        ],
        "web.assets_tests": [
            "pos_terminal_bridge/static/tests/tours/**/*",
            "pos_terminal_bridge/static/tests/odoo18/**/*",
            "pos_terminal_bridge/static/tests/odoo19/**/*",
        ],
    },
}
