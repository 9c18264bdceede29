"""Model updates over MQTT, end to end on one machine: `edgegap publish` to agents serving.

Real bundles: wide conv nets converted by the converter (x86-avx2, int8, `--force`) to about
4 MB and 30 MB of .tflite, signed with a key generated for the run; a 64 KB model of the same
input is what every agent serves before the update. Every agent is `python -m agent run` in its
own process (TF-free, `--threads 1`, a synthetic source), against mosquitto on a free loopback
port started here (or `--broker URL`). Publishing is in-process: `converter.publishing.prepare`
and `publish`, what `edgegap publish` calls, timed from before it reads the bundle.

- publish-to-active: from the start of the publish to the agent's `activated` event, on a
  fresh agent serving the 64 KB model at 640x480@30; divided by the time one raw MQTT message of
  the same size takes through the same broker (paho, QoS 1, publish to a subscriber's receipt).
  Each trial runs three steps, their order rotating: the update with the agent's defaults (the
  new model loads over an XNNPACK weight cache built by a child process), the same update with
  `updates.weight_cache: false` (the baseline: it loads in the interpreter, as at start-up), and
  the raw message; medians of --trials.
- frames lost and swap stall, from the agent's JSONL in the same trials, in the window from the
  publish to 1 s after `activated`: lost = frame indices missing from the results; stall =
  longest gap between two results minus the median gap before the publish (goal < 33 ms). The
  last lines: the longest gap across the swap, baseline / weight cache.
- RSS of one agent across --swaps consecutive swaps (releases alternating the 4 MB and the 64 KB
  model, each a new version; the agent loads from its store when it still holds the model).
- fleet: --agents agents (synthetic 64x64@2) get one publish of the 4 MB bundle; time until all
  are active / one agent alone (median of 3); every `activated` event must name the signed sha256.
- over a link: the publish-to-active and raw trials again, through a proxy that gives each client
  (publisher, agent, raw sender and receiver) its own link of --link-mbit Mbit/s to the broker
  (benchmarks/update_link.py): a device on a LAN or Wi-Fi rather than loopback.

Usage: python benchmarks/update.py [--quick] [--trials 5] [--swaps 100] [--agents 50]
       [--broker mqtt://host:port] [--cache DIR] [--stall-only] [--link-mbit 100]
Example: python benchmarks/update.py --stall-only   # the update trials only: no RSS, no fleet
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from update_kit import (
    PREFIX,
    AgentProc,
    Mosquitto,
    Watcher,
    bundles,
    raw_transfer,
    results,
    scratch,
    spawn_agent,
    swap_figures,
    versioned,
    wait_until,
)
from update_link import LinkProxy
from update_report import Measured, Plan, Trials, print_fleet, print_ratios, print_swaps

from agent.bundle.loading import MODEL_FILE, read_manifest
from agent.updates.protocol import DEFAULT_CHUNK_SIZE, Topics
from converter.broker_client import BrokerOptions, Connection
from converter.publishing import Published, prepare, publish

SOLO_SOURCE = "synthetic:640x480@30"
FLEET_SOURCE = "synthetic:64x64@2"
LINK_TRIAL = 1000  # trial numbers (channels, versions, raw topics) of the link trials
START_S = 120.0  # an agent's start, or a whole fleet's
UPDATE_S = 300.0


class Bench:
    def __init__(
        self, url: str, cache: Path, work: Path, watcher: Watcher, broker: Mosquitto | None = None
    ) -> None:
        self.url, self.cache, self.work, self.watcher = url, cache, work, watcher
        self.broker = broker  # None: a broker elsewhere (--broker), its CPU not measured
        self.key = cache / "keys" / "edgegap.key"
        self.pub = cache / "keys" / "edgegap.pub"
        self.topics = Topics(PREFIX)
        self.seeded: set[str] = set()

    def broker_cpu(self) -> float:
        return self.broker.cpu_s() if self.broker is not None else 0.0

    def publish(self, bundle: Path, channel: str) -> Published:
        """What `edgegap publish BUNDLE --channel CHANNEL` does, in this process."""
        prepared = prepare(bundle, channel, DEFAULT_CHUNK_SIZE)
        with Connection(BrokerOptions(self.url), "publish") as conn:
            return publish(conn, self.topics, prepared)

    def bundle(self, model: str, version: int) -> Path:
        out = self.work / "bundles" / f"{model}-v{version}"
        if not out.exists():
            versioned(self.cache / model, version, self.key, out)
        return out

    def agent(
        self, device: str, channel: str, source: str, jsonl: bool = False, cache: bool = True
    ) -> AgentProc:
        """An agent serving the 64 KB model v1, following channel (seeded with that release);
        cache: updates.weight_cache (False: updates load in the interpreter, as at start-up)."""
        if channel not in self.seeded:
            self.publish(self.bundle("small", 1), channel)
            self.seeded.add(channel)
        return spawn_agent(
            self.url, device, channel, self.cache / "small", self.pub, self.work / device,
            source, jsonl, {"weight_cache": cache},
        )  # fmt: skip

    def started(self, agents: list[AgentProc]) -> None:
        def all_online() -> bool:
            for a in agents:
                if a.process.poll() is not None:
                    log = (a.workdir / "agent.log").read_text()[-2000:]
                    raise RuntimeError(f"agent {a.device} exited:\n{log}")
            return all(self.watcher.online(a.device) for a in agents)

        wait_until(all_online, START_S, f"{len(agents)} agent(s) online")

    def activated(self, agents: list[AgentProc], sha: str, since: float) -> dict[str, float]:
        """Seconds from since to each agent's `activated` event; each must name sha."""
        devices = {a.device for a in agents}

        def done() -> bool:
            bad = [e for e in self.watcher.find("rejected", after=since) if e.device in devices]
            if bad:
                raise RuntimeError(f"{bad[0].device} rejected the update: {bad[0].body}")
            return {e.device for e in self.watcher.find("activated", after=since)} >= devices

        wait_until(done, UPDATE_S, f"{len(devices)} agent(s) activated")
        out: dict[str, float] = {}
        for e in self.watcher.find("activated", after=since):
            if e.device in devices and e.device not in out:
                if e.body.get("sha256") != sha:
                    raise RuntimeError(f"{e.device} activated {e.body.get('sha256')}, not {sha}")
                out[e.device] = e.at - since
        return out

    # ---- publish-to-active, frames lost, stall -------------------------------------------------
    def update_trial(self, model: str, trial: int, cache: bool = True) -> dict[str, float]:
        name = f"{model}-{trial}{'' if cache else '-interp'}"
        agent = self.agent(f"solo-{name}", f"t-{name}", SOLO_SOURCE, jsonl=True, cache=cache)
        device = agent.device
        try:
            self.started([agent])
            time.sleep(1.5)  # the usual gap between results, before the update
            bundle = self.bundle(model, 2 + trial)
            sha = read_manifest(bundle).model.sha256
            t0, wall0 = time.perf_counter(), time.time()
            self.publish(bundle, f"t-{name}")
            published = time.perf_counter() - t0
            seconds = self.activated([agent], sha, t0)[device]
            time.sleep(1.2)
        finally:
            agent.stop()
        phases = self.watcher.phases(device, t0, ("available", "verified", "activating"))
        return {"update_s": seconds, "published_s": published, **phases,
                **swap_figures(results(agent), wall0, wall0 + seconds + 1.0)}  # fmt: skip

    def raw_trial(self, payload: bytes, trial: int) -> float:
        return raw_transfer(self.url, payload, f"bench/raw/{trial}", UPDATE_S)

    # ---- RSS across swaps ------------------------------------------------------------------------
    def rss(self, swaps: int, marks: tuple[int, ...]) -> dict[int, float]:
        agent = self.agent("rss", "rss", "synthetic:320x240@30")
        seen: dict[int, float] = {}
        try:
            self.started([agent])
            for n in range(1, swaps + 1):
                bundle = self.bundle("4MB" if n % 2 else "small", 1 + n)
                t0 = time.perf_counter()
                self.publish(bundle, "rss")
                self.activated([agent], read_manifest(bundle).model.sha256, t0)
                shutil.rmtree(bundle)
                if n in marks:
                    time.sleep(0.5)
                    seen[n] = agent.rss_mb()
        finally:
            agent.stop()
        return seen

    # ---- the fleet -------------------------------------------------------------------------------
    def fleet_update(self, name: str, count: int) -> dict[str, Any]:
        agents = [self.agent(f"{name}-{i:02d}", name, FLEET_SOURCE) for i in range(count)]
        try:
            self.started(agents)
            time.sleep(1.0)
            tf = [a.device for a in agents if a.imports_tensorflow()]
            rss = sum(a.rss_mb() for a in agents)
            bundle = self.bundle("4MB", 2)
            cpu0 = [*(a.cpu_s() for a in agents), self.broker_cpu()]
            t0 = time.perf_counter()
            self.publish(bundle, name)
            times = self.activated(agents, read_manifest(bundle).model.sha256, t0)
            cpu1 = [*(a.cpu_s() for a in agents), self.broker_cpu()]
            cpu = [after - before for before, after in zip(cpu0, cpu1, strict=True)]
            end = t0 + max(times.values())
            inflight = [n for at, n in self.watcher.inflight if t0 <= at <= end + 1.0]
        finally:
            for a in agents:
                a.stop()
        return {"seconds": max(times.values()), "verified": len(times), "tf": tf, "rss": rss,
                "inflight": max(inflight, default=None), "agents_cpu": sum(cpu[:-1]),
                "broker_cpu": cpu[-1]}  # fmt: skip


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small models, few agents")
    ap.add_argument("--trials", type=int, help="update/raw trial pairs per size (default 5)")
    ap.add_argument("--swaps", type=int, help="consecutive swaps for the RSS figure (default 100)")
    ap.add_argument("--agents", type=int, help="agents in the fleet (default 50)")
    ap.add_argument("--broker", help="use this broker instead of a mosquitto started here")
    ap.add_argument(
        "--stall-only", action="store_true", help="only the update trials: no RSS, no fleet"
    )
    ap.add_argument(
        "--link-mbit", type=float, default=100.0,
        help="each client's link in the link trials, Mbit/s (default 100; 0: no link trials)",
    )  # fmt: skip
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/edgegap/bench-update")
    return ap.parse_args()


