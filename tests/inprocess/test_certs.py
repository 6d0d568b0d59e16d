"""``edgesplit certs``: the CA and device certificates, then a 3-device cluster over mTLS."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509

from edgesplit.cli import main
from edgesplit.cluster import certs
from edgesplit.cluster.emulate import (
    EmulatedCluster,
    WorkerLaunch,
    default_worker_cmd,
    uniform_devices,
)
from edgesplit.config import TlsSpec, dump_cluster, load_cluster
from edgesplit.errors import ConfigError, WorkerError
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def sans(path: Path) -> list[str]:
    cert = certs.load_cert(path)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v.value) for v in ext]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- unit tests ------------------------------------------------------------------------------


def test_init_writes_a_ca_with_a_private_key(tmp_path: Path) -> None:
    code, out = cli("certs", "init", str(tmp_path / "pki"))
    assert code == 0, out
    assert mode(tmp_path / "pki" / "ca.key") == 0o600
    cert, _ = certs.load_ca(tmp_path / "pki")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "edgesplit certs issue" in out


def test_init_refuses_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    before = (tmp_path / "ca.pem").read_bytes()
    code, out = cli("certs", "init", str(tmp_path))
    assert code == 2
    assert out.strip().splitlines() == [out.strip()]  # one line
    assert "already exists" in out and "--force" in out
    assert (tmp_path / "ca.pem").read_bytes() == before
    assert cli("certs", "init", str(tmp_path), "--force")[0] == 0
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_issue_signs_a_leaf_with_every_name(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    code, out = cli(
        "certs", "issue", str(tmp_path), "pi1", "--host", "192.168.1.11", "--host", "pi1.lan"
    )
    assert code == 0, out
    assert sans(tmp_path / "pi1.pem") == [
        "pi1",
        "192.168.1.11",
        "pi1.lan",
        "localhost",
        "127.0.0.1",
    ]
    assert mode(tmp_path / "pi1.key") == 0o600
    description = certs.verify(certs.tls_spec(tmp_path, "pi1"))
    assert "CN=pi1" in description
    assert "--tls-cert" in out


def test_issue_needs_a_ca(tmp_path: Path) -> None:
    code, out = cli("certs", "issue", str(tmp_path / "none"), "pi1")
    assert code == 2
    assert "no CA in" in out and "edgesplit certs init" in out
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("name", ["bad name", "pi/1", "", "ca"])
def test_issue_refuses_bad_names(tmp_path: Path, name: str) -> None:
    certs.init_ca(tmp_path)
    code, out = cli("certs", "issue", str(tmp_path), name)
    assert code == 2 and out.startswith("error: certificate name"), out


def test_issue_refuses_bad_hosts_and_existing_certificates(tmp_path: Path) -> None:
    certs.init_ca(tmp_path)
    code, out = cli("certs", "issue", str(tmp_path), "pi1", "--host", "pi 1")
    assert code == 2 and "--host expects a hostname or IP" in out
    certs.issue(tmp_path, "pi1")
    with pytest.raises(ConfigError, match="already exists"):
        certs.issue(tmp_path, "pi1")
    certs.issue(tmp_path, "pi1", ["10.0.0.1"], force=True)
    assert "10.0.0.1" in sans(tmp_path / "pi1.pem")


def test_hosts_are_ip_or_dns_sans() -> None:
    assert isinstance(certs.parse_host("::1"), x509.IPAddress)
    assert certs.parse_host("10.0.0.11").value == ipaddress.ip_address("10.0.0.11")
    assert certs.parse_host("Pi1.LAN").value == "pi1.lan"
    with pytest.raises(ConfigError):
        certs.parse_host("-bad-")


def test_verify_names_a_certificate_from_another_ca(tmp_path: Path) -> None:
    certs.init_ca(tmp_path / "a")
    certs.init_ca(tmp_path / "b")
    certs.issue(tmp_path / "b", "pi1")
    rogue = TlsSpec(ca=tmp_path / "a" / "ca.pem", cert=tmp_path / "b" / "pi1.pem",
                    key=tmp_path / "b" / "pi1.key")  # fmt: skip
    with pytest.raises(ConfigError, match="not signed by the CA"):
        certs.verify(rogue)
    certs.issue(tmp_path / "a", "pi1")
    mismatched = TlsSpec(ca=tmp_path / "a" / "ca.pem", cert=tmp_path / "a" / "pi1.pem",
                         key=tmp_path / "b" / "pi1.key")  # fmt: skip
    with pytest.raises(ConfigError, match="does not belong"):
        certs.verify(mismatched)


# --- a 3-device emulated cluster over mTLS ---------------------------------------------------

NAMES = ("pi1", "pi2", "pi3")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's CA and certificates, made with the CLI as a user would."""
    folder = tmp_path_factory.mktemp("pki")
    assert cli("certs", "init", str(folder))[0] == 0
    for name in (*NAMES, "coordinator"):
        code, out = cli("certs", "issue", str(folder), name)
        assert code == 0, out
    return folder


