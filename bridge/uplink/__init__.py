"""The cloud uplink: Odoo's bus WebSocket as a wake-up, commands over HTTPS, results as Ogone-style feedback.

docs/cloud-protocol.md describes what the Odoo side must offer.  Every connection is opened by the bridge, so
the shop opens no port.
"""
