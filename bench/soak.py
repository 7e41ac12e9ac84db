"""Soak: a local fleet under steady, bounded load for a long time; fails if it grows.

Every workflow kind in turn (text-to-image, ControlNet, LoRA, image-to-image,
inpainting) from a few client threads, with some cancelled and some malformed
requests mixed in. Every ``--sample-s`` it records the RSS of every service
process and Redis, the shared-memory segments of the fleet's processes and the
request log's pending entries. After a warm-up (the first fifth of the run, at
least a minute for long runs) the last samples are compared with the first:
RSS may not grow by more than ``--rss-growth-mb`` (and 25%) in any process,
segments by more than ``--segment-growth``; pending entries must drain. Prints
a table, writes JSON, exits 1 on growth or on a lost request.

    python bench/soak.py [--minutes 30] [--clients 2] [--out bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

import dfleet  # noqa: E402
from dfleet.local_fleet import LocalFleet  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402
from tests.diffusers_reference import sample_image, sample_mask  # noqa: E402

IMG, MASK = sample_image(5), sample_mask()
KINDS = {
    "txt2img": {},
    "controlnet": {"controlnets": [dfleet.ControlNet("tiny-cn-a", image=IMG)]},
    "lora": {"loras": [dfleet.Lora("tiny-lora-r4", scale=0.7)]},
    "img2img": {"image": IMG, "strength": 0.6},
    "inpaint": {"model": "tiny-sd-inpainting", "image": IMG, "mask": MASK},
}


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def segments(pids: set[int]) -> int:
    names = [n for n in os.listdir("/dev/shm") if n.startswith("dfleet-")]
    return sum(1 for n in names if n.split("-")[2:3] and n.split("-")[2].isdigit()
               and int(n.split("-")[2]) in pids)


@dataclass
class Load:
    fleet: LocalFleet
    stop: threading.Event = field(default_factory=threading.Event)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        with dfleet.Client(self.fleet.gateway_address, timeout=120) as client:
            while not self.stop.is_set():
                kind = rng.choice(sorted(KINDS))
                roll = rng.random()
                try:
                    if roll < 0.05:
                        client.generate("bad", steps=2, width=60)
                    elif roll < 0.10:
                        for event in client.stream("cancelled", steps=30, **KINDS[kind]):
                            if isinstance(event, dfleet.Progress):
                                client.cancel(event.request_id)
                    else:
                        client.generate(f"soak {kind}", steps=4, seed=rng.randrange(1 << 30),
                                        **KINDS[kind])
                    self.count(f"{kind}:ok")
                except (dfleet.InvalidArgument, dfleet.Cancelled):
                    self.count("refused or cancelled (expected)")
                except dfleet.FleetError as exc:
                    self.count(f"{kind}:{exc.code.name}")


def sample(fleet: LocalFleet, r: redis.Redis) -> dict[str, object]:
    procs = {f"{s.role}-{s.index}": s.process.pid for s in fleet.services}
    if fleet.redis_process is not None:
        procs["redis"] = fleet.redis_process.pid
    pending = 0
    for key in r.scan_iter(match="dfleet:requests:*"):
        try:
            pending += int(r.xpending(key, "gateway")["pending"])
        except redis.ResponseError:
            pass
    return {"t": time.monotonic(), "rss_mb": {k: rss_mb(p) for k, p in procs.items()},
            "segments": segments(set(procs.values())), "pending": pending,
            "redis_keys": r.dbsize(), "redis_used_mb": r.info("memory")["used_memory"] / 2**20}


def verdict(samples: list[dict], args: argparse.Namespace) -> tuple[list[str], list[list]]:  # type: ignore[type-arg]
    warm = max(1, len(samples) // 5)
    first, last = samples[warm], samples[-1]
    rows, problems = [], []
    for name, start in first["rss_mb"].items():
        end = last["rss_mb"].get(name, 0.0)
        growth = end - start
        rows.append([name, f"{start:.0f}", f"{end:.0f}", f"{growth:+.0f}"])
        if growth > args.rss_growth_mb and growth > 0.25 * start:
            problems.append(f"{name} RSS grew {growth:.0f} MB ({start:.0f} -> {end:.0f})")
    rows.append(["redis used", f"{first['redis_used_mb']:.0f}", f"{last['redis_used_mb']:.0f}",
                 f"{last['redis_used_mb'] - first['redis_used_mb']:+.0f}"])
    rows.append(["shm segments", str(first["segments"]), str(last["segments"]),
                 f"{last['segments'] - first['segments']:+d}"])
    if last["segments"] - first["segments"] > args.segment_growth:
        problems.append(f"segments grew {first['segments']} -> {last['segments']}")
    return problems, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--clients", type=int, default=2, help="client threads (the load)")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--rss-growth-mb", type=float, default=64.0,
                        help="most RSS growth per process after the warm-up, MB")
    parser.add_argument("--segment-growth", type=int, default=8,
                        help="most growth of the fleet's shared-memory segments")
    parser.add_argument("--result-ttl-s", type=int, default=60,
                        help="the gateway's result TTL: short, so that Redis reaches its "
                             "steady size within the warm-up")
    parser.add_argument("--state-ttl-s", type=int, default=120,
                        help="the gateway's request-state TTL (as --result-ttl-s)")
    parser.add_argument("--models", default="", help="models folder (default: a new tiny one)")
    parser.add_argument("--out", default="bench/results/soak.json", help="JSON result")
    args = parser.parse_args()
    models = args.models or str(write_tiny_model(Path(f"/tmp/dfleet-soak-models-{os.getpid()}"),
                                                 seed=0))
    env = {"DFLEET_INLINE_MAX_BYTES": "1", "DFLEET_RESULT_TTL_S": str(args.result_ttl_s),
           "DFLEET_STATE_TTL_S": str(args.state_ttl_s)}
    with LocalFleet(models, env=env) as fleet:
        end_at = time.monotonic() + args.minutes * 60   # the load's minutes, after start-up
        r = redis.Redis.from_url(fleet.redis_url)
        load = Load(fleet)
        threads = [threading.Thread(target=load.client, args=(i,), daemon=True)
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()
        samples = [sample(fleet, r)]
        while time.monotonic() < end_at:
            time.sleep(min(args.sample_s, max(0.0, end_at - time.monotonic())))
            samples.append(sample(fleet, r))
            print(f"{(samples[-1]['t'] - samples[0]['t']) / 60:5.1f} min  "  # type: ignore[operator]
                  f"segments {samples[-1]['segments']}  pending {samples[-1]['pending']}  "
                  f"redis keys {samples[-1]['redis_keys']}  "
                  f"{dict(sorted(load.counts.items()))}", flush=True)
        load.stop.set()
        for thread in threads:
            thread.join(180)
        time.sleep(3)
        samples.append(sample(fleet, r))
        restarts = {f"{s.role}-{s.index}": s.restarts for s in fleet.services if s.restarts}
    problems, rows = verdict(samples, args)
    if samples[-1]["pending"]:
        problems.append(f"{samples[-1]['pending']} requests still pending at the end")
    failed = {k: v for k, v in load.counts.items() if ":" in k and not k.endswith(":ok")}
    if failed:
        problems.append(f"failed requests: {failed}")
    if restarts:
        problems.append(f"services restarted: {restarts}")
    print(f"\n{'process':<16}{'start MB':>10}{'end MB':>10}{'growth':>10}")
    for row in rows:
        print(f"{row[0]:<16}{row[1]:>10}{row[2]:>10}{row[3]:>10}")
    print(f"requests: {dict(sorted(load.counts.items()))}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": str(date.today()), "minutes": args.minutes,
                               "clients": args.clients, "table": rows,
                               "requests": load.counts, "problems": problems,
                               "samples": samples}, indent=1))
    print("\n" + ("soak FAILED:\n  " + "\n  ".join(problems) if problems else "soak passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
