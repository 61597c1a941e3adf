# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl).
{
    "name": "Terminal bridge",
    "summary": "Card terminals in the shop, driven from cloud Odoo through terminal-bridge",
    "version": "1.0.0",
    "category": "Accounting/Payment",
    "license": "LGPL-3",
    "author": "terminal-bridge",
    "website": "https://github.com/terminal-bridge/terminal-bridge",
    "depends": ["bus", "web"],
    "data": [
        "security/terminal_bridge_security.xml",
        "security/ir.model.access.csv",
        "data/terminal_bridge_data.xml",
        "wizard/terminal_bridge_pair_wizard_views.xml",
        "views/terminal_bridge_views.xml",
    ],
    "external_dependencies": {"python": ["cryptography"]},
}
