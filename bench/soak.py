"""The soak's sampler and report (bench/soak.sh runs both; standard library, matplotlib for the plot).

  soak.py sample --gate PID --node PID --metrics HOST:PORT --loadgen-log FILE --csv FILE [--every S]
      Appends one row every S seconds (10) until SIGTERM: the gate's RSS (/proc/PID/status VmRSS)
      and open fds (/proc/PID/fd), the echo node's and loadgen's RSS, and from the gate's /metrics:
      connections open, users bound, queued packets, armed deadline timers (summed over shards),
      closes by reason (cumulative); from loadgen's last progress line: its phase, open, bound and
      unexpected closes.
  soak.py report --csv FILE --summary FILE --png FILE --minutes M [--warmup-pct P]
      Prints the figures and PASS/FAIL, writes the plot; exit code 1 on FAIL.

Warm-up: the ramp plus the first P % (20) of the timed run. RSS growth after warm-up: the gate's
mean RSS over the last minute of the run (the samples before loadgen's drain; at least 3) against
its mean over the minute after the warm-up (at least 3 samples), in %. fds before/after: the
gate's open fds at the first sample (before any client) and at the last one (after every client
left and the gate counts 0 connections), less the node link connections open at each (a shard
dials the node's link when it first has a packet for it, so they appear after the baseline).
"""

import argparse
import csv
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

REASONS = ["peer", "io", "heartbeat_timeout", "authorize_timeout", "forced", "graceful",
           "protocol", "queue_full", "rate_limited", "replaced", "handshake"]
# Closes a soak expects: clients closing (churn, the end of the run).
EXPECTED_REASONS = {"peer"}
COLUMNS = (["t_s", "phase", "gate_rss_kib", "gate_fds", "node_rss_kib", "loadgen_rss_kib",
            "conns_open", "users_bound", "queued_packets", "deadline_timers", "node_links",
            "lg_open", "lg_bound", "lg_unexpected"] + [f"closed_{r}" for r in REASONS])


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return ""


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return ""


def scrape(addr):
    """{name or name{labels}: value} from /metrics; {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def family_sum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def last_progress(path):
    """Fields of loadgen's last progress line (`t=… phase=… open=… …`)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [l for l in f.read().decode(errors="replace").splitlines() if l.startswith("t=")]
    except OSError:
        return {}
    if not lines:
        return {}
    return dict(w.split("=", 1) for w in lines[-1].split() if "=" in w)


