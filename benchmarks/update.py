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

Usage: python benchmarks/update.py [--quick] [--trials 5] [--swaps 100] [--agents 50]
       [--broker mqtt://host:port] [--cache DIR] [--stall-only]
Example: python benchmarks/update.py --stall-only   # the update trials only: no RSS, no fleet
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from dataclasses import dataclass
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

from agent.bundle.loading import MODEL_FILE, read_manifest
from agent.updates.protocol import DEFAULT_CHUNK_SIZE, Topics
from converter.broker_client import BrokerOptions, Connection
from converter.publishing import Published, prepare, publish

SOLO_SOURCE = "synthetic:640x480@30"
FLEET_SOURCE = "synthetic:64x64@2"
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


def med(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Plan:
    """How much to run: the quick smoke run or the full one, with any counts given overriding."""

    mode: str
    trials: int
    swaps: int
    count: int
    stall_only: bool = False

    @property
    def marks(self) -> tuple[int, ...]:
        """The swaps after which the agent's RSS is read: the 10th (if there are more) and the last."""
        return (10, self.swaps) if self.swaps > 10 else (self.swaps,)


@dataclass
class Trials:
    updates: list[dict[str, float]]  # the agent as configured by default (updates.weight_cache)
    baseline: list[dict[str, float]]  # updates.weight_cache: false (loads in the interpreter)
    raws: list[float]


@dataclass
class Measured:
    trials: dict[str, Trials]
    rss: dict[int, float]
    solo: list[float]
    fleet: dict[str, Any]


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
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/edgegap/bench-update")
    return ap.parse_args()


def make_plan(args: argparse.Namespace) -> Plan:
    return Plan(
        mode="quick" if args.quick else "full",
        trials=args.trials or (2 if args.quick else 5),
        swaps=args.swaps or (12 if args.quick else 100),
        count=args.agents or (4 if args.quick else 50),
        stall_only=args.stall_only,
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


def measure(bench: Bench, cache: Path, plan: Plan) -> Measured:
    """Update/raw trials of both models, then (unless stall_only) RSS, solo and fleet."""
    trials: dict[str, Trials] = {}
    for model in ("4MB", "30MB"):
        payload = (cache / model / MODEL_FILE).read_bytes()
        trials[model] = trials_of(bench, model, payload, plan.trials)
    if plan.stall_only:
        return Measured(trials, {}, [], {})  # nothing but the trials
    rss = bench.rss(plan.swaps, plan.marks)
    print("agent RSS: " + ", ".join(f"after swap {n} {mb:.1f} MB" for n, mb in rss.items()))
    solo = [bench.fleet_update(f"solo{i}", 1)["seconds"] for i in range(3)]
    fleet = bench.fleet_update("fleet", plan.count)
    return Measured(trials, rss, solo, fleet)


def print_swaps(m: Measured, plan: Plan) -> None:
    """Frames lost and swap stalls, the weight cache (default) and the interpreter load."""
    for label, key in (("weight cache", "updates"), ("interpreter", "baseline")):
        every = [u for t in m.trials.values() for u in getattr(t, key)]
        print(f"frames lost during an update (publish .. activated + 1 s), {label}, all "
              f"{len(every)} trials: {sum(u['lost'] for u in every):.0f}; at the swap itself: "
              f"{sum(max(0, u['lost_at_swap']) for u in every):.0f} (goal 0)")  # fmt: skip
    for model, t in m.trials.items():
        for label, us in (("weight cache", t.updates), ("interpreter", t.baseline)):
            stall = [u["stall_s"] * 1e3 for u in us]
            print(f"swap stall, {model}, {label}: median {med(stall):.1f} ms, max "
                  f"{max(stall):.1f} ms over the usual gap of "
                  f"{med([u['usual_s'] for u in us]) * 1e3:.1f} ms (goal < 33 ms)")  # fmt: skip
    for model, t in m.trials.items():
        at = {k: med([u[k] for u in t.updates]) for k in ("available_s", "published_s",
              "verified_s", "activating_s", "update_s")}  # fmt: skip
        print(f"where a {model} update goes, weight cache, medians from the publish's start: the "
              f"agent sees the release {at['available_s']:.3f} s (publish returns "
              f"{at['published_s']:.3f}), verified in its store {at['verified_s']:.3f}, loading "
              f"{at['activating_s']:.3f}, active {at['update_s']:.3f}")  # fmt: skip
    if plan.stall_only:
        return
    marks, swaps = plan.marks, plan.swaps
    first, last = m.rss[marks[0]], m.rss[marks[-1]]
    print(f"agent RSS across {swaps} swaps: {first:.1f} MB after swap {marks[0]}, {last:.1f} MB "
          f"after swap {marks[-1]}: growth {last - first:+.1f} MB (goal < 10 MB)")  # fmt: skip


def print_fleet(m: Measured, plan: Plan) -> None:
    """The fleet's verification and load, and its ratio to one agent."""
    fleet, count, solo = m.fleet, plan.count, m.solo
    flight = "not reported" if fleet["inflight"] is None else f"{fleet['inflight']}"
    print(f"fleet: {fleet['verified']}/{count} agents activated the signed sha256; TensorFlow "
          f"loaded in {len(fleet['tf'])} agent(s); agents' RSS {fleet['rss'] / 1024:.1f} GB in all; "
          f"peak inflight ($SYS/broker/messages/inflight): {flight}; chunk subscriptions open "
          f"at most {8 * count} (window 8 x {count} agents)")  # fmt: skip
    cores = os.cpu_count() or 1
    print(f"fleet CPU from the publish to the last `activated`: agents {fleet['agents_cpu']:.2f} s "
          f"({fleet['agents_cpu'] / count:.3f} s each), broker {fleet['broker_cpu']:.2f} s; on "
          f"{cores} cores no less than {(fleet['agents_cpu'] + fleet['broker_cpu']) / cores:.2f} s "
          f"of wall time")  # fmt: skip
    print()
    print(f"fleet / one agent, {count} agents, 4 MB: {fleet['seconds'] / med(solo):.2f}  "
          f"(all active {fleet['seconds']:.3f} s, one agent {med(solo):.3f} s; goal <= 3)")  # fmt: skip


def print_ratios(m: Measured, plan: Plan, sizes: dict[str, int]) -> None:
    """Last: update / raw transfer, and the longest gap across the swap, interpreter / cache."""
    for model, t in m.trials.items():
        u, r = med([u["update_s"] for u in t.updates]), med(t.raws)
        b = med([u["update_s"] for u in t.baseline])
        print(f"publish-to-active / raw transfer, {model} ({sizes[model] / 2**20:.1f} MiB): "
              f"{u / r:.2f}  (update {u:.3f} s, raw {r:.3f} s, interpreter load {b:.3f} s; "
              f"medians of {plan.trials}{'; goal <= 1.0' if model == '30MB' else ''})")  # fmt: skip
    for model, t in m.trials.items():
        new = med([u["stall_s"] + u["usual_s"] for u in t.updates]) * 1e3
        old = med([u["stall_s"] + u["usual_s"] for u in t.baseline]) * 1e3
        print(f"longest gap across the swap, {model}, interpreter / weight cache: {old / new:.2f}  "
              f"(interpreter {old:.1f} ms, weight cache {new:.1f} ms; medians of {plan.trials})")  # fmt: skip


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
