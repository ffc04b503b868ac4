"""Routing: the Router, its decisions ledger, fitting, calibration, pool and prices."""
