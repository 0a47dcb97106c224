# Benchmark driver, gatehouse vs due v2.4.1's Go gate: owns the environment (Redis, Consul, nodes,
# gates), every figure's runs, bench/results/*.json, bench/RESULTS.md and bench/results/chart.png.
"""Benchmark driver: gatehouse against due v2.4.1's Go gate, same node, same loadgen, same settings.

Usage (normally through bench/run.sh, which builds first):

    python3 bench/run.py [--quick] [--only flood,closed,latency,idle,fanout,shards,benchclient,metrics,floor]
                         [--repeats N] [--out DIR] [--report-only] [--no-floor]

Figures (see RESULTS.md for the definitions): flood (1: TPS, 2: gate CPU per 1M pairs), closed (3),
idle (4), fanout (5), shards (6), benchclient (7), metrics (8), latency (9: the latency curve at
1/10/50/90 % of each gate's peak, and loadgen's own added latency against a blocking ping-pong). Every measurement point is run A B A B ...
(gatehouse, due, gatehouse, due) with a fresh gate process per run; the report takes the better
of the runs per gate and metric, and every raw run is kept in results/<figure>.json.

Floors (bench/floor/): where a figure has one (flood and closed behind the Rust echo node, fanout),
the floor program runs as a third variant beside both gates and every gatehouse figure is also
given as a ratio to it. `--only floor` runs the floors alone (into results/floor.json, which the
report falls back to when a figure's own file has no floor runs); `--no-floor` leaves them out.

Standard library only, except matplotlib for the chart (skipped with a warning when missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import threading
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# Where cargo put the release binaries (bench/run.sh builds with the caller's CARGO_TARGET_DIR).
RELEASE = (ROOT / os.environ.get("CARGO_TARGET_DIR", "target")).resolve() / "release"
BIN = {
    "gatehouse": RELEASE / "gatehouse",
    "loadgen": RELEASE / "loadgen",
    "echo-node": RELEASE / "echo-node",
    "floor-broadcast": RELEASE / "floor-broadcast",
    "floor-forward": RELEASE / "floor-forward",
    "gate": ROOT / "tests/interop/bin/gate",
    "benchnode": ROOT / "tests/interop/bin/benchnode",
    "benchclient": ROOT / "tests/interop/bin/benchclient",
}
SAMPLE_ETC = ROOT / "tests/interop/etc"

GATES = ("gatehouse", "due")
# The floor programs run as a third "gate" kind in the figures that have one.
KINDS = (*GATES, "floor")
GATE_NAMES = {"gatehouse": "gatehouse", "due": "due v2.4.1 gate", "floor": "floor"}
NODE_KINDS = ("rust", "go")
NODE_NAMES = {"rust": "Rust echo node", "go": "due Go bench node"}

FIGURES = ("flood", "closed", "latency", "idle", "fanout", "shards", "benchclient", "metrics", "kcp", "floor")
# Figures with a floor variant (flood, closed, latency: behind the Rust echo node only).
FLOOR_FIGURES = ("flood", "closed", "latency", "fanout")
ALIASES = {"cpu": "flood", "tps": "flood", "rss": "idle", "broadcast": "fanout", "client": "benchclient",
           "curve": "latency"}  # fmt: skip
TITLES = {
    "flood": "Flood TPS and gate CPU (figures 1 and 2)",
    "closed": "Closed loop at half of peak (figure 3)",
    "idle": "RSS per idle connection (figure 4)",
    "fanout": "Broadcast of 64 B (figure 5)",
    "shards": "gatehouse shards 1 vs 2 (figure 6)",
    "benchclient": "due's Go cluster client over WebSocket (figure 7)",
    "metrics": "gatehouse with /metrics served vs off (figure 8)",
    "latency": "Latency curve at 1/10/50/90 % of each gate's peak (figure 9)",
    "kcp": "KCP clients: RSS per idle session and flood TPS (figure 10)",
    "floor": "Floors alone (`--only floor`)",
}
# Node blocks in run order: one node process per block, the figures that use it in order.
# closed needs the flood peaks of the rust block, so flood comes first.
BLOCKS = (
    ("rust", ("flood", "closed", "latency", "shards", "metrics", "idle", "kcp")),
    ("go", ("flood", "fanout", "benchclient")),
)
BROADCAST_ROUTE = 20
HAND_WRITTEN_MARKER = "<!-- hand-written below -->"

GATE_REGISTER_TIMEOUT_S = 30  # spawn -> gate-<gid> in Consul
PROBE_TRIES = 30  # routing probes (each a 1 s loadgen closed run)
NODE_READY_TIMEOUT_S = 30
STOP_GRACE_S = 10  # SIGTERM -> SIGKILL
MAX_ERRORS_IN_A_ROW = 4  # runs that raised in a row before a node block is given up

_T0 = time.monotonic()


class BenchError(Exception):
    """A run (or a piece of environment) failed; the message says why, with log tails."""


class BlockAborted(BenchError):
    """Too many runs in a row failed: the rest of the node block is skipped."""


def say(msg: str) -> None:
    """Progress on stdout, prefixed with the time since start."""
    t = int(time.monotonic() - _T0)
    print(f"[{t // 60:02d}:{t % 60:02d}] {msg}", flush=True)


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Plan: every knob of a full or a quick run


@dataclass
class Plan:
    """What to measure and how hard; `Plan.make(quick)` gives the full or the quick version."""

    quick: bool = False
    repeats: int = 2
    size: int = 1024
    flood_conns: tuple[int, ...] = (50, 100, 500, 1000)
    flood_requests_small: int = 100_000  # c < 100
    flood_requests: int = 200_000  # c >= 100
    flood_give_up_s: int = 60
    warm_conns: int = 50
    warm_requests: int = 20_000
    peak_conns: int = 100  # the closed-loop rate is half the flood TPS at this c (Rust echo node)
    closed_conns: int = 100
    closed_inflight: int = 4
    closed_duration_s: int = 10
    idle_counts: tuple[int, ...] = (5000, 10000, 19000)
    idle_hold_s: int = 9
    idle_rate: int = 4000
    idle_heartbeat_s: int = 5
    sources: int = 16
    fanout_conns: int = 19000
    fanout_rounds: int = 10
    fanout_rate: int = 4000
    shards: tuple[int, ...] = (1, 2)
    client_conns: int = 100
    client_requests: int = 100_000
    # figure 9: closed runs at these shares of each gate's peak (%), 100 connections with a deep
    # window (it never binds below the peak), and loadgen's own latency at a low rate: a blocking
    # ping-pong client and closed mode, one connection each, at the same rate.
    latency_pcts: tuple[int, ...] = (1, 10, 50, 90)
    latency_conns: int = 100
    latency_inflight: int = 64
    latency_duration_s: int = 10
    self_rate: int = 1000
    # figure 10 (KCP, behind the Rust echo node): idle sessions held, flood sessions and requests.
    kcp_idle_counts: tuple[int, ...] = (5000,)
    kcp_flood_conns: tuple[int, ...] = (50, 100)
    kcp_requests: int = 100_000

    @classmethod
    def make(cls, quick: bool, repeats: int) -> Plan:
        if not quick:
            return cls(repeats=repeats)
        return cls(
            quick=True,
            repeats=repeats,
            flood_conns=(50, 100),
            flood_requests_small=20_000,
            flood_requests=20_000,
            flood_give_up_s=30,
            warm_requests=5_000,
            closed_duration_s=3,
            idle_counts=(2000,),
            fanout_conns=2000,
            fanout_rounds=3,
            client_requests=20_000,
            latency_duration_s=3,
            kcp_idle_counts=(1000,),
            kcp_flood_conns=(50,),
            kcp_requests=20_000,
        )

    def requests_for(self, conns: int) -> int:
        return self.flood_requests_small if conns < 100 else self.flood_requests


# ---------------------------------------------------------------------------------------------
# Small utilities: ports, loopback HTTP, JSON lines


_handed_ports: set[int] = set()


def free_port() -> int:
    """A free loopback TCP port below the ephemeral range, so that loadgen's thousands of source
    ports can never take it between two gate runs (the link port is reused by every gate run)."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randrange(20000, max(20001, low))
        if port in _handed_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_ports.add(port)
        return port
    raise BenchError("no free loopback port found")


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def http(method: str, url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "PUT" else None)
    try:
        with _HTTP.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def json_lines(path: Path) -> list[dict]:
    """Every line of a file that parses as a JSON object, in order."""
    found = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def ms(us: Any) -> Any:
    """Microseconds to milliseconds (None stays None)."""
    return None if us is None else round(us / 1000, 2)


