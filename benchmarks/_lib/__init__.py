"""The benchmark suite's helper libraries (not benchmarks themselves).

* :mod:`~benchmarks._lib.package`: everything taken from ``lightning_lyapunov``, imported there only;
* :mod:`~benchmarks._lib.report`: the ``Report`` a benchmark returns, ``Sizes``, how reports are written;
* :mod:`~benchmarks._lib.stats`: medians, paired comparisons over seeds, trained counts, and the
  sentences that state them;
* :mod:`~benchmarks._lib.engine`: the training engine: all seeds of a configuration as one stacked model;
* :mod:`~benchmarks._lib.schemes`: the initializations compared (through the package, plus LSUV);
* :mod:`~benchmarks._lib.protocol`: scheme comparisons on top of the engine;
* :mod:`~benchmarks._lib.data`: data sets (MNIST-1D, MNIST idx files, CIFAR-10 python batches);
* :mod:`~benchmarks._lib.chains`: batched random matrices and signal chains for the Monte Carlo benchmarks;
* :mod:`~benchmarks._lib.plots`: shared figure helpers;
* :mod:`~benchmarks._lib.catalogue`: the README tables, generated from the result files.
"""
