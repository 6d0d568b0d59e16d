"""Datasets: MNIST, Fashion-MNIST, CIFAR-10/100, image folders, and a synthetic stand-in.

Where data is looked for, in order (:func:`search_dirs`): ``--data-dir``, ``$EDGESPLIT_DATA_DIR``,
the user cache (``~/.cache/edgesplit/datasets``), and the Debian/Ubuntu package location
(``/usr/share/datasets/<name>``, e.g. from ``apt-get install dataset-fashion-mnist``, which holds
the four ``*-ubyte.gz`` files). Nothing is downloaded unless ``download=True``.

The transform is defined once, in :func:`preprocess`, and used for training, evaluation and every
run: uint8 images -> float in [0, 1] -> grayscale repeated to the model's channels -> bilinear
resize to the input size -> per-dataset mean/std normalisation. It runs on whole batches.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from edgesplit.errors import DataError
from edgesplit.shared.imagespec import ImageSpec

log = logging.getLogger(__name__)

DATA_DIR_ENV = "EDGESPLIT_DATA_DIR"
SYSTEM_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: int
    channels: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    debian_package: str | None = None


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), "dataset-fashion-mnist"
    ),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def known_datasets() -> list[str]:
    return [*sorted(DATASETS), "imagefolder:PATH", "synthetic"]


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgesplit" / "datasets"


def search_dirs(data_dir: Path | None = None) -> list[Path]:
    """Folders searched for data, in order."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs.append(user_cache_dir())
    dirs.append(SYSTEM_DIR)
    return dirs


@dataclass
class ImageSet:
    """A split of a dataset held as uint8 images (N, C, H, W) and integer labels (or None)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    info: DatasetInfo

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(
        self,
        batch_size: int,
        input_size: int,
        channels: int = 3,
        limit: int | None = None,
        raw: bool = False,
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """Yield ``(first index, preprocessed images, labels)`` in order, at most ``limit``
        images; ``raw``: the uint8 images as they are (for a graph that starts with their
        preprocessing, see :func:`native_spec`)."""
        n = len(self) if limit is None else min(limit, len(self))
        for start in range(0, n, batch_size):
            end = min(start + batch_size, n)
            labels = None if self.labels is None else self.labels[start:end]
            images = self.images[start:end]
            if not raw:
                images = preprocess(images, self.info, input_size, channels)
            yield start, images, labels

    def model_inputs(self, index: torch.Tensor, input_size: int, raw: bool) -> torch.Tensor:
        """Images ``index`` as a run feeds them: uint8 as they are when ``raw``, else
        preprocessed for a model taking 3 x ``input_size`` x ``input_size``."""
        images = self.images[index]
        return images.contiguous() if raw else preprocess(images, self.info, input_size, 3)


def preprocess(
    images: torch.Tensor, info: DatasetInfo, input_size: int, channels: int = 3
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32 (N, channels, input_size, input_size): the
    operations stage 0 of a run's graph starts with (:mod:`edgesplit.model.preprocessing`)."""
    from edgesplit.model.preprocessing import Preprocess

    return Preprocess(image_spec(info, tuple(images.shape[1:]), input_size, channels))(
        images
    ).contiguous()


def image_spec(
    info: DatasetInfo, in_shape: tuple[int, ...], input_size: int, channels: int = 3
) -> ImageSpec:
    """The preprocessing of ``info``'s images of per-sample shape ``in_shape`` for a model
    taking ``channels`` x ``input_size`` x ``input_size``."""
    if in_shape[0] != channels and in_shape[0] != 1:
        raise DataError(
            f"{info.name} has {in_shape[0]} channels; the model expects {channels} "
            "(only grayscale is expanded automatically)"
        )
    c, h, w = (int(d) for d in in_shape)
    return ImageSpec((c, h, w), input_size, channels, info.mean, info.std)


def native_spec(info: DatasetInfo, input_size: int, channels: int = 3) -> ImageSpec:
    """The preprocessing of ``info``'s images at their native size (what the first hop
    carries, see :mod:`edgesplit.shared.imagespec`)."""
    shape = (info.channels, info.native_size, info.native_size)
    return image_spec(info, shape, input_size, channels)


