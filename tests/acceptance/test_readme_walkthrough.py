"""The README's walkthrough, run as it is written.

The shell blocks of the README's "A 60-second walkthrough" section are the script: this
test parses them from README.md and runs them in a fresh directory, so an edit that
breaks the walkthrough (a step in the wrong order, a wrong path, an output that no longer
looks like what the README shows) fails here.

How the section reads, and so how it is run:

* Each ```sh (or ```bash) block belongs to the terminal of the last prose line that
  begins "Terminal N" or "Back in terminal N"; other blocks are not run. Terminal 1 is
  ``make run``: the test runs the Makefile's own recipe (``make -n run``). Terminal 2 is
  a shell whose variables live from block to block. Any other terminal runs one
  long-lived command (the webhook listener): started in the background, and stopped at
  the end with Ctrl-C (SIGINT).
* Blank lines split a block into steps. A step's comment lines before its commands are
  narration; those after its commands are the output the README shows. Each must be found
  in what the step printed (stdout and stderr, as a terminal shows them), ignoring
  whitespace (one JSON style or another), where ``...`` stands for anything. A step that
  only reads (no ``-d``/``-X``) is run again until its output matches, with a deadline:
  "within a second" is a promise about asynchronous delivery. A background terminal is
  ready when its first shown line appears; the rest are awaited at the end.
* What a reader changes, the test changes the same way: the ports (8080 and 9000 become
  free ones) and a value the README elides (``whsec_...`` in a command is the secret an
  earlier step printed). The directory is a stand-in for the project root: its
  ``.venv/bin/postline`` is this test run's ``postline``, and ``./postline-data`` is made
  by ``make run``'s command, as it is on a fresh clone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.acceptance.harness import POSTLINE, clean_env, free_port
from tests.harness.capability import missing

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SECTION = "## A 60-second walkthrough"
SERVER_TERMINAL, SHELL_TERMINAL = 1, 2
README_API_PORT, README_HOOK_PORT = 8080, 9000
STEP_TIMEOUT = 60.0  # one run of one step's commands
SETTLE_TIMEOUT = 30.0  # a step's output reaching what the README shows
MAKE_VARIABLES = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
#: A prose line that moves the reader to another terminal.
TERMINAL_SWITCH = re.compile(r"^(?:Back in t|T)erminal (\d+)\b")
WRITES = re.compile(r"(?:^|\s)(?:-d|-X|--data\S*|--request|-F|--form)(?:\s|=|$)")


@dataclass
class Step:
    terminal: int
    line: int  # in README.md, for messages
    commands: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)  # the output the README shows

    @property
    def script(self) -> str:
        return "\n".join(self.commands)

    @property
    def reads_only(self) -> bool:
        return not WRITES.search(self.script)

    def describe(self) -> str:
        return f"README.md line {self.line} (terminal {self.terminal}):\n{self.script}"


def walkthrough_steps(readme: str) -> list[Step]:
    """The walkthrough section's shell blocks, as steps (see the module docstring)."""
    lines = readme.splitlines()
    starts = [n for n, line in enumerate(lines) if line.strip() == SECTION]
    assert len(starts) == 1, f"README.md needs exactly one {SECTION!r} section"
    steps: list[Step] = []
    terminal: int | None = None
    fence: str | None = None  # the info string of the open block, if any
    current: Step | None = None
    for number in range(starts[0] + 1, len(lines)):
        line = lines[number]
        if fence is None and line.startswith("## "):
            break  # the next section
        stripped = line.strip()
        if stripped.startswith("```"):
            if fence is None:
                fence = stripped[3:].strip() or "text"
            else:
                fence, current = None, None
            continue
        if fence is None:
            if switch := TERMINAL_SWITCH.match(line):
                terminal = int(switch.group(1))
            continue
        if fence not in {"sh", "bash"}:
            continue
        if not stripped:
            current = None
            continue
        assert terminal is not None, f"README.md line {number + 1}: a block before any terminal"
        if stripped.startswith("#"):
            if current is not None and current.commands:
                current.shown.append(stripped.removeprefix("#").strip())
            continue  # narration
        if current is None or current.shown:
            current = Step(terminal, number + 1)
            steps.append(current)
        current.commands.append(line)
    return steps