def dig(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None when any level is missing (tolerant of loadgen's field names)."""
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def command_output(argv: list[str]) -> str:
    """First line of a command's output, or 'unavailable'."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unavailable"


# ---------------------------------------------------------------------------------------------
# Child processes


class Proc:
    """A child process in its own session (so its whole group can be signalled), with stdout and
    stderr in files. Every live Proc is listed in Proc.live so an interrupted run kills them all."""

    live: list[Proc] = []

    def __init__(self, stem: str, argv: list[Any], logdir: Path, cwd: Path | None = None):
        self.name = stem
        self.argv = [str(a) for a in argv]
        self.out = logdir / f"{stem}.out"
        self.err = logdir / f"{stem}.err"
        (logdir / f"{stem}.cmd").write_text(shlex.join(self.argv) + "\n")
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            try:
                self.p = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=o,
                    stderr=e,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as err:
                raise BenchError(f"cannot start {self.argv[0]}: {err}") from err
        self.pid = self.p.pid
        Proc.live.append(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def _forget(self) -> None:
        if self in Proc.live:
            Proc.live.remove(self)

    def _signal_group(self, sig: int) -> None:
        if self.p.poll() is None:  # never signal a reaped leader's id
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = STOP_GRACE_S) -> dict:
        """SIGTERM the group, wait up to `grace` s, then SIGKILL. Returns how it ended."""
        t = time.monotonic()
        killed = False
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                killed = True
                self._signal_group(signal.SIGKILL)
                try:
                    self.p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self._forget()
        return {"code": self.p.poll(), "killed": killed, "stop_s": round(time.monotonic() - t, 2)}

    def wait(self, timeout: float) -> int:
        """Waits for a process that ends by itself; kills it and raises after `timeout` s."""
        try:
            code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(grace=2)
            raise BenchError(f"{self.name} still running after {timeout:.0f} s: killed\n{self.tail()}")
        self._forget()
        return code

    def tail(self, lines: int = 15) -> str:
        """The last lines of stderr and stdout, for error messages."""
        parts = []
        for path in (self.err, self.out):
            try:
                text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
            except OSError:
                text = []
            if text:
                parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts) or f"--- {self.name}: no output"

    def wait_for_line(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """Waits until stdout has a JSON line satisfying `predicate`; raises on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for obj in json_lines(self.out):
                if predicate(obj):
                    return obj
            if not self.alive():
                raise BenchError(f"{self.name} exited ({self.p.poll()}) before {what}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no {what} within {timeout:.0f} s\n{self.tail()}")
            time.sleep(0.05)

    @classmethod
    def stop_all(cls) -> None:
        for p in reversed(list(cls.live)):
            try:
                p.stop(grace=5)
            except Exception as e:  # cleanup must go on
                print(f"cleanup: {p.name}: {e}", file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), /proc/PID/stat fields 14 and 15."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as e:
        raise BenchError(f"process {pid} is gone: {e}") from e
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[14 - 3]) + int(fields[15 - 3])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError as e:
        raise BenchError(f"process {pid} is gone: {e}") from e
    raise BenchError(f"process {pid} has no VmRSS")


# ---------------------------------------------------------------------------------------------
# Environment: Redis and Consul for the whole invocation


class Env:
    """A throw-away Redis and Consul agent on free loopback ports (scripts/redis.sh, consul.sh)."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir / "env"
        self.redis_port = free_port()
        self.consul_port = free_port()
        self.started: list[str] = []
        self.groups: list[int] = []  # the scripts' process groups, where the servers stay

    @property
    def redis(self) -> str:
        return f"127.0.0.1:{self.redis_port}"

    @property
    def consul(self) -> str:
        return f"127.0.0.1:{self.consul_port}"

    def _script(self, name: str, action: str, port: int) -> None:
        sub = self.dir / name.split(".")[0]
        sub.mkdir(parents=True, exist_ok=True)
        log = self.dir / f"{name}.{action}.log"
        with open(log, "ab") as out:
            p = subprocess.Popen(
                [str(ROOT / "scripts" / name), action, str(port), str(sub)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                code = p.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                code = -1
        if action == "start":
            self.groups.append(p.pid)
        if code != 0:
            raise BenchError(f"scripts/{name} {action} {port} failed ({code}):\n{log.read_text()[-2000:]}")

    def start(self) -> None:
        self._script("redis.sh", "start", self.redis_port)
        self.started.append("redis.sh")
        self._script("consul.sh", "start", self.consul_port)
        self.started.append("consul.sh")
        say(f"redis on {self.redis}, consul on {self.consul}")

    def stop(self) -> None:
        ports = {"redis.sh": self.redis_port, "consul.sh": self.consul_port}
        for name in reversed(self.started):
            try:
                self._script(name, "stop", ports[name])
            except BenchError as e:
                print(f"cleanup: {e}", file=sys.stderr)
        for pgid in self.groups:  # whatever the stop scripts missed
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.started.clear()

    # Consul agent API

    def consul_get(self, path: str) -> tuple[int, bytes]:
        return http("GET", f"http://{self.consul}{path}")

    def deregister(self, service_id: str) -> None:
        http("PUT", f"http://{self.consul}/v1/agent/service/deregister/{service_id}")

    def services(self) -> dict[str, dict]:
        status, body = self.consul_get("/v1/agent/services")
        if status != 200:
            return {}
        try:
            return json.loads(body)
        except ValueError:
            return {}


# ---------------------------------------------------------------------------------------------
# Configuration files


def substitute(text: str, pairs: dict[str, str], source: Path) -> str:
    """Replaces every key of `pairs` in one pass; a key missing from the sample is an error (the
    sample changed and the benchmark would silently measure something else)."""
    missing = [k for k in pairs if k not in text]
    if missing:
        raise BenchError(f"{source}: expected text not found: {missing}")
    keys = sorted(pairs, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    return pattern.sub(lambda m: pairs[m.group(0)], text)


def write_etc(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "etc.toml").write_text(text)
    return directory


def gate_etc(env: Env, directory: Path, gid: str, tcp: int, ws: int, link: int, shards: int,
             metrics: int | None = None, kcp: int | None = None) -> Path:  # fmt: skip
    """One due gate etc.toml read by both gates (the Go gate ignores [gatehouse]); with `kcp`, a
    KCP server on that UDP port (due's defaults, the TCP server's heartbeat settings)."""
    source = SAMPLE_ETC / "gate/etc.toml"
    text = substitute(
        source.read_text(),
        {
            "127.0.0.1:6379": env.redis,
            "127.0.0.1:8500": env.consul,
            "127.0.0.1:3553": f"127.0.0.1:{tcp}",
            "127.0.0.1:3554": f"127.0.0.1:{ws}",
            'id = ""': f'id = "{gid}"',
            "maxConnNum = 5000": "maxConnNum = 19900",
            'level = "info"': 'level = "warn"',
            'addr = "127.0.0.1:0"': f'addr = "127.0.0.1:{link}"',
        },
        source,
    )
    if kcp:
        text += (f'\n[network.kcp.server]\naddr = "127.0.0.1:{kcp}"\nmaxConnNum = 19900\n'
                 'heartbeatInterval = "10s"\nheartbeatMechanism = "resp"\n')  # fmt: skip
    extra = f'metricsAddr = "127.0.0.1:{metrics}"\n' if metrics else ""
    return write_etc(directory, text + f"\n[gatehouse]\nshards = {shards}\n{extra}")


def node_etc(env: Env, directory: Path) -> Path:
    source = SAMPLE_ETC / "node/etc.toml"
    text = substitute(
        source.read_text(),
        {"127.0.0.1:6379": env.redis, "127.0.0.1:8500": env.consul, 'level = "info"': 'level = "warn"'},
        source,
    )
    return write_etc(directory, text)


def client_etc(directory: Path, ws: int) -> Path:
    source = SAMPLE_ETC / "client/etc.toml"
    text = substitute(source.read_text(), {'url = "ws://127.0.0.1:3554"': f'url = "ws://127.0.0.1:{ws}/"'}, source)
    return write_etc(directory, text)


# ---------------------------------------------------------------------------------------------
# Nodes and gates


@dataclass
class Node:
    kind: str  # "rust" | "go"
    proc: Proc
    # The Rust echo node's link listen address (where the forwarding floor dials it).
    addr: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Gate:
    kind: str  # "gatehouse" | "due"
    gid: str
    proto: str  # what this run measures: "tcp" | "ws" | "kcp" (the Go gate serves only that one)
    tcp: int
    ws: int
    proc: Proc
    spawned: float
    # The KCP server's UDP port (kcp runs only).
    kcp: int = 0
    # gatehouse's /metrics port when it serves one.
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client_args(self, proto: str | None = None) -> list[str]:
        """loadgen's --addr (and --ws) for the given protocol."""
        proto = proto or self.proto
        if proto == "ws":
            return ["--addr", f"127.0.0.1:{self.ws}", "--ws", "/"]
        if proto == "kcp":
            return ["--addr", f"127.0.0.1:{self.kcp}", "--kcp"]
        return ["--addr", f"127.0.0.1:{self.tcp}"]


@dataclass
class Variant:
    """One side of the A/B alternation."""

    kind: str
    # gatehouse: shards; floor: sender threads of the broadcaster (the forwarder has one layout).
    shards: int = 2
    # gatehouse only: serve /metrics (`[gatehouse] metricsAddr`) and scrape it during the run.
    metrics: bool = False


GATE_VARIANTS = (Variant("gatehouse"), Variant("due"))


class Bench:
    """One invocation: plan, environment, current node block, raw results (saved after each run)."""

    def __init__(self, plan: Plan, run_dir: Path, out_dir: Path, invocation: dict):
        self.plan = plan
        self.run_dir = run_dir
        self.out_dir = out_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.invocation = invocation
        # "with": floors beside the gates; "only": floors alone (results/floor.json); "off".
        self.floor = invocation.get("floor", "with")
        self.env = Env(run_dir)
        self.node: Node | None = None
        self.link = 0
        self.peaks: dict[str, float] = {}
        self.results: dict[str, dict] = {}
        # blocks still to run per figure (flood runs in two); complete when it reaches 0
        blocks = needed_blocks(invocation["figures"]).values()
        self.blocks_left = {n: sum(n in names for names in blocks) for n in invocation["figures"]}
        self._seq = 0
        self._errors_in_a_row = 0

    def stem(self, name: str) -> str:
        """A unique, ordered log file stem."""
        self._seq += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        return f"{self._seq:04d}-{safe}"

    def next_gid(self, kind: str) -> str:
        self._seq += 1
        return f"bench{self._seq:04d}-{kind}"

    # results

    def key(self, name: str) -> str:
        """The results file a figure's runs go to (all of them into floor.json for --only floor)."""
        return "floor" if self.floor == "only" else name

    def figure(self, name: str) -> dict:
        name = self.key(name)
        if name not in self.results:
            self.results[name] = {
                "figure": name,
                "title": TITLES[name],
                "complete": False,
                "invocation": self.invocation,
                "plan": asdict(self.plan),
                "runs": [],
            }
        return self.results[name]

    def add_run(self, name: str, rec: dict) -> None:
        self.figure(name)["runs"].append(rec)
        self.save(self.key(name))
        if "error" in rec:
            self._errors_in_a_row += 1
            if self._errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                raise BlockAborted(f"{self._errors_in_a_row} runs in a row failed; last: {rec['error']}")
        else:
            self._errors_in_a_row = 0

    def finish(self, name: str) -> None:
        if self.floor == "only" and any(self.blocks_left.values()):
            return
        self.figure(name)["complete"] = True
        self.save(self.key(name))

    def save(self, name: str) -> None:
        directory = self.out_dir / "results"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.json.tmp"
        tmp.write_text(json.dumps(self.results[name], indent=1) + "\n")
        tmp.replace(directory / f"{name}.json")


def start_node(b: Bench, kind: str) -> Node:
    """Starts the node of a block: the Go bench node or the Rust echo node (which dials b.link)."""
    if kind == "go":
        directory = node_etc(b.env, b.run_dir / "etc/node")
        proc = Proc(b.stem("node-go"), [BIN["benchnode"], f"--etc={directory}"], b.logs, cwd=b.run_dir)
        try:
            proc.wait_for_line(lambda o: o.get("event") == "ready", NODE_READY_TIMEOUT_S, "ready line")
        except BenchError:
            proc.stop()
            raise
    else:
        argv = [
            BIN["echo-node"],
            "--listen", f"127.0.0.1:{free_port()}",
            "--gate", f"127.0.0.1:{b.link}",
            "--consul", b.env.consul,
            "--quiet",
        ]  # fmt: skip
        proc = Proc(b.stem("node-rust"), argv, b.logs, cwd=b.run_dir)
        try:
            line = proc.wait_for_line(lambda o: "listening" in o, NODE_READY_TIMEOUT_S, '{"listening":...} line')
        except BenchError:
            proc.stop()
            raise
        say(f"{NODE_NAMES[kind]} started (pid {proc.pid})")
        return Node(kind, proc, str(line["listening"]))
    say(f"{NODE_NAMES[kind]} started (pid {proc.pid})")
    return Node(kind, proc)


def stop_node(b: Bench, node: Node, registered_before: set[str]) -> None:
    """Stops the node and removes every service registered since it started (its own, if it did
    not deregister, and any killed gate's), so the next block's gates route to the next node only."""
    node.proc.stop()
    for sid in set(b.env.services()) - registered_before:
        b.env.deregister(sid)
    say(f"{NODE_NAMES[node.kind]} stopped")


def start_gate(b: Bench, kind: str, proto: str, shards: int, label: str, metrics: bool = False) -> Gate:
    """A fresh gate process, returned once it is in Consul and a routing probe got a reply."""
    gid = b.next_gid(kind)
    tcp, ws = free_port(), free_port()
    mport = free_port() if metrics else None
    kcp = free_port() if proto == "kcp" else None
    directory = gate_etc(b.env, b.run_dir / "etc" / f"gate-{gid}", gid, tcp, ws, b.link, shards, mport, kcp)
    if kind == "gatehouse":
        argv = [BIN["gatehouse"], "--etc", directory]
    else:
        argv = [BIN["gate"], f"--etc={directory}", f"--proto={proto}"]
    spawned = time.monotonic()
    proc = Proc(b.stem(f"gate-{gid}-{label}"), argv, b.logs, cwd=b.run_dir)
    gate = Gate(kind, gid, proto, tcp, ws, proc, spawned, kcp=kcp or 0)
    gate.metrics_port = mport
    try:
        wait_registered(b, gate)
        wait_routing(b, gate)
    except BaseException:
        stop_gate(b, gate)
        raise
    return gate


def start_floor(b: Bench, figure: str, threads: int, label: str) -> Gate:
    """A floor program as the figure's third gate: the broadcaster for fanout (`threads` sender
    threads), else the forwarder to the Rust echo node (on the link port the gates use), returned
    once it listens (the forwarder: once a routing probe got a reply through it and the node)."""
    gid = b.next_gid("floor")
    tcp = free_port()
    if figure == "fanout":
        argv = [BIN["floor-broadcast"], "--listen", f"127.0.0.1:{tcp}", "--senders", threads]
    elif b.node.kind == "rust" and b.node.addr:
        argv = [BIN["floor-forward"], "--listen", f"127.0.0.1:{tcp}", "--link", f"127.0.0.1:{b.link}",
                "--node", b.node.addr]  # fmt: skip
    else:
        raise BenchError(f"no forwarding floor behind the {NODE_NAMES[b.node.kind]} (it speaks to the Rust echo node)")
    spawned = time.monotonic()
    proc = Proc(b.stem(f"floor-{gid}-{label}"), argv, b.logs, cwd=b.run_dir)
    gate = Gate("floor", gid, "tcp", tcp, 0, proc, spawned)
    try:
        proc.wait_for_line(lambda o: "listening" in o, NODE_READY_TIMEOUT_S, '{"listening":...} line')
        if figure != "fanout":
            wait_routing(b, gate)
    except BaseException:
        stop_gate(b, gate)
        raise
    return gate


def wait_registered(b: Bench, g: Gate) -> None:
    """Until the gate's service gate-<gid> is in Consul."""
    deadline = time.monotonic() + GATE_REGISTER_TIMEOUT_S
    while b.env.consul_get(f"/v1/agent/service/gate-{g.gid}")[0] != 200:
        if not g.proc.alive():
            raise BenchError(f"gate {g.gid} exited ({g.proc.p.poll()}) during start-up\n{g.proc.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"gate-{g.gid} not in Consul after {GATE_REGISTER_TIMEOUT_S} s\n{g.proc.tail()}")
        time.sleep(0.1)


def wait_routing(b: Bench, g: Gate) -> None:
    """Until a one-connection loadgen closed run gets a reply through the gate and the node."""
    stem = f"{g.proc.name}.probe"
    target = g.client_args("tcp" if g.kind == "gatehouse" else g.proto)
    # loadgen --kcp has no closed mode: one request in a flood of one.
    mode = ["flood", "--requests", 1] if "--kcp" in target else ["closed"]
    for _ in range(PROBE_TRIES):
        probe = Proc(stem, [BIN["loadgen"], *mode, *target, "--conns", 1, "--duration", 1, "--json"], b.logs)
        try:
            probe.wait(8)
        except BenchError:
            pass
        lines = json_lines(probe.out)
        if lines and (lines[-1].get("received") or 0) > 0:
            return
        if not g.proc.alive():
            raise BenchError(f"gate {g.gid} exited ({g.proc.p.poll()}) while probing\n{g.proc.tail()}")
        time.sleep(0.3)
    raise BenchError(f"gate {g.gid}: no reply to {PROBE_TRIES} routing probes\n{g.proc.tail()}\n{probe.tail(5)}")


def stop_gate(b: Bench, g: Gate) -> dict:
    """SIGTERM, ≤ 10 s, SIGKILL; then its Consul entry is removed in case it was killed."""
    ended = g.proc.stop()
    b.env.deregister(f"gate-{g.gid}")
    return ended


# ---------------------------------------------------------------------------------------------
# Load drivers


def run_loadgen(b: Bench, name: str, args: list[Any], timeout: float) -> dict:
    """Runs loadgen to completion and returns its JSON summary (plus its exit code)."""
    proc = Proc(b.stem(f"loadgen-{name}"), [BIN["loadgen"], *args], b.logs)
    code = proc.wait(timeout)
    lines = json_lines(proc.out)
    if not lines:
        raise BenchError(f"loadgen {args[0]} printed no JSON summary (exit {code})\n{proc.tail()}")
    summary = lines[-1]
    summary["exit_code"] = code
    return summary


def warm(b: Bench, g: Gate, proto: str | None = None) -> float | None:
    """A short untimed flood, so the timed run does not pay for first-use allocations."""
    p = b.plan
    args = ["flood", *g.client_args(proto), "--conns", p.warm_conns, "--requests", p.warm_requests,
            "--size", p.size, "--duration", p.flood_give_up_s, "--json"]  # fmt: skip
    return run_loadgen(b, f"warm-{g.gid}", args, p.flood_give_up_s + 30).get("tps")


def per_million(cpu: float, received: Any) -> float | None:
    return cpu / received * 1e6 if isinstance(received, (int, float)) and received > 0 else None


SYSCALL_EVENTS = ("raw_syscalls:sys_enter", "io_uring:io_uring_submit_req")


class SyscallCount:
    """`perf stat` attached to a process for the length of a run: its system calls and io_uring
    requests (the kernel's own count, all threads; counting, not sampling, so it costs the gate
    little). Inert when perf is missing or may not attach."""

    def __init__(self, b: Bench, pid: int, stem: str):
        self.out = b.logs / f"{b.stem(stem)}.perf"
        self.p: subprocess.Popen | None = None
        if not shutil.which("perf"):
            return
        argv = ["perf", "stat", "-x", ",", "-o", str(self.out), "-p", str(pid)]
        for e in SYSCALL_EVENTS:
            argv += ["-e", e]
        try:
            self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            self.p = None
        time.sleep(0.3)  # attached before the run starts

    def stop(self) -> dict[str, int]:
        """Counts by event name ({} without perf)."""
        if self.p is None:
            return {}
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return {}
        counts = {}
        for line in self.out.read_text(errors="replace").splitlines():
            f = line.split(",")
            if len(f) > 2 and f[2] in SYSCALL_EVENTS and f[0].isdigit():
                counts[f[2]] = int(f[0])
        return counts


def flood_body(b: Bench, g: Gate, conns: int, requests: int) -> dict:
    """Warm-up, then one timed flood; gate (and node) CPU deltas over the timed run, and the
    gate's system calls and io_uring requests per pair."""
    p = b.plan
    warm_tps = warm(b, g)
    counter = SyscallCount(b, g.pid, f"perf-{g.gid}-c{conns}")
    cpu0, node0 = cpu_seconds(g.pid), cpu_seconds(b.node.pid)
    args = ["flood", *g.client_args(), "--conns", conns, "--requests", requests, "--size", p.size,
            "--duration", p.flood_give_up_s, "--json"]  # fmt: skip
    out = run_loadgen(b, f"flood-{g.gid}-c{conns}", args, p.flood_give_up_s + 30)
    cpu, node_cpu = cpu_seconds(g.pid) - cpu0, cpu_seconds(b.node.pid) - node0
    counts = counter.stop()
    received = out.get("received")
    per_pair = lambda n: round(n / received, 2) if n is not None and isinstance(received, int) and received > 0 else None  # noqa: E731
    return {
        "syscalls_per_pair": per_pair(counts.get("raw_syscalls:sys_enter")),
        "uring_reqs_per_pair": per_pair(counts.get("io_uring:io_uring_submit_req")),
        "tps": out.get("tps"),
        "received": received,
        "seconds": out.get("seconds"),
        "failures": out.get("failures"),
        "gate_cpu_s": round(cpu, 3),
        "cpu_s_per_1m": per_million(cpu, received),
        "node_cpu_s": round(node_cpu, 3),
        "node_cpu_s_per_1m": per_million(node_cpu, received),
        "gate_rss_kib_after": rss_kib(g.pid),
        "warm_tps": warm_tps,
        "loadgen": out,
    }


def paced_body(b: Bench, g: Gate, name: str, args: list[Any], duration: int, peak: float | None,
               rate: int) -> dict:  # fmt: skip
    """Warm-up, then one paced loadgen run (closed or pingpong, `args` without the target): its
    latencies (closed: from intended send times), loadgen's lateness and the gate's CPU."""
    p = b.plan
    warm(b, g)
    cpu0 = cpu_seconds(g.pid)
    args = [*args, *g.client_args(), "--target-rate", rate, "--duration", duration, "--size", p.size, "--json"]
    out = run_loadgen(b, f"{name}-{g.gid}", args, duration + 40)
    cpu = cpu_seconds(g.pid) - cpu0
    return {
        "peak_tps": peak,
        "rate": rate,
        "tps": out.get("tps"),
        "received": out.get("received"),
        "failures": out.get("failures"),
        "p50_us": dig(out, "rtt_us", "p50"),
        "p90_us": dig(out, "rtt_us", "p90"),
        "p99_us": dig(out, "rtt_us", "p99"),
        "p999_us": dig(out, "rtt_us", "p999"),
        "max_us": dig(out, "rtt_us", "max"),
        "write_p50_us": dig(out, "rtt_from_write_us", "p50"),
        "lag_p50_us": dig(out, "lag_us", "p50"),
        "lag_p99_us": dig(out, "lag_us", "p99"),
        "gate_cpu_s": round(cpu, 3),
        "cpu_s_per_1m": per_million(cpu, out.get("received")),
        "loadgen": out,
    }


def closed_body(b: Bench, g: Gate) -> dict:
    """A rate-limited closed loop at half of this gate's peak flood TPS."""
    p = b.plan
    peak = b.peaks.get(g.kind)
    if not peak:
        raise BenchError(f"no peak flood TPS for {g.kind} (the c={p.peak_conns} flood runs failed)")
    args = ["closed", "--conns", p.closed_conns, "--inflight", p.closed_inflight]
    return paced_body(b, g, "closed", args, p.closed_duration_s, peak, max(1, round(peak / 2)))


_PROGRESS = re.compile(r"open=(\d+)")
_ERRORS = re.compile(r"connect_errors=(\d+)")


def progress(proc: Proc) -> tuple[int, int] | None:
    """(open, connect_errors) from loadgen's latest progress line on stderr."""
    try:
        lines = proc.err.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        m = _PROGRESS.search(line)
        if m:
            e = _ERRORS.search(line)
            return int(m.group(1)), int(e.group(1)) if e else 0
    return None


def wait_ramp(lg: Proc, conns: int, timeout: float) -> None:
    """Until loadgen reports every connection either open or failed."""
    deadline = time.monotonic() + timeout
    while True:
        seen = progress(lg)
        if seen and sum(seen) >= conns:
            return
        if not lg.alive():
            raise BenchError(f"loadgen idle exited ({lg.p.poll()}) during the ramp\n{lg.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"loadgen idle: {seen} (open, errors) of {conns} after {timeout:.0f} s\n{lg.tail()}")
        time.sleep(0.1)


def idle_body(b: Bench, g: Gate, conns: int) -> dict:
    """Gate RSS before, and while loadgen holds `conns` idle connections (heartbeats every 5 s).

    The sample is taken HOLD-3.5 s after loadgen first reports all connections open, which is
    5.5-6.5 s after the ramp (the first heartbeat round is at 5 s) and ~2.5 s before it lets go."""
    p = b.plan
    time.sleep(1.0)  # let the probe's connection and start-up garbage settle
    base = rss_kib(g.pid)
    args = ["idle", *g.client_args(), "--conns", conns, "--rate", p.idle_rate, "--heartbeat",
            p.idle_heartbeat_s, "--duration", p.idle_hold_s, "--sources", p.sources, "--json"]  # fmt: skip
    lg = Proc(b.stem(f"loadgen-idle-{g.gid}-{g.proto}-{conns}"), [BIN["loadgen"], *args], b.logs)
    try:
        wait_ramp(lg, conns, conns / p.idle_rate + 20)
        time.sleep(max(0.0, p.idle_hold_s - 3.5))
        held = (progress(lg) or (conns, 0))[0]
        rss = rss_kib(g.pid)
        if not lg.alive():  # --duration must count from the end of the ramp
            raise BenchError(f"loadgen idle let go before the RSS sample (hold {p.idle_hold_s} s)\n{lg.tail()}")
        code = lg.wait(p.idle_hold_s + 30)
    finally:
        if lg.alive():
            lg.stop(grace=2)
    lines = json_lines(lg.out)
    out = lines[-1] if lines else {}
    out["exit_code"] = code
    return {
        "rss_base_kib": base,
        "rss_held_kib": rss,
        "held": held,
        "kib_per_conn": (rss - base) / held if held > 0 else None,
        "failures": out.get("failures"),
        "loadgen": out,
    }


def fanout_body(b: Bench, g: Gate, conns: int) -> dict:
    """loadgen fanout: `conns` clients, each round one client triggers the node's broadcast."""
    p = b.plan
    args = ["fanout", *g.client_args(), "--conns", conns, "--rounds", p.fanout_rounds, "--route",
            BROADCAST_ROUTE, "--json", "--rate", p.fanout_rate, "--sources", p.sources]  # fmt: skip
    cpu0 = cpu_seconds(g.pid)
    out = run_loadgen(b, f"fanout-{g.gid}", args, conns / p.fanout_rate + p.fanout_rounds * 10 + 60)
    return {
        "rounds": dig(out, "fanout", "rounds"),
        "complete_rounds": dig(out, "fanout", "complete_rounds"),
        "failures": out.get("failures"),
        "complete_p50_ms": ms(dig(out, "fanout", "complete_us", "p50")),
        "complete_max_ms": ms(dig(out, "fanout", "complete_us", "max")),
        "client_p50_us": dig(out, "fanout", "arrival_us", "p50"),
        "client_p99_us": dig(out, "fanout", "arrival_us", "p99"),
        "client_max_us": dig(out, "fanout", "arrival_us", "max"),
        "gate_cpu_s": round(cpu_seconds(g.pid) - cpu0, 3),
        "gate_rss_kib_after": rss_kib(g.pid),
        "loadgen": out,
    }


def benchclient_body(b: Bench, g: Gate) -> dict:
    """due's Go cluster client (WS, flood shape) against the gate's WebSocket server."""
    p = b.plan
    warm(b, g)
    directory = client_etc(b.run_dir / "etc" / f"client-{g.gid}", g.ws)
    argv = [BIN["benchclient"], f"--etc={directory}", f"--url=ws://127.0.0.1:{g.ws}/",
            f"--conns={p.client_conns}", f"--requests={p.client_requests}", f"--size={p.size}"]  # fmt: skip
    cpu0 = cpu_seconds(g.pid)
    proc = Proc(b.stem(f"benchclient-{g.gid}"), argv, b.logs, cwd=b.run_dir)
    code = proc.wait(180)
    cpu = cpu_seconds(g.pid) - cpu0
    results = [o for o in json_lines(proc.out) if o.get("event") == "result"]
    if not results:
        raise BenchError(f"benchclient printed no result line (exit {code})\n{proc.tail()}")
    res = results[-1]
    received = res.get("received")
    failures = res.get("failures")
    if failures is None and isinstance(received, int):
        failures = max(0, p.client_requests - received)
    return {
        "tps": res.get("tps"),
        "received": received,
        "seconds": res.get("seconds"),
        "failures": failures if failures is not None else (0 if code == 0 else 1),
        "gate_cpu_s": round(cpu, 3),
        "cpu_s_per_1m": per_million(cpu, received),
        "client": res,
        "exit_code": code,
    }


# ---------------------------------------------------------------------------------------------
# Measurement loop


def describe(rec: dict) -> str:
    """One console line for a finished run."""
    if "error" in rec:
        return "FAILED: " + rec["error"].splitlines()[0]
    shown = []
    for key, fmt in (("tps", "{:,.0f}/s"), ("cpu_s_per_1m", "cpu {:.2f} s/1M"), ("p50_us", "p50 {} µs"),
                     ("p99_us", "p99 {} µs"), ("kib_per_conn", "{:.2f} KiB/conn"),
                     ("complete_p50_ms", "complete p50 {} ms"), ("failures", "failures {}")):  # fmt: skip
        v = rec.get(key)
        if isinstance(v, (int, float)) and not (key == "failures" and v == 0):
            shown.append(fmt.format(v))
    return ", ".join(shown) or "done"


def measure(b: Bench, figure: str, point: dict, variant: Variant, rep: int, proto: str,
            body: Callable[[Gate], dict]) -> dict:  # fmt: skip
    """One run: fresh gate, the figure's body, gate stopped; recorded whatever happened."""
    rec = {"figure": figure, **point, "gate": variant.kind, "shards": variant.shards, "proto": proto,
           "node": b.node.kind, "rep": rep, "started": now_iso(), "metrics": variant.metrics}  # fmt: skip
    label = "-".join(f"{k}{v}" for k, v in point.items() if k != "node")
    if not b.node.proc.alive():
        raise BlockAborted(f"{NODE_NAMES[b.node.kind]} exited ({b.node.proc.p.poll()})\n{b.node.proc.tail()}")
    gate = None
    try:
        if variant.kind == "floor":
            gate = start_floor(b, figure, variant.shards, f"{figure}-{label}")
        else:
            gate = start_gate(b, variant.kind, proto, variant.shards, f"{figure}-{label}", variant.metrics)
        rec.update(gid=gate.gid, ready_s=round(time.monotonic() - gate.spawned, 2), gate_log=str(gate.proc.err))
        rec.update(body(gate))
    except BenchError as e:
        rec["error"] = str(e)
    finally:
        if gate is not None:
            rec["gate_exit"] = stop_gate(b, gate)
    rec["ok"] = "error" not in rec and not rec.get("failures")
    shown = " ".join(f"{k}={v}" for k, v in point.items())
    say(f"{figure} {shown} rep {rep + 1}/{b.plan.repeats} {variant.kind}"
        f"{variant_note(figure, variant)}"
        f"{' metrics on' if variant.metrics else ''}: {describe(rec)}")  # fmt: skip
    b.add_run(figure, rec)
    return rec


def variant_note(figure: str, v: Variant) -> str:
    """How a variant differs from the default, for the console line."""
    if v.kind == "floor":
        return f" senders={v.shards}" if figure == "fanout" else ""
    return "" if v.shards == 2 else f" shards={v.shards}"


def variants(b: Bench, figure: str, base: tuple[Variant, ...] = GATE_VARIANTS) -> tuple[Variant, ...]:
    """The gates of a figure and, where it has one, its floor (alone with --only floor)."""
    floors: tuple[Variant, ...] = ()
    if figure == "fanout":
        floors = (Variant("floor", 1), Variant("floor", 2))
    elif figure in FLOOR_FIGURES and b.node is not None and b.node.kind == "rust":
        floors = (Variant("floor", 1),)
    if b.floor == "only":
        return floors
    return base + floors if b.floor == "with" else base


def alternate(b: Bench, figure: str, points: list[dict], body: Callable[[dict, Gate], dict],
              proto: Callable[[dict], str] = lambda point: "tcp",
              variants: tuple[Variant, ...] = GATE_VARIANTS) -> None:  # fmt: skip
    """For each point: A B A B ... (`repeats` rounds of every variant)."""
    for point in points:
        for rep in range(b.plan.repeats):
            for v in variants:
                measure(b, figure, point, v, rep, proto(point), lambda g, pt=point: body(pt, g))


def best(runs: list[dict], key: str, high: bool = True) -> float | None:
    """The better value of `key` over the clean runs (max or min), None without any."""
    vals = [r[key] for r in runs if r.get("ok") and isinstance(r.get(key), (int, float))]
    if not vals:
        return None
    return max(vals) if high else min(vals)


def where(runs: list[dict], **match: Any) -> list[dict]:
    return [r for r in runs if all(r.get(k) == v for k, v in match.items())]


def fig_flood(b: Bench) -> None:
    p = b.plan
    points = [{"role": "flood", "node": b.node.kind, "conns": c, "requests": p.requests_for(c)} for c in p.flood_conns]
    alternate(b, "flood", points, lambda pt, g: flood_body(b, g, pt["conns"], pt["requests"]),
              variants=variants(b, "flood"))  # fmt: skip
    if b.node.kind == "rust":
        set_peaks(b, b.figure("flood")["runs"])


def set_peaks(b: Bench, runs: list[dict]) -> None:
    for kind in KINDS:
        match = {} if kind == "floor" else {"shards": 2}
        peak = best(where(runs, node="rust", conns=b.plan.peak_conns, gate=kind, **match), "tps")
        if peak:
            b.peaks[kind] = peak
    say(f"peaks at c={b.plan.peak_conns} (Rust echo node): {b.peaks}")


def fig_closed(b: Bench) -> None:
    p = b.plan
    need_peaks(b, "closed")
    point = {"role": "closed", "node": "rust", "conns": p.closed_conns, "inflight": p.closed_inflight,
             "duration": p.closed_duration_s}  # fmt: skip
    alternate(b, "closed", [point], lambda pt, g: closed_body(b, g), variants=variants(b, "closed"))


def need_peaks(b: Bench, figure: str) -> None:
    """Measures the flood peaks (c=peak_conns, Rust echo node) of the figure's variants that have
    none yet in this invocation, recorded in the figure as role "peak"."""
    p = b.plan
    missing = tuple(v for v in variants(b, figure) if v.kind not in b.peaks)
    if missing:
        n = p.requests_for(p.peak_conns)
        point = {"role": "peak", "node": "rust", "conns": p.peak_conns, "requests": n}
        alternate(b, figure, [point], lambda pt, g: flood_body(b, g, pt["conns"], pt["requests"]), variants=missing)
        set_peaks(b, b.figure(figure)["runs"])


def latency_body(b: Bench, g: Gate, point: dict) -> dict:
    """Figure 9: one loadgen run (closed or pingpong) at the point's rate; latency from each
    request's intended send time (closed) or its write (pingpong), and loadgen's lateness."""
    p = b.plan
    if point["role"] == "curve":
        peak = b.peaks.get(g.kind)
        if not peak:
            raise BenchError(f"no peak flood TPS for {g.kind} (the c={p.peak_conns} flood runs failed)")
        rate = max(1, round(peak * point["pct"] / 100))
        args = ["closed", "--conns", p.latency_conns, "--inflight", p.latency_inflight]
    else:
        # One connection; closed with a window that a stall of a few ms does not fill (with 1 in
        # flight it could never catch up with its schedule after one, and would measure that).
        peak, rate = None, p.self_rate
        args = [point["client"], "--conns", 1, "--inflight", 8]
    return paced_body(b, g, f"latency-{point['role']}", args, p.latency_duration_s, peak, rate)


def fig_latency(b: Bench) -> None:
    p = b.plan
    need_peaks(b, "latency")
    points = [{"role": "self", "node": "rust", "client": c, "rate": p.self_rate} for c in ("pingpong", "closed")]
    points += [{"role": "curve", "node": "rust", "pct": pct} for pct in p.latency_pcts]
    alternate(b, "latency", points, lambda pt, g: latency_body(b, g, pt), variants=variants(b, "latency"))


def fig_idle(b: Bench) -> None:
    points = [{"role": "idle", "transport": t, "conns": n} for t in ("tcp", "ws") for n in b.plan.idle_counts]
    alternate(b, "idle", points, lambda pt, g: idle_body(b, g, pt["conns"]), proto=lambda pt: pt["transport"])


def fig_kcp(b: Bench) -> None:
    """Figure 10: KCP sessions (loadgen --kcp, due's kcp-go parameters) — idle RSS per session and
    flood TPS; the Go gate serves KCP with the project's server on kcp-go (`--proto=kcp`)."""
    p = b.plan
    points = [{"role": "idle", "transport": "kcp", "conns": n} for n in p.kcp_idle_counts]
    points += [{"role": "flood", "transport": "kcp", "node": b.node.kind, "conns": c, "requests": p.kcp_requests}
               for c in p.kcp_flood_conns]  # fmt: skip

    def body(pt: dict, g: Gate) -> dict:
        if pt["role"] == "idle":
            return idle_body(b, g, pt["conns"])
        return flood_body(b, g, pt["conns"], pt["requests"])

    alternate(b, "kcp", points, body, proto=lambda pt: "kcp")


def fig_fanout(b: Bench) -> None:
    point = {"role": "fanout", "node": b.node.kind, "conns": b.plan.fanout_conns, "rounds": b.plan.fanout_rounds}
    alternate(b, "fanout", [point], lambda pt, g: fanout_body(b, g, pt["conns"]), variants=variants(b, "fanout"))


def fig_shards(b: Bench) -> None:
    p = b.plan
    point = {"role": "shards", "node": b.node.kind, "conns": p.peak_conns, "requests": p.requests_for(p.peak_conns)}
    variants = tuple(Variant("gatehouse", s) for s in p.shards)
    alternate(b, "shards", [point], lambda pt, g: flood_body(b, g, pt["conns"], pt["requests"]), variants=variants)


def metrics_flood_body(b: Bench, g: Gate, conns: int, requests: int) -> dict:
    """A flood, with /metrics scraped every second meanwhile when the gate serves it (what a
    Prometheus server would do; the scrape's own cost lands on the gate's control side)."""
    stop = threading.Event()
    scrapes: list[int] = []

    def scrape() -> None:
        url = f"http://127.0.0.1:{g.metrics_port}/metrics"
        while True:
            status, body = http("GET", url)
            scrapes.append(len(body) if status == 200 else -1)
            if stop.wait(1.0):
                return

    t = threading.Thread(target=scrape, daemon=True) if g.metrics_port else None
    if t:
        t.start()
    try:
        rec = flood_body(b, g, conns, requests)
    finally:
        stop.set()
        if t:
            t.join(5)
    if g.metrics_port:
        rec["scrapes"] = len(scrapes)
        if not scrapes or min(scrapes) < 0:
            rec["error"] = f"/metrics scrapes failed: {scrapes}"
    return rec


def fig_metrics(b: Bench) -> None:
    p = b.plan
    points = [{"role": "metrics", "node": b.node.kind, "conns": c, "requests": p.requests_for(c)}
              for c in sorted({p.peak_conns, p.flood_conns[-1]})]  # fmt: skip
    variants = (Variant("gatehouse"), Variant("gatehouse", metrics=True))
    alternate(b, "metrics", points, lambda pt, g: metrics_flood_body(b, g, pt["conns"], pt["requests"]),
              variants=variants)  # fmt: skip


def fig_benchclient(b: Bench) -> None:
    point = {"role": "benchclient", "node": b.node.kind, "conns": b.plan.client_conns,
             "requests": b.plan.client_requests}  # fmt: skip
    alternate(b, "benchclient", [point], lambda pt, g: benchclient_body(b, g), proto=lambda pt: "ws")


FIGURE_FUNCS = {
    "latency": fig_latency,
    "flood": fig_flood,
    "closed": fig_closed,
    "idle": fig_idle,
    "fanout": fig_fanout,
    "shards": fig_shards,
    "metrics": fig_metrics,
    "benchclient": fig_benchclient,
    "kcp": fig_kcp,
}


def run_block(b: Bench, kind: str, figures: list[str]) -> None:
    """Starts the block's node, runs its figures (alternating gates inside), stops the node."""
    b.link = free_port()
    b._errors_in_a_row = 0
    registered_before = set(b.env.services())
    b.node = start_node(b, kind)
    try:
        for name in figures:
            say(f"== {TITLES[name]} with the {NODE_NAMES[kind]}")
            FIGURE_FUNCS[name](b)
            b.blocks_left[name] -= 1
            if b.blocks_left[name] == 0:
                b.finish(name)
    finally:
        stop_node(b, b.node, registered_before)
        b.node = None


def needed_blocks(figures: list[str]) -> dict[str, list[str]]:
    """{node kind: [figures in run order]} for the selected figures."""
    blocks: dict[str, list[str]] = {}
    for kind, names in BLOCKS:
        chosen = [n for n in names if n in figures]
        if chosen:
            blocks[kind] = chosen
    return blocks


def missing_binaries(figures: list[str], floor: str = "with") -> list[str]:
    need = {"gatehouse", "gate", "loadgen"}
    if floor != "off" and set(figures) & set(FLOOR_FIGURES):
        need |= {"floor-broadcast", "floor-forward"}
    blocks = needed_blocks(figures)
    if "rust" in blocks:
        need.add("echo-node")
    if "go" in blocks:
        need.add("benchnode")
    if "benchclient" in figures:
        need.add("benchclient")
    return [str(BIN[n].relative_to(ROOT)) for n in sorted(need) if not os.access(BIN[n], os.X_OK)]


# ---------------------------------------------------------------------------------------------
# Report: RESULTS.md and the chart, from results/*.json


def load_results(out_dir: Path) -> dict[str, dict]:
    found = {}
    for name in FIGURES:
        path = out_dir / "results" / f"{name}.json"
        if path.exists():
            try:
                found[name] = json.loads(path.read_text())
            except ValueError as e:
                say(f"ignoring unreadable {path}: {e}")
    return found


def fmt(v: Any, spec: str = ",.0f") -> str:
    return "—" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}×"


def cell(runs: list[dict], key: str, high: bool, spec: str) -> tuple[float | None, str]:
    """(best value, text); 'failed' when there were runs but none clean."""
    v = best(runs, key, high)
    if v is None:
        return None, ("failed" if runs else "—")
    return v, fmt(v, spec)


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ab_rows(runs: list[dict], groups: list[tuple[list[str], dict]], key: str, high: bool, spec: str,
            floor: list[dict] | None = None) -> list[list[str]]:  # fmt: skip
    """Rows `labels + [gatehouse, due, ratio]` for each (labels, match) group; with `floor` runs
    also `[floor, gatehouse/floor]`."""
    rows = []
    for labels, match in groups:
        g, gt = cell(where(runs, gate="gatehouse", **match), key, high, spec)
        d, dt_ = cell(where(runs, gate="due", **match), key, high, spec)
        row = labels + [gt, dt_, fmt_ratio(ratio(g, d))]
        if floor is not None:
            f, ft = cell(where(floor, **match), key, high, spec)
            row += [ft, fmt_ratio(ratio(g, f))]
        rows.append(row)
    return rows


# Floor runs of --only floor invocations (results/floor.json), for figures whose own file has none.
FLOOR_FALLBACK: list[dict] = []


def floor_of(res: dict, role: str | None = None) -> list[dict]:
    """The figure's floor runs: its own, else those of the latest `--only floor` invocation."""
    runs = where(res.get("runs", []), gate="floor")
    if not runs:
        runs = [r for r in FLOOR_FALLBACK if r.get("figure") == res.get("figure") and r.get("gate") == "floor"]
    return where(runs, role=role) if role else runs


def section_flood(res: dict) -> str:
    runs = where(res["runs"], role="flood")
    groups = []
    for node in NODE_KINDS:
        for c in sorted({r["conns"] for r in where(runs, node=node)}):
            n = where(runs, node=node, conns=c)[0].get("requests")
            groups.append(([NODE_NAMES[node], str(c), fmt(n)], {"node": node, "conns": c}))
    heads = ["node", "c", "requests"]
    floor = floor_of(res, "flood")
    tps = table(heads + ["gatehouse req/s", "due req/s", "gatehouse/due", "floor req/s", "gatehouse/floor"],
                ab_rows(runs, groups, "tps", True, ",.0f", floor))  # fmt: skip
    cpu = table(heads + ["gatehouse CPU s/1M", "due CPU s/1M", "gatehouse/due", "floor CPU s/1M", "gatehouse/floor"],
                ab_rows(runs, groups, "cpu_s_per_1m", False, ".2f", floor))  # fmt: skip
    sys_rows = []
    for labels, match in groups:
        row = list(labels)
        for kind, sub in (("gatehouse", where(runs, gate="gatehouse", **match)), ("due", where(runs, gate="due", **match)),
                          ("floor", where(floor, **match))):  # fmt: skip
            clean = [r for r in sub if r.get("ok") and r.get("syscalls_per_pair") is not None]
            r = min(clean, key=lambda r: r.get("cpu_s_per_1m") or 1e9) if clean else None
            row.append(fmt(dig(r, "syscalls_per_pair"), ".2f"))
            if kind == "gatehouse":
                row.append(fmt(dig(r, "uring_reqs_per_pair"), ".2f"))
        sys_rows.append(row)
    syscalls = table(heads + ["gatehouse syscalls/pair", "gatehouse io_uring reqs/pair", "due syscalls/pair",
                              "floor syscalls/pair"], sys_rows)  # fmt: skip
    return (
        "### 1. Flood TPS, 1 KiB payload\n\nReplies per second over the timed flood (better of the runs "
        "per gate). The floor is `floor-forward` (bench/floor: client packets to the Rust echo node in "
        "deliver frames, pushes back, nothing else), so it has figures behind that node only.\n\n" + tps
        + "\n\n### 2. Gate CPU per 1M request/response pairs\n\n"
        "utime+stime of the gate process over the same timed floods / replies × 10⁶ (lower is better; "
        "better of the runs per gate).\n\n" + cpu
        + "\n\n### System calls per pair\n\n`perf stat -e raw_syscalls:sys_enter,io_uring:io_uring_submit_req -p "
        "PID` on the gate (every thread) over the same timed flood, / replies; the run with the lower CPU "
        "per gate. gatehouse's sends and receives are io_uring requests, most submitted several to one "
        "`io_uring_enter`; due's Go gate and the floor make one system call per read or write.\n\n" + syscalls
    )


def section_closed(res: dict) -> str:
    runs = where(res["runs"], role="closed")
    if not runs:
        return "_No closed-loop runs recorded._"
    rep = {}
    floor = floor_of(res, "closed")
    for kind in KINDS:
        sub = floor if kind == "floor" else where(runs, gate=kind)
        clean = [r for r in sub if r.get("ok") and r.get("p99_us") is not None]
        rep[kind] = min(clean, key=lambda r: r["p99_us"]) if clean else None
    rows = []
    for label, key, spec in (("peak flood req/s (c=100, Rust echo node)", "peak_tps", ",.0f"),
                             ("offered rate R = peak/2 (req/s)", "rate", ",.0f"),
                             ("achieved req/s", "tps", ",.0f"), ("p50 µs", "p50_us", ","),
                             ("p90 µs", "p90_us", ","), ("p99 µs", "p99_us", ","),
                             ("p99.9 µs", "p999_us", ","), ("max µs", "max_us", ","),
                             ("gate CPU s/1M", "cpu_s_per_1m", ".2f")):  # fmt: skip
        g, d, f = dig(rep["gatehouse"], key), dig(rep["due"], key), dig(rep["floor"], key)
        rows.append([label, fmt(g, spec), fmt(d, spec), fmt_ratio(ratio(g, d)), fmt(f, spec), fmt_ratio(ratio(g, f))])
    p = runs[0]
    return (
        f"loadgen closed, {p.get('conns')} connections, {p.get('inflight')} in flight each, "
        f"{p.get('duration')} s, each gate offered half of its own peak; the run with the lower p99 per "
        "gate is shown (note: the gates are offered different rates).\n\n"
        + table(["", "gatehouse", "due", "gatehouse/due", "floor", "gatehouse/floor"], rows)
    )


def section_latency(res: dict) -> str:
    runs = where(res["runs"], role="curve")
    if not runs:
        return "_No latency-curve runs recorded._"
    floor = floor_of(res, "curve")
    rows = []
    for pct in sorted({r["pct"] for r in runs}):
        sub = {k: where(floor if k == "floor" else runs, pct=pct, **({} if k == "floor" else {"gate": k})) for k in KINDS}
        for q, key in (("p50", "p50_us"), ("p99", "p99_us"), ("p99.9", "p999_us")):
            v = {k: best(sub[k], key, False) for k in KINDS}
            rate = {k: best(sub[k], "rate", False) for k in KINDS}
            rows.append([f"{pct} %", q, fmt(rate["gatehouse"]), fmt(v["gatehouse"], ","), fmt(rate["due"]),
                         fmt(v["due"], ","), fmt_ratio(ratio(v["gatehouse"], v["due"])), fmt(rate["floor"]),
                         fmt(v["floor"], ","), fmt_ratio(ratio(v["gatehouse"], v["floor"]))])  # fmt: skip
    curve = table(["load", "", "gatehouse offered/s", "gatehouse µs", "due offered/s", "due µs", "gatehouse/due",
                   "floor offered/s", "floor µs", "gatehouse/floor"], rows)  # fmt: skip
    own = where(res["runs"], role="self")
    srows = []
    for kind in KINDS:
        sub = floor_of(res, "self") if kind == "floor" else where(own, gate=kind)
        pp = best(where(sub, client="pingpong"), "p50_us", False)
        cl = best(where(sub, client="closed"), "p50_us", False)
        cw = best(where(sub, client="closed"), "write_p50_us", False)
        lag = best(where(sub, client="closed"), "lag_p99_us", False)
        srows.append([GATE_NAMES[kind], fmt(pp, ","), fmt(cl, ","), fmt(cw, ","),
                      fmt(cl - pp, ",") if pp is not None and cl is not None else "—", fmt(lag, ",")])  # fmt: skip
    r0 = runs[0]
    return (
        f"loadgen closed, {r0['loadgen'].get('conns') if isinstance(r0.get('loadgen'), dict) else '?'} "
        "connections with a window deep enough never to bind below the peak, paced to a share of "
        "each gate's own peak flood TPS (c=100, Rust echo node); latency is measured from each "
        "request's intended send time (requests due within 1 ms on one connection share a write), "
        "so stalls count against every request they delay. Better of the runs per gate and point.\n\n"
        + curve
        + f"\n\nloadgen's own latency: one connection at {fmt(own[0].get('rate') if own else None)} req/s, "
        "a blocking ping-pong client (`loadgen pingpong`, one request at a time, timed from its write) "
        "against loadgen closed at the same rate (8 in flight at most), µs; the difference is what "
        "loadgen's closed mode adds at low load.\n\n"
        + table(["gate", "pingpong p50 (from write)", "closed p50 (from intended)", "closed p50 (from write)",
                 "closed − pingpong", "closed: writes late by, p99"], srows)  # fmt: skip
    )


def section_idle(res: dict) -> str:
    runs = res["runs"]
    groups = [([t.upper(), fmt(n)], {"transport": t, "conns": n})
              for t in ("tcp", "ws") for n in sorted({r["conns"] for r in where(runs, transport=t)})]  # fmt: skip
    rows = ab_rows(runs, groups, "kib_per_conn", False, ".2f")
    return (
        "(gate VmRSS while N are held − VmRSS before) / N, fresh gate per point, heartbeats every 5 s, "
        "sampled after the first heartbeat round; lower is better (better of the runs per gate). The "
        "Go gate serves one protocol per process (`--proto=tcp` / `--proto=ws`).\n\n"
        + table(["transport", "connections", "gatehouse KiB/conn", "due KiB/conn", "gatehouse/due"], rows)
    )


def section_kcp(res: dict) -> str:
    runs = res["runs"]
    idle = where(runs, role="idle")
    groups = [([fmt(n)], {"conns": n}) for n in sorted({r["conns"] for r in idle})]
    idle_rows = ab_rows(idle, groups, "kib_per_conn", False, ".2f")
    flood = where(runs, role="flood")
    groups = [([fmt(c)], {"conns": c}) for c in sorted({r["conns"] for r in flood})]
    tps_rows = ab_rows(flood, groups, "tps", True, ",.0f")
    cpu_rows = ab_rows(flood, groups, "cpu_s_per_1m", False, ".2f")
    return (
        "loadgen `--kcp`: one UDP socket per session from 127.0.0.x, kcp-go's defaults as due runs them "
        "(windows 32/32, 100 ms interval, no nodelay) on both sides, the Rust echo node behind the gate. "
        "The Go gate serves KCP with the project's server on kcp-go v5.6.20 (`--proto=kcp`; due's "
        "`network/kcp` is not served here). Idle: as figure 4, heartbeats every 5 s. Flood: 16 requests "
        "in flight per session, due's pacing on both sides (ACKs ride on the next flush), so a flood "
        "TPS here says as much about KCP's pacing as about the gate; CPU per million is the gate's.\n\n"
        + table(["idle sessions", "gatehouse KiB/session", "due KiB/session", "gatehouse/due"], idle_rows)
        + "\n\n"
        + table(["flood sessions", "gatehouse TPS", "due TPS", "gatehouse/due"], tps_rows)
        + "\n\n"
        + table(["flood sessions", "gatehouse CPU s/1M", "due CPU s/1M", "gatehouse/due"], cpu_rows)
    )


def section_fanout(res: dict) -> str:
    runs = res["runs"]
    if not runs:
        return "_No fanout runs recorded._"
    rep = {}
    floor = floor_of(res, "fanout")
    for kind in KINDS:
        sub = floor if kind == "floor" else where(runs, gate=kind)
        clean = [r for r in sub if r.get("ok") and r.get("complete_p50_ms") is not None]
        rep[kind] = min(clean, key=lambda r: r["complete_p50_ms"]) if clean else None
    rows = []
    for label, key, spec in (("broadcast → last client, p50 over rounds (ms)", "complete_p50_ms", ",.2f"),
                             ("broadcast → last client, worst round (ms)", "complete_max_ms", ",.2f"),
                             ("per client p50 (µs)", "client_p50_us", ","),
                             ("per client p99 (µs)", "client_p99_us", ","),
                             ("per client max (µs)", "client_max_us", ",")):  # fmt: skip
        g, d, f = dig(rep["gatehouse"], key), dig(rep["due"], key), dig(rep["floor"], key)
        rows.append([label, fmt(g, spec), fmt(d, spec), fmt_ratio(ratio(g, d)), fmt(f, spec), fmt_ratio(ratio(g, f))])
    senders = {}
    for n in sorted({r.get("shards") for r in floor}):
        senders[n] = best(where(floor, shards=n), "complete_p50_ms", False)
    split = ", ".join(f"{n} sender thread{'s' if n > 1 else ''}: {fmt(v, ',.2f')} ms" for n, v in senders.items())
    r0 = runs[0]
    return (
        f"loadgen fanout, {fmt(r0.get('conns'))} TCP clients, {r0.get('rounds')} rounds; each round the "
        f"{NODE_NAMES.get(r0.get('node'), r0.get('node'))} broadcasts 64 B on route {BROADCAST_ROUTE} "
        "stamped with its wall clock; the run with the lower p50 per gate is shown. The floor is "
        "`floor-broadcast` (bench/floor: on the trigger, the same stamped packet to every client in a "
        f"plain send loop), the better of its sender-thread settings ({split or 'none'}).\n\n"
        + table(["", "gatehouse", "due", "gatehouse/due", "floor", "gatehouse/floor"], rows)
    )


def section_shards(res: dict) -> str:
    runs = res["runs"]
    rows, vals = [], {}
    for s in sorted({r["shards"] for r in runs}):
        sub = where(runs, shards=s)
        t, tt = cell(sub, "tps", True, ",.0f")
        c, ct = cell(sub, "cpu_s_per_1m", False, ".2f")
        vals[s] = (t, c)
        rows.append([str(s), tt, ct])
    if 1 in vals and 2 in vals:
        rows.append(["2 / 1", fmt_ratio(ratio(vals[2][0], vals[1][0])), fmt_ratio(ratio(vals[2][1], vals[1][1]))])
    r0 = runs[0] if runs else {}
    return (
        f"gatehouse only, flood c={r0.get('conns')}, {fmt(r0.get('requests'))} requests, Rust echo node; "
        "better of the runs per setting.\n\n" + table(["shards", "req/s", "gate CPU s/1M"], rows)
    )


def section_metrics(res: dict) -> str:
    runs = res["runs"]
    rows = []
    for c in sorted({r["conns"] for r in runs}):
        vals = {}
        for on in (False, True):
            sub = where(runs, conns=c, metrics=on)
            vals[on] = (cell(sub, "tps", True, ",.0f"), cell(sub, "cpu_s_per_1m", False, ".2f"))
        rows.append([f"c={c}", vals[False][0][1], vals[True][0][1],
                     fmt_ratio(ratio(vals[True][0][0], vals[False][0][0])),
                     vals[False][1][1], vals[True][1][1],
                     fmt_ratio(ratio(vals[True][1][0], vals[False][1][0]))])  # fmt: skip
    return (
        "gatehouse only, flood behind the Rust echo node, `metricsAddr` off vs on (on: `/metrics` "
        "scraped every second during the run); better of the runs per setting.\n\n"
        + table(["", "req/s off", "req/s on", "on/off", "CPU s/1M off", "CPU s/1M on", "on/off"], rows)
    )


def section_benchclient(res: dict) -> str:
    runs = res["runs"]
    groups = [([], {})]
    tps = ab_rows(runs, groups, "tps", True, ",.0f")[0]
    cpu = ab_rows(runs, groups, "cpu_s_per_1m", False, ".2f")[0]
    r0 = runs[0] if runs else {}
    return (
        f"`tests/interop/bin/benchclient` (due's cluster client over due's WS client), "
        f"{r0.get('conns')} connections, {fmt(r0.get('requests'))} requests of 1 KiB, against each gate's "
        f"WebSocket server, {NODE_NAMES.get(r0.get('node'), '?')} behind; better of the runs per gate.\n\n"
        + table(["", "gatehouse", "due", "gatehouse/due"], [["req/s"] + tps, ["gate CPU s/1M"] + cpu])
    )


def section_floor(res: dict) -> str:
    """The floors measured alone (`--only floor`), better of the runs per point."""
    runs = res["runs"]
    rows = []
    for c in sorted({r["conns"] for r in where(runs, figure="flood", role="flood")}):
        sub = where(runs, figure="flood", role="flood", conns=c)
        rows.append([f"floor-forward flood c={c}", cell(sub, "tps", True, ",.0f")[1] + " req/s",
                     cell(sub, "cpu_s_per_1m", False, ".2f")[1] + " CPU s/1M"])  # fmt: skip
    sub = where(runs, figure="closed", role="closed")
    if sub:
        rows.append(["floor-forward closed at half its peak", cell(sub, "p50_us", False, ",")[1] + " µs p50",
                     cell(sub, "p99_us", False, ",")[1] + " µs p99"])  # fmt: skip
    for pct in sorted({r["pct"] for r in where(runs, figure="latency", role="curve")}):
        sub = where(runs, figure="latency", role="curve", pct=pct)
        rows.append([f"floor-forward at {pct} % of its peak ({fmt(best(sub, 'rate', False))}/s)",
                     cell(sub, "p50_us", False, ",")[1] + " µs p50",
                     cell(sub, "p99_us", False, ",")[1] + " µs p99"])  # fmt: skip
    for n in sorted({r.get("shards") for r in where(runs, figure="fanout")}):
        sub = where(runs, figure="fanout", shards=n)
        c = sub[0].get("conns")
        rows.append([f"floor-broadcast to {fmt(c)}, {n} sender thread{'s' if n > 1 else ''}",
                     cell(sub, "complete_p50_ms", False, ",.2f")[1] + " ms to the last client (p50)",
                     cell(sub, "client_p50_us", False, ",")[1] + " µs per client (p50)"])  # fmt: skip
    return (
        "The floor programs of bench/floor measured without the gates (same loadgen runs as the "
        "figures above). The figures' ratios to the floor use these only where a figure's own "
        "invocation ran no floor.\n\n" + table(["", "", ""], rows)
    )


SECTIONS = {
    "latency": section_latency,
    "floor": section_floor,
    "flood": section_flood,
    "closed": section_closed,
    "idle": section_idle,
    "fanout": section_fanout,
    "shards": section_shards,
    "benchclient": section_benchclient,
    "metrics": section_metrics,
    "kcp": section_kcp,
}


def flood_ratios(results: dict, node: str, key: str, high: bool) -> list[tuple[int, float]]:
    runs = where(results.get("flood", {}).get("runs", []), role="flood", node=node)
    out = []
    for c in sorted({r["conns"] for r in runs}):
        g = best(where(runs, conns=c, gate="gatehouse"), key, high)
        r = ratio(g, best(where(runs, conns=c, gate="due"), key, high))
        if r is not None:
            out.append((c, r))
    return out


def at_largest(runs: list[dict], key: str, high: bool) -> tuple[int | None, float | None]:
    """(largest conns measured, gatehouse's best value there)."""
    counts = sorted({r["conns"] for r in runs})
    if not counts:
        return None, None
    n = counts[-1]
    return n, best(where(runs, conns=n, gate="gatehouse"), key, high)


def verdict(ok: bool | None, note: str = "") -> str:
    if ok is None:
        return "not measured"
    return ("**met**" if ok else "**missed**") + note


def targets(results: dict) -> str:
    rows = []
    for node in NODE_KINDS:
        rs = flood_ratios(results, node, "cpu_s_per_1m", False)
        worst = max(rs, key=lambda x: x[1]) if rs else None
        rows.append([f"gate CPU per pair ≤ 0.25× due (flood, {NODE_NAMES[node]}, worst c)",
                     f"{worst[1]:.2f}× at c={worst[0]}" if worst else "—",
                     verdict(worst[1] <= 0.25 if worst else None)])  # fmt: skip
    rs = flood_ratios(results, "rust", "tps", True)
    worst = min(rs, key=lambda x: x[1]) if rs else None
    rows.append(["flood TPS with the Rust echo node ≥ 3× due (worst c)",
                 f"{worst[1]:.2f}× at c={worst[0]}" if worst else "—",
                 verdict(worst[1] >= 3 if worst else None)])  # fmt: skip
    idle = results.get("idle", {}).get("runs", [])
    for t, limit in (("tcp", 1.5), ("ws", 4.0)):
        n, v = at_largest(where(idle, transport=t), "kib_per_conn", False)
        note = "" if n in (None, 19000) else f" (at {n:,}, target is at 19,000)"
        rows.append([f"≤ {limit} KiB per idle {t.upper()} connection at 19k (gatehouse)",
                     f"{v:.2f} KiB at {n:,}" if v is not None else "—",
                     verdict(v <= limit if v is not None else None, note)])  # fmt: skip
    flood = results.get("flood", {})
    worst = None
    for c in sorted({r["conns"] for r in where(flood.get("runs", []), role="flood", node="rust")}):
        g = best(where(flood["runs"], role="flood", node="rust", conns=c, gate="gatehouse"), "cpu_s_per_1m", False)
        r = ratio(g, best(where(floor_of(flood, "flood"), conns=c), "cpu_s_per_1m", False))
        if r is not None and (worst is None or r > worst[1]):
            worst = (c, r)
    rows.append(["gate CPU per pair ≤ 1.5× the forwarding floor (flood, Rust echo node, worst c)",
                 f"{worst[1]:.2f}× at c={worst[0]}" if worst else "—",
                 verdict(worst[1] <= 1.5 if worst else None)])  # fmt: skip
    fan = results.get("fanout", {})
    n, v = at_largest(where(fan.get("runs", []), gate="gatehouse"), "complete_p50_ms", False)
    f = best(where(floor_of(fan, "fanout"), conns=n), "complete_p50_ms", False) if n else None
    r = ratio(v, f)
    note = "" if n in (None, 19000) else f" (at {n:,}, target is at 19,000)"
    rows.append(["broadcast to 19k ≤ 1.1× the broadcast floor (p50 over rounds of the last client)",
                 f"{v:.2f} ms vs floor {f:.2f} ms = {r:.2f}× at {n:,}" if r is not None else "—",
                 verdict(r <= 1.1 if r is not None else None, note)])  # fmt: skip
    return table(["target", "measured", "status"], rows)


def machine_section(inv: dict) -> str:
    m = inv.get("machine", {})
    return "\n".join([
        f"- CPU: {m.get('cpu', '?')}, {m.get('nproc', '?')} CPUs available",
        f"- memory: {m.get('mem', '?')}; kernel {m.get('kernel', '?')}",
        f"- {m.get('rustc', 'rustc ?')}; {m.get('go', 'go ?')}; Python {m.get('python', '?')}",
        f"- gatehouse commit: `{m.get('commit', '?')}`",
    ])  # fmt: skip


METHOD = """\
- Everything runs on this one machine: gate, node, loadgen, Redis and Consul share its CPUs.
  gatehouse runs with `[gatehouse] shards = 2` (pinned), except in figure 6.
- Both gates read the same due `etc.toml` (generated from `tests/interop/etc/gate/etc.toml`: our
  Redis/Consul ports, free client ports, a fixed link port, `maxConnNum = 19900`, log level warn).
  The Go gate serves one protocol per process (`--proto=tcp` for TCP figures, `--proto=ws` for WS).
- **The Go gate's TCP server is the project's stand-in `tests/interop/internal/tcpnet`** (due's
  `network/tcp` module is not served by the Go module proxy here); its WebSocket server is due's
  own `network/ws`. TCP comparisons therefore compare against a spec-based re-implementation of
  due's TCP server, WS comparisons against due's own code. Its Consul registrar is likewise ours.
- Nodes: the due Go bench node (`tests/interop/bin/benchnode`, due `cluster/node`, JSON in/JSON
  out echo on route 1) and the Rust echo node (`target/release/echo-node`, echo without decoding,
  to isolate the gate's own cost). One node process per block; gates alternate behind it.
- Order: for every measurement point the gates run A B A B (gatehouse, due, gatehouse, due), each
  run a fresh gate process, ready once `gate-<gid>` is in Consul and a routing probe got a reply.
  Tables show the **better of the runs** per gate and metric (max TPS; min CPU, latency, RSS);
  every raw run is in `results/<figure>.json`. Ratios are gatehouse/due from the same invocation.
- Floors (`bench/floor/`, run beside the gates in the same alternation, a fresh process per run):
  `floor-forward` relays client packets to the Rust echo node in link deliver frames and its
  pushes back (epoll, one write per round towards the node, one per client per read back);
  `floor-broadcast` sends the stamped 64-byte broadcast to every client in a plain send loop
  (1 and 2 sender threads, the better shown). "gatehouse/floor" is gatehouse's figure divided by
  the floor's; the forwarding floor exists behind the Rust echo node only.
- Floods are preceded by an untimed warm-up flood (50 connections). CPU is utime+stime from
  `/proc/PID/stat` (fields 14+15, `SC_CLK_TCK`) of the gate process before and after the timed run.
"""


def commands_section(results: dict) -> str:
    """Which command measured which figures (figures may come from different invocations)."""
    by_cmd: dict[tuple[str, str], list[str]] = {}
    for name, res in results.items():
        inv = res.get("invocation", {})
        state = "" if res.get("complete") else " (incomplete)"
        by_cmd.setdefault((inv.get("command", "?"), inv.get("started", "?")), []).append(name + state)
    ordered = sorted(by_cmd.items(), key=lambda item: item[0][1])
    return "\n".join(f"- `{cmd}` at {started}: {', '.join(names)}" for (cmd, started), names in ordered)


def render_report(results: dict, previous: str) -> str:
    """RESULTS.md text; `previous` is the old file, whose hand-written tail is kept."""
    FLOOR_FALLBACK[:] = results.get("floor", {}).get("runs", [])
    latest = max(results.values(), key=lambda r: r.get("invocation", {}).get("started", ""), default={})
    inv = latest.get("invocation", {})
    quick = any(r.get("plan", {}).get("quick") for r in results.values())
    parts = [
        "# gatehouse vs due v2.4.1's gate: benchmark results",
        "",
        "<!-- Generated by bench/run.py from results/*.json; edits above the hand-written marker are "
        "overwritten. -->",
        "",
    ]
    if quick:
        parts += ["> **Quick run** (`--quick`): shrunk sizes for an end-to-end check; not for citation.", ""]
    parts += [f"Generated {now_iso()}.", "", "## Machine", "", machine_section(inv), "",
              "## Commands", "", commands_section(results) or "- (no results yet)", "",
              "## Method", "", METHOD, "## Targets", "", targets(results), ""]  # fmt: skip
    for name in FIGURES:
        if name == "floor" and name not in results:
            continue
        parts += [f"## {TITLES[name]}", ""]
        if name in results:
            if not results[name].get("complete"):
                parts += ["_Incomplete: the invocation that measured this was interrupted or failed._", ""]
            parts += [SECTIONS[name](results[name]), ""]
        else:
            parts += [f"_Not measured yet (`bench/run.sh --only {name}`)._", ""]
    parts += ["## Chart", "", "![chart](results/chart.png)", ""]
    tail = previous[previous.index(HAND_WRITTEN_MARKER):] if HAND_WRITTEN_MARKER in previous else (
        HAND_WRITTEN_MARKER + "\n\n## Notes\n\n(Hand-written analysis goes here; bench/run.py keeps "
        "everything from the marker line down.)\n"
    )  # fmt: skip
    return "\n".join(parts) + "\n" + tail


COLORS = {
    ("rust", "gatehouse"): "#1f5fa8",
    ("rust", "due"): "#e07b1a",
    ("go", "gatehouse"): "#8fb8e8",
    ("go", "due"): "#f5c08a",
}


def write_chart(out_dir: Path, results: dict) -> bool:
    """Grouped bars of flood TPS and gate CPU per 1M pairs for every gate × node combination."""
    runs = where(results.get("flood", {}).get("runs", []), role="flood")
    if not runs:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        say("matplotlib not installed: no chart (bench/run.sh installs it into bench/.venv)")
        return False
    conns = sorted({r["conns"] for r in runs})
    combos = [(n, g) for n in NODE_KINDS for g in GATES if where(runs, node=n, gate=g)]
    width = 0.8 / max(1, len(combos))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    panels = ((axes[0], "tps", True, "Flood TPS, 1 KiB payload (higher is better)", "replies / s"),
              (axes[1], "cpu_s_per_1m", False, "Gate CPU per 1M pairs (lower is better)", "CPU seconds"))  # fmt: skip
    for ax, key, high, title, ylabel in panels:
        for i, (node, gate) in enumerate(combos):
            vals = [best(where(runs, node=node, gate=gate, conns=c), key, high) for c in conns]
            xs = [j + (i - (len(combos) - 1) / 2) * width for j in range(len(conns))]
            ax.bar(xs, [v or 0 for v in vals], width, color=COLORS[(node, gate)],
                   label=f"{GATE_NAMES[gate]} · {NODE_NAMES[node]}")  # fmt: skip
        ax.set_xticks(range(len(conns)), [f"c={c}" for c in conns])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.{0 if high else 1}f}"))
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(combos), fontsize=9, frameon=False)
    fig.suptitle("gatehouse vs due v2.4.1 gate (better of the A/B runs per gate)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = out_dir / "results" / "chart.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out_dir: Path) -> None:
    results = load_results(out_dir)
    md = out_dir / "RESULTS.md"
    previous = md.read_text() if md.exists() else ""
    md.write_text(render_report(results, previous))
    chart = write_chart(out_dir, results)
    say(f"wrote {md}" + (f" and {out_dir / 'results/chart.png'}" if chart else ""))


