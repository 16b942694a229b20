"""Network namespaces, veth links and nftables faults for tests that run services on two "nodes".

The test process is node A (the root namespace). :class:`Link` makes a namespace, node B, joined to
A by a veth pair with a private /30 out of :data:`SUBNET`, chosen from the test's pid so parallel
test processes do not collide and checked against the addresses already on this machine. Faults
are rules in an nftables table of B's own (``inet shoal_fault``): they only ever match the two
addresses of that /30, so nothing outside the test is touched, and they vanish with the namespace.

``tc netem`` is not available everywhere (not in this project's CI kernel), so latency is added by
:class:`tests.delay_relay.DelayRelay` in A, with B's connections to a port redirected to the relay by
a ``dnat`` rule in B's ``nat output`` chain.

:func:`require` skips a test that cannot run here (not root, no ``ip``/``nft``, no namespaces),
naming what is missing; with ``CI`` set a missing tool fails instead, since ``.ci/run`` installs
``iproute2`` and ``nftables``.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gateway_services import LAUNCHER, Services

#: private addresses the tests may use; each link takes one /30 of it
SUBNET = ipaddress.ip_network("10.213.0.0/16")
#: command -> the Debian package that has it (named in skip and failure messages)
TOOLS = {"ip": "iproute2", "nft": "nftables"}
TABLE = "inet shoal_fault"
CMD_TIMEOUT_S = 10

_links = itertools.count()


def missing(euid: int | None = None, which=shutil.which) -> tuple[list[str], list[str]]:
    """What this machine lacks for the tests: (conditions no install fixes, missing tools)."""
    euid = os.geteuid() if euid is None else euid
    conditions = [] if euid == 0 else ["root (to create network namespaces and nftables rules)"]
    tools = [f"the `{cmd}` command (Debian package {pkg})" for cmd, pkg in TOOLS.items() if which(cmd) is None]
    return conditions, tools


def require(euid: int | None = None, which=shutil.which) -> None:
    """Skip (or, for a missing tool under ``CI``, fail) unless namespaces and nftables work here."""
    conditions, tools = missing(euid, which)
    if tools and os.environ.get("CI"):
        pytest.fail(f"network fault tests need {', '.join(tools)}; .ci/run installs them")
    if conditions or tools:
        pytest.skip(f"network fault tests need {', '.join(conditions + tools)}")
    probe = f"shoal-probe-{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    _run("ip", "netns", "del", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"network fault tests need `ip netns add` to work: {made.stderr.strip()}")


def _run(*cmd: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _run("ip", "-o", "-4", "addr", "show").stdout
    return [ipaddress.ip_interface(f.split()[3]).network for f in out.splitlines() if len(f.split()) > 3]


def free_subnet(serial: int) -> ipaddress.IPv4Network:
    """A /30 of :data:`SUBNET` that no interface here uses, starting at one derived from the pid."""
    subnets = SUBNET.num_addresses // 4
    used = _used_networks()
    start = (os.getpid() * 16 + serial) % subnets
    for i in range(subnets):
        candidate = ipaddress.ip_network((int(SUBNET.network_address) + 4 * ((start + i) % subnets), 30))
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError(f"no free /30 left in {SUBNET}")


class Link:
    """Namespace ``name`` (node B) and a veth pair to the root namespace (node A).

    ``a`` is A's address on the link, ``b`` B's. :meth:`close` removes both even if the test failed
    half way; deleting the namespace also deletes its nftables tables.
    """

    def __init__(self) -> None:
        serial = next(_links)
        self.name = f"shoal-{os.getpid()}-{serial}"
        self.host_if, self.peer_if = f"sh{os.getpid()}n{serial}a", f"sh{os.getpid()}n{serial}b"
        net = free_subnet(serial)
        self.a, self.b = (str(host) for host in net.hosts())
        self.prefix = net.prefixlen
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        _run("ip", "link", "set", self.peer_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.a}/{self.prefix}", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "-n", self.name, "addr", "add", f"{self.b}/{self.prefix}", "dev", self.peer_if)
        _run("ip", "-n", self.name, "link", "set", self.peer_if, "up")
        _run("ip", "-n", self.name, "link", "set", "lo", "up")

    def prefix_command(self) -> list[str]:
        """What runs a command inside B (``ip netns exec`` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.name]

    # -- faults, all in B's table ------------------------------------------------------------

    def faults(self, loss_percent: int = 0, partition: bool = False,
               redirects: dict[int, int] | None = None) -> float:
        """Replace B's fault rules at once (one nft transaction) and return when they took effect
        (``time.monotonic()``). ``loss_percent``: drop that share of packets each way between A and B;
        ``partition``: drop all of them; ``redirects``: A's port -> the port on A that B's new TCP
        connections to it go to instead (a delay relay)."""
        rules_in, rules_out, nat = [], [], []
        if partition:
            rules_in.append(f"ip saddr {self.a} counter drop")
            rules_out.append(f"ip daddr {self.a} counter drop")
        elif loss_percent:
            rules_in.append(f"ip saddr {self.a} numgen random mod 100 < {loss_percent} counter drop")
            rules_out.append(f"ip daddr {self.a} numgen random mod 100 < {loss_percent} counter drop")
        for port, to in (redirects or {}).items():
            nat.append(f"ip daddr {self.a} tcp dport {port} dnat ip to {self.a}:{to}")
        script = "\n".join([
            f"table {TABLE} {{}}", f"delete table {TABLE}", f"table {TABLE} {{",
            *_chain("incoming", "filter", "input", 0, rules_in),
            *_chain("outgoing", "filter", "output", 0, rules_out),
            *_chain("to_relays", "nat", "output", -100, nat),
            "}", ""])
        _run(*self.prefix_command(), "nft", "-f", "-", stdin=script)
        return time.monotonic()

    def dropped(self) -> int:
        """Packets B's fault rules have dropped so far (both directions)."""
        listing = _run(*self.prefix_command(), "nft", "list", "table", *TABLE.split()).stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))

    def heal(self) -> float:
        """Remove every fault rule (new connections are no longer redirected either)."""
        _run(*self.prefix_command(), "nft", "delete", "table", *TABLE.split())
        return time.monotonic()

    def close(self) -> None:
        """Delete the namespace (its nft table with it) and the veth pair; never raises."""
        for cmd in (("ip", "netns", "del", self.name), ("ip", "link", "del", self.host_if)):
            try:
                _run(*cmd, check=False)
            except (OSError, subprocess.SubprocessError):
                pass