def make_plan(args: argparse.Namespace) -> Plan:
    return Plan(
        mode="quick" if args.quick else "full",
        trials=args.trials or (2 if args.quick else 5),
        swaps=args.swaps or (12 if args.quick else 100),
        count=args.agents or (4 if args.quick else 50),
        stall_only=args.stall_only,
        link_mbit=args.link_mbit,
    )


STEPS = ("update", "baseline", "raw")


def trials_of(bench: Bench, model: str, payload: bytes, trials: int) -> Trials:
    """Update, baseline (interpreter load) and raw trials of one model, order rotating; printed."""
    out = Trials([], [], [])
    for t in range(trials):
        for step in STEPS[t % 3 :] + STEPS[: t % 3]:
            if step == "raw":
                out.raws.append(bench.raw_trial(payload, t))
            else:
                cache = step == "update"
                (out.updates if cache else out.baseline).append(bench.update_trial(model, t, cache))
        for label, u in (("weight cache", out.updates[-1]), ("interpreter", out.baseline[-1])):
            print(f"[{model}] trial {t + 1}, {label}: publish-to-active {u['update_s']:.3f} s, "
                  f"raw {out.raws[-1]:.3f} s, lost {u['lost']:.0f} "
                  f"(at the swap {u['lost_at_swap']:.0f}), stall {u['stall_s'] * 1e3:.1f} ms")  # fmt: skip
    return out