def sample(a):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t0 = time.monotonic()
    new = not Path(a.csv).exists()
    with open(a.csv, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(COLUMNS)
        n = 0
        while not stop:
            m = scrape(a.metrics)
            p = last_progress(a.loadgen_log)
            # loadgen starts after the sampler: its pid file appears then.
            try:
                lg = int(Path(a.loadgen_pid_file).read_text())
            except (OSError, ValueError):
                lg = None
            lg_alive = lg is not None and Path(f"/proc/{lg}").exists()
            phase = p.get("phase", "pre")
            if p and not lg_alive:
                phase = "post"
            row = [round(time.monotonic() - t0, 1), phase, rss_kib(a.gate), fds(a.gate),
                   rss_kib(a.node), rss_kib(lg) if lg_alive else "",
                   int(family_sum(m, "gatehouse_connections_open")) if m else "",
                   int(family_sum(m, "gatehouse_users_bound")) if m else "",
                   int(family_sum(m, "gatehouse_shard_queued_packets")) if m else "",
                   int(family_sum(m, "gatehouse_shard_deadline_timers")) if m else "",
                   int(family_sum(m, "gatehouse_node_link_connections")) if m else "",
                   p.get("open", ""), p.get("bound", ""), p.get("unexpected", "")]
            row += [int(m.get(f'gatehouse_connections_closed_total{{reason="{r}"}}', 0)) if m else ""
                    for r in REASONS]
            w.writerow(row)
            f.flush()
            n += 1
            # Sleep to the next multiple of the period (signals end the sleep early).
            left = t0 + n * a.every - time.monotonic()
            while left > 0 and not stop:
                time.sleep(min(left, 0.5))
                left = t0 + n * a.every - time.monotonic()
    return 0


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def report(a):
    rows = list(csv.DictReader(open(a.csv)))
    summary = {}
    try:
        summary = json.loads(Path(a.summary).read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        print("loadgen summary missing or unreadable", file=sys.stderr)
    run = [r for r in rows if r["phase"] == "run"]
    if not rows or not run:
        print("FAIL: no samples of the run phase")
        return 1
    t = lambda r: float(r["t_s"])
    t_run0, t_run1 = t(run[0]), t(run[-1])
    warm_end = t_run0 + a.minutes * 60 * a.warmup_pct / 100
    rss = lambda rs: [num(r["gate_rss_kib"]) for r in rs if num(r["gate_rss_kib"])]
    after_warm = [r for r in run if warm_end <= t(r) <= warm_end + 60]
    if len(after_warm) < 3:
        after_warm = [r for r in run if t(r) >= warm_end][:3]
    last = [r for r in run if t(r) >= t_run1 - 60]
    if len(last) < 3:
        last = run[-3:]
    base, final = rss(after_warm), rss(last)
    growth = (sum(final) / len(final) / (sum(base) / len(base)) - 1) * 100 if base and final else None
    fds_before, fds_after = num(rows[0]["gate_fds"]), num(rows[-1]["gate_fds"])
    # A shard dials the node's link when it first has a packet for it (after the baseline): the
    # link connections open at each end are taken out of the comparison.
    links_before, links_after = (num(rows[0]["node_links"]) or 0), (num(rows[-1]["node_links"]) or 0)
    open_after = num(rows[-1]["conns_open"])
    closes = {r: int(num(rows[-1][f"closed_{r}"]) or 0) for r in REASONS}
    gate_unexpected = sum(v for r, v in closes.items() if r not in EXPECTED_REASONS)
    lg_unexpected = summary.get("unexpected_closes")
    peak = max((num(r["conns_open"]) or 0) for r in rows)

    print(f"samples: {len(rows)} ({len(run)} in the run phase), warm-up ends {warm_end - t_run0:.0f} s into the run")
    print(f"gate RSS: {sum(base) / len(base) / 1024:.1f} MiB after warm-up (mean of {len(base)} samples), "
          f"{sum(final) / len(final) / 1024:.1f} MiB at the end of the run (mean of {len(final)}), "
          f"max {max(rss(rows)) / 1024:.1f} MiB; growth {growth:+.2f} %" if growth is not None else "gate RSS: not enough samples")
    print(f"gate fds: {fds_before:.0f} before the clients ({links_before:.0f} node link connections), "
          f"{fds_after:.0f} after they left ({links_after:.0f} node link connections; client "
          f"connections open then: {open_after:.0f}; peak {peak:.0f})")
    print("gate closes by reason: " + ", ".join(f"{r}={v}" for r, v in closes.items() if v))
    if summary:
        print("loadgen: " + json.dumps(summary))
    expected_peer = None
    if summary:
        expected_peer = summary.get("churned", 0) + summary.get("conns", 0) + 1  # + the trigger
        print(f"client closes expected as peer at the gate: {expected_peer} "
              f"(churned {summary.get('churned')} + {summary.get('conns')} at the end + the trigger); counted: {closes['peer']}")
    checks = [
        ("RSS growth after warm-up < 5 %", growth is not None and growth < 5),
        ("fd count back to baseline after the clients leave (node link connections aside)",
         fds_after is not None and fds_before is not None
         and fds_after - links_after <= fds_before - links_before and open_after == 0),
        ("zero unexpected closes (loadgen and gate close reasons)", lg_unexpected == 0 and gate_unexpected == 0),
        ("nothing lost or unanswered (echoes and bind acks back within 10 s of the last send, broadcasts, connects)", summary.get("failures") == 0),
    ]
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    plot(rows, warm_end, t_run0, t_run1, a.png)
    ok = all(ok for _, ok in checks)
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def plot(rows, warm_end, t_run0, t_run1, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (bench/soak.sh installs it into bench/.venv)")
        return
    x = [float(r["t_s"]) / 60 for r in rows]
    col = lambda k, scale=1: [(num(r[k]) or 0) / scale for r in rows]
    fig, ax = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    ax[0].plot(x, col("gate_rss_kib", 1024), label="gate RSS")
    ax[0].set_ylabel("MiB")
    ax[1].plot(x, col("gate_fds"), label="gate open fds")
    ax[1].plot(x, col("conns_open"), label="connections open (gate)")
    ax[1].plot(x, col("users_bound"), label="users bound (gate)")
    ax[2].plot(x, col("queued_packets"), label="queued packets (sum of write queues)")
    ax[2].plot(x, col("deadline_timers"), label="armed deadline timers")
    prev = None
    for reason in REASONS:
        c = col(f"closed_{reason}")
        if any(c):
            d = [0] + [max(0, b - a) for a, b in zip(c, c[1:])]
            ax[3].plot(x, d, label=f"closes per sample: {reason}")
    ax[3].set_ylabel("closes / sample")
    ax[3].set_xlabel("minutes")
    for a_ in ax:
        a_.axvspan(t_run0 / 60, warm_end / 60, color="0.9", label=None)
        a_.axvline(t_run1 / 60, color="0.6", linestyle=":")
        a_.legend(loc="upper left", fontsize=8)
        a_.grid(alpha=0.3)
    fig.suptitle("gatehouse soak (grey: warm-up; dotted: end of the run)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"plot: {png}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--gate", type=int, required=True)
    s.add_argument("--node", type=int, required=True)
    s.add_argument("--loadgen-pid-file", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--loadgen-log", required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--every", type=float, default=10)
    r = sub.add_parser("report")
    r.add_argument("--csv", required=True)
    r.add_argument("--summary", required=True)
    r.add_argument("--png", required=True)
    r.add_argument("--minutes", type=float, required=True)
    r.add_argument("--warmup-pct", type=float, default=20)
    a = p.parse_args()
    if a.cmd == "sample":
        return sample(a)
    return report(a)


if __name__ == "__main__":
    sys.exit(main())
