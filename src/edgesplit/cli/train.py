"""``edgesplit train`` and ``edgesplit eval``: single-device training and test accuracy."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edgesplit.cli import main
from edgesplit.model import checkpoints, data, models
from edgesplit.model.train import TrainConfig, TrainProgress, accuracy, predict, train

DATASET_HELP = f"Dataset: one of {', '.join(data.known_datasets())}."


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@main.command("train")
@click.option(
    "--model",
    "model_name",
    required=True,
    help=f"Model: one of {', '.join(models.known_models())}.",
)
@click.option("--dataset", default="fashion-mnist", show_default=True, help=DATASET_HELP)
@click.option(
    "--input-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=16),
    help="Images are resized to this many pixels square.",
)
@click.option(
    "--epochs",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Passes over the training split.",
)
@click.option(
    "--batch-size",
    default=128,
    show_default=True,
    type=click.IntRange(min=1),
    help="Training batch size.",
)
@click.option(
    "--lr",
    "max_lr",
    default=3e-3,
    show_default=True,
    type=float,
    help="Peak learning rate of the one-cycle schedule (AdamW).",
)
@click.option(
    "--weights",
    default=None,
    help='Start from "imagenet" (local torchvision cache only) or a checkpoint path.',
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option(
    "--threads",
    default=None,
    type=click.IntRange(min=1),
    help="Torch threads (default: all cores).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Look for the dataset here first.",
)
@click.option("--download", is_flag=True, help="Download the dataset if it is not found.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint path (.safetensors); default checkpoints/<model>-<dataset>-<size>.",
)
@click.option("--fp32", is_flag=True, help="Store fp32 weights (default: fp16 to halve the size).")
def train_command(
    model_name: str,
    dataset: str,
    input_size: int,
    epochs: int,
    batch_size: int,
    max_lr: float,
    weights: str | None,
    seed: int,
    threads: int | None,
    data_dir: Path | None,
    download: bool,
    out: Path | None,
    fp32: bool,
) -> None:
    """Train a model on a dataset and write a checkpoint.

    The checkpoint is a safetensors file and a JSON sidecar that records the test accuracy of
    the weights as stored (fp16 unless --fp32), and checkpoints/MANIFEST.json is updated."""
    if threads:
        torch.set_num_threads(threads)
    command = "edgesplit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    train_set = data.load(dataset, "train", data_dir=data_dir, download=download)
    test_set = data.load(dataset, "test", data_dir=data_dir, download=download)
    torch.manual_seed(seed)
    model = models.build(model_name, num_classes=train_set.info.classes, weights=weights)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, max_lr=max_lr, seed=seed, input_size=input_size
    )
    out = out or checkpoints.SHIPPED_DIR / f"{model_name}-{dataset}-{input_size}.safetensors"
    if out.suffix != ".safetensors":  # the sidecar and the manifest find checkpoints by it
        out = out.with_name(out.name + ".safetensors")
    if dataset.startswith("imagefolder:"):
        click.echo(
            "note: an image folder has no separate test split: the same images are the "
            "training and the test set, so the test accuracy is a training accuracy",
            err=True,
        )
    train_seconds = _train_with_progress(model, train_set, config)
    half = not fp32
    # The accuracy recorded is that of the weights as stored (fp16 by default), not as trained.
    stored = checkpoints.as_stored(model, half)
    assert test_set.labels is not None
    acc = accuracy(predict(stored, test_set, input_size), test_set.labels)
    info = checkpoints.save(
        stored,
        out,
        model_name=model_name,
        dataset=dataset,
        input_size=input_size,
        num_classes=train_set.info.classes,
        epochs=epochs,
        test_accuracy=acc,
        half=half,
        command=command,
        seed=seed,
        extra={"train_seconds": train_seconds},
    )
    checkpoints.update_manifest(out.parent)
    click.echo(
        f"{model_name} on {dataset} at {input_size}px: test accuracy {acc:.4f} "
        f"({len(test_set)} images); wrote {out} ({out.stat().st_size / 1e6:.1f} MB, "
        f"sha256 {info.sha256[:12]})"
    )


def _train_with_progress(
    model: torch.nn.Module, train_set: data.ImageSet, config: TrainConfig
) -> float:
    """Train ``model`` with a progress bar (plain lines with an ETA when stderr is no
    terminal); returns the seconds it took."""
    started = time.perf_counter()
    with _progress() as bar:
        steps = (len(train_set) + config.batch_size - 1) // config.batch_size
        task = bar.add_task("train", total=config.epochs * steps, info="")
        plain = not bar.console.is_terminal

        def show(p: TrainProgress) -> None:
            info = f"loss {p.loss:.3f} acc {p.accuracy:.3f} {p.images_per_s:.0f} img/s"
            bar.update(
                task, advance=1, description=f"epoch {p.epoch + 1}/{config.epochs}", info=info
            )
            if plain and (p.step == p.steps or p.step % 100 == 0):
                elapsed = time.perf_counter() - started
                done = p.epoch * steps + p.step
                eta = elapsed / done * (config.epochs * steps - done)
                click.echo(
                    f"epoch {p.epoch + 1}/{config.epochs} step {p.step}/{p.steps}: {info}, "
                    f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s",
                    err=True,
                )

        train(model, train_set, config, show)
    return round(time.perf_counter() - started, 1)


@main.command("eval")
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Model the checkpoint must hold (checked); default: what the checkpoint says.",
)
@click.option("--dataset", default=None, help=DATASET_HELP + " Default: the checkpoint's.")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint (.safetensors with its .json sidecar); default: the shipped one.",
)
@click.option(
    "--batch-size",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Evaluation batch size.",
)
@click.option(
    "--limit", default=None, type=click.IntRange(min=1), help="Only the first N test images."
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Look for the dataset here first.",
)
@click.option("--download", is_flag=True, help="Download the dataset if it is not found.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_command(
    model_name: str | None,
    dataset: str | None,
    checkpoint: Path | None,
    batch_size: int,
    limit: int | None,
    data_dir: Path | None,
    download: bool,
    as_json: bool,
) -> None:
    """Single-device test accuracy of a checkpoint."""
    import json

    if checkpoint is None:
        checkpoint = checkpoints.shipped(
            model_name or models.DEFAULT_MODEL, dataset or "fashion-mnist"
        )
    model, info = checkpoints.load(checkpoint, model_name=model_name)
    dataset = dataset or info.dataset
    test_set = data.load(dataset, "test", data_dir=data_dir, download=download)
    if test_set.labels is None:
        raise click.UsageError(f"{dataset} has no labels")
    total = len(test_set) if limit is None else min(limit, len(test_set))
    with _progress() as bar:
        task = bar.add_task("eval", total=total, info="")
        preds = predict(
            model,
            test_set,
            info.input_size,
            info.in_channels,
            batch_size,
            limit,
            on_batch=lambda n: bar.update(task, advance=n),
        )
    acc = accuracy(preds, test_set.labels)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": info.model,
                    "dataset": dataset,
                    "images": total,
                    "accuracy": acc,
                    "manifest_accuracy": info.test_accuracy,
                }
            )
        )
    else:
        click.echo(
            f"{info.model} on {dataset}: accuracy {acc:.4f} over {total} images "
            f"(checkpoint says {info.test_accuracy})"
        )
