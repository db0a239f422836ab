"""Benchmark data modules. Nothing downloads at run time (except CIFAR-10 through torchvision,
and only when torchvision imports and the local copy is missing; MNIST is only ever read from a
local directory of the four standard idx files).

Every data module keeps its whole data set as tensors (``TensorDataset``), draws everything from
its ``seed`` (data, splits and the training shuffle order) and exposes the shapes the models need
as attributes (``in_features``, ``out_features``, ``num_classes``, ``in_channels``) so a CLI can
link them to the model's arguments.

Example::

    import lightning.pytorch as pl
    from lightning_lyapunov.examples.data import Digits
    from lightning_lyapunov.examples.models import ClassificationModule, DeepMLP

    data = Digits(batch_size=64)
    model = ClassificationModule(DeepMLP(data.in_features, data.num_classes, 16, 10), data.num_classes)
    pl.Trainer(max_epochs=3).fit(model, data)
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_lyapunov._forward import global_rng_preserved
from lightning_lyapunov._checks import check_float, check_int

__all__ = [
    "PolynomialRegression",
    "GaussianMixtureScore",
    "MNIST1D",
    "Digits",
    "MNIST",
    "read_idx",
    "read_mnist",
    "MNIST_ENV",
    "CIFAR10",
    "random_crop_flip",
    "read_cifar10",
    "CIFAR10_URL",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"

Splits = dict[str, tuple[Tensor, ...]]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _split(tensors: tuple[Tensor, ...], sizes: dict[str, int], seed: int) -> Splits:
    """Shuffle the rows of ``tensors`` with ``seed`` and cut them into named consecutive parts."""
    n = len(tensors[0])
    if sum(sizes.values()) > n:
        raise ValueError(
            f"the requested split sizes {sizes} need {sum(sizes.values())} samples but only {n} "
            "are available; make the sizes smaller."
        )
    perm = torch.randperm(n, generator=_generator(seed))
    out, start = {}, 0
    for name, size in sizes.items():
        idx = perm[start : start + size]
        out[name] = tuple(t[idx] for t in tensors)
        start += size
    return out


def _split_sizes(n_train: int, n_val: int, n_test: int) -> dict[str, int]:
    """The validated ``{"train": n_train, "val": n_val, "test": n_test}`` of a generated data set."""
    return {
        "train": check_int("n_train", n_train, minimum=1),
        "val": check_int("n_val", n_val, minimum=1),
        "test": check_int("n_test", n_test, minimum=1),
    }


def _check_holdout(name: str, size: int, total: int) -> None:
    """Held-out samples must leave at least one training sample."""
    if size >= total:
        raise ValueError(
            f"{name}={size} is invalid: the data set has only {total} samples to split from; "
            f"pass {name} < {total}."
        )


class _TensorDataModule(pl.LightningDataModule):
    """Base class: builds ``{"train", "val", "test"}`` tensor tuples once in ``setup`` and serves
    them with DataLoaders (training order shuffled by a generator seeded with ``seed``;
    ``predict`` uses the test split)."""

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.seed = check_int("seed", seed, minimum=0)
        self.splits: Splits | None = None

    def build(self) -> Splits:
        """Return the ``train``, ``val`` and ``test`` tensor tuples (deterministic in ``seed``)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.build()

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        self.setup()
        assert self.splits is not None
        return DataLoader(
            TensorDataset(*self.splits[split]),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=_generator(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


class PolynomialRegression(_TensorDataModule):
    """The Lyapunov paper's regression task: ``y = p(<u, x>)`` with ``p(t) = sum_k c_k t^k`` a fixed
    random polynomial (``c_k ~ N(0, 1)``, k = 0..degree, drawn from ``seed``), ``x`` uniform on
    ``[-1, 1]^in_features`` and ``u`` a fixed random unit vector (``u = [1]`` for one input, so
    ``y = p(x)``). Optional Gaussian label noise on the training targets. Targets have shape
    (N, 1).

    Args:
        in_features: input dimension (1 in the paper).
        degree: polynomial degree (5 in the paper).
        n_train, n_val, n_test: split sizes.
        noise_std: standard deviation of the label noise added to training targets (>= 0).
        batch_size, num_workers, seed: loader settings and the seed of everything.

    Example::

        data = PolynomialRegression(n_train=512)
        data.setup()
        x, y = next(iter(data.train_dataloader()))   # (64, 1), (64, 1)
    """

    out_features = 1

    def __init__(
        self,
        in_features: int = 1,
        degree: int = 5,
        n_train: int = 1024,
        n_val: int = 256,
        n_test: int = 256,
        noise_std: float = 0.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.degree = check_int("degree", degree, minimum=0)
        self.sizes = _split_sizes(n_train, n_val, n_test)
        self.noise_std = check_float("noise_std", noise_std, minimum=0.0)
        gen = _generator(seed)
        self.coefficients = torch.randn(degree + 1, generator=gen)
        u = torch.randn(in_features, generator=gen)
        u = u * torch.sign(u[0]) if in_features > 1 else torch.ones(1)
        self.direction = u / u.norm()
        self._data_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))

    def target(self, x: Tensor) -> Tensor:
        """``p(<u, x>)`` as an (N, 1) tensor (the noise-free regression function)."""
        t = x @ self.direction
        powers = t.unsqueeze(-1) ** torch.arange(self.degree + 1, dtype=x.dtype)
        return (powers @ self.coefficients.to(x.dtype)).unsqueeze(-1)

    def build(self) -> Splits:
        gen = _generator(self._data_seed)
        splits = {}
        for name, n in self.sizes.items():
            x = 2 * torch.rand(n, self.in_features, generator=gen) - 1
            y = self.target(x)
            if name == "train" and self.noise_std > 0:
                y = y + self.noise_std * torch.randn(y.shape, generator=gen)
            splits[name] = (x, y)
        return splits


class GaussianMixtureScore(_TensorDataModule):
    """Samples of a 2-D mixture of 3 Gaussians with equal weights, for denoising score matching.

    The means sit on a circle of radius ``radius`` at angles ``2 pi k / 3 + theta`` (theta random),
    covariances ``R diag(s1^2, s2^2) R'`` with random rotation R and ``s_i`` uniform in
    [0.2, 0.6] * ``scale``; all from ``seed``. Batches are 1-tuples ``(x,)`` with x of shape (B, 2).
    :meth:`score` gives the exact score of the (optionally noised) mixture for evaluation.

    Args:
        n_train, n_val, n_test: split sizes.
        radius: distance of the means from the origin.
        scale: multiplies the component standard deviations.
        batch_size, num_workers, seed: loader settings and the seed of everything.

    Example::

        data = GaussianMixtureScore()
        data.setup()
        (x,) = next(iter(data.train_dataloader()))         # (128, 2)
        s = data.score(x, sigma=0.5)                        # true score of p * N(0, 0.25 I)
    """

    in_features = 2
    out_features = 2
    num_components = 3

    def __init__(
        self,
        n_train: int = 4096,
        n_val: int = 1024,
        n_test: int = 1024,
        radius: float = 2.0,
        scale: float = 1.0,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.sizes = _split_sizes(n_train, n_val, n_test)
        check_float("radius", radius, minimum=0.0)
        check_float("scale", scale, minimum=0.0, low_open=True)
        gen = _generator(seed)
        k = self.num_components
        angles = 2 * math.pi * torch.arange(k) / k + 2 * math.pi * torch.rand(1, generator=gen)
        self.means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (3, 2)
        rot = 2 * math.pi * torch.rand(k, generator=gen)
        c, s = rot.cos(), rot.sin()
        rotations = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (3, 2, 2)
        stds = scale * (0.2 + 0.4 * torch.rand(k, 2, generator=gen))
        self.covariances = rotations @ torch.diag_embed(stds**2) @ rotations.transpose(1, 2)
        self._data_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the mixture: pick a component uniformly, then ``mean + L z``."""
        comp = torch.randint(self.num_components, (n,), generator=generator)
        chol = torch.linalg.cholesky(self.covariances)[comp]  # (n, 2, 2)
        z = torch.randn(n, 2, 1, generator=generator)
        return self.means[comp] + (chol @ z).squeeze(-1)

    def score(self, x: Tensor, sigma: float = 0.0) -> Tensor:
        """Exact score ``grad_x log q(x)`` of the mixture convolved with N(0, sigma^2 I):

            q = sum_k w_k N(mu_k, Sigma_k + sigma^2 I),
            grad log q(x) = sum_k r_k(x) (Sigma_k + sigma^2 I)^{-1} (mu_k - x),  r = responsibilities.
        """
        cov = self.covariances.to(x) + sigma**2 * torch.eye(2, dtype=x.dtype, device=x.device)
        dist = torch.distributions.MultivariateNormal(self.means.to(x), covariance_matrix=cov)
        log_prob = dist.log_prob(x.unsqueeze(1))  # (n, 3); equal weights cancel
        resp = torch.softmax(log_prob, dim=1)
        diff = self.means.to(x).unsqueeze(0) - x.unsqueeze(1)  # (n, 3, 2)
        grads = torch.linalg.solve(cov.unsqueeze(0), diff.unsqueeze(-1)).squeeze(-1)
        return (resp.unsqueeze(-1) * grads).sum(1)

    def build(self) -> Splits:
        gen = _generator(self._data_seed)
        return {name: (self.sample(n, gen),) for name, n in self.sizes.items()}


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    """Generate MNIST-1D locally with ``mnist1d.data.make_dataset`` (never its downloading
    ``get_dataset``), restoring the global ``random``/``numpy`` RNG state it reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    with global_rng_preserved():
        d = make_dataset(args)
    return d["x"], d["y"], d["x_test"], d["y_test"]


class MNIST1D(_TensorDataModule):
    """MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package: 40-dim signals,
    10 classes. The package's own 80/20 train/test split is kept; ``val_size`` samples of the
    train part (chosen with ``seed``) form the validation set. Generation takes ~1.7 s for the
    default 5000 samples and is cached in memory per (num_samples, seed).

    Args:
        num_samples: total samples generated (train + test), a multiple of 10 is best.
        val_size: validation samples taken out of the training part.
        batch_size, num_workers, seed: loader settings; ``seed`` also seeds the generator.

    Example::

        data = MNIST1D(num_samples=500, val_size=50)
        data.setup()
        x, y = next(iter(data.train_dataloader()))   # (64, 40) float32, (64,) int64
    """

    in_features = 40
    num_classes = 10

    def __init__(
        self,
        num_samples: int = 5000,
        val_size: int = 500,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.num_samples = check_int("num_samples", num_samples, minimum=20)
        self.val_size = check_int("val_size", val_size, minimum=1)

    def build(self) -> Splits:
        x, y, x_test, y_test = (torch.from_numpy(a) for a in _mnist1d_arrays(self.num_samples, self.seed))
        x, x_test, y, y_test = x.float(), x_test.float(), y.long(), y_test.long()
        _check_holdout("val_size", self.val_size, len(x))
        parts = _split((x, y), {"val": self.val_size, "train": len(x) - self.val_size}, self.seed)
        return {"train": parts["train"], "val": parts["val"], "test": (x_test, y_test)}


class Digits(_TensorDataModule):
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with sklearn), flattened to 64
    features and standardized per feature with the training split's mean and standard deviation.

    Args:
        val_size, test_size: split sizes (the rest is training data), split with ``seed``.
        batch_size, num_workers, seed: loader settings and the split seed.

    Example::

        data = Digits()
        data.setup()
        x, y = next(iter(data.train_dataloader()))   # (64, 64) float32, (64,) int64
    """

    in_features = 64
    num_classes = 10

    def __init__(
        self,
        val_size: int = 300,
        test_size: int = 300,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.val_size = check_int("val_size", val_size, minimum=1)
        self.test_size = check_int("test_size", test_size, minimum=1)

    def build(self) -> Splits:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.data, dtype=torch.float32)
        y = torch.as_tensor(digits.target, dtype=torch.long)
        _check_holdout("val_size + test_size", self.val_size + self.test_size, len(x))
        n_train = len(x) - self.val_size - self.test_size
        sizes = {"train": n_train, "val": self.val_size, "test": self.test_size}
        splits = _split((x, y), sizes, self.seed)
        mean = splits["train"][0].mean(0)
        std = splits["train"][0].std(0).clamp_min(1e-3)  # constant border pixels
        return {name: ((xs - mean) / std, ys) for name, (xs, ys) in splits.items()}


# ---------------------------------------------------------------------------------------------
# MNIST (local idx files)

MNIST_ENV = "LYAPUNOV_MNIST_DIR"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (the MNIST format; gzipped when the name ends in ``.gz``): magic
    ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data, row-major.

    Example::

        images = read_idx("mnist/train-images-idx3-ubyte.gz")   # uint8 (60000, 28, 28)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file: it must start with 0x00 0x00 <type code> <ndim>, "
                         f"found {raw[:4].hex(' ')!r}. Pass the (optionally gzipped) MNIST idx files.")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: the header announces shape {shape} ({expected} bytes) but the file has "
                         f"{len(raw)} bytes; the file is truncated or corrupt.")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _mnist_dir(root: str | Path | None) -> Path:
    value = root if root is not None else os.environ.get(MNIST_ENV)
    if not value:
        raise FileNotFoundError(
            f"MNIST directory not given: pass root=... or set {MNIST_ENV} to a folder holding the four "
            "standard idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte, optionally .gz). Nothing is downloaded."
        )
    return Path(value).expanduser()


def _find_idx(directory: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        for candidate in (directory / name, directory / "raw" / name, directory / "MNIST" / "raw" / name):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"MNIST not found: no {stem}[.gz] in {directory} (nor in raw/ or MNIST/raw/). Put the four standard "
        "MNIST idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte, optionally gzipped) there, or point root= / {MNIST_ENV} at their folder."
    )


def read_mnist(directory: str | Path | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Read MNIST from the idx files in ``directory`` (default ``$LYAPUNOV_MNIST_DIR``):
    ``{"train": (uint8 (60000, 28, 28), int64 (60000,)), "test": (... 10000 ...)}``.

    Example::

        arrays = read_mnist("/data/mnist")      # holds train-images-idx3-ubyte.gz, ...
    """
    root = _mnist_dir(directory)
    out = {}
    for split, (images_name, labels_name) in _MNIST_FILES.items():
        images = read_idx(_find_idx(root, images_name))
        labels = read_idx(_find_idx(root, labels_name))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match "
                             "(expected (N, rows, cols) and (N,)).")
        out[split] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return out


class MNIST(_TensorDataModule):
    """MNIST from a local directory of the four standard idx files (optionally gzipped), kept whole
    as float32 tensors ``(N, 1, 28, 28)`` scaled to [0, 1] and standardized with the usual mean
    0.1307 and std 0.3081 (``DeepMLP`` flattens them to 784 features). ``val_size`` training
    images (chosen with ``seed``) form the validation set; the test set is the official one.
    Nothing is downloaded.

    Args:
        root: the idx files' folder (or its ``raw/`` / ``MNIST/raw/`` parent); default
            ``$LYAPUNOV_MNIST_DIR``.
        val_size: validation images split from the 60,000 training images.
        batch_size, num_workers, seed: loader settings and the split seed.

    Example::

        data = MNIST(root="/data/mnist", val_size=5000)
        data.setup()
        x, y = next(iter(data.train_dataloader()))   # (64, 1, 28, 28) float32, (64,) int64
    """

    in_features = 784
    in_channels = 1
    num_classes = 10

    def __init__(
        self,
        root: str | None = None,
        val_size: int = 5000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = root
        self.val_size = check_int("val_size", val_size, minimum=1)

    def build(self) -> Splits:
        arrays = {k: ((x.float().unsqueeze(1) / 255 - MNIST_MEAN) / MNIST_STD, y)
                  for k, (x, y) in read_mnist(self.root).items()}
        x, y = arrays["train"]
        _check_holdout("val_size", self.val_size, len(x))
        parts = _split((x, y), {"val": self.val_size, "train": len(x) - self.val_size}, self.seed)
        return {"train": parts["train"], "val": parts["val"], "test": arrays["test"]}


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def random_crop_flip(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Standard CIFAR augmentation on a batch (B, C, H, W), on x's device: zero-pad by
    ``padding``, crop a random H x W window per image, flip each image horizontally with
    probability 1/2. (Zero is the data mean after normalization.)

    Example::

        x_aug = random_crop_flip(torch.randn(8, 3, 32, 32))
    """
    b, _, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(2 * padding + 1, (b, 1), generator=generator, device=dev)
    dx = torch.randint(2 * padding + 1, (b, 1), generator=generator, device=dev)
    flip = torch.rand(b, 1, generator=generator, device=dev) < 0.5
    rows = dy + torch.arange(h, device=dev)  # (B, H)
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip, cols.flip(0), cols) + dx  # (B, W)
    batch_idx = torch.arange(b, device=dev)[:, None, None, None]
    chan_idx = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


def _find_cifar_dir(root: Path) -> Path | None:
    """``root/cifar-10-batches-py`` or ``root`` itself, whichever holds all six batch files."""
    for candidate in (root / _CIFAR_DIR, root):
        if all((candidate / f).is_file() for f in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)):
            return candidate
    return None


def _missing_cifar_error(root: Path) -> FileNotFoundError:
    target = root / _CIFAR_DIR
    return FileNotFoundError(
        f"CIFAR-10 not found: looked for data_batch_1..5 and test_batch in {target} and in {root}, "
        "and torchvision (which could download it) is not importable. Get the data by hand: "
        f"download {CIFAR10_URL} and extract it into {root} (it creates {target}), e.g. "
        f"`mkdir -p {root} && curl -L {CIFAR10_URL} | tar xz -C {root}`; "
        "or pass synthetic=True for random CIFAR-shaped data."
    )


def _read_cifar_file(path: Path) -> tuple[Tensor, Tensor]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    return torch.from_numpy(data.copy()), torch.from_numpy(labels)


def read_cifar10(directory: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Read the python-format CIFAR-10 batches in ``directory`` (``cifar-10-batches-py`` or its
    parent): ``{"train": (uint8 (N, 3, 32, 32), int64 (N,)), "test": (...)}``.

    Example::

        arrays = read_cifar10("data")            # data/cifar-10-batches-py/...
    """
    root = Path(directory).expanduser()
    found = _find_cifar_dir(root)
    if found is None:
        raise _missing_cifar_error(root)
    train = [_read_cifar_file(found / f) for f in _CIFAR_TRAIN_FILES]
    return {
        "train": (torch.cat([t[0] for t in train]), torch.cat([t[1] for t in train])),
        "test": _read_cifar_file(found / _CIFAR_TEST_FILE),
    }


def _download_cifar10(root: Path) -> bool:
    """Download with torchvision if it imports (any failure to import means: not available)."""
    try:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10
    except Exception:
        return False
    for train in (True, False):
        TorchvisionCIFAR10(str(root), train=train, download=True)
    return True


class CIFAR10(_TensorDataModule):
    """CIFAR-10 from a local directory in the standard python format, kept whole as normalized
    float32 tensors (per-channel CIFAR mean/std); training batches are augmented (random crop with
    padding 4 + horizontal flip) by torch ops on the batch's device after transfer.

    ``root`` may be the folder containing ``cifar-10-batches-py`` or that folder itself. When it is
    missing, torchvision downloads it if importable (in ``prepare_data``); otherwise a
    FileNotFoundError explains how to get it. ``synthetic=True`` gives learnable random
    CIFAR-shaped data instead (image = class pattern + noise) for smoke runs.

    Args:
        root: data directory.
        val_size: validation images split from the training set with ``seed``; default (None):
            5000 of the real 50,000, a tenth of ``synthetic_size`` with ``synthetic=True``.
        augment: random crop + flip on training batches.
        synthetic: use random data (``synthetic_size`` training images, a fifth of that for test).
        synthetic_size: number of synthetic training images (before the validation split).
        batch_size, num_workers, seed: loader settings and the seed of splits and synthetic data.

    Example::

        data = CIFAR10(synthetic=True, synthetic_size=512, val_size=64)
        data.setup()
        x, y = next(iter(data.train_dataloader()))   # (128, 3, 32, 32) float32, (128,) int64
    """

    in_channels = 3
    num_classes = 10

    def __init__(
        self,
        root: str = "data",
        val_size: int | None = None,
        augment: bool = True,
        synthetic: bool = False,
        synthetic_size: int = 2048,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = Path(root).expanduser()
        self.synthetic_size = check_int("synthetic_size", synthetic_size, minimum=2)
        if val_size is None:
            val_size = max(1, synthetic_size // 10) if synthetic else 5000
        self.val_size = check_int("val_size", val_size, minimum=1)
        self.augment = augment
        self.synthetic = synthetic

    def prepare_data(self) -> None:
        if self.synthetic or _find_cifar_dir(self.root) is not None:
            return
        if not _download_cifar10(self.root):
            raise _missing_cifar_error(self.root)

    def _synthetic(self) -> dict[str, tuple[Tensor, Tensor]]:
        gen = _generator(self.seed)
        patterns = torch.randn(self.num_classes, 3, 8, 8, generator=gen)
        patterns = torch.nn.functional.interpolate(patterns, size=32, mode="bilinear")
        out = {}
        for name, n in (("train", self.synthetic_size), ("test", max(1, self.synthetic_size // 5))):
            y = torch.randint(self.num_classes, (n,), generator=gen)
            x = patterns[y] + torch.randn(n, 3, 32, 32, generator=gen)
            out[name] = (x, y)
        return out

    def build(self) -> Splits:
        if self.synthetic:
            arrays = self._synthetic()
        else:
            mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
            arrays = {k: ((x.float() / 255 - mean) / std, y) for k, (x, y) in read_cifar10(self.root).items()}
        x, y = arrays["train"]
        _check_holdout("val_size", self.val_size, len(x))
        parts = _split((x, y), {"val": self.val_size, "train": len(x) - self.val_size}, self.seed)
        return {"train": parts["train"], "val": parts["val"], "test": arrays["test"]}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.augment and self.trainer is not None and self.trainer.training:
            x, y = batch
            return random_crop_flip(x), y
        return batch
