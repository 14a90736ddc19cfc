"""Options as a user sets them: precedence, bad values, --no-rollback, remote and dead URLs, --fixtures."""

from __future__ import annotations

import socket

import pytest
import redis

from pytest_rollback.api import Service

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
CHOICES = "auto, docker, local, external, embedded"
ENV_VARS = (
    "PYTEST_ROLLBACK_PROVIDER",
    "PYTEST_ROLLBACK_VERIFY",
    "PYTEST_ROLLBACK_ALLOW_REMOTE",
    "PYTEST_ROLLBACK_DISABLED",
    "PYTEST_ROLLBACK_REDIS_URL",
    "PYTEST_ROLLBACK_REDIS_IMAGE",
)

SERVICE_TEST = """
def test_service(redis_service):
    print("PROVIDER", redis_service.provider)
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outer environment must not decide what the inner runs see."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _only_line(text: str, start: str) -> str:
    lines = [line for line in text.splitlines() if "pytest-rollback" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(start), lines
    return lines[0]


# -- precedence -------------------------------------------------------------------


def test_provider_default_is_auto(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"rollback: on, provider auto (choices: {CHOICES})"])


def test_provider_from_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is read in a separate process, as a user's shell would set it."""
    monkeypatch.setenv("PYTEST_ROLLBACK_PROVIDER", "embedded")
    pytester.makeini(INI)
    pytester.makepyfile(SERVICE_TEST)
    result = pytester.runpytest_subprocess(*INNER, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "rollback: on, provider embedded *",
            "*PROVIDER embedded*",
            "pytest-rollback: redis via embedded at redis://127.0.0.1:*",
        ]
    )


def test_environment_beats_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """As pytest-django: a CI variable overrides a checked-in ini value."""
    monkeypatch.setenv("PYTEST_ROLLBACK_PROVIDER", "embedded")
    pytester.makeini(INI + "rollback_provider = local\n")
    pytester.makepyfile(SERVICE_TEST)
    result = pytester.runpytest(*INNER, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["rollback: on, provider embedded *", "*PROVIDER embedded", "pytest-rollback: redis via embedded *"]
    )


def test_command_line_beats_ini_and_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_ROLLBACK_PROVIDER", "docker")
    pytester.makeini(INI + "rollback_provider = local\n")
    pytester.makepyfile(SERVICE_TEST)
    result = pytester.runpytest(*INNER, "-s", "--rollback-provider=embedded")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["rollback: on, provider embedded *", "*PROVIDER embedded", "pytest-rollback: redis via embedded *"]
    )