# ---------------------------------------------------------------------------------------------
# Entry point


def machine_info() -> dict:
    info = {"nproc": len(os.sched_getaffinity(0)), "kernel": platform.release(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    info["rustc"] = command_output(["rustc", "--version"])
    info["go"] = command_output(["go", "version"])
    info["commit"] = command_output(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return info


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/run.py",
        description="gatehouse vs due v2.4.1's Go gate (run it through bench/run.sh, which builds first)",
    )
    ap.add_argument("--quick", action="store_true", help="shrunk sizes for a fast end-to-end check")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(FIGURES)}")
    ap.add_argument("--repeats", type=int, default=2, help="runs per gate and point, alternated (default 2)")
    ap.add_argument("--out", type=Path, help="where results/ and RESULTS.md go (default bench/; "
                    "with --quick the run directory, so a quick run never replaces real results)")  # fmt: skip
    ap.add_argument("--report-only", action="store_true", help="regenerate RESULTS.md and the chart only")
    ap.add_argument("--no-floor", action="store_true", help="leave the floor programs out")
    args = ap.parse_args(argv)
    chosen = [ALIASES.get(f.strip(), f.strip()) for f in args.only.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FIGURES]
    if unknown:
        ap.error(f"unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    args.floor = "off" if args.no_floor else "with"
    if "floor" in chosen:
        # --only floor[,figure…]: the floors of those figures (default: every figure with one).
        if args.no_floor:
            ap.error("--only floor and --no-floor contradict each other")
        args.floor = "only"
        chosen = [f for f in chosen if f != "floor"] or list(FLOOR_FIGURES)
        without = [f for f in chosen if f not in FLOOR_FIGURES]
        if without:
            ap.error(f"no floor for {without}; floors exist for {', '.join(FLOOR_FIGURES)}")
    args.figures = [f for f in FIGURES if f in chosen] if chosen else [f for f in FIGURES if f != "floor"]
    return args


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = BENCH / "work" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    out_dir = args.out or (run_dir if args.quick else BENCH)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["python3", "bench/run.py", *sys.argv[1:]])
    plan = Plan.make(args.quick, args.repeats)
    invocation = {"command": command, "started": now_iso(), "run_dir": str(run_dir.relative_to(ROOT)),
                  "figures": args.figures, "floor": args.floor, "machine": machine_info()}  # fmt: skip
    b = Bench(plan, run_dir, out_dir, invocation)
    say(f"run directory {run_dir.relative_to(ROOT)}; results into {out_dir}; figures {', '.join(args.figures)}")
    failed = False
    try:
        b.env.start()
        for kind, figures in needed_blocks(args.figures).items():
            try:
                run_block(b, kind, figures)
            except BlockAborted as e:
                failed = True
                say(f"{NODE_NAMES[kind]} block given up: {e}")
            except BenchError as e:
                failed = True
                say(f"{NODE_NAMES[kind]} block failed: {e}")
    except BenchError as e:
        say(f"environment failed: {e}")
        failed = True
    except KeyboardInterrupt:
        say("interrupted: stopping every child process")
        failed = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Proc.stop_all()
        b.env.stop()
        if b.results:
            write_report(out_dir)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out_dir = args.out or BENCH
    if args.report_only:
        write_report(out_dir)
        return 0
    missing = missing_binaries(args.figures, args.floor)
    if missing:
        print("missing binaries (bench/run.sh builds them): " + ", ".join(missing), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
