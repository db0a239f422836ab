"""The lightning-lyapunov benchmark suite: ``python -m benchmarks <name> [--quick]``."""
