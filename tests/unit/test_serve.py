"""``edgesplit serve`` without processes (issue #21): the dynamic batcher and admission queue,
uploads to model inputs, and the load generator's reductions."""

from __future__ import annotations

import io

import pytest
import torch

from edgesplit.errors import ConfigError, RequestError
from edgesplit.model import data
from edgesplit.serve import images, loadgen
from edgesplit.serve.batcher import Batcher, BatchPolicy, Job
from edgesplit.serve.labels import class_names

INFO = data.DATASETS["fashion-mnist"]


def job(job_id: int, n: int, received: float = 0.0, deadline: float | None = None) -> Job:
    done: list[Job] = []
    x = torch.arange(n, dtype=torch.float32).view(n, 1) + 100 * job_id
    return Job(job_id, x, received, deadline, done.append)


# --- batcher -------------------------------------------------------------------------------------


def test_a_micro_batch_waits_for_max_wait_unless_it_is_full() -> None:
    b = Batcher(BatchPolicy(max_batch=4, max_wait_s=0.010, max_queue=8))
    b.submit(job(1, 2, received=0.0))
    assert b.ready_in_s(0.004) == pytest.approx(0.006)
    assert b.take(0.004) is None  # 2 of 4 images, and the oldest waited only 4 ms
    batch = b.take(0.010)
    assert batch is not None and batch.x.shape[0] == 2
    b.submit(job(2, 3, received=1.0))
    b.submit(job(3, 3, received=1.0))
    assert b.ready_in_s(1.0) == 0.0  # 6 images wait: a full micro-batch may leave now
    full = b.take(1.0)
    assert full is not None
    assert [(p.job.job_id, p.start, p.end, p.offset) for p in full.parts] == [
        (2, 0, 3, 0),
        (3, 0, 1, 3),
    ]
    assert b.queued() == (1, 2)


def test_a_large_request_spans_micro_batches_and_gets_its_rows_in_order() -> None:
    b = Batcher(BatchPolicy(max_batch=4, max_wait_s=0.0, max_queue=8))
    big = job(1, 10)
    b.submit(big)
    batches = []
    while (batch := b.take(0.0)) is not None:
        batches.append(batch)
    assert [int(m.x.shape[0]) for m in batches] == [4, 4, 2]
    for m in reversed(batches):  # results may arrive in any order
        m.deliver(m.x * 2)
    assert big.outputs is not None
    assert torch.equal(big.outputs, big.x * 2)
    assert big.finished == 10 and big.error is None


def test_a_full_queue_refuses_with_429_and_retry_after() -> None:
    b = Batcher(BatchPolicy(max_batch=4, max_wait_s=1.0, max_queue=2))
    b.submit(job(1, 1))
    b.submit(job(2, 1))
    with pytest.raises(RequestError) as caught:
        b.submit(job(3, 1), retry_after_s=lambda: 3.0)
    assert caught.value.status == 429 and caught.value.retry_after_s == 3.0
    assert "queue is full (2 requests waiting)" in str(caught.value)
    assert b.refused == 1


def test_a_request_past_its_deadline_is_failed_with_504_and_not_sent() -> None:
    b = Batcher(BatchPolicy(max_batch=4, max_wait_s=0.0, max_queue=8))
    late = job(1, 2, deadline=0.5)
    b.submit(late)
    b.submit(job(2, 1))
    batch = b.take(1.0)
    assert late.error is not None and late.error.status == 504
    assert batch is not None and [p.job.job_id for p in batch.parts] == [2]
    assert b.expired == 1


def test_batch_policy_names_the_bad_value() -> None:
    with pytest.raises(RequestError, match="max_batch must be >= 1, got 0"):
        BatchPolicy(max_batch=0)


# --- images --------------------------------------------------------------------------------------


def png(array: torch.Tensor) -> bytes:
    return images.encode_png(array)


def test_a_png_upload_reaches_the_model_as_the_run_preprocesses_it() -> None:
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=generator)
    got = images.model_inputs([png(r) for r in raw], INFO, 32, images.ImageLimits())
    assert torch.equal(got, data.preprocess(raw, INFO, 32, 3))


