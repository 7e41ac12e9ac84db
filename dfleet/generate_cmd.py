"""``dfleet generate``: one request from the command line, with progress."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dfleet.inputs import ControlNet, Lora


def _controlnet(spec: str) -> ControlNet:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"want NAME:IMAGE[:SCALE], got {spec!r}")
    scale = float(parts[2]) if len(parts) == 3 else 1.0
    if not Path(parts[1]).is_file():
        raise argparse.ArgumentTypeError(f"control image {parts[1]!r} does not exist")
    return ControlNet(parts[0], image=parts[1], scale=scale)


def _lora(spec: str) -> Lora:
    name, _, scale = spec.partition(":")
    try:
        return Lora(name, scale=float(scale) if scale else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want NAME[:SCALE], got {spec!r}") from None


def add_generate_parser(sub: argparse._SubParsersAction, state_dir: str) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("generate", help="generate one image through a fleet")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="out.png")
    p.add_argument("--gateway", default="", help="gateway address; default: the local fleet's")
    p.add_argument("--state-dir", default=state_dir)
    p.add_argument("--model", default="")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--controlnet", type=_controlnet, action="append", default=[],
                   metavar="NAME:IMAGE:SCALE")
    p.add_argument("--lora", type=_lora, action="append", default=[], metavar="NAME:SCALE")
    p.add_argument("--image", default=None, help="init image (image-to-image) or image to edit")
    p.add_argument("--mask", default=None, help="white = repaint; needs --image")
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--timeout", type=float, default=300.0)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    import dfleet

    address = args.gateway
    if not address:
        from dfleet.cli import _read_state

        address = _read_state(args.state_dir)["gateway"]
    params = dict(model=args.model, negative_prompt=args.negative_prompt, steps=args.steps,
                  guidance_scale=args.guidance_scale, seed=args.seed, width=args.width,
                  height=args.height, controlnets=args.controlnet, loras=args.lora,
                  image=args.image, mask=args.mask, strength=args.strength)
    params = {k: v for k, v in params.items() if v not in (None, "", [])}
    try:
        with dfleet.Client(address, timeout=args.timeout) as client:
            for event in client.stream(args.prompt, **params):
                if isinstance(event, dfleet.Queued):
                    print(f"queued as {event.request_id}", file=sys.stderr, flush=True)
                elif isinstance(event, dfleet.Progress):
                    print(f"\rstep {event.step}/{event.total_steps}", end="", file=sys.stderr,
                          flush=True)
                elif isinstance(event, dfleet.Result):
                    print(file=sys.stderr)
                    event.image.save(args.output)
                    print(json.dumps({"output": args.output, "request_id": event.request_id,
                                      "latency_ms": round(event.latency_ms, 1),
                                      **event.metadata}))
                    return 0
    except dfleet.FleetError as exc:
        print(f"\ndfleet: {exc}", file=sys.stderr)
        return 1
    print("dfleet: the stream ended without a result", file=sys.stderr)
    return 1
