"""The README stays true: its quick-start code runs, and its two set-up commands are the ones CI uses."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs():
    src = README.read_text()
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", src, re.S).group(1)
    code = code.replace("num_steps=50", "num_steps=5")  # same code path, fewer steps
    ns: dict = {}
    exec(compile(code, "README quick start", "exec"), ns)
    assert ns["rec"].nfe == 5 and ns["rec"].samples.shape[0] == 4
    assert ns["post"].mean.shape == (1, 2)


def test_set_up_commands_first_and_ci_reads_the_test_command():
    src = README.read_text()
    demo = src.index("<!-- demo-command -->")
    test = src.index("<!-- test-command -->")
    assert demo < test < src.index("## Quick start")
    test_cmd = src[test:].split("\n")[2]
    assert "pytest" in test_cmd and "pip install" in test_cmd
    assert "invdiff demo" in src[demo:].split("\n")[2]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "exit 1" in ci
