"""Starts the simulators for the vendor-SDK fidelity tests.

Each simulator runs as the built binary (`extsync simulate <system> --port 0`),
once per test session; its first "listening on <url>" line gives the URL.
Set EXTSYNC_BIN to use another build than target/debug/extsync.
"""

import os
import pathlib
import re
import subprocess
import tempfile
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = os.environ.get("EXTSYNC_BIN", str(ROOT / "target" / "debug" / "extsync"))
START_TIMEOUT_S = 30


class Simulator:
    """One simulator process and its base URL."""

    def __init__(self, system, config=None):
        args = [BIN, "simulate", system, "--port", "0"]
        if config is not None:
            args += ["--config", str(config)]
        self.log = tempfile.NamedTemporaryFile(prefix=f"{system}-sim-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = self._wait_for_url(system)

    def _wait_for_url(self, system):
        deadline = time.monotonic() + START_TIMEOUT_S
        pattern = re.compile(rf"{system} simulator listening on (\S+)")
        while time.monotonic() < deadline:
            text = pathlib.Path(self.log.name).read_text(errors="replace")
            match = pattern.search(text)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"{system} simulator exited ({self.proc.returncode}):\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{system} simulator did not start within {START_TIMEOUT_S} s ({BIN})")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture(scope="session")
def start_simulator():
    """Factory: start_simulator("salesforce", config_path=None) -> Simulator."""
    started = []

    def start(system, config=None):
        sim = Simulator(system, config)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture(scope="session")
def salesforce_sim(start_simulator):
    return start_simulator("salesforce", HERE / "salesforce_sim.yaml")