def as_run_here(steps: list[Step], api_port: int, hook_port: int) -> list[Step]:
    """The steps with the README's ports replaced by this run's."""
    replacements = {
        f"127.0.0.1:{README_API_PORT}": f"127.0.0.1:{api_port}",
        f"127.0.0.1:{README_HOOK_PORT}": f"127.0.0.1:{hook_port}",
        f"--port {README_HOOK_PORT}": f"--port {hook_port}",
    }

    def replace(text: str) -> str:
        for old, new in replacements.items():
            text = text.replace(old, new)
        return text

    return [
        Step(
            step.terminal,
            step.line,
            [replace(line) for line in step.commands],
            [replace(line) for line in step.shown],
        )
        for step in steps
    ]


# --- matching what the README shows ------------------------------------------------------


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def shown_pattern(shown: str) -> re.Pattern[str]:
    """``shown`` without its whitespace, ``...`` matching anything."""
    return re.compile(".*?".join(map(re.escape, squeeze(shown).split("..."))), re.DOTALL)


def missing_lines(shown: list[str], output: str) -> list[str]:
    flat = squeeze(output)
    return [line for line in shown if not shown_pattern(line).search(flat)]


def fill_in_elided(script: str, outputs: list[str]) -> str:
    """Each ``prefix_...`` of a command is the value of that shape an earlier step printed
    last (the reader copies it from the screen)."""

    def value(match: re.Match[str]) -> str:
        prefix = match.group(1)
        for output in reversed(outputs):
            found = re.findall(rf"\b{prefix}_[A-Za-z0-9+/=_-]{{8,}}", output)
            if found:
                return str(found[-1])
        raise AssertionError(f"the walkthrough asks for a {prefix}_... no earlier step printed")

    return re.sub(r"\b([a-z]+)_\.\.\.", value, script)


# --- terminals ---------------------------------------------------------------------------


class Background:
    """A long-lived command in its own terminal: output (stdout and stderr) collected,
    stopped with Ctrl-C (SIGINT to its process group)."""

    def __init__(self, step: Step, proc: asyncio.subprocess.Process) -> None:
        self.step = step
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._drain = asyncio.create_task(self._read(proc.stdout))

    @classmethod
    async def start(cls, step: Step, script: str, cwd: Path, env: dict[str, str]) -> Background:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        return cls(step, proc)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\r\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def describe(self) -> str:
        return f"{self.step.describe()}\n--- its output so far ---\n{self.output}"

    async def wait_for(self, shown: list[str], timeout: float) -> None:
        """Until every line of ``shown`` is in the output; fail if it ends first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while absent := missing_lines(shown, self.output):
            if self.proc.returncode is not None or loop.time() > deadline:
                ended = "ended" if self.proc.returncode is not None else f"in {timeout:g}s"
                raise AssertionError(
                    f"terminal {self.step.terminal} did not show {absent} ({ended})\n"
                    + self.describe()
                )
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Ctrl-C, then SIGKILL if it does not end; never raises."""
        for signum, grace in ((signal.SIGINT, 20.0), (signal.SIGKILL, 10.0)):
            if self.proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain, 5.0)


class Shell:
    """Terminal 2: one shell session, its variables kept from step to step."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.state = cwd.parent / "shell-variables"

    async def run(self, script: str) -> str:
        wrapped = (
            f"set -a\n{script}\nwalkthrough_status=$?\n"
            f'env -0 > "{self.state}"\nexit $walkthrough_status\n'
        )
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            wrapped,
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), STEP_TIMEOUT)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        output = out.decode(errors="replace")
        assert proc.returncode == 0, f"exit code {proc.returncode}\n{output}"
        pairs = (item.partition("=") for item in self.state.read_text().split("\0") if item)
        self.env = {name: value for name, _, value in pairs}
        return output


async def make_run_recipe() -> str:
    """The commands ``make run`` runs once .venv exists, as make itself prints them."""
    if shutil.which("make") is None:
        missing("make", "the walkthrough starts with `make run`")
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
    proc = await asyncio.create_subprocess_exec(
        "make",
        "--no-print-directory",
        "-n",
        "-o",
        ".venv/bin/postline",
        "run",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), STEP_TIMEOUT)
    assert proc.returncode == 0, err.decode()
    recipe = out.decode()
    assert ".venv/bin/postline serve" in recipe, recipe
    return recipe


def project_root_stand_in(root: Path) -> None:
    """``root`` as a fresh clone after ``make run`` built .venv: ``.venv/bin/postline``."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "postline").symlink_to(POSTLINE)


