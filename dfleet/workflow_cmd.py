"""``dfleet workflow``: register, import, list, show and run workflows.

    dfleet workflow import FILE.json [--name N]   a ComfyUI "Export (API)" file, registered
    dfleet workflow register FILE.yaml            a workflow spec (JSON or YAML)
    dfleet workflow list / show ID [-o FILE]
    dfleet workflow run ID --input prompt="a cat" --input edges=@edges.png -o out.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dfleet.generate_cmd import add_gateway_options, gateway_address, output_paths


def add_workflow_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                        state_dir: str, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("workflow", help="register, import, list, show and run workflows",
                       formatter_class=formatter, description=__doc__)
    verbs = p.add_subparsers(dest="verb", required=True, metavar="verb")
    v = verbs.add_parser("import", formatter_class=formatter,
                         help="convert a ComfyUI API-format file (Export (API)) and register it")
    v.add_argument("file", help="the ComfyUI workflow, as Export (API) saves it")
    v.add_argument("--name", default="", help="the workflow's name (default: the file's stem)")
    v.add_argument("--no-register", action="store_true",
                   help="only convert: print the spec, register nothing")
    v.set_defaults(func=cmd_import)
    v = verbs.add_parser("register", formatter_class=formatter,
                         help="register a workflow spec file (.json, .yaml)")
    v.add_argument("file", help="the workflow spec (the WorkflowSpec message as JSON or YAML)")
    v.set_defaults(func=cmd_register)
    v = verbs.add_parser("list", formatter_class=formatter, help="list registered workflows")
    v.set_defaults(func=cmd_list)
    v = verbs.add_parser("show", formatter_class=formatter, help="print a workflow's spec")
    v.add_argument("workflow", help="its id, or a built-in's name")
    v.add_argument("-o", "--output", default="", help="write the spec (JSON) to this file")
    v.set_defaults(func=cmd_show)
    v = verbs.add_parser("run", formatter_class=formatter, help="run a workflow")
    v.add_argument("workflow", help="its id, or a built-in's name")
    v.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="a workflow input (repeatable); @FILE reads an image file; numbers "
                        "for int and float inputs")
    v.add_argument("-o", "--output", default="out.png",
                   help="PNG file to write (-i before the suffix when there are several)")
    v.add_argument("--priority", type=int, default=0,
                   help="-10..10; higher runs first where requests queue")
    v.set_defaults(func=cmd_run)
    for verb in verbs.choices.values():
        add_gateway_options(verb, state_dir)


def _call(args: argparse.Namespace, work: Any) -> int:
    import dfleet

    try:
        with dfleet.Client(gateway_address(args), timeout=args.timeout) as client:
            return int(work(client))
    except dfleet.FleetError as exc:
        print(f"dfleet: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"dfleet: {exc}", file=sys.stderr)
        return 1


def cmd_import(args: argparse.Namespace) -> int:
    from dfleet.workflow import spec_to_json

    def work(client: Any) -> int:
        imported = client.import_workflow(args.file, name=args.name,
                                          register=not args.no_register)
        for note in imported.notes:
            print(f"note: {note}", file=sys.stderr)
        if args.no_register:
            print(spec_to_json(imported.spec))
            return 0
        print(json.dumps({"workflow_id": imported.workflow_id, "name": imported.spec.name,
                          "inputs": {i.name: i.type for i in imported.inputs}}))
        return 0
    return _call(args, work)


def cmd_register(args: argparse.Namespace) -> int:
    from dfleet.workflow import load_spec

    return _call(args, lambda client: print(json.dumps(
        {"workflow_id": client.register_workflow(load_spec(args.file))})) or 0)


def cmd_list(args: argparse.Namespace) -> int:
    def work(client: Any) -> int:
        for info in client.workflows():
            inputs = ", ".join(f"{i.name}:{i.type}" for i in info.inputs)
            kind = "built-in" if info.builtin else "registered"
            print(f"{info.workflow_id}  {info.name:<28} {kind:<10} {inputs}")
        return 0
    return _call(args, work)


def cmd_show(args: argparse.Namespace) -> int:
    from dfleet.workflow import spec_to_json

    def work(client: Any) -> int:
        text = spec_to_json(client.get_workflow(args.workflow).spec)
        if args.output:
            Path(args.output).write_text(text + "\n")
        else:
            print(text)
        return 0
    return _call(args, work)


def parse_inputs(specs: list[str], types: dict[str, str]) -> dict[str, Any]:
    """``NAME=VALUE`` by the workflow's input types; ``@FILE`` is an image file."""
    found: dict[str, Any] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep:
            raise ValueError(f"--input wants NAME=VALUE, got {spec!r}")
        kind = types.get(name)
        if kind is None:
            raise ValueError(f"the workflow has no input {name!r}; it has "
                             f"{', '.join(sorted(types)) or 'none'}")
        if kind in ("image", "mask"):
            if not value.startswith("@"):
                raise ValueError(f"input {name!r} is an image: give @FILE")
            found[name] = Path(value[1:])
        elif kind == "int":
            found[name] = int(value)
        elif kind == "float":
            found[name] = float(value)
        else:
            found[name] = value
    return found


def cmd_run(args: argparse.Namespace) -> int:
    def work(client: Any) -> int:
        info = client.get_workflow(args.workflow)
        inputs = parse_inputs(args.input, {i.name: i.type for i in info.inputs})
        result = client.generate(workflow=info.workflow_id, inputs=inputs,
                                 priority=args.priority)
        paths = output_paths(args.output, len(result.images))
        for image, path in zip(result.images, paths, strict=True):
            image.image.save(path)
        print(json.dumps({"output": ", ".join(map(str, paths)),
                          "request_id": result.request_id, **result.metadata}))
        return 0
    return _call(args, work)
