"""Tests for lightning_lyapunov.examples.data: shapes, determinism, splits, the CIFAR reader and augmentation."""

from __future__ import annotations

import gzip
import pickle
import random
import sys
import types
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_lyapunov.examples.data import (
    CIFAR10,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    MNIST1D,
    MNIST,
    MNIST_ENV,
    Digits,
    GaussianMixtureScore,
    PolynomialRegression,
    random_crop_flip,
    read_cifar10,
    read_idx,
    read_mnist,
)

SMALL = {
    "poly": lambda seed=0: PolynomialRegression(n_train=100, n_val=30, n_test=20, batch_size=16, seed=seed),
    "gmm": lambda seed=0: GaussianMixtureScore(n_train=100, n_val=30, n_test=20, batch_size=16, seed=seed),
    "mnist1d": lambda seed=0: MNIST1D(num_samples=200, val_size=30, batch_size=16, seed=seed),
    "digits": lambda seed=0: Digits(val_size=30, test_size=20, batch_size=16, seed=seed),
    "cifar": lambda seed=0: CIFAR10(synthetic=True, synthetic_size=100, val_size=30, batch_size=16, seed=seed),
}
# per module: (shape of one input, target shape per sample or None, target dtype)
EXPECTED = {
    "poly": ((1,), (1,), torch.float32),
    "gmm": ((2,), None, None),
    "mnist1d": ((40,), (), torch.int64),
    "digits": ((64,), (), torch.int64),
    "cifar": ((3, 32, 32), (), torch.int64),
}


def _ready(name, seed=0):
    data = SMALL[name](seed)
    data.prepare_data()
    data.setup("fit")
    return data


@pytest.mark.parametrize("name", sorted(SMALL))
def test_batches_have_the_right_shape_and_dtype(name):
    data = _ready(name)
    x_shape, y_shape, y_dtype = EXPECTED[name]
    for loader in (data.train_dataloader(), data.val_dataloader(), data.test_dataloader(), data.predict_dataloader()):
        batch = next(iter(loader))
        assert batch[0].dtype == torch.float32 and batch[0].shape == (16, *x_shape)
        if y_shape is None:
            assert len(batch) == 1
        else:
            assert batch[1].dtype == y_dtype and batch[1].shape == (16, *y_shape)
    if y_dtype is torch.int64:
        labels = torch.cat([data.splits[s][1] for s in ("train", "val", "test")])
        assert labels.min() >= 0 and labels.max() < data.num_classes == 10


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_data_and_order_other_seed_other_data(name):
    a, b, c = _ready(name), _ready(name), _ready(name, seed=1)
    for split in ("train", "val", "test"):
        for ta, tb in zip(a.splits[split], b.splits[split]):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.splits["train"][0], c.splits["train"][0])
    first_a, first_b = next(iter(a.train_dataloader()))[0], next(iter(b.train_dataloader()))[0]
    assert torch.equal(first_a, first_b)
    assert not torch.equal(first_a, a.splits["train"][0][:16])  # the training order is shuffled
    assert torch.equal(next(iter(a.val_dataloader()))[0], a.splits["val"][0][:16])  # val is not


def test_polynomial_regression_targets():
    data = _ready("poly")
    x, y = data.splits["train"]
    assert data.coefficients.shape == (6,) and torch.equal(data.direction, torch.ones(1))
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9
    # y is exactly the degree-5 polynomial with the stored coefficients
    vander = torch.stack([x[:, 0].double() ** k for k in range(6)], 1)
    fit = torch.linalg.lstsq(vander, y.double()).solution[:, 0]
    torch.testing.assert_close(fit, data.coefficients.double(), atol=1e-4, rtol=1e-4)
    # several inputs: a fixed unit direction; noise only on the training targets
    multi = PolynomialRegression(in_features=3, noise_std=0.1, n_train=2000, seed=2)
    multi.setup()
    torch.testing.assert_close(multi.direction.norm(), torch.tensor(1.0))
    xt, yt = multi.splits["train"]
    torch.testing.assert_close((yt - multi.target(xt)).std(), torch.tensor(0.1), atol=0.01, rtol=0)
    xv, yv = multi.splits["val"]
    assert torch.equal(yv, multi.target(xv))


