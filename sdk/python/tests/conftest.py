"""Fixtures: a real ``nexus standalone`` on a free loopback port with the embedded store, the
Python example algorithm (``py-squares``), the test algorithm ``sync-probe`` and ``demo-squares``
(the same sums of squares by the native ``nexus-demo fanout``, for tests of many runs, where a
Python interpreter per run would dominate) as templates.

``NEXUS_BIN`` names the binary (default ``<repo>/target/debug/nexus``). Nothing is skipped:
a missing binary, interpreter or console script fails the session with what to do.

Algorithms run under the local executor's minimal environment and, where the kernel offers
Landlock, confined by ``nexus sandbox-exec``; the configuration therefore puts this venv's
``bin`` on their ``PATH`` (``executor.extra_path``) and grants read access to the venv, the base
interpreter and the test algorithms (``executor.read_only_paths``), as a deployment would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import nexus_sdk

REPO = Path(__file__).resolve().parents[3]
TESTS = Path(__file__).resolve().parent
EXAMPLE_TEMPLATES = REPO / "examples" / "python" / "templates"
SDK_ROOT = Path(nexus_sdk.__file__).resolve().parent.parent


def nexus_bin() -> Path:
    path = Path(os.environ.get("NEXUS_BIN", REPO / "target" / "debug" / "nexus"))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"nexus binary not found at {path}: build it (cargo build -p nexus-cli) "
            "or set NEXUS_BIN",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Standalone:
    """A running ``nexus standalone``."""

    url: str
    data: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _sync_probe_template(python: str) -> str:
    script = TESTS / "algorithms" / "sync_probe.py"
    for p in (python, str(script)):
        if " " in p:
            pytest.fail(f"{p}: template commands are split on spaces; use a path without")
    return f"""apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: sync-probe
spec:
  container: {{image: sync-probe, registry: local, versionTag: latest}}
  computeResources: {{cpuLimit: "1", memoryLimit: 256Mi}}
  workgroupRef: {{name: local, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}}
  command: {python}
  args: ["{script}", "--sas-uri=%s", "--request-id=%s"]
  runtimeEnvironment: {{deadlineSeconds: 120, maximumRetries: 0}}
"""


def _demo_squares_template(demo_dir: Path) -> str:
    if not (demo_dir / "nexus-demo").is_file():
        pytest.fail(
            f"nexus-demo not found next to the nexus binary in {demo_dir}: "
            "cargo build -p nexus-examples",
            pytrace=False,
        )
    return """apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: demo-squares
spec:
  container: {image: nexus-demo, registry: local, versionTag: latest}
  computeResources: {cpuLimit: "1", memoryLimit: 256Mi}
  workgroupRef: {name: local, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}
  command: nexus-demo
  args: ["fanout", "--sas-uri=%s", "--request-id=%s"]
  runtimeEnvironment: {deadlineSeconds: 120, maximumRetries: 0}
"""


def start_standalone(root: Path, extra_config: dict[str, Any] | None = None) -> Standalone:
    """Starts a standalone in ``root`` and waits until it is ready."""
    binary = nexus_bin()
    venv_bin = Path(sys.executable).parent
    if shutil.which("nexus-py-squares", path=str(venv_bin)) is None:
        pytest.fail(
            f"nexus-py-squares is not installed in {venv_bin}: "
            "pip install ./sdk/python ./examples/python into this venv",
            pytrace=False,
        )
    templates = root / "templates"
    templates.mkdir(parents=True)
    for f in EXAMPLE_TEMPLATES.glob("*.yaml"):
        shutil.copy(f, templates / f.name)
    (templates / "sync-probe.yaml").write_text(_sync_probe_template(sys.executable))
    (templates / "demo-squares.yaml").write_text(_demo_squares_template(binary.parent))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(root / "data"),
        "templates_dir": str(templates),
        "executor": {
            "extra_path": [str(venv_bin), str(binary.parent)],
            # The venv, its base interpreter, the test algorithm, and the package itself (outside
            # the venv when installed in editable mode).
            "read_only_paths": sorted(
                {sys.prefix, sys.base_prefix, str(TESTS / "algorithms"), str(SDK_ROOT)}
            ),
        },
    }
    config.update(extra_config or {})
    # JSON is YAML: no YAML library needed.
    (root / "nexus.json").write_text(json.dumps(config, indent=2))
    log = root / "nexus.log"
    # A minimal environment, as a service would have.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NEXUS_LOG": "info"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "standalone", "--config", str(root / "nexus.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
    server = Standalone(url=url, data=root / "data", log=log, proc=proc)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"nexus standalone exited with {proc.returncode}:\n{server.log_tail()}",
                pytrace=False,
            )
        try:
            if httpx.get(f"{url}/health/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop(server)
            pytest.fail(f"nexus standalone not ready after 60 s:\n{server.log_tail()}")
        time.sleep(0.2)


def stop(server: Standalone) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="session")
def nexus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """A standalone without authentication (loopback)."""
    server = start_standalone(tmp_path_factory.mktemp("standalone"))
    yield server
    stop(server)
    print(f"\n--- nexus log (tail) ---\n{server.log_tail(30)}")


@pytest.fixture
def url(nexus: Standalone) -> str:
    return nexus.url
