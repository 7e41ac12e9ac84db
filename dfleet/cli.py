"""The ``dfleet`` command: a local fleet, a tiny model, requests, the controller.

    dfleet tiny-model models/          write the seeded tiny model tree
    dfleet certs certs/                a development CA and fleet certificate (TLS)
    dfleet up --models-dir models/     Redis + every service, in the foreground (Ctrl-C stops)
    dfleet up --detach                 the same in the background; `dfleet down` stops it
    dfleet generate "a prompt" -o out.png [--controlnet NAME:IMAGE:SCALE] [--lora NAME:SCALE]
                                          [--image X --mask M --strength S]
    dfleet register-template MODEL IMAGE [--prompt P --seed S --steps N --guidance-scale G]
    dfleet workflow import FILE.json   a ComfyUI API-format workflow, registered (also
                                       register / list / show / run)
    dfleet status / dfleet down
    dfleet controller --config FILE    the autoscaling controller
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dfleet.help_format import HelpFormatter

DEFAULT_STATE_DIR = ".dfleet"
ROLES_AUTOSCALED = ("text_encoder", "denoiser", "vae", "controlnet")


def _state_file(state_dir: str) -> Path:
    return Path(state_dir) / "fleet.json"


def _read_state(state_dir: str) -> dict:  # type: ignore[type-arg]
    path = _state_file(state_dir)
    if not path.exists():
        raise SystemExit(f"dfleet: no running fleet in {state_dir} (start one with `dfleet up`)")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from services.common.tiny_model import write_tiny_model

    write_tiny_model(args.root, seed=args.seed, preset=args.preset)
    print(f"wrote the {args.preset} model tree to {args.root}")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from dfleet.certs import tls_env, write_dev_certs

    paths = write_dev_certs(args.dir, args.name)
    print(f"wrote a development CA and fleet certificate to {args.dir}; "
          "TLS for every service of a fleet started with:")
    for name, value in tls_env(paths).items():
        print(f"export {name}={value}")
    return 0


def _replicas(specs: list[str]) -> dict[str, int]:
    replicas = {}
    for spec in specs:
        role, _, count = spec.partition("=")
        if not count.isdigit():
            raise SystemExit(f"dfleet: --replicas wants ROLE=N, got {spec!r}")
        replicas[role] = int(count)
    return replicas


def cmd_up(args: argparse.Namespace) -> int:
    models = Path(args.models_dir)
    if not (models.is_dir() and any(models.glob("*/model_index.json"))):
        raise SystemExit(f"dfleet: {models} holds no model; write the tiny one first with "
                         f"`dfleet tiny-model {models}`")
    state = _state_file(args.state_dir)
    if state.exists() and _alive(json.loads(state.read_text()).get("supervisor_pid", -1)):
        raise SystemExit(f"dfleet: a fleet is already running from {args.state_dir}; "
                         "`dfleet down` first")
    if args.detach:
        return _up_detached(args)
    return _up_foreground(args)


def _up_detached(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "dfleet", "up", "--models-dir", args.models_dir,
            "--state-dir", args.state_dir, "--http-port", str(args.http_port)] + (
                ["--redis-url", args.redis_url] * bool(args.redis_url)) + [
                "--autoscale"] * args.autoscale
    for spec in args.replicas:
        argv += ["--replicas", spec]
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    log = open(Path(args.state_dir) / "supervisor.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + args.timeout
    state = _state_file(args.state_dir)
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text()).get("supervisor_pid") == proc.pid:
            described = json.loads(state.read_text())
            http = f", HTTP at http://{described['http']}" if described.get("http") else ""
            print(f"fleet up: gateway at {described['gateway']}{http}")
            return 0
        if proc.poll() is not None:
            print((Path(args.state_dir) / "supervisor.log").read_text()[-4000:], file=sys.stderr)
            raise SystemExit("dfleet: the fleet failed to start")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"dfleet: the fleet did not start within {args.timeout} s")


def _up_foreground(args: argparse.Namespace) -> int:
    from dfleet.local_fleet import LocalFleet

    replicas = _replicas(args.replicas)
    if args.autoscale:
        replicas.update({role: 0 for role in ROLES_AUTOSCALED})
    fleet = LocalFleet(args.models_dir, redis_url=args.redis_url,
                       state_dir=str(Path(args.state_dir) / "services"), replicas=replicas,
                       http_port=args.http_port if args.http_port >= 0 else None)
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting a local fleet on {args.models_dir} ...", flush=True)
    fleet.start()
    autoscaler = _start_autoscaler(args, fleet) if args.autoscale else None
    try:
        described = {**fleet.describe(), "supervisor_pid": os.getpid()}
        _state_file(args.state_dir).write_text(json.dumps(described, indent=1))
        http = f", HTTP at http://{fleet.http_address}" if fleet.http_address else ""
        print(f"fleet up: gateway at {fleet.gateway_address}{http} (Ctrl-C stops it)",
              flush=True)
        while not stop["now"]:
            time.sleep(0.2)
            if {**fleet.describe(), "supervisor_pid": os.getpid()} != described:
                described = {**fleet.describe(), "supervisor_pid": os.getpid()}
                staged = _state_file(args.state_dir).with_suffix(".tmp")
                staged.write_text(json.dumps(described, indent=1))
                staged.replace(_state_file(args.state_dir))   # readers never see half a file
    finally:
        if autoscaler is not None:
            autoscaler.stop()
        fleet.stop()
        _state_file(args.state_dir).unlink(missing_ok=True)
        print("fleet down", flush=True)
    return 0


def _start_autoscaler(args: argparse.Namespace, fleet: object):  # type: ignore[no-untyped-def]
    from controller.local_scaler import LocalAutoscaler, default_local_settings
    from controller.settings import load_config
    from services.common.model_store import ModelStore

    store = ModelStore(args.models_dir)
    if args.autoscale_config:
        settings = load_config(args.autoscale_config)
    else:
        base = store.first_base()
        if base is None:
            raise SystemExit(f"dfleet: {args.models_dir} holds no base model to autoscale")
        settings = default_local_settings(
            model=base, controlnets=tuple(e.name for e in store.entries("controlnet")))
    return LocalAutoscaler(settings, args.models_dir, fleet.redis_url,  # type: ignore[attr-defined]
                           log_dir=Path(fleet.state_dir) / "autoscaled",  # type: ignore[attr-defined]
                           metrics_port=None).start()


def cmd_down(args: argparse.Namespace) -> int:
    state = _read_state(args.state_dir)
    pid = int(state["supervisor_pid"])
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    _state_file(args.state_dir).unlink(missing_ok=True)
    print("fleet down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dfleet.local_fleet import service_health
    from services.common.settings import mask_url_password
    from services.common.tls import TlsFiles

    state = _read_state(args.state_dir)
    launcher = "up" if _alive(state.get("supervisor_pid", -1)) else "DOWN"
    print(f"gateway {state['gateway']}  redis {mask_url_password(state['redis_url'])}  "
          f"launcher {launcher}")
    healthy = launcher == "up"
    tls = TlsFiles(*state["tls"]) if state.get("tls") else None
    for service in state["services"]:
        health = service_health(service, tls=tls)
        healthy = healthy and health == "up"
        print(f"  {service['role']:<13} {service['address']:<22} pid {service['pid']:<8} "
              f"restarts {service.get('restarts', 0):<3} {health}")
    _print_unavailable(state["gateway"], tls.ca_file if tls else None)
    return 0 if healthy else 1


def _print_unavailable(gateway: str, tls_ca: str | None) -> None:
    """The model folders the fleet skipped, and why (asked of the gateway)."""
    import dfleet

    try:
        with dfleet.Client(gateway, timeout=5, tls_ca=tls_ca) as client:
            skipped = [m for m in client.models() if m.kind == "unavailable"]
    except dfleet.FleetError as exc:
        print(f"models: the gateway did not answer ({exc})")
        return
    for model in skipped:
        print(f"  model {model.name} is unavailable: {model.reason}")


def cmd_controller(argv: list[str]) -> int:
    from controller.cli import main as controller_main

    return controller_main(argv)


def build_parser() -> argparse.ArgumentParser:
    from dfleet.generate_cmd import add_generate_parser, add_register_template_parser
    from dfleet.workflow_cmd import add_workflow_parser

    parser = argparse.ArgumentParser(prog="dfleet", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = sub.add_parser("tiny-model", help="write the seeded tiny model tree",
                       formatter_class=HelpFormatter)
    p.add_argument("root", help="folder to write the model tree into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--preset", choices=("tiny", "small"), default="tiny",
                   help="tiny: tests and demo; small: wider, closer to real step costs")
    p.set_defaults(func=cmd_tiny_model)
    p = sub.add_parser("certs", help="write a development CA and fleet certificate (TLS)",
                       formatter_class=HelpFormatter)
    p.add_argument("dir", help="folder to write ca.pem, fleet.pem and their keys into")
    p.add_argument("--name", action="append", default=[], metavar="HOST",
                   help="another DNS name or IP the certificate is valid for (repeatable)")
    p.set_defaults(func=cmd_certs)
    p = sub.add_parser("up", help="start Redis and every service on this machine",
                       formatter_class=HelpFormatter)
    p.add_argument("--models-dir", default="models", help="folder of models to serve")
    p.add_argument("--redis-url", default="",
                   help="use this Redis instead of starting one (empty: start one)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help="folder for the fleet's state file and service logs")
    p.add_argument("--detach", action="store_true", help="run in the background")
    p.add_argument("--autoscale", action="store_true",
                   help="let the controller start and stop replicas on queue depth")
    p.add_argument("--autoscale-config", default="",
                   help="controller YAML for --autoscale (empty: one node per model)")
    p.add_argument("--replicas", action="append", default=[], metavar="ROLE=N",
                   help="start N replicas of ROLE (repeatable), e.g. denoiser=2")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds --detach waits for the fleet to serve")
    p.add_argument("--http-port", type=int, default=8000,
                   help="port of the HTTP/JSON front (0 picks one; -1: no HTTP front)")
    p.set_defaults(func=cmd_up)
    for name, func, text in (("down", cmd_down, "stop the local fleet"),
                             ("status", cmd_status, "show the local fleet")):
        p = sub.add_parser(name, help=text, formatter_class=HelpFormatter)
        p.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                       help="folder the fleet was started with (dfleet up --state-dir)")
        p.set_defaults(func=func)
    add_generate_parser(sub, DEFAULT_STATE_DIR, HelpFormatter)
    add_register_template_parser(sub, DEFAULT_STATE_DIR, HelpFormatter)
    add_workflow_parser(sub, DEFAULT_STATE_DIR, HelpFormatter)
    sub.add_parser("controller", help="run the autoscaling controller (see --help after it)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["controller"]:
        return cmd_controller(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))
