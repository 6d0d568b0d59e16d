"""Class names of the datasets edgesplit knows (the order of the datasets' label indices)."""

from __future__ import annotations

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}


def class_names(dataset: str, classes: int) -> tuple[str, ...]:
    """The names of ``dataset``'s classes; ``class <i>`` where the dataset has none known."""
    known = CLASS_NAMES.get(dataset, ())
    if len(known) == classes:
        return known
    return tuple(f"class {i}" for i in range(classes))
