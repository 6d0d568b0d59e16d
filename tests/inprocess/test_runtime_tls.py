"""Mutual TLS end to end, in process: coordinator -> worker -> worker -> coordinator."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from edgesplit.config import TlsSpec, parse_cluster
from edgesplit.engines import Execution
from edgesplit.model import models
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.transport import open_channel
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve

TOKEN = "tls-test-token"
SIZE = 32

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsSpec:
    """A throwaway CA and one leaf for 127.0.0.1, used by every end (server and client)."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "k.pem", "c.csr", "c.pem"))
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
            "-out", str(ca), "-days", "2", "-subj", "/CN=edgesplit-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return TlsSpec(ca=ca, cert=cert, key=key)


@pytest.fixture(scope="module")
def workers(
    tls: TlsSpec, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningWorker]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    running = [
        serve(WorkerConfig(name=f"t{i}", token=TOKEN, threads=1, tls=tls), "127.0.0.1:0")
        for i in range(2)
    ]
    yield running
    for w in running:
        w.stop(0.5)
    mp.undo()


def test_mtls_pipeline_matches_reference(tls: TlsSpec, workers: list[RunningWorker]) -> None:
    devices = [{"name": f"t{i}", "address": w.address} for i, w in enumerate(workers)]
    cluster = parse_cluster({"token": TOKEN, "devices": devices, "tls": tls.model_dump()})
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", num_classes=10)
    x = torch.randn(2, 3, SIZE, SIZE)
    with Coordinator(cluster) as c:
        c.check()
        n = c.load_model("squeezenet1_1", 10, 3, SIZE, model)
        c.install_plan([("t0", 0, n // 2), ("t1", n // 2, n)], execution=Execution(engine="torch"))
        record = c.run([(0, x)], window=1)
    with torch.inference_mode():
        assert torch.equal(record.outputs[0], model(x))


def test_plaintext_and_certless_clients_are_refused(
    tls: TlsSpec, workers: list[RunningWorker], tmp_path: Path
) -> None:
    plain = pb_grpc.WorkerStub(open_channel(workers[0].address, TOKEN))
    with pytest.raises(grpc.RpcError) as info:
        plain.Status(pb.StatusRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    no_cert = grpc.secure_channel(
        workers[0].address, grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    )
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.WorkerStub(no_cert).Status(
            pb.StatusRequest(), timeout=3, metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    ok = pb_grpc.WorkerStub(open_channel(workers[0].address, TOKEN, tls))
    assert ok.Status(pb.StatusRequest(), timeout=5).name == "t0"