@pytest.fixture(scope="module")
def mtls_cluster(
    pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmulatedCluster, Path]]:
    """Three emulated workers that demand client certificates, and a cluster file with TLS."""

    # EmulatedCluster has no TLS option, so the worker command adds the flags.
    def worker_cmd(launch: WorkerLaunch) -> list[str]:
        spec = certs.tls_spec(pki, launch.name)
        return [*default_worker_cmd(launch), "--tls-cert", str(spec.cert),
                "--tls-key", str(spec.key), "--tls-ca", str(spec.ca)]  # fmt: skip

    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    folder = tmp_path_factory.mktemp("cluster")
    cluster = EmulatedCluster.start(
        uniform_devices(3, cpus=0.5), worker_cmd=worker_cmd, folder=folder / "workers"
    )
    spec = cluster.spec.model_copy(update={"tls": certs.tls_spec(pki, "coordinator")})
    dump_cluster(spec, folder / "cluster.yaml")
    yield cluster, folder / "cluster.yaml"
    cluster.close()
    mp.undo()


def edgesplit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgesplit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
def test_run_over_mtls(mtls_cluster: tuple[EmulatedCluster, Path], tmp_path: Path) -> None:
    _, cluster_file = mtls_cluster
    assert load_cluster(cluster_file).tls is not None
    out = tmp_path / "run"
    done = edgesplit("run", "--cluster", str(cluster_file), "--model", "squeezenet1_1",
                     "--input-size", "32", "--random-weights", "--dataset", "synthetic",
                     "--limit", "32", "--batch-size", "8", "--out", str(out), "--json",
                     "--partition", "equal",  # every device, in cluster order: all talk mTLS
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert sum(d["images"] for d in summary["devices"] if d["stage"] == 0) == 32
    assert [d["name"] for d in summary["devices"]] == list(NAMES)


@pytest.mark.slow
def test_certless_client_is_refused(mtls_cluster: tuple[EmulatedCluster, Path], pki: Path) -> None:
    _, cluster_file = mtls_cluster
    spec = load_cluster(cluster_file)
    address = spec.devices[0].address
    token = spec.token_for("pi1")
    # TLS that trusts the CA but shows no certificate: the handshake is refused.
    channel = grpc.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    )
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.WorkerStub(channel).Status(
            pb.StatusRequest(), timeout=5, metadata=(("authorization", f"Bearer {token}"),)
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
    # Plaintext with the right token: refused too, as one line naming the device.
    with (
        pytest.raises(WorkerError) as refused,
        Coordinator(spec.model_copy(update={"tls": None})) as plain,
    ):
        plain.check()
    message = str(refused.value)
    assert "\n" not in message and "device pi1 at" in message and "unreachable" in message


@pytest.mark.slow
def test_certificate_from_another_ca_is_refused(
    mtls_cluster: tuple[EmulatedCluster, Path], pki: Path, tmp_path: Path
) -> None:
    _, cluster_file = mtls_cluster
    assert cli("certs", "init", str(tmp_path / "rogue"))[0] == 0
    assert cli("certs", "issue", str(tmp_path / "rogue"), "coordinator")[0] == 0
    # Trusts the real CA (so the server's certificate passes) but shows a rogue certificate.
    rogue = TlsSpec(ca=pki / "ca.pem", cert=tmp_path / "rogue" / "coordinator.pem",
                    key=tmp_path / "rogue" / "coordinator.key")  # fmt: skip
    spec = load_cluster(cluster_file).model_copy(update={"tls": rogue})
    with pytest.raises(WorkerError, match="unreachable"), Coordinator(spec) as c:
        c.check()
    rogue_file = tmp_path / "rogue.yaml"
    dump_cluster(spec, rogue_file)
    done = edgesplit("run", "--cluster", str(rogue_file), "--model", "squeezenet1_1",
                     "--input-size", "32", "--random-weights", "--dataset", "synthetic",
                     "--limit", "8", "--batch-size", "8", "--out", str(tmp_path / "run"),
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "device pi" in lines[0] and "unreachable" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
