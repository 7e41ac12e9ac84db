"""Every flag of every command has help, and the defaults show; service settings errors.

Walks the parsers of ``dfleet`` (every subcommand), ``dfleet controller``, ``loadgen``
(every subcommand) and every service's settings; checks that ``loadgen --help`` works
without matplotlib; that a bad service setting (flag or ``DFLEET_*`` variable, strict
booleans) stops with one line naming the setting and the value; that secrets are masked
in the settings a service logs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass

import pytest

import controller.cli
import dfleet.cli
import loadgen.cli
from services.common.settings import ServiceSettings, _build_parser, parse_settings, setting


def _service_settings() -> list[tuple[str, type[ServiceSettings]]]:
    from services.controlnet.__main__ import ControlNetSettings
    from services.denoiser.settings import DenoiserSettings
    from services.gateway.settings import GatewaySettings
    from services.http_front.settings import HttpFrontSettings
    from services.lora_cache.__main__ import LoraCacheSettings
    from services.text_encoder.__main__ import TextEncoderSettings

    return [("text_encoder", TextEncoderSettings), ("vae", ServiceSettings),
            ("image_encoder", ServiceSettings), ("ar_embed", ServiceSettings),
            ("http_front", HttpFrontSettings),
            ("gateway", GatewaySettings), ("denoiser", DenoiserSettings),
            ("controlnet", ControlNetSettings), ("lora_cache", LoraCacheSettings)]


def _walk(parser: argparse.ArgumentParser, path: str):  # type: ignore[no-untyped-def]
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{path} {name}")


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    parsers = [*_walk(dfleet.cli.build_parser(), "dfleet"),
               ("dfleet controller", controller.cli.build_parser()),
               *_walk(loadgen.cli.build_parser(), "loadgen")]
    parsers += [(f"services.{role}", _build_parser(cls, role))
                for role, cls in _service_settings()]
    return parsers


def test_the_walk_reaches_every_command() -> None:
    names = {name for name, _ in _all_parsers()}
    assert {"dfleet generate", "dfleet up", "dfleet register-template", "dfleet tiny-model",
            "dfleet down", "dfleet status", "loadgen run", "loadgen sweep", "loadgen schedule",
            "dfleet controller", "services.gateway", "services.denoiser"} <= names


@pytest.mark.parametrize("name,parser", _all_parsers(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_every_flag_has_help_and_a_shown_default(name: str,
                                                 parser: argparse.ArgumentParser) -> None:
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name} {flag} has no help"
        shown = formatter._get_help_string(action)
        says_default = "%(default)" in shown or "default" in shown.lower()
        quiet_default = action.default in (None, "", [], ()) or action.default is False
        if action.option_strings and not action.required and not quiet_default:
            assert says_default, f"{name} {flag}: default {action.default!r} is not shown"
    parser.format_help()  # renders without a formatting error


def test_generate_help_lists_defaults() -> None:
    parser = dfleet.cli.build_parser()
    generate = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    text = generate.format_help()
    assert "(default: out.png)" in text and "(default: 300.0)" in text


# SDK parameters `dfleet generate` has no flag for, and why
NOT_GENERATE_FLAGS = {
    "preview": "previews are a stream; the command writes final images",
    "return_pixels": "the command writes PNG files",
    "request_id": "the gateway names the request",
    "approximations": "set per fleet (DFLEET_* settings) for the command line",
    "template_id": "template edits: dfleet register-template, then the SDK",
    "workflow": "dfleet workflow run",
    "inputs": "dfleet workflow run",
}


def test_generate_flags_cover_the_sdk_parameters() -> None:
    import typing

    from dfleet.inputs import GenerateParams

    parser = dfleet.cli.build_parser()
    generate = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    flags = {a.dest for a in generate._actions}
    renamed = {"controlnets": "controlnet", "loras": "lora", "ip_adapters": "ip_adapter"}
    missing = {name for name in typing.get_type_hints(GenerateParams)
               if renamed.get(name, name) not in flags} - set(NOT_GENERATE_FLAGS)
    assert not missing, f"SDK parameters without a dfleet generate flag: {missing}"


def test_loadgen_help_without_matplotlib() -> None:
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from loadgen.cli import main\n"
            "main(['run', '--help'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--no-plots" in done.stdout


@dataclass
class _Example(ServiceSettings):
    """A role for the test."""

    eager: bool = setting("a switch", default=False)
    api_token: str = setting("a secret", default="")


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(_Example, "example", argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_flag_value_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["--port", "abc"])
    assert "setting port (from --port)" in line and "'abc'" in line


def test_bad_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFLEET_PORT", "abc")
    line = _error_line(capsys, [])
    assert "setting port (from DFLEET_PORT)" in line and "'abc'" in line
    assert parse_settings(_Example, "example", ["--port", "7"]).port == 7  # flag wins


def test_booleans_are_strict(capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFLEET_EAGER", "ture")
    line = _error_line(capsys, [])
    assert "eager" in line and "'ture'" in line
    for text, value in (("yes", True), ("0", False), ("TRUE", True), ("off", False)):
        monkeypatch.setenv("DFLEET_EAGER", text)
        assert parse_settings(_Example, "example", []).eager is value
    monkeypatch.setenv("DFLEET_EAGER", "off")
    assert parse_settings(_Example, "example", ["--eager"]).eager is True


def test_cross_field_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "port=70000 is outside" in _error_line(capsys, ["--port", "70000"])


def test_secrets_are_masked_in_the_logged_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFLEET_API_TOKEN", "tok-123")
    settings = parse_settings(_Example, "example",
                              ["--redis-url", "redis://user:hunter2@db:6379/0"])
    assert settings.redis_url == "redis://user:hunter2@db:6379/0"
    logged = str(settings.as_log_dict())
    assert "hunter2" not in logged and "tok-123" not in logged
    assert "redis://user:***@db:6379/0" in logged
    plain = parse_settings(_Example, "example", ["--redis-url", "redis://db:6379/0"])
    assert plain.as_log_dict()["redis_url"] == "redis://db:6379/0"
