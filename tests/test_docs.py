"""The documentation matches the code: every command it shows parses, and the configuration page
lists every key.

Fast: no model runs. `mkdocs build --strict` (links, anchors, the API reference) is run by
.ci/run, not here.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dualerase.cli import COMMANDS
from dualerase.config import all_keys

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)\s*$")
SNIPPET = re.compile(r"""^\s*--8<--\s+["']([^"']+)["']\s*$""")
SHELL = {"bash", "sh", "shell", "console"}
# `python -m dualerase <command>`, `accelerate launch ... -m dualerase <command>`, or the console
# script itself
PREFIX = re.compile(r"^(?:python3? -m dualerase "
                    r"|(?:accelerate launch|torchrun)\b.*? -m dualerase )?(?=(\S+))")


def shell_blocks(page: Path):
    """(line number, text) of every line in the page's bash code blocks, snippets (--8<--)
    expanded."""
    fence, lang = None, ""
    for number, line in enumerate(page.read_text().split("\n"), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, lang = match.group(2), match.group(3).lower()
            continue
        if match and match.group(2).startswith(fence) and not match.group(3):
            fence = None
            continue
        if lang not in SHELL:
            continue
        snippet = SNIPPET.match(line)
        if snippet:
            for inner, text in enumerate((ROOT / snippet.group(1)).read_text().split("\n"), 1):
                yield f"{number} ({snippet.group(1)}:{inner})", text
        else:
            yield number, line


def logical_lines(lines):
    """Join continuation lines (ending in a backslash) into one command line."""
    start, parts = None, []
    for number, line in lines:
        start = number if start is None else start
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        yield start, " ".join(p.strip() for p in parts)
        start, parts = None, []
    if parts:
        yield start, " ".join(p.strip() for p in parts)


def split_command(line: str) -> list[list[str]]:
    """Every dualerase command in a shell line, as [command, *args].

    `&&`, `;` and `|` separate commands."""
    # <folder>, <ImageNet train folder>, <output>/...
    line = re.sub(r"<[^<>]+>", "PLACEHOLDER", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    found, current = [], []
    for token in [*lexer, ";"]:
        if token and set(token) <= set(";&|"):
            text = shlex.join(current)
            match = PREFIX.match(text)
            if current and match and match.group(1) in COMMANDS:
                words = shlex.split(text[match.start(1):])
                found.append(words)
            current = []
        else:
            current.append(token)
    return found


def doc_commands():
    out = []
    for page in PAGES:
        for number, line in logical_lines(shell_blocks(page)):
            for words in split_command(line):
                out.append(pytest.param(words, id=f"{page.relative_to(ROOT)}:{number}:{words[0]}"))
    return out


DOC_COMMANDS = doc_commands()


def command_main(command: str):
    import importlib

    return importlib.import_module(f"dualerase.cli.{COMMANDS[command]}").main


def defined_flags(command: str, capsys) -> set[str]:
    """The long options a command's own parser defines."""
    if command == "erase-class":
        from dualerase.cli.erase_class import build_parser

        actions = build_parser()._actions
        return {s for action in actions for s in action.option_strings if s.startswith("--")}
    # the other commands build their parser inside main: read the flags from its usage text
    capsys.readouterr()
    assert command_main(command)(["--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.startswith("usage:"), usage
    # the usage line shows -h for --help
    return {"--help", *re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", usage)}


def used_flags(words: list[str]) -> set[str]:
    return {w.split("=")[0] for w in words[1:] if w.startswith("--")}


def unknown_flags(words: list[str], capsys) -> set[str]:
    return used_flags(words) - defined_flags(words[0], capsys)


def test_the_docs_show_commands():
    commands = {words[0] for param in DOC_COMMANDS for words in param.values}
    assert commands == set(COMMANDS), commands  # every command appears, so the scan itself works
    assert len(DOC_COMMANDS) >= 15


@pytest.mark.parametrize("words", DOC_COMMANDS)
def test_every_command_in_the_docs_parses(words, capsys):
    unknown = unknown_flags(words, capsys)
    assert not unknown, f"{shlex.join(words)}: flags its parser does not define: {unknown}"
    # values its parser checks (choices, numbers, counts of arguments) up to --help, which then
    # answers 0
    capsys.readouterr()
    code = command_main(words[0])([*words[1:], "--help"])
    assert code == 0, f"{shlex.join(words)}: {capsys.readouterr().err.strip()}"


@pytest.mark.parametrize("words", DOC_COMMANDS)
def test_every_config_key_a_docs_command_sets_exists(words):
    keys = set(all_keys())
    sets = [v for flag, v in zip(words, words[1:]) if flag == "--set"]
    sets += [w.split("=", 1)[1] for w in words if w.startswith("--set=")]
    assert not [s for s in sets if s.split("=")[0] not in keys]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_removed_flag_is_caught(command, capsys):
    """What the check above would say of a flag the parser no longer defines."""
    words = [command, "3", "--output", "out", "--no-such-flag", "1"]
    assert unknown_flags(words, capsys) == {"--no-such-flag"}
    assert "--output" in defined_flags(command, capsys)


def test_placeholders_and_continuations_are_read():
    lines = [(1, 'erase-class "golden retriever" --score-only --model <folder or hub id> \\'),
             (2, "    --set eval.fid_reference=<folder>  # a comment"),
             (3, "accelerate launch --num_processes 8 -m dualerase fid-bench digits --quiet "
                 "&& echo done")]
    found = [words for _, line in logical_lines(lines) for words in split_command(line)]
    assert found == [["erase-class", "golden retriever", "--score-only", "--model", "PLACEHOLDER",
                      "--set", "eval.fid_reference=PLACEHOLDER"],
                     ["fid-bench", "digits", "--quiet"]]


# the configuration page


CONFIG_PAGE = DOCS / "configuration.md"
SECTIONS = sorted({key.split(".")[0] for key in all_keys() if "." in key})
KEY_LIKE = re.compile(rf"(?<![\w./])(?:{'|'.join(SECTIONS)})\.[a-z_][a-z0-9_]*(?![\w.])")


def test_the_configuration_page_lists_every_key():
    text = CONFIG_PAGE.read_text()
    missing = [key for key in all_keys()
               if not re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", text)]
    assert not missing, f"docs/configuration.md does not list: {missing}"


def test_every_key_in_the_configuration_tables_is_real():
    rows = [line for line in CONFIG_PAGE.read_text().split("\n") if line.lstrip().startswith("|")]
    assert len(rows) > 50
    spans = [span for row in rows for span in re.findall(r"`([^`]+)`", row)]
    named = {name for span in spans for name in KEY_LIKE.findall(span)}
    assert len(named) > 100
    assert not named - set(all_keys()), f"not config keys: {sorted(named - set(all_keys()))}"


# the README's links into the site (mkdocs checks the site's own links; the README is not part
# of it)


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_the_readme_links_to_pages_and_headings_that_exist():
    links = re.findall(r"\[[^\]]+\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert len(local) >= 15
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), link
        if anchor:
            headings = re.findall(r"^#+\s+(.+?)\s*$", target.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, link