def test_bool_option_precedence_and_switching_a_flag_off(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    off, on = "rollback: off (--no-rollback), provider auto *", "rollback: on, provider auto *"
    pytester.makeini(INI + "no_rollback = true\n")
    pytester.runpytest(*INNER).stdout.fnmatch_lines([off])
    monkeypatch.setenv("PYTEST_NO_ROLLBACK", "no")  # the environment beats the ini file
    pytester.runpytest(*INNER).stdout.fnmatch_lines([on])
    pytester.runpytest(*INNER, "--no-rollback").stdout.fnmatch_lines([off])  # the command line beats both
    monkeypatch.setenv("PYTEST_NO_ROLLBACK", "yes")
    pytester.runpytest(*INNER, "--rollback").stdout.fnmatch_lines([on])  # and switches a flag off
    # the older names still work
    monkeypatch.delenv("PYTEST_NO_ROLLBACK")
    monkeypatch.setenv("PYTEST_ROLLBACK_DISABLED", "yes")
    pytester.makeini(INI)
    pytester.runpytest(*INNER).stdout.fnmatch_lines([off])
    monkeypatch.delenv("PYTEST_ROLLBACK_DISABLED")
    pytester.makeini(INI + "rollback_disabled = true\n")
    pytester.runpytest(*INNER).stdout.fnmatch_lines([off])


def test_every_flag_can_be_switched_off_on_the_command_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_ROLLBACK_VERIFY", "1")
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        def pytest_sessionstart(session):
            from pytest_rollback.plugin import get_session
            print("VERIFY", get_session(session.config).options.verify)
        """
    )
    pytester.makepyfile("def test_nothing(): pass")
    pytester.runpytest(*INNER, "-s").stdout.fnmatch_lines(["VERIFY True"])
    pytester.runpytest(*INNER, "-s", "--no-rollback-verify").stdout.fnmatch_lines(["VERIFY False"])
    help_text = pytester.runpytest(*INNER, "--help").stdout.str()
    for flag in ("--no-rollback-verify", "--no-rollback-allow-remote", "--rollback "):
        assert flag in help_text, flag


# -- bad values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("cli", f"pytest-rollback: --rollback-provider is 'nope', which is not one of {CHOICES}"),
        ("ini", f"pytest-rollback: ini option rollback_provider is 'nope', which is not one of {CHOICES}"),
        ("env", f"pytest-rollback: $PYTEST_ROLLBACK_PROVIDER is 'nope', which is not one of {CHOICES}"),
        (
            "bool-ini",
            "pytest-rollback: ini option rollback_verify is 'sometimes'; use one of 1/0, true/false, yes/no, on/off",
        ),
        (
            "bool-env",
            "pytest-rollback: $PYTEST_ROLLBACK_ALLOW_REMOTE is 'sure'; use one of 1/0, true/false, yes/no, on/off",
        ),
    ],
)
def test_bad_values_are_one_usage_error_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    ini, args = INI, [*INNER]
    if source == "cli":
        args.append("--rollback-provider=nope")
    elif source == "ini":
        ini += "rollback_provider = nope\n"
    elif source == "env":
        monkeypatch.setenv("PYTEST_ROLLBACK_PROVIDER", "nope")
    elif source == "bool-ini":
        ini += "rollback_verify = sometimes\n"
    else:
        monkeypatch.setenv("PYTEST_ROLLBACK_ALLOW_REMOTE", "sure")
    pytester.makeini(ini)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert _only_line(result.stderr.str(), "ERROR: pytest-rollback") == f"ERROR: {message}"
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


# -- --no-rollback --------------------------------------------------------------------


def test_no_rollback_leaves_writes_in_place(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest

        from pytest_rollback import RollbackError

        @pytest.fixture(scope="module")
        def seeded(redis_client):
            redis_client.set("seed", "s")

        def test_writes(seeded, redis_client):
            redis_client.set("written", "1")

        def test_sees_the_writes(seeded, redis_client):
            assert sorted(redis_client.keys()) == [b"seed", b"written"]

        def test_handle_says_it_is_off(rollback):
            with pytest.raises(RollbackError, match="rollback is disabled"):
                rollback.checkpoint()
        """
    )
    result = pytester.runpytest(*INNER, "--rollback-provider=local", "--no-rollback", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["rollback: off (--no-rollback), provider local *"])


# -- URLs -----------------------------------------------------------------------------

#: Records (in connect.log) and refuses any connection attempt to 10.255.255.1,
#: so the test shows whether the plugin tried to reach the remote server.
NO_REMOTE_CONFTEST = """
import pathlib
import socket

LOG = pathlib.Path(__file__).with_name("connect.log")
_connect = socket.socket.connect


def connect(self, address):
    if isinstance(address, tuple) and address[0] == "10.255.255.1":
        with LOG.open("a") as f:
            f.write(f"{address}\\n")
        raise ConnectionRefusedError("test conftest: remote address refused")
    return _connect(self, address)


socket.socket.connect = connect
"""