@pytest.mark.parametrize(
    ("blobs", "status", "words"),
    [
        ([b"hello, not an image"], 415, "image 0 is not an image"),
        ([b""], 400, "image 0 is empty"),
        ([], 400, "no image"),
    ],
)
def test_bad_uploads_name_the_problem(blobs: list[bytes], status: int, words: str) -> None:
    with pytest.raises(RequestError) as caught:
        images.model_inputs(blobs, INFO, 32, images.ImageLimits())
    assert caught.value.status == status and words in str(caught.value)


def test_too_many_too_large_and_other_formats_are_refused() -> None:
    from PIL import Image

    small = png(torch.zeros((1, 28, 28), dtype=torch.uint8))
    limits = images.ImageLimits(max_images=3, max_image_bytes=10_000, max_pixels=100 * 100)
    with pytest.raises(RequestError, match="holds 4 images; at most 3") as many:
        images.model_inputs([small] * 4, INFO, 32, limits)
    assert many.value.status == 413
    big = io.BytesIO()
    Image.new("L", (200, 200)).save(big, format="PNG")  # small file, too many pixels
    with pytest.raises(RequestError, match=r"200x200 = 40000 pixels; at most 10000") as pixels:
        images.model_inputs([big.getvalue()], INFO, 32, limits)
    assert pixels.value.status == 413
    with pytest.raises(RequestError, match="20000 bytes; at most 10000"):
        images.model_inputs([b"\x89PNG" + bytes(19_996)], INFO, 32, limits)
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    with pytest.raises(RequestError, match="image 0 is GIF; expected JPEG or PNG"):
        images.model_inputs([gif.getvalue()], INFO, 32, limits)
    noise = png(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    with pytest.raises(RequestError, match="image 1 cannot be decoded") as cut:
        images.model_inputs([small, noise[: len(noise) // 2]], INFO, 32, limits)
    assert cut.value.status == 415


def test_a_color_jpeg_becomes_the_datasets_grayscale_input() -> None:
    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(jpeg, format="JPEG")
    got = images.model_inputs([jpeg.getvalue()], INFO, 32, images.ImageLimits())
    assert got.shape == (1, 3, 32, 32)
    assert torch.equal(got[0, 0], got[0, 2])  # grayscale repeated to three channels


def test_class_names() -> None:
    assert class_names("fashion-mnist", 10)[9] == "Ankle boot"
    assert class_names("fashion-mnist", 4) == ("class 0", "class 1", "class 2", "class 3")


# --- load generator ------------------------------------------------------------------------------


def test_levels_parse_as_lists_and_ranges() -> None:
    assert loadgen.parse_levels("5,10,20") == [5.0, 10.0, 20.0]
    assert loadgen.parse_levels("10:40:10") == [10.0, 20.0, 30.0, 40.0]
    with pytest.raises(ConfigError, match="expected levels like"):
        loadgen.parse_levels("10:5:1")
    with pytest.raises(ConfigError, match="must be > 0"):
        loadgen.parse_levels("0,5")


def test_points_and_the_highest_qps_meeting_the_bound() -> None:
    def point(qps: float, latencies_ms: list[float], failed: int = 0) -> loadgen.Point:
        samples = [loadgen.Sample(i * 0.1, ms / 1000.0, 200) for i, ms in enumerate(latencies_ms)]
        samples += [loadgen.Sample(0.0, 0.0, 429)] * failed
        return loadgen.summarise(samples, "poisson", 1.0, 2, offered_qps=qps)

    low = point(10, [10.0] * 99 + [100.0])
    assert low.ok == 100 and low.failed == 0 and low.images_per_s == 200.0
    assert low.p50_ms == pytest.approx(10.0) and low.max_ms == pytest.approx(100.0)
    mid = point(20, [20.0] * 100, failed=1)  # fast, but one request was refused
    high = point(30, [300.0] * 100)
    assert mid.statuses == {"200": 100, "429": 1}
    assert loadgen.best_qps([low, mid, high], p99_ms=250.0) == 10
    assert loadgen.best_qps([high], p99_ms=250.0) is None
    text = loadgen.table([low, mid, high])
    assert "20 qps" in text.splitlines()[2] and "p99 ms" in text.splitlines()[0]
