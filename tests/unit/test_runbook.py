"""docs/RUNBOOK.md names only commands that exist: every `wordloom-outbox` subcommand and option,
`bin/` script, `make` target and supervisord program it shows; every link and every alert's
runbook anchor leads to one of its headings."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import yaml

from wordloom_outbox.cli import main

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
RULES = ROOT / "etc" / "prometheus" / "wordloom-outbox-rules.yml"


def anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, spaces to dashes, punctuation dropped."""
    kept = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def headings() -> set[str]:
    text = RUNBOOK.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {anchor(line.lstrip("#").strip()) for line in text.splitlines() if line.startswith("#")}


def command_lines() -> list[str]:
    """Shell commands shown in the runbook: the lines of its code blocks and its inline code
    spans that start with a command word."""
    text = RUNBOOK.read_text()
    lines = []
    for block in re.findall(r"```(?:sh)?\n(.*?)```", text, flags=re.S):
        lines += [line.strip() for line in block.splitlines() if line.strip()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += re.findall(r"`([^`\n]+)`", prose)
    starts = ("wordloom-outbox ", "bin/", "make ", "supervisorctl ")
    return [line for line in lines if line.startswith(starts)]


def words(line: str) -> list[str]:
    """The words of one command, up to a pipe."""
    return shlex.split(line.split(" | ")[0])


def check_options(command: click.Command, args: list[str], where: str) -> None:
    known = {opt for p in command.params for opt in getattr(p, "opts", [])}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"{where}: {command.name} has no option {arg}"


def resolve(args: list[str], where: str) -> None:
    """Walk ``wordloom-outbox [global options] SUB [SUBSUB] [options]`` through the click tree."""
    command: click.Command = main
    while isinstance(command, click.Group):
        while args and args[0].startswith("--"):
            opt = args.pop(0)
            check_options(command, [opt], where)
            param = next(p for p in command.params if opt.split("=")[0] in p.opts)
            if not param.is_flag and "=" not in opt:
                args.pop(0)
        assert args, f"{where}: no subcommand"
        name = args.pop(0)
        assert name in command.commands, f"{where}: `{command.name} {name}` is not a command"
        command = command.commands[name]
    check_options(command, args, where)


def test_every_wordloom_outbox_command_and_option_exists():
    seen = set()
    for line in command_lines():
        if line.startswith("wordloom-outbox "):
            args = words(line)[1:]
            resolve(list(args), line)
            seen.add(next(a for a in args if not a.startswith("-") and not a.startswith('"')
                          and "$" not in a))
    # the runbook's subjects are all there
    assert {"status", "migrate", "rebuild", "verify", "purge", "search", "labs"} <= seen, seen


def test_bin_scripts_make_targets_and_program_exist():
    makefile = (ROOT / "Makefile").read_text()
    program = re.search(r"^\[program:([^\]]+)\]", (ROOT / "etc" / "supervisord.conf").read_text(),
                        re.M).group(1)
    replay = main.commands["replay-failed"]
    for line in command_lines():
        w = words(line)
        if w[0].startswith("bin/"):
            assert (ROOT / w[0]).is_file(), line
            if w[0] == "bin/outbox-replay":
                args = w[1:]
                if args[:1] == ["--env-file"]:
                    args = args[2:]
                check_options(replay, args, line)
        elif w[0] == "make":
            assert re.search(rf"^{re.escape(w[1])}:", makefile, re.M), line
        elif w[0] == "supervisorctl":
            assert w[-1] == program, line


def test_links_and_alert_runbook_anchors_lead_to_headings():
    anchors = headings()
    for link in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()):
        assert link in anchors, f"link #{link} has no heading"
    doc = yaml.safe_load(RULES.read_text())
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        target = rule["annotations"]["runbook"].split("#", 1)[1]
        assert target in anchors, f"{rule['alert']}: docs/RUNBOOK.md has no heading for #{target}"


def test_self_check_section_has_commands():
    from tests.acceptance.test_runbook_selfcheck import self_check_commands
    commands = self_check_commands()
    assert len(commands) >= 5 and any("readyz" in c for c in commands), commands
