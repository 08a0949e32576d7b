"""Command line of the launcher: a mode, then flags generated from LaunchSettings' fields (each with its
environment variable), then `-- ARGS` passed to every worker unchanged. An unknown flag is an error that names the
closest known one."""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass, field

from pydantic import ValidationError

from launcher.settings import ENV_PREFIX, LaunchSettings

MODES = {
    "all": "controller + workers + web UI on this machine (the default)",
    "controller": "only the controller (the OpenAI-compatible API)",
    "worker": "only workers, registering with a (remote) controller: --controller-url URL [--worker-url URL]",
    "ui": "only the web UI, talking to a (remote) controller: --controller-url URL",
    "scale": "change the number of workers of a running --ray launcher: scale N --ray ADDRESS",
    "test": "run pytest (./launch.sh test installs the test extras first); the rest goes to pytest",
}
ALIASES = {"workers": "worker"}
PROG = "./launch.sh"


class UsageError(Exception):
    """A command line the launcher cannot run; the message says what to change."""


@dataclass
class Command:
    mode: str
    settings: LaunchSettings | None  # None for `test`
    worker_args: list[str] = field(default_factory=list)  # after `--`: to every worker
    test_args: list[str] = field(default_factory=list)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _is_bool(name: str) -> bool:
    return LaunchSettings.model_fields[name].annotation in (bool, "bool")


def build_parser() -> argparse.ArgumentParser:
    modes = "\n".join(f"  {PROG} {m:<11} {text}" for m, text in MODES.items())
    parser = argparse.ArgumentParser(
        prog=PROG, add_help=False, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROG} [all|controller|worker|ui|scale|test] [FLAGS] [-- WORKER ARGS]",
        description=f"Start the InternVL chat stack, keep it running, stop it all on Ctrl-C.\n\n{modes}",
        epilog="Every flag can also be set by its environment variable (shown in brackets); flags win.\n"
               "`-- ARGS` are passed to every worker unchanged, e.g. -- --max-concurrency 4.\n"
               "INTERNVL_VENV=PATH: use that existing virtualenv as it is (launch.sh installs nothing).")
    parser.add_argument("-h", "--help", action="help", help="show this help and exit")
    for name, info in LaunchSettings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "" if default in (None, False) else f"; default {default}"
        help_text = f"{info.description} [{env_of(name)}{shown}]".replace("%", "%%")
        if _is_bool(name):
            parser.add_argument(flag_of(name), dest=name, action="store_const", const=True, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag_of(name), dest=name, metavar=name.upper(), default=None, help=help_text)
    return parser


def _check_flags(args: list[str], parser: argparse.ArgumentParser) -> None:
    known = [s for a in parser._actions for s in a.option_strings]  # noqa: SLF001 - argparse exposes no getter
    for arg in args:
        if not arg.startswith("-") or arg == "-":
            continue
        flag = arg.split("=", 1)[0]
        if flag not in known:
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"unknown flag {flag}{hint} (see {PROG} --help)")


def _settings_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        where = f"{flag_of(name)} / {env_of(name)}: " if name else ""
        problems.append(where + err["msg"].removeprefix("Value error, "))
    return "; ".join(problems)


def parse(argv: list[str]) -> Command:
    argv = list(argv)
    mode = "all"
    if argv and (argv[0] in MODES or argv[0] in ALIASES):
        mode = ALIASES.get(argv[0], argv[0])
        argv = argv[1:]
    if mode == "test":
        return Command("test", None, test_args=argv)
    if mode == "scale":
        if not argv or not argv[0].isdigit():
            raise UsageError(f"scale takes the number of workers: {PROG} scale N --ray ADDRESS")
        argv = ["--workers", argv[0], *argv[1:]]
    worker_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, worker_args = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    _check_flags(argv, parser)
    parsed, rest = parser.parse_known_args(argv)
    if rest:
        raise UsageError(f"unexpected argument {rest[0]!r} (modes: {', '.join(MODES)}; see {PROG} --help)")
    given = {k: v for k, v in vars(parsed).items() if v is not None}
    try:
        settings = LaunchSettings(**given)
    except ValidationError as exc:
        raise UsageError(_settings_error(exc)) from None
    return Command(mode, settings, worker_args=worker_args)


def parse_or_exit(argv: list[str]) -> Command:
    try:
        return parse(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as exc:  # argparse: --help (0) or a flag without its value (2)
        if exc.code not in (0, None):
            print(f"(see {PROG} --help)", file=sys.stderr)
        raise
