"""Delivery: the ledger (state machine), sending batches, mailers, rate limits, retries."""
