"""Stateful services over the store: revocations, approvals, the meter, usage, refusal limits, policy reloads."""
