"""Run untrusted generated code against unit tests in a separate, limited Python process.

Limits: a wall-clock timeout (the whole process group is killed), an address-space limit and a CPU-time
limit set with ``resource.setrlimit`` before exec, and no network or subprocesses: an audit hook, installed
before the candidate runs, rejects socket creation, connections and process spawning. Audit hooks need no
privileges (unlike network namespaces); they can be bypassed by determined code (ctypes), which is enough
for grading tiny models, not for hostile input.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MEMORY_LIMIT_BYTES = 256 * 1024 * 1024

_RUNNER = '''
import sys

BLOCKED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "subprocess.Popen",
           "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "pty.spawn"}


def _deny(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")


source = open(sys.argv[1]).read()
sys.addaudithook(_deny)
exec(compile(source, "<candidate>", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    error: str


def _limit_resources(timeout_s: float) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    cpu_s = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))


def run_tests(code: str, tests: str, timeout_s: float = 2.0) -> SandboxResult:
    """Run ``code`` then ``tests`` (asserts) in a fresh isolated interpreter; passed when it exits cleanly."""
    with tempfile.TemporaryDirectory(prefix="family-sandbox-") as workdir:
        program = Path(workdir) / "candidate.py"
        program.write_text(f"{code}\n\n{tests}\n")
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _RUNNER, str(program)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", "")},
            start_new_session=True,
            preexec_fn=lambda: _limit_resources(timeout_s),
        )
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return SandboxResult(passed=False, error=f"timeout after {timeout_s}s")
    if process.returncode == 0:
        return SandboxResult(passed=True, error="")
    lines = stderr.strip().splitlines()
    return SandboxResult(passed=False, error=lines[-1] if lines else f"exit status {process.returncode}")
