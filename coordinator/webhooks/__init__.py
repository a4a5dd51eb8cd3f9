"""Webhooks: which events go where, Standard Webhooks signing, the SSRF guard, and the loop
that delivers the durable outbox."""
