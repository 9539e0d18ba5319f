"""`mlcbuild chat` in a real terminal (tmux): multi-turn answers, /stats, /reset, /exit."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


class Tmux:
    """One tmux server on its own socket, so tests never touch a user's sessions."""

    def __init__(self, name: str):
        self.base = ["tmux", "-L", name]
        self.target = "chat"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.base, *args], capture_output=True, text=True)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-J", "-S", "-200", "-t", self.target).stdout

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if re.search(pattern, text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared; screen:\n{self.screen()}")

    def type(self, line: str) -> None:
        self("send-keys", "-t", self.target, "-l", line)
        self("send-keys", "-t", self.target, "Enter")


@pytest.mark.slow
def test_chat_in_a_terminal(demo_artifacts) -> None:
    tmux = Tmux(f"mlcbuild-test-{os.getpid()}")
    cmd = f"env PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -m mlcbuild chat " \
          f"{shlex.quote(str(demo_artifacts.model_dir('q0f32')))} --temperature 0"
    assert tmux("new-session", "-d", "-s", "chat", "-x", "160", "-y", "50", cmd).returncode == 0
    try:
        tmux.wait_for(r"mlcbuild chat: tiny-talker-q0f32-MLC .*\n>>> ")
        tmux.type("What is mlcbuild?")
        tmux.wait_for(r"mlcbuild is a build system for language models\.[^>]*\n>>> ")
        tmux.type("What is quantization?")
        tmux.wait_for(r"Quantization stores each weight with fewer bits")
        tmux.type("/stats")
        screen = tmux.wait_for(r"prefill: \d+ tok at [\d.]+ tok/s, decode: \d+ tok")
        prefilled = int(re.findall(r"prefill: (\d+) tok", screen)[-1])
        assert prefilled <= 16, screen  # the second turn reused the first turn's KV cache
        tmux.type("/reset")
        tmux.wait_for(r"\(conversation cleared\)")
        tmux.type("/exit")
        deadline = time.monotonic() + 20
        while tmux("has-session", "-t", "chat").returncode == 0:
            assert time.monotonic() < deadline, "chat did not exit on /exit"
            time.sleep(0.2)
    finally:
        tmux("kill-server")


@pytest.mark.slow
def test_run_uses_the_template_unless_raw_and_rejects_negative_temperature(demo_artifacts) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "mlcbuild", "run", str(demo_artifacts.recipe), "-q", "q0f32", "--temperature", "0"]
    chat = subprocess.run([*base, "--prompt", "What is quantization?", "--max-tokens", "12"], capture_output=True, text=True, env=env)
    assert chat.returncode == 0 and chat.stdout.startswith(" Quantization stores each weight"), chat.stderr
    raw = subprocess.run([*base, "--raw", "--prompt", "What is quantization?", "--max-tokens", "12"], capture_output=True, text=True, env=env)
    assert raw.returncode == 0 and not raw.stdout.startswith(" Quantization stores"), raw.stdout
    bad = subprocess.run([*base[:-2], "--temperature", "-0.5"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--temperature: must be in [0, 2]" in bad.stderr and "Traceback" not in bad.stderr


def test_bytes_that_are_not_utf8_are_one_line_and_keep_the_conversation(demo_artifacts) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    chat = [sys.executable, "-m", "mlcbuild", "chat", str(demo_artifacts.recipe), "-q", "q0f32", "--temperature", "0", "--max-tokens", "12"]
    done = subprocess.run(chat, input=b"What is mlcbuild?\nhi \xff\n/stats\n", capture_output=True, env=env, timeout=300)
    out = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, done.stderr
    assert "mlcbuild is a build system" in out and "not valid Unicode text" in out and "decode" in out.split("not valid Unicode")[1]
    run = [sys.executable, "-m", "mlcbuild", "run", str(demo_artifacts.recipe), "-q", "q0f32", "--prompt", b"hi \xed\xa0\x80"]
    bad = subprocess.run(run, capture_output=True, env=env, timeout=300)
    assert bad.returncode == 2 and b"not valid Unicode text" in bad.stderr and b"Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
