"""A throwaway Prometheus on loopback that scrapes local services every second.

``tests/test_deploy.py`` checks the dashboard's and the alerts' metrics against what it records,
and ``scripts/dashboard_snapshot.py`` draws the Grafana dashboard from it: both see what a real
Prometheus makes of the services' ``/metrics``, without a cluster. It needs the ``prometheus``
binary (Debian package ``prometheus``); its configuration is written as JSON, which YAML accepts.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from shoal.local import free_port

SCRAPE_JOB = "shoal"


class PrometheusError(RuntimeError):
    """Prometheus did not start, did not scrape every target, or refused a query."""


class LocalPrometheus:
    """Prometheus scraping ``targets`` ({component label: metrics port on 127.0.0.1}) under job
    ``shoal``, with its configuration, data and log in ``folder``. :meth:`start` returns once every
    target has been scraped successfully."""

    def __init__(self, binary: str, targets: dict[str, int], folder: Path, scrape_interval_s: int = 1):
        self.binary, self.targets, self.folder = binary, dict(targets), Path(folder)
        self.scrape_interval_s = scrape_interval_s
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.folder / "prometheus.log"

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 40.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        interval = f"{self.scrape_interval_s}s"
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                  "scrape_configs": [{"job_name": SCRAPE_JOB, "static_configs": [
                      {"targets": [f"127.0.0.1:{port}"], "labels": {"component": component}}
                      for component, port in self.targets.items()]}]}
        (self.folder / "prometheus.yml").write_text(json.dumps(config, indent=2))
        self.port = free_port()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.folder / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if len(self.query(f'up{{job="{SCRAPE_JOB}"}} == 1')) == len(self.targets):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"Prometheus did not scrape every service within {timeout:g} s; see {self.log_path}")

    def _api(self, path: str, **params: object) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('error')}")
        return body["data"]["result"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query: ``[{"metric": labels, "value": [t, "v"]}, ...]``."""
        return self._api("query", query=expr, **({"time": at} if at is not None else {}))

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        """Range query, as Grafana runs a panel: ``[{"metric": labels, "values": [[t, "v"], ...]}, ...]``."""
        return self._api("query_range", query=expr, start=start, end=end, step=step)

    def wait_for_scrape_after(self, moment: float, timeout: float = 10.0) -> None:
        """Return once every target has been scraped after ``moment`` (a Unix time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            oldest = self.query(f'min(timestamp(up{{job="{SCRAPE_JOB}"}}))')
            if oldest and float(oldest[0]["value"][1]) > moment:
                return
            time.sleep(0.2)
        raise PrometheusError(f"Prometheus stopped scraping; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