def test_non_loopback_url_is_refused_before_any_connection(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(NO_REMOTE_CONFTEST)
    pytester.makepyfile("def test_nothing(): pass")
    url = "--rollback-redis-url=redis://10.255.255.1:6379/0"
    # in a subprocess: the conftest patches the socket module
    result = pytester.runpytest_subprocess(*INNER, url, timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = _only_line(result.stderr.str(), "ERROR: pytest-rollback: redis: refusing '10.255.255.1'")
    assert "--rollback-allow-remote" in line
    assert not (pytester.path / "connect.log").exists(), "the remote server was contacted"

    result = pytester.runpytest_subprocess(*INNER, url, "--rollback-allow-remote", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    _only_line(result.stderr.str(), "ERROR: pytest-rollback: redis: cannot reach 10.255.255.1:6379")
    assert (pytester.path / "connect.log").exists(), "--rollback-allow-remote did not let the URL through"


def test_unreachable_loopback_url_gives_one_clear_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_nothing(): pass")
    port = _closed_port()
    result = pytester.runpytest(*INNER, f"--rollback-redis-url=redis://127.0.0.1:{port}/0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = _only_line(result.stderr.str(), f"ERROR: pytest-rollback: redis: cannot reach 127.0.0.1:{port}")
    assert "start the server or fix --rollback-redis-url" in line


def test_url_from_environment_activates_the_store(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, real_redis: Service
) -> None:
    client = redis.Redis.from_url(real_redis.url)
    client.flushall()
    monkeypatch.setenv("PYTEST_ROLLBACK_REDIS_URL", real_redis.url)
    pytester.makeini(INI)
    pytester.makepyfile(
        f"""
        import redis

        def test_writes():
            redis.Redis.from_url({real_redis.url!r}).set("k", "v")

        def test_clean():
            assert redis.Redis.from_url({real_redis.url!r}).keys() == []
        """
    )
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"pytest-rollback: redis via external at {real_redis.url}, version *"])
    assert client.keys() == []
    client.close()


# -- documentation --------------------------------------------------------------------


def test_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    result = pytester.runpytest(*INNER, "--fixtures")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "redis_service ?session scope? -- *fixtures.py:*",
            "    The session's Redis server: *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "redis_client ?session scope? -- *fixtures.py:*",
            "    A ``redis.Redis`` client on this worker's database*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "async_redis_client -- *fixtures.py:*",
            "    A ``redis.asyncio.Redis`` client on the same server*",
        ]
    )
    result.stdout.fnmatch_lines(["rollback -- *fixtures.py:*", "    Control rollback from inside a test."])
    result.stdout.no_fnmatch_line("_rollback_test*")


@pytest.mark.parametrize(
    ("host", "resolves_to", "allowed"),
    [
        ("redis", ["172.18.0.5"], True),  # a docker-compose or GitLab CI service
        ("mongo", ["10.1.0.7", "fd00::7"], True),  # a CI service network with IPv6 too
        ("cache", ["203.0.113.9"], False),  # a short name on a public address
        ("db.prod.example.com", ["10.0.3.4"], False),  # a name with dots: production-looking
        ("10.0.3.4", None, False),  # an address written out, even a private one
        ("localhost", None, True),
        ("127.0.0.1", None, True),
        ("nowhere", [], False),  # does not resolve
    ],
)
def test_ci_and_compose_services_pass_without_allow_remote(
    monkeypatch: pytest.MonkeyPatch, host: str, resolves_to: list[str] | None, allowed: bool
) -> None:
    import socket

    from pytest_rollback.api import StoreUnavailable
    from pytest_rollback.options import StoreSettings
    from pytest_rollback.services import external

    if resolves_to is not None:
        def fake(name: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
            if name != host or not resolves_to:
                raise OSError("no such host")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in resolves_to]

        monkeypatch.setattr(socket, "getaddrinfo", fake)
    settings = StoreSettings("redis", "external", f"redis://{host}:6379/0", "", False, None, None)  # type: ignore[arg-type]
    if allowed:
        external.check_address(settings, host)
    else:
        with pytest.raises(StoreUnavailable, match="not this machine nor a CI or compose service"):
            external.check_address(settings, host)
