"""``dfleet generate`` (one request, with progress) and ``dfleet register-template``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dfleet.inputs import SCHEDULERS, ControlNet, IpAdapter, Lora


def _controlnet(spec: str) -> ControlNet:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"want NAME:IMAGE[:SCALE], got {spec!r}")
    scale = float(parts[2]) if len(parts) == 3 else 1.0
    if not Path(parts[1]).is_file():
        raise argparse.ArgumentTypeError(f"control image {parts[1]!r} does not exist")
    return ControlNet(parts[0], image=parts[1], scale=scale)


def _ip_adapter(spec: str) -> IpAdapter:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"want NAME:IMAGE[:SCALE], got {spec!r}")
    if not Path(parts[1]).is_file():
        raise argparse.ArgumentTypeError(f"image {parts[1]!r} does not exist")
    try:
        return IpAdapter(parts[0], image=parts[1], scale=float(parts[2]) if len(parts) == 3
                         else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want NAME:IMAGE[:SCALE], got {spec!r}") from None


def _lora(spec: str) -> Lora:
    name, _, scale = spec.partition(":")
    try:
        return Lora(name, scale=float(scale) if scale else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want NAME[:SCALE], got {spec!r}") from None


def add_generate_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                        state_dir: str, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("generate", help="generate one image through a fleet",
                       formatter_class=formatter)
    p.add_argument("prompt", help="what the image should show")
    p.add_argument("-o", "--output", default="out.png", help="PNG file to write")
    add_gateway_options(p, state_dir)
    p.add_argument("--model", default="", help="model to use (empty: the gateway's default)")
    p.add_argument("--negative-prompt", default="", help="what the image should not show")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the gateway's, 20 unless configured)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale (default: the gateway's, 7.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--width", type=int, default=None,
                   help="pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--height", type=int, default=None,
                   help="pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--controlnet", type=_controlnet, action="append", default=[],
                   metavar="NAME:IMAGE:SCALE",
                   help="condition on IMAGE through ControlNet NAME (SCALE default 1.0; "
                        "repeatable)")
    p.add_argument("--lora", type=_lora, action="append", default=[], metavar="NAME:SCALE",
                   help="apply LoRA NAME at SCALE (default 1.0; repeatable)")
    p.add_argument("--image", default=None, help="init image (image-to-image) or image to edit")
    p.add_argument("--mask", default=None, help="white = repaint; needs --image")
    p.add_argument("--strength", type=float, default=None,
                   help="how far image-to-image departs from --image, 0..1 (default: the "
                        "gateway's)")
    p.add_argument("--ip-adapter", type=_ip_adapter, action="append", default=[],
                   metavar="NAME:IMAGE[:SCALE]",
                   help="an image prompt through an IP-Adapter, scale 0..2 (default 1); "
                        "repeat for several")
    p.add_argument("--scheduler", default="",
                   help=f"sampler: {', '.join(SCHEDULERS)} (default: the model's own)")
    p.add_argument("--num-images", type=int, default=1,
                   help="images to make, 1-8; image i uses seed + i and is written to "
                        "OUTPUT with -i before the suffix when there are several")
    p.add_argument("--quality", choices=("full", "fast", "auto"), default=None,
                   help="full: the model asked for (default); fast: its slimmed tier; auto: "
                        "the slimmed tier when the full one would miss the deadline")
    p.add_argument("--priority", type=int, default=0,
                   help="-10..10; higher runs first where requests queue")
    p.set_defaults(func=cmd_generate)


def output_paths(output: str, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``, ... for several."""
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def add_gateway_options(p: argparse.ArgumentParser, state_dir: str) -> None:
    p.add_argument("--gateway", default="", help="gateway address (empty: the local fleet's)")
    p.add_argument("--state-dir", default=state_dir,
                   help="folder of the local fleet (dfleet up --state-dir)")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline of the call, seconds")


def gateway_address(args: argparse.Namespace) -> str:
    if args.gateway:
        return str(args.gateway)
    from dfleet.cli import _read_state

    return str(_read_state(args.state_dir)["gateway"])


def add_register_template_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                                 state_dir: str, formatter: type[argparse.HelpFormatter]
                                 ) -> None:
    p = sub.add_parser("register-template", formatter_class=formatter,
                       help="register an image template for masked edits; prints its id")
    p.add_argument("model", help="inpainting model the template's edits use")
    p.add_argument("image", help="the template image (PNG or JPEG)")
    p.add_argument("--prompt", default="", help="prompt of the template's recipe")
    p.add_argument("--seed", type=int, default=0, help="seed of the recipe")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps of the recipe (default: the gateway's)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="guidance scale of the recipe (default: the gateway's)")
    p.add_argument("--warm-up", action="store_true",
                   help="record the template's activations now, so the first edit hits")
    add_gateway_options(p, state_dir)
    p.set_defaults(func=cmd_register_template)


def cmd_register_template(args: argparse.Namespace) -> int:
    import dfleet

    try:
        with dfleet.Client(gateway_address(args), timeout=args.timeout) as client:
            template = client.register_template(
                args.model, args.image, prompt=args.prompt, warm_up=args.warm_up,
                seed=args.seed, steps=args.steps, guidance_scale=args.guidance_scale)
    except dfleet.FleetError as exc:
        print(f"dfleet: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"template_id": template.template_id,
                      "cache_bytes": template.cache_bytes}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from dfleet.tracing import configure_from_env, shutdown_tracing

    configure_from_env("dfleet-cli")  # OTEL_* variables: this request starts a trace
    try:
        return _generate(args)
    finally:
        shutdown_tracing()


def _generate(args: argparse.Namespace) -> int:
    import dfleet

    address = gateway_address(args)
    params = dict(model=args.model, negative_prompt=args.negative_prompt, steps=args.steps,
                  guidance_scale=args.guidance_scale, seed=args.seed, width=args.width,
                  height=args.height, controlnets=args.controlnet, loras=args.lora,
                  image=args.image, mask=args.mask, strength=args.strength,
                  scheduler=args.scheduler, num_images=args.num_images,
                  ip_adapters=args.ip_adapter, quality=args.quality,
                  priority=args.priority)
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
                    images = event.images or (dfleet.GeneratedImage(event.png, args.seed),)
                    paths = output_paths(args.output, len(images))
                    for image, path in zip(images, paths, strict=True):
                        image.image.save(path)
                    print(json.dumps({"output": ", ".join(map(str, paths)),
                                      "request_id": event.request_id,
                                      "latency_ms": round(event.latency_ms, 1),
                                      **event.metadata}))
                    return 0
    except dfleet.FleetError as exc:
        print(f"\ndfleet: {exc}", file=sys.stderr)
        return 1
    print("dfleet: the stream ended without a result", file=sys.stderr)
    return 1