def layout(info: DatasetInfo) -> str:
    """The files a folder must hold for ``info`` (said in every "not found" message)."""
    if info.name in ("mnist", "fashion-mnist"):
        cls_name = "FashionMNIST" if info.name == "fashion-mnist" else "MNIST"
        files = ", ".join(f"{f}[.gz]" for f in _MNIST_FILES)
        return (
            f"DIR or DIR/{info.name} holding the four IDX files ({files}), or torchvision's "
            f"DIR/{cls_name}/raw/ with the same files"
        )
    folder = "cifar-100-python" if info.name == "cifar100" else "cifar-10-batches-py"
    return (
        f"DIR/{folder}/ or DIR/{info.name}/{folder}/ as unpacked from the 'python version' "
        f"archive of www.cs.toronto.edu/~kriz/cifar.html"
    )


def _missing(info: DatasetInfo, looked: list[Path]) -> DataError:
    where = ", ".join(str(p) for p in looked)
    ways = f"pass --download to fetch it, or --data-dir DIR with {layout(info)}"
    if info.debian_package:
        ways = f"install it with `apt-get install {info.debian_package}`, or {ways}"
    return DataError(f"dataset {info.name} not found; looked in: {where}. To get it: {ways}")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _download_failed(info: DatasetInfo, created: Path | None, exc: Exception) -> DataError:
    """A failed download, said as such (not as a corrupt file), leaving no folder behind that
    the download made (issue #20)."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    cause = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    cause = cause if len(cause) <= 200 else cause[:197] + "..."
    return DataError(
        f"could not download {info.name}: offline, or the network or the server is "
        f"unreachable ({cause}); put the files in --data-dir instead: {layout(info)}"
    )


def _is_network_error(exc: BaseException) -> bool:
    """Whether a torchvision download failed on the network (torchvision raises URLError, or
    a RuntimeError "Error downloading ..." after trying every mirror)."""
    import urllib.error

    while exc is not None:
        if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError)):
            return True
        if "download" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _mnist_root(info: DatasetInfo, dirs: list[Path]) -> Path | None:
    """A root that torchvision's MNIST classes accept (``root/<Class>/raw/<files>``).

    A folder with the (possibly gzipped) IDX files directly inside, as Debian ships them, is
    decompressed once into the user cache."""
    cls_name = "FashionMNIST" if info.name == "fashion-mnist" else "MNIST"
    for base in dirs:
        for root in (base, base / info.name):
            raw = root / cls_name / "raw"
            if all((raw / f).exists() for f in _MNIST_FILES):
                return root
            if all((root / f).exists() or (root / f"{f}.gz").exists() for f in _MNIST_FILES):
                target = user_cache_dir() / "unpacked" / f"{info.name}-{_source_key(root)}"
                target_raw = target / cls_name / "raw"
                target_raw.mkdir(parents=True, exist_ok=True)
                for f in _MNIST_FILES:
                    if (target_raw / f).exists():
                        continue
                    src = root / f if (root / f).exists() else root / f"{f}.gz"
                    opener = gzip.open if src.suffix == ".gz" else open
                    tmp = target_raw / f"{f}.tmp"
                    try:
                        with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                            shutil.copyfileobj(fin, fout)
                    except (OSError, EOFError) as exc:
                        tmp.unlink(missing_ok=True)
                        raise DataError(f"{src} is corrupt or unreadable: {exc}") from exc
                    tmp.replace(target_raw / f)
                return target
    return None


def _source_key(root: Path) -> str:
    """Names the unpacked copy of a folder of IDX files: its path, sizes and mtimes, so a
    different or changed source never reuses a stale copy."""
    digest = hashlib.sha256(str(root.resolve()).encode())
    for f in sorted(root.iterdir()):
        if f.name.split(".")[0] in _MNIST_FILES:
            stat = f.stat()
            digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _load_mnist(info: DatasetInfo, train: bool, dirs: list[Path], download: bool) -> ImageSet:
    cls = (
        torchvision.datasets.FashionMNIST
        if info.name == "fashion-mnist"
        else torchvision.datasets.MNIST
    )
    root = _mnist_root(info, dirs)
    if root is None:
        if not download:
            raise _missing(info, dirs)
        root = user_cache_dir() / info.name
    created = _first_missing(root) if download else None
    try:
        ds = cls(str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, ValueError, ... on bad files
        if download and _is_network_error(exc):
            raise _download_failed(info, created, exc) from exc
        raise DataError(f"dataset {info.name} at {root} is corrupt or unreadable: {exc}") from exc
    images = ds.data.unsqueeze(1)
    return ImageSet(info.name, images, ds.targets.to(torch.int64), info)


class _LocalCIFAR10(torchvision.datasets.CIFAR10):
    """CIFAR-10 from its python batches, checking presence rather than md5 (so a user's own copy
    in the same format works); unreadable files still fail when parsed."""

    def _check_integrity(self) -> bool:
        base = Path(self.root) / self.base_folder
        return all((base / name).exists() for name, _ in (*self.train_list, *self.test_list))

    def _load_meta(self) -> None:
        # CIFAR's own format is a pickle; this reads a local file the user put there, never
        # anything from the network.
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        with open(path, "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        self.classes = meta[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _LocalCIFAR100(_LocalCIFAR10, torchvision.datasets.CIFAR100):
    base_folder = torchvision.datasets.CIFAR100.base_folder
    train_list = torchvision.datasets.CIFAR100.train_list
    test_list = torchvision.datasets.CIFAR100.test_list
    meta = torchvision.datasets.CIFAR100.meta


def _load_cifar(info: DatasetInfo, train: bool, dirs: list[Path], download: bool) -> ImageSet:
    cls = _LocalCIFAR100 if info.name == "cifar100" else _LocalCIFAR10
    for base in dirs:
        for root in (base, base / info.name):
            if (root / cls.base_folder).is_dir():
                break
        else:
            continue
        break
    else:
        if not download:
            raise _missing(info, dirs)
        root = user_cache_dir() / info.name
    created = _first_missing(root) if download else None
    try:
        ds = cls(str(root), train=train, download=download)
    except Exception as exc:  # unpickling or reshaping errors of a damaged file
        if download and _is_network_error(exc):
            raise _download_failed(info, created, exc) from exc
        raise DataError(f"dataset {info.name} at {root} is corrupt or unreadable: {exc}") from exc
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(info.name, images, torch.tensor(ds.targets, dtype=torch.int64), info)


def _load_imagefolder(path: Path) -> ImageSet:
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist; expected PATH/<class>/<image files>")
    try:
        ds = torchvision.datasets.ImageFolder(str(path))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"image folder {path}: {exc}") from exc
    images = []
    for file, _ in ds.samples:
        img = torchvision.io.decode_image(file, mode=torchvision.io.ImageReadMode.RGB)
        images.append(
            F.interpolate(img.unsqueeze(0).float(), size=(224, 224), mode="bilinear").round()
        )
    data = torch.cat(images).to(torch.uint8)
    info = DatasetInfo(f"imagefolder:{path}", len(ds.classes), 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    return ImageSet(info.name, data, torch.tensor(ds.targets, dtype=torch.int64), info)


def synthetic(n: int = 256, size: int = 32, classes: int = 10, seed: int = 0) -> ImageSet:
    """Random images without labels: for timing runs only (accuracy is undefined)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    info = DatasetInfo("synthetic", classes, 3, size, IMAGENET_MEAN, IMAGENET_STD)
    return ImageSet("synthetic", images, None, info)


def info_for(name: str) -> DatasetInfo:
    """The description of dataset ``name`` without loading it: a known dataset's, the
    synthetic set's, or an image folder's (RGB, loaded at 224 px, ImageNet statistics)."""
    if name == "synthetic":
        return synthetic(1).info
    if name.startswith("imagefolder:"):
        return DatasetInfo(name, 0, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    return dataset_info(name)


def dataset_info(name: str) -> DatasetInfo:
    if name in DATASETS:
        return DATASETS[name]
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(known_datasets())}")


def load(
    name: str,
    split: str = "test",
    data_dir: Path | None = None,
    download: bool = False,
    synthetic_size: int = 10_000,
) -> ImageSet:
    """Load ``split`` ("train" or "test") of dataset ``name``; see the module doc for where."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if name == "synthetic":
        return synthetic(synthetic_size)
    if name.startswith("imagefolder:"):
        return _load_imagefolder(Path(name.split(":", 1)[1]))
    info = dataset_info(name)
    dirs = search_dirs(data_dir)
    if info.name in ("mnist", "fashion-mnist"):
        return _load_mnist(info, split == "train", dirs, download)
    return _load_cifar(info, split == "train", dirs, download)
