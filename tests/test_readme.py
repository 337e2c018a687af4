"""README.md opens with the two commands; .ci/run runs the second one verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_blocks(n):
    text = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)[:n]]


def test_readme_starts_with_two_commands():
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("```bash")]
    assert head.count("\n") <= 3, "the two commands must come first"
    demo, tests = _first_blocks(2)
    assert demo.count("\n") == 0 and tests.count("\n") == 0
    assert "qcnn-demo" in demo and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = _first_blocks(2)
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci
