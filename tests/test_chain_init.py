"""Tests of lightning_lyapunov.chain_init: a plan's scales and predictions by the exact scale chain."""