# --- the test ----------------------------------------------------------------------------


def test_the_walkthrough_section_parses_into_the_steps_it_describes() -> None:
    steps = walkthrough_steps(README.read_text())
    terminals = {step.terminal for step in steps}
    assert {SERVER_TERMINAL, SHELL_TERMINAL} <= terminals, steps
    server = [step for step in steps if step.terminal == SERVER_TERMINAL]
    assert [step.script.strip() for step in server] == ["make run"], server
    for step in steps:
        if step.terminal not in {SERVER_TERMINAL, SHELL_TERMINAL}:
            assert len(step.commands) == 1, f"one long-lived command per terminal\n{step}"
    shell = [step for step in steps if step.terminal == SHELL_TERMINAL]
    assert sum(len(step.shown) for step in shell) >= 5, "the walkthrough shows its outputs"
    assert all(step.commands for step in steps)
    commands = "\n".join(step.script for step in steps)
    assert f"127.0.0.1:{README_API_PORT}" in commands  # what the test moves to a free port
    bare = re.findall(r".*(?<![\w./-])postline(?![\w.-]).*", commands)
    assert not bare, f"the walkthrough spells the command .venv/bin/postline: {bare}"


@pytest.mark.timeout(300)
async def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        missing("curl", "the walkthrough's commands use it")
    api_port, hook_port = free_port(), free_port()
    steps = as_run_here(walkthrough_steps(README.read_text()), api_port, hook_port)
    root = tmp_path / "project"
    root.mkdir()
    project_root_stand_in(root)
    recipe = await make_run_recipe()
    env = clean_env()
    for name in MAKE_VARIABLES:
        env.pop(name, None)
    shell = Shell(root, dict(env))
    outputs: list[str] = []
    background: list[Background] = []
    try:
        for step in steps:
            if step.terminal == SERVER_TERMINAL:
                server_env = {
                    **env,
                    "POSTLINE_HTTP_ADDR": f"127.0.0.1:{api_port}",
                    # Not the default ports: another run may hold them; 0 picks a free one.
                    "POSTLINE_INBOUND_ADDR": "127.0.0.1:0",
                    "POSTLINE_SMTP_ADDR": "127.0.0.1:0",
                }
                terminal = await Background.start(step, recipe, root, server_env)
            elif step.terminal != SHELL_TERMINAL:
                script = fill_in_elided(step.script, outputs)
                terminal = await Background.start(step, script, root, dict(env))
            else:
                outputs.append(await run_until_shown(shell, step, outputs))
                continue
            background.append(terminal)
            await terminal.wait_for(step.shown[:1], SETTLE_TIMEOUT)  # it is up
            outputs.append(terminal.output)
        for terminal in background:
            await terminal.wait_for(terminal.step.shown, SETTLE_TIMEOUT)
    finally:
        for terminal in reversed(background):
            await terminal.stop()


async def run_until_shown(shell: Shell, step: Step, outputs: list[str]) -> str:
    """Run a terminal-2 step; again, while it only reads, until its output is what the
    README shows (the mail moves on asynchronously), within SETTLE_TIMEOUT."""
    script = fill_in_elided(step.script, outputs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT
    while True:
        try:
            output = await shell.run(script)
        except AssertionError as exc:
            raise AssertionError(f"{step.describe()}\n--- failed ---\n{exc}") from None
        absent = missing_lines(step.shown, output)
        if not absent:
            return output
        if not step.reads_only or loop.time() > deadline:
            raise AssertionError(
                f"{step.describe()}\n--- printed ---\n{output}\n--- the README shows, "
                f"not found ---\n" + "\n".join(absent)
            )
        await asyncio.sleep(0.2)
