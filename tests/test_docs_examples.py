"""The adapter-writing guide (docs/write-an-adapter.md) cannot rot.

* A code block whose first line is ``# examples/...`` shows that file of the
  repository exactly (the example suite runs those files).
* The sample projects of the guide (its ``conftest.py``, ``myapp/...`` and
  ``test_*.py`` blocks, section by section) run in an inner pytest and pass.
* The entry-point snippet (``pyproject.toml``) registers the adapter once
  installed, and the error line and failure messages shown are the ones printed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import INNER

from pytest_rollback.plugin import ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "write-an-adapter.md"
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
MARKER = re.compile(r"# ([\w./-]+\.(?:py|toml))\n")


@dataclasses.dataclass(frozen=True)
class Block:
    section: str  #: the ``## `` heading the block is under
    lang: str
    path: str | None  #: from a first line ``# path``
    code: str  #: the block without that first line


def guide_blocks() -> list[Block]:
    text = GUIDE.read_text()
    headings = [(m.start(), m.group(1)) for m in re.finditer(r"^## (.+)$", text, re.M)]
    blocks = []
    for m in FENCE.finditer(text):
        section = next((title for start, title in reversed(headings) if start < m.start()), "")
        code = m.group(2)
        marker = MARKER.match(code)
        path = marker.group(1) if marker else None
        blocks.append(Block(section, m.group(1), path, code[marker.end() :] if marker else code))
    return blocks


def block(path: str, section: str) -> str:
    """The code of the block marked ``path`` under the heading starting with ``section``."""
    found = [b.code for b in guide_blocks() if b.path == path and b.section.startswith(section)]
    assert len(found) == 1, f"expected one block '# {path}' under '## {section}...', found {len(found)}"
    return found[0]


def example(name: str) -> str:
    return (ROOT / "examples" / "adapters" / name).read_text()


def test_the_guide_shows_the_example_files_as_they_are() -> None:
    shown = {b.path: b.code for b in guide_blocks() if b.path and b.path.startswith("examples/")}
    assert set(shown) >= {
        "examples/adapters/memory_adapter.py",
        "examples/adapters/sqlite_adapter.py",
        "examples/adapters/test_adapters_conformance.py",
    }
    for path, code in shown.items():
        assert code == (ROOT / path).read_text(), f"docs/write-an-adapter.md shows {path} differently from the file"


def test_every_python_block_of_a_file_compiles() -> None:
    for b in guide_blocks():
        if b.lang == "python":
            assert b.path, f"a python block of the guide (under '## {b.section}') does not say which file it is"
            compile(b.code, b.path, "exec")


def write_project(pytester: pytest.Pytester, files: dict[str, str]) -> None:
    pytester.makeini(INI)
    for path, source in {"myapp/__init__.py": "", **files}.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)


def flags_project(section: str) -> dict[str, str]:
    return {
        "myapp/flags.py": block("myapp/flags.py", "Step 1"),
        "myapp/memory_adapter.py": example("memory_adapter.py"),
        "conftest.py": block("conftest.py", section),
        "test_flags.py": block("test_flags.py", "Step 1"),
    }


def test_step_1_the_dict_adapter_registered_in_a_conftest(pytester: pytest.Pytester) -> None:
    write_project(pytester, flags_project("Step 1"))
    pytester.runpytest(*INNER, "--rollback-verify").assert_outcomes(passed=2)


def entry_points_of_the_guide() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads(block("pyproject.toml", "Step 1"))
    entries: dict[str, str] = data["project"]["entry-points"][ENTRY_POINT_GROUP]
    return entries


def install_myapp(pytester: pytest.Pytester) -> None:
    """``myapp`` as an installed distribution with the guide's entry points."""
    info = pytester.path / "myapp-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myapp\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points_of_the_guide().items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    pytester.syspathinsert()


def test_step_1_the_dict_adapter_registered_by_an_entry_point(pytester: pytest.Pytester) -> None:
    files = flags_project("Step 1")
    del files["conftest.py"]
    write_project(pytester, {**files, "myapp/testing.py": block("myapp/testing.py", "Step 1")})
    install_myapp(pytester)
    pytester.runpytest(*INNER).assert_outcomes(passed=2)


def test_step_1_the_error_line_of_an_entry_point_that_fails(pytester: pytest.Pytester) -> None:
    shown = [b.code.strip() for b in guide_blocks() if b.code.startswith("ERROR: pytest-rollback: the adapter entry")]
    assert len(shown) == 1
    pytester.makeini(INI)
    install_myapp(pytester)  # installed, but its package is missing
    result = pytester.runpytest(*INNER)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([shown[0]])


