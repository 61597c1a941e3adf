"""Stripe Terminal smart readers, driven server-side through Stripe's REST API (docs/stripe.md)."""
