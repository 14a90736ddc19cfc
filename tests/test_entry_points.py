"""Adapters registered by an installed distribution, through the ``pytest_rollback.adapters`` entry points.

Each test installs a real distribution for the inner pytest run: a ``*.dist-info``
directory (``METADATA``, ``entry_points.txt``) and its package, in a directory
put on ``sys.path``, where ``importlib.metadata`` finds it as it finds a wheel
installed by pip.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import INNER

from pytest_rollback.plugin import ENTRY_POINT_GROUP

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def install(pytester: pytest.Pytester, dist: str, entry_points: dict[str, str], files: dict[str, str]) -> Path:
    """Install distribution ``dist`` (version 1.0) with ``entry_points`` in our group and the source ``files``."""
    site = pytester.path / "site"
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    for path, source in files.items():
        target = site / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(source))
    pytester.syspathinsert(site)
    return site


FLAGS_PACKAGE = {
    "flagkit/__init__.py": """
        FLAGS = {"express_checkout": False}
    """,
    "flagkit/testing.py": """
        from pytest_rollback.adapters.memory import DictAdapter

        from flagkit import FLAGS


        def register(registry):
            registry.add_adapter(DictAdapter("flags", FLAGS))
    """,
}


def test_an_installed_entry_point_registers_an_active_adapter(pytester: pytest.Pytester) -> None:
    """No conftest, no option: installing the package is enough for its store to be rolled back."""
    from importlib.metadata import entry_points

    install(pytester, "flagkit", {"flags": "flagkit.testing:register"}, FLAGS_PACKAGE)
    assert "flagkit.testing:register" in [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    pytester.makeini(INI)
    pytester.makepyfile(
        test_flags="""
        from flagkit import FLAGS

        def test_flip(rollback):
            assert "flags" in rollback.stores
            FLAGS["express_checkout"] = True
            FLAGS["new"] = 1

        def test_back_to_the_defaults():
            assert FLAGS == {"express_checkout": False}
        """
    )
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=2)


def test_entry_points_register_before_the_hook(pytester: pytest.Pytester) -> None:
    """A conftest's ``pytest_rollback_register`` already sees what the installed packages registered."""
    install(pytester, "flagkit", {"flags": "flagkit.testing:register"}, FLAGS_PACKAGE)
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        SEEN = []

        def pytest_rollback_register(registry):
            SEEN.extend(registry.names())
        """
    )
    pytester.makepyfile(
        test_order="""
        from conftest import SEEN

        def test_order():
            assert "flags" in SEEN and "redis" in SEEN
        """
    )
    pytester.runpytest(*INNER).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("value", "files", "error"),
    [
        ("nowhere.testing:register", {}, "ModuleNotFoundError(\"No module named 'nowhere'\")"),
        (
            "badkit:register",
            {"badkit/__init__.py": "def register(registry):\n    raise RuntimeError('no flags configured')\n"},
            "RuntimeError('no flags configured')",
        ),
        (
            "badkit:register",
            {"badkit/__init__.py": "def register(registry):\n    registry.add_adapter(object())\n"},
            "RegistrationError(\"pytest-rollback: <object object at *> is not an adapter: *\")",
        ),
    ],
    ids=["import fails", "register raises", "not an adapter"],
)
def test_an_entry_point_that_fails_is_one_usage_error_line(
    pytester: pytest.Pytester, value: str, files: dict[str, str], error: str
) -> None:
    install(pytester, "badkit", {"bad": value}, files)
    pytester.makeini(INI)
    pytester.makepyfile(test_never="def test_never():\n    pass\n")
    result = pytester.runpytest(*INNER)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-rollback: the adapter entry point 'bad' ({value}) failed: {error}"])
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output
    assert "test_never" not in result.stdout.str()


def test_pytest_does_not_rewrite_the_plugins_own_modules(pytester: pytest.Pytester) -> None:
    """pytest rewrites the asserts of every module of a plugin's distribution, at a cost on every run where
    bytecode is not cached; the plugin's modules carry PYTEST_DONT_REWRITE (all of them: a module added
    without it is named here), and an inner run imports them unrewritten. ``testing`` (the conformance
    kit, whose asserts are its users') is left to rewrite."""
    import ast

    import pytest_rollback

    root = Path(pytest_rollback.__file__).parent
    missing = [
        str(path.relative_to(root)) for path in sorted(root.rglob("*.py"))
        if path.name != "testing.py"
        and "PYTEST_DONT_REWRITE" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    ]
    assert missing == []
    pytester.makeini(INI)
    pytester.makepyfile(
        test_rewritten="""
        import importlib

        def test_not_rewritten():
            for name in ("pytest_rollback.plugin", "pytest_rollback.engine", "pytest_rollback.adapters.redis"):
                module = importlib.import_module(name)
                assert "@py_builtins" not in vars(module), name
        """
    )
    result = pytester.runpytest_subprocess(*INNER)
    result.assert_outcomes(passed=1)