def test_step_2_the_sqlite_adapter(pytester: pytest.Pytester) -> None:
    write_project(
        pytester,
        {
            "myapp/sqlite_adapter.py": example("sqlite_adapter.py"),
            "conftest.py": block("conftest.py", "Step 2"),
            "test_orders.py": block("test_orders.py", "Step 2"),
        },
    )
    pytester.runpytest(*INNER, "--rollback-verify").assert_outcomes(passed=2)


@pytest.mark.parametrize("bug", ["rollback forgets what was added", "a token refuses a second rollback"])
def test_step_3_the_failures_shown_are_what_the_suite_prints(pytester: pytest.Pytester, bug: str) -> None:
    from test_conformance import BROKEN, MEMORY_ADAPTER, run_inner

    code = BROKEN[bug][0]
    result = run_inner(pytester, MEMORY_ADAPTER.replace("    pass  # BROKEN", code.strip("\n")))
    guarantee = "exact restore: " if bug.startswith("rollback") else "AssertionError: same token: "
    shown = [b.code for b in guide_blocks() if b.section.startswith("Step 3") and b.code.startswith(guarantee)]
    assert len(shown) == 1
    result.stdout.fnmatch_lines([f"*{line}" for line in shown[0].splitlines()])


def test_the_hooks_example(pytester: pytest.Pytester) -> None:
    write_project(pytester, flags_project("The hooks"))
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["flags: * ms in checkpoints and restores"])


def test_the_hooks_table_lists_every_hook() -> None:
    from pytest_rollback import hookspecs

    hooks = {name for name in vars(hookspecs) if name.startswith("pytest_rollback_")}
    text = GUIDE.read_text()
    table = text[text.index("## The hooks") :]
    assert {name for name in hooks if f"| `{name}` |" in table} == hooks
    reference = (ROOT / "docs" / "reference" / "hooks.md").read_text()
    assert all(f"## `{name}`" in reference for name in hooks)
    assert "](reference/hooks.md)" in table


def test_the_readme_snippet_runs_as_its_files(pytester: pytest.Pytester) -> None:
    """The README's conftest.py and test_cart.py, as a user would paste them, pass (imports included)."""
    text = (ROOT / "README.md").read_text()
    code = next(m.group(2) for m in FENCE.finditer(text) if m.group(1) == "python" and "# conftest.py" in m.group(2))
    files = dict(re.findall(r"^# (\w+\.py)\n(.*?)(?=^# \w+\.py\n|\Z)", code, re.S | re.M))
    assert set(files) == {"conftest.py", "test_cart.py"}, files
    pytester.makeini(INI)
    helper = "def load_100k_products(client):\n    client.mset({f'product:{i}': i for i in range(1000)})\n"
    pytester.makeconftest(helper + files["conftest.py"])
    pytester.makepyfile(test_cart=files["test_cart.py"])
    result = pytester.runpytest(*INNER, "--rollback-provider=local", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def _adopting_sections() -> list[tuple[str, dict[str, str]]]:
    """Per section of docs/adopting.md: the files shown after "After:" (conftest.py and the tests)."""
    text = (ROOT / "docs" / "adopting.md").read_text()
    out = []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        if "\nAfter:\n" not in body:
            continue
        after = body.split("\nAfter:\n", 1)[1]
        files = {}
        for m in FENCE.finditer(after):
            first, _, rest = m.group(2).partition("\n")
            if m.group(1) == "python" and first.startswith("# "):
                files[first[2:].strip()] = rest
        out.append((title.strip(), files))
    return out


@pytest.mark.parametrize(("title", "files"), _adopting_sections(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_adopting_example_runs_after_the_switch(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, title: str, files: dict[str, str]
) -> None:
    assert "conftest.py" in files and any(name.startswith("test_") for name in files), files
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # the same servers on every machine
    pytester.makeini(INI)
    for name, code in files.items():
        pytester.path.joinpath(name).write_text(code)
    result = pytester.runpytest_subprocess(*INNER, "-p", "no:randomly", timeout=180)
    tests = sum(len(re.findall(r"^def test_", code, re.M)) for name, code in files.items() if name != "conftest.py")
    result.assert_outcomes(passed=tests)


def test_the_adopting_page_covers_every_starting_point() -> None:
    titles = [title for title, _ in _adopting_sections()]
    assert titles == [
        "From flush fixtures", "From pytest-redis", "From pytest-mongo", "From pytest-elasticsearch",
        "From testcontainers fixtures",
    ]
