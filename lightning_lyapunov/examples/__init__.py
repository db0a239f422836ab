"""Example networks, data modules and the demo: what the configs, the benchmarks and the README use.

Not part of the plugin itself (``LyapunovInit`` works on any LightningModule):

* :mod:`lightning_lyapunov.examples.models`: deep narrow MLPs and CNNs, a small ResNet, and
  LightningModules for regression, classification and score learning;
* :mod:`lightning_lyapunov.examples.data`: DataModules for the offline tasks (polynomial regression,
  Gaussian-mixture scores, MNIST-1D, the 8x8 digits, MNIST and CIFAR-10 read from local files);
* :mod:`lightning_lyapunov.examples.demo`: He against Lyapunov init on a width-2, depth-40 net
  (``python -m lightning_lyapunov.examples.demo``).
"""