def link_trials(bench: Bench, model: str, payload: bytes, trials: int) -> Trials:
    """Update (the agent's defaults) and raw trials through the link proxy, order alternating."""
    out = Trials([], [], [])
    for t in range(trials):
        for step in ("update", "raw") if t % 2 == 0 else ("raw", "update"):
            if step == "raw":
                out.raws.append(bench.raw_trial(payload, LINK_TRIAL + t))
            else:
                out.updates.append(bench.update_trial(model, LINK_TRIAL + t))
        print(f"[{model}, link] trial {t + 1}: publish-to-active "
              f"{out.updates[-1]['update_s']:.3f} s, raw {out.raws[-1]:.3f} s")  # fmt: skip
    return out


def measure(bench: Bench, cache: Path, plan: Plan) -> Measured:
    """Update/raw trials of both models, then (unless stall_only) RSS, solo and fleet, then the
    trials over a link."""
    trials: dict[str, Trials] = {}
    payloads = {m: (cache / m / MODEL_FILE).read_bytes() for m in ("4MB", "30MB")}
    for model, payload in payloads.items():
        trials[model] = trials_of(bench, model, payload, plan.trials)
    measured = Measured(trials, {}, [], {}, {})
    if not plan.stall_only:
        measured.rss = bench.rss(plan.swaps, plan.marks)
        print(
            "agent RSS: "
            + ", ".join(f"after swap {n} {mb:.1f} MB" for n, mb in measured.rss.items())
        )
        measured.solo = [bench.fleet_update(f"solo{i}", 1)["seconds"] for i in range(3)]
        measured.fleet = bench.fleet_update("fleet", plan.count)
    if plan.link_mbit > 0:
        host, port = bench.url.split("://", 1)[1].rsplit(":", 1)
        with LinkProxy(host, int(port), plan.link_mbit * 1e6 / 8) as link:
            linked = Bench(link.url, cache, bench.work, bench.watcher, bench.broker)
            for model, payload in payloads.items():
                measured.link[model] = link_trials(linked, model, payload, plan.trials)
    return measured


def main() -> None:
    args = parse_args()
    plan = make_plan(args)
    cache = bundles(args.cache, plan.mode)
    work = scratch()
    broker = None if args.broker else Mosquitto(work)
    url = args.broker or broker.url  # type: ignore[union-attr]
    watcher = Watcher(url)
    bench = Bench(url, cache, work, watcher, broker)
    sizes = {m: (cache / m / MODEL_FILE).stat().st_size for m in ("small", "4MB", "30MB")}
    print(f"broker {url}; models: " + ", ".join(f"{m} {s / 2**20:.2f} MiB" for m, s in sizes.items())
          + f"; chunks of {DEFAULT_CHUNK_SIZE // 1024} KiB; {plan.mode} run")  # fmt: skip
    try:
        measured = measure(bench, cache, plan)
    finally:
        watcher.close()
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_swaps(measured, plan)
    if not plan.stall_only:
        print_fleet(measured, plan)
    print_ratios(measured, plan, sizes)


if __name__ == "__main__":
    main()