def test_gaussian_mixture_samples_and_exact_score():
    data = GaussianMixtureScore(seed=4)
    gen = torch.Generator().manual_seed(0)
    x = data.sample(60_000, gen)
    torch.testing.assert_close(x.mean(0), data.means.mean(0), atol=0.03, rtol=0)
    norms = data.means.norm(dim=1)
    torch.testing.assert_close(norms, torch.full((3,), 2.0))
    # mixture covariance = mean of (Sigma_k + mu_k mu_k') - m m'
    m = data.means.mean(0)
    cov = (data.covariances + data.means[:, :, None] * data.means[:, None, :]).mean(0) - torch.outer(m, m)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0)
    # score == autograd gradient of the log-density of the noised mixture
    sigma = 0.3
    z = torch.randn(50, 2, generator=gen, dtype=torch.float64).mul(2).requires_grad_()
    cov_noised = data.covariances.double() + sigma**2 * torch.eye(2, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(data.means.double(), covariance_matrix=cov_noised)
    log_q = torch.logsumexp(dist.log_prob(z[:, None, :]), dim=1).sum()
    (grad,) = torch.autograd.grad(log_q, z)
    torch.testing.assert_close(data.score(z.detach(), sigma), grad)


def test_mnist1d_is_generated_locally_without_side_effects(tmp_path, monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("MNIST1D must not download")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    random.seed(123)
    np_expected, py_expected = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    data = MNIST1D(num_samples=100, val_size=10, seed=7)
    data.setup()
    assert np.random.random() == np_expected and random.random() == py_expected  # global RNG untouched
    assert list(tmp_path.iterdir()) == []  # nothing written
    sizes = {k: len(v[0]) for k, v in data.splits.items()}
    assert sizes == {"train": 70, "val": 10, "test": 20}  # the package's 80/20 split, then val
    assert set(data.splits["train"][1].tolist()) == set(range(10))


def test_digits_standardized_and_complete():
    data = Digits(seed=0)
    data.setup()
    sizes = {k: len(v[0]) for k, v in data.splits.items()}
    assert sizes == {"train": 1197, "val": 300, "test": 300}  # 1797 digits in all
    x = data.splits["train"][0]
    varying = x.std(0) > 0
    assert varying.sum() >= 60
    torch.testing.assert_close(x.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: PolynomialRegression(batch_size=0), "batch_size"),
        (lambda: PolynomialRegression(n_train=0), "n_train"),
        (lambda: PolynomialRegression(noise_std=-1.0), "noise_std"),
        (lambda: GaussianMixtureScore(num_workers=-1), "num_workers"),
        (lambda: GaussianMixtureScore(scale=0.0), "scale"),
        (lambda: MNIST1D(seed=-1), "seed"),
        (lambda: Digits(val_size=0), "val_size"),
        (lambda: CIFAR10(synthetic=True, synthetic_size=1), "synthetic_size"),
    ],
)
def test_bad_arguments(build, argument):
    with pytest.raises(ValueError) as info:
        build()
    assert str(info.value).startswith(f"{argument}=")


def test_split_sizes_too_large_are_rejected():
    with pytest.raises(ValueError, match=r"val_size \+ test_size=2000 .* only 1797 samples"):
        Digits(val_size=1000, test_size=1000).setup()
    with pytest.raises(ValueError, match="val_size=80 .* only 80 samples"):
        MNIST1D(num_samples=100, val_size=80).setup()
    with pytest.raises(ValueError, match="val_size=100 "):
        CIFAR10(synthetic=True, synthetic_size=100, val_size=100).setup()


# ------------------------------------------------------------------------------ CIFAR-10 files


def _write_cifar(folder: Path, per_file: int = 20) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write a tiny CIFAR-10 in the real python format; return what was written per file."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_file)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f)
        written[name] = (data, labels)
    return written