def _chain(name: str, kind: str, hook: str, priority: int, rules: list[str]) -> list[str]:
    return [f"  chain {name} {{", f"    type {kind} hook {hook} priority {priority}; policy accept;",
            *(f"    {rule}" for rule in rules), "  }"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NetServices(Services):
    """:class:`tests.gateway_services.Services` with the gateway's control socket on A's link address,
    so workers in other namespaces reach it, and workers that can start inside a :class:`Link`."""

    def __init__(self, data_root: Path, work_dir: Path, host: str, **kwargs):
        super().__init__(data_root, work_dir, **kwargs)
        self.host = host
        self.control = f"tcp://{host}:{free_port(host)}"

    def spawn_in(self, link: Link | None, name: str, module: str, args: list[str]) -> subprocess.Popen:
        """Start ``python -m module args`` in ``link``'s namespace (None: here), dying with the test."""
        prefix = link.prefix_command() if link else []
        proc = subprocess.Popen([*prefix, sys.executable, "-c", LAUNCHER, module, *args],
                                stdin=subprocess.DEVNULL, stderr=self._log, env=self.env)
        self.procs[name] = proc
        return proc

    def start_segmenter(self, name: str, link: Link | None = None, metrics_port: int = -1) -> subprocess.Popen:
        return self.spawn_in(link, name, "services.segmenter.main",
                             ["--gateway", self.control, "--metrics-port", str(metrics_port)])

    def start_identifier(self, batches_port: int, metrics_port: int = -1, *extra: str,
                         link: Link | None = None) -> subprocess.Popen:
        """The identifier, in ``link``'s namespace (None: here), its sockets on that node's link
        address so workers on the other node reach them."""
        host = link.b if link else self.host
        return self.spawn_in(link, "identifier", "services.identifier.main", [
            "--gateway", self.control, "--metrics-port", str(metrics_port),
            "--batches", f"tcp://{host}:{batches_port}", "--requests", f"tcp://{host}:0",
            "--store", str(self.work_dir / "store"), "--threads", "1", *extra])

    def start_assembler(self, link: Link | None = None) -> subprocess.Popen:
        host = link.b if link else self.host
        return self.spawn_in(link, "assembler", "services.assembler.main", [
            "--gateway", self.control, "--metrics-port", "-1", "--geometry", f"tcp://{host}:0"])

    def stop_one(self, name: str, timeout: float = 15) -> None:
        """SIGTERM one service (by its pid) and wait for it."""
        proc = self.procs.pop(name)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
