"""uint8 on the first hop (issue #19, item 1): stage 0's graph starts with the preprocessing,
so the coordinator sends the dataset's uint8 images; the pipeline's output equals the
single-process reference fed the same uint8 images (the same preprocessing module + model)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import pytest
import torch

from edgesplit.config import parse_cluster
from edgesplit.engines import Execution, onnx_units
from edgesplit.engines.onnx_engine import compile_int8, compile_model
from edgesplit.engines.ort_session import OrtStage
from edgesplit.errors import ModelError
from edgesplit.model import data, graph, models
from edgesplit.model.preprocessing import Preprocess
from edgesplit.plan import profile as profiler
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve
from edgesplit.shared.imagespec import ImageSpec

TOKEN = "first-hop-token"
MODEL = "squeezenet1_1"
SIZE = 32
FASHION = data.DATASETS["fashion-mnist"]
CIFAR = data.DATASETS["cifar10"]


def images(n: int, info: data.DatasetInfo, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, info.channels, info.native_size, info.native_size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(MODEL, num_classes=10).eval()


def reference(model: torch.nn.Module, x: torch.Tensor, info: data.DatasetInfo) -> torch.Tensor:
    with torch.inference_mode():
        return model(Preprocess(data.native_spec(info, SIZE))(x))


@pytest.mark.parametrize("info", [FASHION, CIFAR], ids=lambda i: i.name)
def test_traced_stages_on_uint8_equal_the_reference_bit_for_bit(
    model: torch.nn.Module, info: data.DatasetInfo
) -> None:
    plain = graph.trace(model, (3, SIZE, SIZE))
    ug = graph.trace(model, (3, SIZE, SIZE), data.native_spec(info, SIZE))
    # the same units, so --partition ranges mean the same layers
    assert [u.out_shape for u in ug.units] == [u.out_shape for u in plain.units]
    assert ug.input_shape == (info.channels, info.native_size, info.native_size)
    assert ug.units[0].first == "to" and ug.units[1].nodes == plain.units[1].nodes
    x = images(5, info)
    with torch.inference_mode():
        a = ug.stage(0, 4)(x)
        out = ug.stage(4, ug.num_units)(a)
    assert torch.equal(out, reference(model, x, info))
    # data.preprocess (training, eval) is the same computation
    with torch.inference_mode():
        assert torch.equal(out, model(data.preprocess(x, info, SIZE)))


def test_onnx_model_takes_uint8_and_cut_stages_equal_the_whole(model: torch.nn.Module) -> None:
    ug = graph.trace(model, (3, SIZE, SIZE), data.native_spec(FASHION, SIZE))
    compiled = compile_model(ug, MODEL, "first-hop-test")
    assert compiled.units.input_dtype == "uint8"
    assert compiled.units.prep == data.native_spec(FASHION, SIZE)
    proto = onnx_units.parse_model(compiled.data)
    x = images(6, FASHION).numpy()
    whole = OrtStage(compiled.data, 0, compiled.num_units, "fp32", 1).run(x)
    y = x
    for start, end in [(0, 3), (3, 9), (9, compiled.num_units)]:
        cut = onnx_units.cut(proto, compiled.units, start, end)
        y = OrtStage(cut, start, end, "fp32", 1).run(y)
    assert np.array_equal(y, whole)
    ref = reference(model, torch.from_numpy(x), FASHION).numpy()
    assert np.abs(whole - ref).max() <= 1e-4 * np.abs(ref).max()
    with pytest.raises(ModelError, match="take uint8 input, got float32"):
        OrtStage(compiled.data, 0, compiled.num_units, "fp32", 1).run(x.astype(np.float32))


def test_metadata_must_agree_with_the_graph_input(model: torch.nn.Module) -> None:
    ug = graph.trace(model, (3, SIZE, SIZE), data.native_spec(FASHION, SIZE))
    proto = onnx.load_from_string(compile_model(ug, MODEL, "first-hop-test").data)
    other = ImageSpec((3, 32, 32), SIZE, 3, CIFAR.mean, CIFAR.std)
    onnx_units.write_prep(proto, other)
    with pytest.raises(ModelError, match=r"needs uint8 images of shape \[3, 32, 32\]"):
        onnx_units.read_units(proto)
    for bad in ['{"in_shape": [1, 28]}', '{"in_shape":[1,28,28],"size":32,"channels":3,'
                '"mean":[0.5],"std":[0]}']:  # fmt: skip
        with pytest.raises(ModelError, match="preprocess"):
            ImageSpec.from_json(bad)
    spec = data.native_spec(CIFAR, 224)
    assert ImageSpec.from_json(spec.to_json()) == spec


def test_int8_keeps_the_preprocessing_float(model: torch.nn.Module) -> None:
    ug = graph.trace(model, (3, SIZE, SIZE), data.native_spec(FASHION, SIZE))
    compiled = compile_model(ug, MODEL, "first-hop-test")
    int8 = compile_int8(compiled, images(32, FASHION, seed=1), "x86-vnni")
    assert int8.units.prep == compiled.units.prep
    g = onnx_units.parse_model(int8.data).graph
    producer = {o: n for n in g.node for o in n.output}
    resize = [n for n in g.node if n.op_type == "Resize"]
    assert len(resize) == 1
    assert producer[resize[0].input[0]].op_type == "Div"  # not a DequantizeLinear
    readers = [n.op_type for n in g.node if compiled.units.input_name in n.input]
    assert readers == ["Cast"]
    x = images(8, FASHION, seed=2)
    out = OrtStage(int8.data, 0, int8.num_units, "int8", 1).run(x.numpy())
    ref = reference(model, x, FASHION).numpy()
    assert np.abs(out - ref).max() <= 0.25 * np.abs(ref).max()


def test_first_hop_bytes_follow_the_images() -> None:
    torch.manual_seed(0)
    m = models.build("mobilenet_v2", num_classes=10)
    for size in (32, 224):
        plain = graph.trace(m, (3, size, size))
        ug = graph.trace(m, (3, size, size), data.native_spec(FASHION, size))
        assert profiler.input_bytes(plain, 8) == 8 * 4 * 3 * size * size
        assert profiler.input_bytes(ug, 8) == 8 * 28 * 28
        assert profiler.unit_profiles(ug, 8)[0].activation_bytes == 8 * 28 * 28 + 8 * (
            ug.units[0].out_bytes
        )
        assert profiler.first_hop(ug) == "uint8 1x28x28" and profiler.first_hop(plain) is None


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningWorker]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    running = [
        serve(WorkerConfig(name=f"h{i}", token=TOKEN, threads=1), "127.0.0.1:0") for i in range(3)
    ]
    yield running
    for w in running:
        w.stop(0.5)
    mp.undo()


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_pipeline_of_uint8_images_equals_the_single_process_reference(
    workers: list[RunningWorker], model: torch.nn.Module, engine: str
) -> None:
    devices = [{"name": f"h{i}", "address": w.address} for i, w in enumerate(workers)]
    spec = data.native_spec(FASHION, SIZE)
    inputs = [(i, images(3, FASHION, seed=10 + i)) for i in range(3)]
    with Coordinator(parse_cluster({"token": TOKEN, "devices": devices})) as c:
        c.check()
        n = c.load_model(MODEL, 10, 3, SIZE, model, prep=spec)
        plan = [("h0", 0, n // 3), ("h1", n // 3, 2 * n // 3), ("h2", 2 * n // 3, n)]
        c.install_plan(plan, execution=Execution(engine=engine))
        record = c.run(inputs, window=2)
    first = [h for h in record.hops if h.stage == 0]
    assert first
    ug = graph.trace(model, (3, SIZE, SIZE), spec)
    whole = OrtStage(compile_model(ug, MODEL, "pipeline").data, 0, n, "fp32", 1)
    for rid, x in inputs:
        out = record.outputs[rid]
        if engine == "torch":  # the exact reference: bit for bit
            assert torch.equal(out, reference(model, x, FASHION))
        else:  # the same ONNX graph run whole in one process
            assert np.array_equal(out.numpy(), whole.run(x.numpy()))


def test_serve_sends_native_uint8_images() -> None:
    from edgesplit.serve import images as serve_images

    x = images(3, FASHION, seed=4)
    blobs = [serve_images.encode_png(img) for img in x]
    limits = serve_images.ImageLimits()
    got = serve_images.model_inputs(blobs, FASHION, SIZE, limits, raw=True)
    assert got.dtype == torch.uint8 and torch.equal(got, x)  # the dataset's size: unchanged
    big = torch.full((1, 56, 56), 200, dtype=torch.uint8)
    (resized,) = serve_images.model_inputs(
        [serve_images.encode_png(big)], FASHION, SIZE, limits, True
    )
    assert resized.shape == (1, 28, 28) and bool((resized == 200).all())


def test_a_uint8_stage_0_sub_batches_by_the_image_its_preprocessing_makes(
    model: torch.nn.Module,
) -> None:
    """28 x 28 uint8 images are 784 bytes, but stage 0 turns each into a 224 px float image
    (602 KB): a batch of 8 runs one image per call, as float input of that size would, so
    ONNX Runtime's arena keeps one image's activations (issue #17's worker RSS)."""
    from edgesplit.engines.ort_session import sub_batch
    from edgesplit.runtime.stages import prep_image_bytes

    ug = graph.trace(model, (3, 224, 224), data.native_spec(FASHION, 224))
    compiled = compile_model(ug, MODEL, "first-hop-sub-batch")
    x = images(8, FASHION).numpy()
    assert prep_image_bytes(compiled.units, 0) == 3 * 224 * 224 * 4
    assert prep_image_bytes(compiled.units, 1) == 0
    assert sub_batch(x) >= 8  # by the uint8 bytes alone: the whole batch in one call
    assert sub_batch(x, prep_image_bytes(compiled.units, 0)) == 1
    stage = OrtStage(
        onnx_units.cut(onnx_units.parse_model(compiled.data), compiled.units, 0, 2),
        0, 2, "fp32", 1, image_bytes=prep_image_bytes(compiled.units, 0),
    )  # fmt: skip
    (whole,) = stage.session.run(None, {stage._input: x})
    assert np.array_equal(stage.run(x), whole)