@pytest.fixture
def no_torchvision(monkeypatch):
    """Make `import torchvision` fail whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_reader_reads_the_real_format(tmp_path, point_at, no_torchvision):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    root = tmp_path if point_at == "parent" else tmp_path / "cifar-10-batches-py"
    arrays = read_cifar10(root)
    x, y = arrays["train"]
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y[20:40].tolist() == written["data_batch_2"][1]
    raw = written["test_batch"][0][3]  # rows are R (1024), G (1024), B (1024), each row-major 32x32
    assert arrays["test"][0][3, 1].flatten().tolist() == raw[1024:2048].tolist()
    assert arrays["test"][0][3, 0, 2, 5].item() == raw[2 * 32 + 5]

    data = CIFAR10(root=str(root), val_size=10, batch_size=8)
    data.prepare_data()
    data.setup("fit")
    sizes = {k: len(v[0]) for k, v in data.splits.items()}
    assert sizes == {"train": 90, "val": 10, "test": 20}
    expected = (raw[:1024].reshape(32, 32) / 255 - CIFAR10_MEAN[0]) / CIFAR10_STD[0]
    torch.testing.assert_close(data.splits["test"][0][3, 0], torch.tensor(expected, dtype=torch.float32))
    # the split is a permutation of the training set
    train_val = torch.cat([data.splits["train"][1], data.splits["val"][1]])
    assert sorted(train_val.tolist()) == sorted(y.tolist())


def test_cifar_missing_directory_without_torchvision(tmp_path, no_torchvision):
    root = tmp_path / "nowhere"
    data = CIFAR10(root=str(root))
    with pytest.raises(FileNotFoundError) as info:
        data.prepare_data()
    message = str(info.value)
    assert str(root / "cifar-10-batches-py") in message and CIFAR10_URL in message
    assert "extract" in message and "synthetic" in message
    with pytest.raises(FileNotFoundError):
        data.setup("fit")
    assert not root.exists()  # nothing created


def test_cifar_missing_directory_with_torchvision_downloads(tmp_path, monkeypatch):
    calls = []

    class FakeTorchvisionCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            if not (Path(root) / "cifar-10-batches-py").exists():
                _write_cifar(Path(root) / "cifar-10-batches-py", per_file=4)

    fake = types.ModuleType("torchvision")
    fake.datasets = types.ModuleType("torchvision.datasets")
    fake.datasets.CIFAR10 = FakeTorchvisionCIFAR10
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake.datasets)
    data = CIFAR10(root=str(tmp_path), val_size=2)
    data.prepare_data()
    assert calls and all(c[0] == str(tmp_path) and c[2] for c in calls)
    data.setup("fit")
    assert len(data.splits["train"][0]) == 18


def test_synthetic_cifar_is_learnable():
    data = CIFAR10(synthetic=True, synthetic_size=500, val_size=100, seed=0)
    data.setup()
    x, y = data.splits["train"]
    means = torch.stack([x[y == c].mean(0) for c in range(10)]).flatten(1)
    xt, yt = data.splits["test"]
    predicted = torch.cdist(xt.flatten(1), means).argmin(1)
    assert (predicted == yt).float().mean() > 0.9  # nearest class mean; chance is 0.1


# ------------------------------------------------------------------------------ augmentation


def _crop_params(image: torch.Tensor, original: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """All (dy, dx, flip) for which ``image`` is that crop of the zero-padded (mirrored) original."""
    padded = torch.nn.functional.pad(original, (padding,) * 4)
    h, w = original.shape[-2:]
    return [
        (dy, dx, flip)
        for flip in (False, True)
        for dy in range(2 * padding + 1)
        for dx in range(2 * padding + 1)
        if torch.equal(image, (padded.flip(-1) if flip else padded)[:, dy : dy + h, dx : dx + w])
    ]


def test_random_crop_flip_is_a_padded_crop_or_its_mirror():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=gen)
    out = random_crop_flip(x, padding=2, generator=gen)
    assert out.shape == x.shape
    found = [_crop_params(out[i], x[i], 2) for i in range(len(x))]
    assert all(found), "every output must be a crop of the padded (mirrored) input"
    flips = sum(f[0][2] for f in found)
    offsets = {f[0][:2] for f in found}
    assert 16 <= flips <= 48 and len(offsets) > 10  # both flips and many of the 25 offsets occur
    same = [random_crop_flip(x, 2, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(same[0], same[1])


def test_cifar_augments_training_batches_only():
    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3 * 32 * 32, 10)
            self.seen = {}

        def training_step(self, batch, batch_idx):
            self.seen["train"] = batch[0].clone()
            return self.layer(batch[0].flatten(1)).sum()

        def validation_step(self, batch, batch_idx):
            self.seen["val"] = batch[0].clone()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = CIFAR10(synthetic=True, synthetic_size=40, val_size=8, batch_size=8, seed=0)
    module = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", fast_dev_run=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    assert torch.equal(module.seen["val"], data.splits["val"][0][:8])
    first_train = next(iter(data.train_dataloader()))[0]  # same seed -> same first batch
    assert module.seen["train"].shape == first_train.shape
    assert not torch.equal(module.seen["train"], first_train)
    assert all(_crop_params(a, b, 4) for a, b in zip(module.seen["train"], first_train))


# ------------------------------------------------------------------------------ MNIST idx files


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an idx file (gzipped when the name ends in .gz), as MNIST ships."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _write_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict[str, tuple]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        written[split] = (images, labels)
    return written


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trips_the_mnist_format(tmp_path, gz):
    written = _write_mnist(tmp_path, gz=gz)
    arrays = read_mnist(tmp_path)
    for split in ("train", "test"):
        x, y = arrays[split]
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert np.array_equal(x.numpy(), written[split][0]) and np.array_equal(y.numpy(), written[split][1])
    # byte layout: row-major pixels right after the 16-byte header (magic, count, rows, cols)
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()) if gz else \
        (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 10
    assert arrays["test"][0][2, 3, 5].item() == raw[16 + 2 * 784 + 3 * 28 + 5]


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x08\x03\x00\x00" + bytes(16))
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_mnist_datamodule_from_env_normalized_and_split(tmp_path, monkeypatch):
    written = _write_mnist(tmp_path / "mnist" / "raw")
    monkeypatch.setenv(MNIST_ENV, str(tmp_path / "mnist"))  # the raw/ subfolder is found too
    data = MNIST(val_size=5, batch_size=4)
    data.setup("fit")
    sizes = {k: len(v[0]) for k, v in data.splits.items()}
    assert sizes == {"train": 25, "val": 5, "test": 10}
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    expected = (written["test"][0][7] / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(data.splits["test"][0][7, 0], torch.tensor(expected, dtype=torch.float32))
    train_val = torch.cat([data.splits["train"][1], data.splits["val"][1]])
    assert sorted(train_val.tolist()) == sorted(written["train"][1].tolist())


def test_mnist_missing_files_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(MNIST_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=MNIST_ENV):
        MNIST().setup()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        read_mnist(tmp_path)


def test_cifar_default_validation_size_fits_the_synthetic_set():
    data = CIFAR10(synthetic=True, synthetic_size=200)
    data.setup()
    assert {k: len(v[0]) for k, v in data.splits.items()} == {"train": 180, "val": 20, "test": 40}
    assert CIFAR10().val_size == 5000
