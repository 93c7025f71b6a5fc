"""fcgiserve.config and cli_args: values, combinations, the command line, the old runfcgi words."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fcgiserve
from fcgiserve.cli_args import build_argparser, main_parse, parse_args, parse_known
from fcgiserve.config import OPTIONS, Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def error_of(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_args(argv)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- defaults and derived values ---------------------------------------------------------------------------


def test_defaults_are_safe() -> None:
    config = Config()
    assert (config.host, config.port, config.socket, config.fd) == ("127.0.0.1", 8080, None, None)
    assert config.socket_mode == 0o660 and not config.socket_mode & 0o002
    assert (config.method, config.minspare, config.maxspare, config.maxchildren) == ("threaded", 2, 5, None)
    assert config.debug is False and config.log_level == "info" and config.log_file is None
    assert config.spool_threshold == 1024 * 1024 and config.max_body_size == 1024**3
    assert config.explicit == frozenset()


def test_every_config_field_is_an_option_and_back() -> None:
    fields = {f.name for f in dataclasses.fields(Config)} - {"explicit"}
    assert fields == {o.name for o in OPTIONS}


def test_config_is_frozen_and_slotted() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    assert not hasattr(config, "__dict__")


@pytest.mark.parametrize(("method", "expected"), [("threaded", 50), ("prefork", 8)])
def test_maxchildren_defaults_per_method(method: str, expected: int) -> None:
    assert Config(method=method).effective_maxchildren == expected  # type: ignore[arg-type]


def test_classic_runfcgi_prefork_settings_raise_the_default_maxchildren() -> None:
    """method=prefork maxspare=30 was a common Django setting; it must keep working without maxchildren=."""
    config = parse_args(["mysite.wsgi", "method=prefork", "minspare=4", "maxspare=30"])
    assert config.maxchildren is None and config.effective_maxchildren == 30


def test_explicit_maxchildren_wins() -> None:
    assert Config(method="prefork", maxchildren=3, maxspare=3, minspare=1).effective_maxchildren == 3


def test_multiplexed_defaults_per_method() -> None:
    assert Config().effective_multiplexed is True
    assert Config(method="prefork").effective_multiplexed is False
    assert Config(method="prefork", multiplexed=True).effective_multiplexed is True


# --- value parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("yes", True), ("on", True), ("1", True),
     ("false", False), ("no", False), ("Off", False), ("0", False)],
)  # fmt: skip
def test_booleans_are_parsed_strictly(raw: str, expected: bool) -> None:
    assert parse_args([f"debug={raw}"]).debug is expected


@pytest.mark.parametrize("raw", ["", "2", "nope", "y", "t"])
def test_ambiguous_boolean_words_are_errors(raw: str) -> None:
    assert "--debug must be one of true/false" in error_of([f"debug={raw}"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("65536", 65536), ("512K", 512 * 1024), ("8M", 8 * 1024**2), ("1G", 1024**3), ("3KiB", 3072), ("0", 0)],
)
def test_sizes_accept_suffixes(raw: str, expected: int) -> None:
    assert parse_args(["--spool-threshold", raw]).spool_threshold == expected


@pytest.mark.parametrize("raw", ["-1", "1T", "1.5M", "M", "lots"])
def test_bad_sizes_are_errors(raw: str) -> None:
    assert error_of(["--max-body-size", raw]).startswith("--max-body-size must be a byte count")


@given(st.integers(min_value=0, max_value=2**40))
def test_size_suffixes_scale_by_1024(n: int) -> None:
    assert Config(spool_threshold=f"{n}K").spool_threshold == n * 1024  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=65535))
def test_port_round_trips_through_its_string_form(port: int) -> None:
    assert parse_args(["--port", str(port)]).port == port


@pytest.mark.parametrize(("raw", "expected"), [("0666", 0o666), ("0o600", 0o600), ("660", 0o660), ("7", 0o7)])
def test_socket_mode_is_octal_and_world_writable_only_when_asked(raw: str, expected: int) -> None:
    assert parse_args(["--socket", "/tmp/x.sock", "--socket-mode", raw]).socket_mode == expected


@pytest.mark.parametrize("raw", ["888", "1777", "rw-rw----", "-1"])
def test_bad_modes_are_errors(raw: str) -> None:
    assert "--umask must be an octal mode" in error_of([f"umask={raw}"])


def test_umask_runfcgi_word() -> None:
    assert parse_args(["umask=022"]).umask == 0o022
    assert Config().umask is None


@pytest.mark.parametrize("argv", [["--port", "65536"], ["--port", "-1"], ["--port", "http"], ["port="]])
def test_port_out_of_range(argv: list[str]) -> None:
    assert error_of(argv).startswith("--port must be an integer in 0..65535 (got ")


def test_error_names_the_option_and_the_value() -> None:
    assert error_of(["--maxrequests", "many"]) == "--maxrequests must be an integer >= 0 (got 'many')"


def test_host_accepts_bracketed_ipv6() -> None:
    assert parse_args(["--host", "[::1]"]).host == "::1"


@pytest.mark.parametrize(("raw", "expected"), [("/app/", "/app"), ("/", ""), ("", ""), ("/a/b", "/a/b")])
def test_script_name_is_normalised_for_wsgi(raw: str, expected: str) -> None:
    assert parse_args(["--script-name", raw]).script_name == expected


def test_script_name_must_be_a_path() -> None:
    assert error_of(["--script-name", "app"]).startswith("--script-name must be empty or a URL path")


def test_allow_from_comma_separated_and_repeated() -> None:
    config = parse_args(["--allow-from", "127.0.0.1, 10.0.0.0/8", "--allow-from", "::1"])
    assert config.allow_from == ("127.0.0.1", "10.0.0.0/8", "::1")


def test_allow_from_rejects_non_addresses() -> None:
    assert "'nginx.local' is not" in error_of(["--allow-from", "127.0.0.1,nginx.local"])


@pytest.mark.parametrize(
    ("word", "expected"),
    [("method=fork", "prefork"), ("method=thread", "threaded"), ("method=prefork", "prefork"),
     ("method=threaded", "threaded")],
)  # fmt: skip
def test_runfcgi_method_names(word: str, expected: str) -> None:
    assert parse_args([word]).method == expected


@pytest.mark.parametrize("protocol", ["fcgi", "scgi"])
def test_protocols_accepted(protocol: str) -> None:
    assert parse_args([f"protocol={protocol}"]).protocol == protocol


def test_unknown_protocol_is_an_error() -> None:
    assert error_of(["protocol=ajp"]) == "--protocol must be one of fcgi, scgi (got 'ajp')"


# --- combinations ------------------------------------------------------------------------------------------


def test_maxspare_below_minspare() -> None:
    assert error_of(["minspare=4", "maxspare=1"]) == "--maxspare must be >= --minspare (got 1 < 4)"


def test_maxchildren_below_maxspare() -> None:
    assert (
        error_of(["--maxspare", "10", "--maxchildren", "5"])
        == "--maxchildren must be >= --maxspare (got 5 < 10)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--method", "threaded", "--maxchildren", "2", "--maxspare", "5"],
      "--maxchildren must be >= --maxspare (got 2 < 5)"),
     (["method=prefork", "maxchildren=2", "maxspare=5"], "--maxchildren must be >= --maxspare (got 2 < 5)"),
     (["--minspare", "4", "--maxchildren", "2"], "--maxchildren must be >= --minspare (got 2 < 4)"),
     (["minspare=4", "maxchildren=3", "method=prefork"], "--maxchildren must be >= --minspare (got 3 < 4)"),
     (["--minspare", "3", "--maxspare", "2", "--maxchildren", "9"],
      "--maxspare must be >= --minspare (got 2 < 3)"),
     (["--maxspare", "1", "--minspare", "2"], "--maxspare must be >= --minspare (got 1 < 2)")],
)  # fmt: skip
def test_pool_sizes_given_together_must_be_ordered(argv: list[str], message: str) -> None:
    """Only values the user set can contradict each other; setting one equal to its default still counts."""
    assert error_of(argv) == message


# (minspare, maxspare, maxchildren in effect) and the defaults that moved, as {flag: (default, in effect)}.
@pytest.mark.parametrize(
    ("argv", "sizes", "moved"),
    [([], (2, 5, 50), {}),
     (["--method", "prefork"], (2, 5, 8), {}),
     # --maxchildren given: maxspare (and through it minspare) come down to it
     (["--method", "threaded", "--maxchildren", "2"], (2, 2, 2), {"--maxspare": (5, 2)}),
     (["--method", "prefork", "--maxchildren", "2"], (2, 2, 2), {"--maxspare": (5, 2)}),
     (["maxchildren=2"], (2, 2, 2), {"--maxspare": (5, 2)}),
     (["method=prefork", "maxchildren=1"], (1, 1, 1), {"--minspare": (2, 1), "--maxspare": (5, 1)}),
     (["--minspare", "3", "--maxchildren", "4"], (3, 4, 4), {"--maxspare": (5, 4)}),
     (["--maxspare", "3", "--maxchildren", "3"], (2, 3, 3), {}),
     # --maxspare given: minspare comes down to it, maxchildren's default goes up to it
     (["--maxspare", "1"], (1, 1, 50), {"--minspare": (2, 1)}),
     (["maxspare=1", "method=prefork"], (1, 1, 8), {"--minspare": (2, 1)}),
     (["method=prefork", "maxspare=30"], (2, 30, 30), {"--maxchildren": (8, 30)}),
     (["--maxspare", "60"], (2, 60, 60), {"--maxchildren": (50, 60)}),
     # --minspare given: maxspare goes up to it, and maxchildren's default with it
     (["--minspare", "10"], (10, 10, 50), {"--maxspare": (5, 10)}),
     (["--minspare", "10", "--method", "prefork"], (10, 10, 10),
      {"--maxspare": (5, 10), "--maxchildren": (8, 10)}),
     (["minspare=0", "maxchildren=1"], (0, 1, 1), {"--maxspare": (5, 1)}),
     # all three given and ordered: nothing moves
     (["--minspare", "3", "--maxspare", "3", "--maxchildren", "3"], (3, 3, 3), {})],
)  # fmt: skip
def test_defaults_fit_the_pool_sizes_given(
    argv: list[str], sizes: tuple[int, int, int], moved: dict[str, tuple[int, int]]
) -> None:
    """The issue's `--maxchildren 2` alone was refused for a --maxspare nobody typed: defaults give way."""
    config = parse_args(argv)
    assert (config.minspare, config.maxspare, config.effective_maxchildren) == sizes
    assert config.fitted_defaults() == moved
    assert not config.explicit & {flag[2:] for flag in moved}, (
        "explicit says what the user set, not what moved"
    )


_SIZE = st.none() | st.integers(min_value=1, max_value=80)


@given(st.sampled_from(["threaded", "prefork"]), _SIZE, _SIZE, _SIZE)
def test_pool_sizes_are_ordered_or_refused(
    method: str, minspare: int | None, maxspare: int | None, maxchildren: int | None
) -> None:
    """Any sizes given: an error exactly when two given ones are out of order; else the given ones are kept
    and minspare <= maxspare <= maxchildren holds for the values in effect."""
    given_sizes = {
        name: value
        for name, value in (("minspare", minspare), ("maxspare", maxspare), ("maxchildren", maxchildren))
        if value is not None
    }
    order = ["minspare", "maxspare", "maxchildren"]
    contradict = any(
        given_sizes[low] > given_sizes[high]
        for i, low in enumerate(order)
        for high in order[i + 1 :]
        if low in given_sizes and high in given_sizes
    )
    try:
        config = Config.from_mapping({"method": method, **given_sizes})
    except ConfigError:
        assert contradict
        return
    assert not contradict
    in_effect = {
        "minspare": config.minspare,
        "maxspare": config.maxspare,
        "maxchildren": config.effective_maxchildren,
    }
    assert in_effect.items() >= given_sizes.items()
    assert config.minspare <= config.maxspare <= config.effective_maxchildren


def test_replace_fits_the_defaults_again() -> None:
    """Server(app, maxchildren=...) and the flup shim build with replace(): fitted values are not kept as if
    given, while a size a Python caller passed to Config(...) is."""
    small = Config().replace(maxchildren=2)
    assert (small.minspare, small.maxspare, small.explicit) == (2, 2, {"maxchildren"})
    big = small.replace(maxchildren=10)
    assert (big.minspare, big.maxspare, big.effective_maxchildren) == (2, 5, 10)
    assert Config(maxspare=9).replace(port=9000).maxspare == 9
    assert Config(maxchildren=3).explicit == {"maxchildren"}
    with pytest.raises(ConfigError, match=r"--maxchildren must be >= --maxspare \(got 3 < 9\)"):
        Config(maxspare=9).replace(maxchildren=3)


@pytest.mark.parametrize(
    "argv",
    [["--socket", "/tmp/s", "--port", "9000"], ["--socket", "/tmp/s", "--fd", "3"],
     ["--fd", "3", "--host", "::1"], ["socket=/tmp/s", "host=127.0.0.1"]],
)  # fmt: skip
def test_listen_places_are_mutually_exclusive(argv: list[str]) -> None:
    assert "mutually exclusive" in error_of(argv)


@pytest.mark.parametrize(
    ("argv", "kind"),
    [([], "default"), (["--port", "9000"], "tcp"), (["host=::1"], "tcp"), (["--socket", "/tmp/s"], "unix"),
     (["--fd", "0"], "fd")],
)  # fmt: skip
def test_listen_kind(argv: list[str], kind: str) -> None:
    assert parse_args(argv).listen_kind() == kind


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--timeout", "30"], "--timeout needs --method prefork"),
     (["--threads", "8"], "--threads is per prefork child"),
     (["--preload"], "--preload needs --method prefork"),
     (["--maxrequests-jitter", "10"], "--maxrequests-jitter needs --maxrequests"),
     (["--method", "threaded", "--timeout", "30"], "--timeout needs --method prefork"),
     (["--maxrequests", "0", "--maxrequests-jitter", "10"], "--maxrequests-jitter needs --maxrequests")],
)  # fmt: skip
def test_options_that_do_not_apply_are_refused(argv: list[str], needle: str) -> None:
    """Whether the option they need was given or left at its default: no default can be fitted to them."""
    assert needle in error_of(argv)


def test_prefork_only_options_accepted_with_prefork() -> None:
    config = parse_args(["--method", "prefork", "--timeout", "30", "--threads", "8", "--preload"])
    assert (config.timeout, config.threads, config.preload) == (30.0, 8, True)


# --- building Config from Python ---------------------------------------------------------------------------


def test_from_mapping_parses_strings_and_records_explicit() -> None:
    config = Config.from_mapping({"maxspare": "9", "debug": True, "socket": "/s", "socket_mode": "600"})
    assert (config.maxspare, config.debug, config.socket_mode) == (9, True, 0o600)
    assert config.explicit == {"maxspare", "debug", "socket", "socket_mode"}


def test_from_mapping_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unknown option 'daemonise'"):
        Config.from_mapping({"daemonise": False})


def test_replace_validates_and_extends_explicit() -> None:
    config = Config.from_mapping({"port": 9000}).replace(minspare=1, maxspare=2)
    assert (config.port, config.minspare, config.maxspare) == (9000, 1, 2)
    assert config.explicit == {"port", "minspare", "maxspare"}
    with pytest.raises(ConfigError, match="--maxspare must be >= --minspare"):
        config.replace(minspare=3)


def test_constructor_rejects_wrong_types() -> None:
    with pytest.raises(ConfigError, match="--port must be an integer"):
        Config(port=True)  # bool is an int subclass, and still not a port
    with pytest.raises(ConfigError, match="--graceful-timeout must be a number of seconds"):
        Config(graceful_timeout=float("nan"))


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- command line and runfcgi words ------------------------------------------------------------------------


def test_classic_runfcgi_line_mixed_with_flags(tmp_path: Path) -> None:
    argv = [
        "mysite.wsgi:application", "method=prefork", "port=8081", "minspare=4", "maxspare=30",
        "daemonize=false", "debug=false", f"pidfile={tmp_path}/x.pid", "host=127.0.0.1", "maxchildren=40",
        "maxrequests=500", "umask=022", f"workdir={tmp_path}", f"outlog={tmp_path}/log", "protocol=fcgi",
        "--log-level", "debug", "--graceful-timeout=5",
    ]  # fmt: skip
    config = parse_args(argv)
    assert config.app == "mysite.wsgi:application"
    assert (config.method, config.host, config.port) == ("prefork", "127.0.0.1", 8081)
    assert (config.minspare, config.maxspare, config.maxchildren, config.maxrequests) == (4, 30, 40, 500)
    assert config.debug is False and config.umask == 0o022 and config.protocol == "fcgi"
    assert (config.pidfile, config.chdir, config.log_file) == (
        f"{tmp_path}/x.pid",
        str(tmp_path),
        f"{tmp_path}/log",
    )
    assert (config.log_level, config.graceful_timeout) == ("debug", 5.0)
    assert "daemonize" not in config.explicit and {"port", "log_file", "chdir"} <= config.explicit


def test_daemonize_true_explains_the_supervisor_way() -> None:
    message = error_of(["daemonize=true"])
    assert "never daemonizes" in message and "supervisor" in message


def test_daemonize_needs_a_boolean() -> None:
    assert error_of(["daemonize=sometimes"]) == "daemonize= must be true or false (got 'sometimes')"


def test_unknown_runfcgi_word_lists_the_known_ones() -> None:
    message = error_of(["maxthreads=4"])
    assert message.startswith("unknown runfcgi option maxthreads= (known: ") and "maxspare" in message


def test_outlog_and_errlog_must_agree() -> None:
    assert parse_args(["outlog=/tmp/a", "errlog=/tmp/a"]).log_file == "/tmp/a"
    assert error_of(["outlog=/tmp/a", "errlog=/tmp/b"]) == (
        "outlog= and errlog= both set --log-file to different values"
    )


def test_empty_path_word_means_unset() -> None:
    config = parse_args(["pidfile=", "outlog="])
    assert config.pidfile is None and config.log_file is None


def test_flag_and_word_for_the_same_option() -> None:
    assert parse_args(["--port", "9000", "port=9000"]).port == 9000
    assert error_of(["--port", "9000", "port=9001"]) == "--port and port= both set --port to different values"


def test_a_flag_value_containing_equals_is_not_a_runfcgi_word() -> None:
    config = parse_args(["--log-file", "/var/log/a=b.log", "--allow-from", "127.0.0.1", "app"])
    assert config.log_file == "/var/log/a=b.log" and config.app == "app"


def test_flags_are_not_abbreviated() -> None:
    assert "unrecognized arguments: --max-body" in error_of(["--max-body", "1"])


def test_socket_mode_needs_a_socket() -> None:
    assert error_of(["--socket-mode", "600"]).startswith("--socket-mode needs --socket")


def test_explicit_is_part_of_equality() -> None:
    """Setting the default port explicitly changes behaviour (no fd 0 detection), so the configs differ."""
    assert Config.from_mapping({"port": 8080}) != Config() and Config() == Config(port=8080)


def test_words_after_double_dash_are_positional() -> None:
    assert parse_args(["--", "app"]).app == "app"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--bogus"], "unrecognized arguments: --bogus"), (["--port"], "expected one argument"),
     (["a", "b"], "unrecognized arguments: b"), (["--method", "forking"], "--method must be one of")],
)  # fmt: skip
def test_argparse_errors_become_one_line_config_errors(argv: list[str], needle: str) -> None:
    assert needle in error_of(argv)


def test_parse_known_returns_the_callers_extra_arguments() -> None:
    parser = build_argparser()
    parser.add_argument("--check", action="store_true")
    config, namespace = parse_known(["--check", "app:x", "port=1"], parser)
    assert namespace.check is True and config.app == "app:x" and config.port == 1


def test_main_parse_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main_parse(["maxspare=1", "minspare=4"], prog="manage.py runfcgi")
    assert info.value.code == 2
    assert (
        capsys.readouterr().err == "manage.py runfcgi: error: --maxspare must be >= --minspare (got 1 < 4)\n"
    )


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["daemonize=yes"]])
def test_main_parse_in_a_real_process(argv: list[str]) -> None:
    code = "import sys; from fcgiserve.cli_args import main_parse; main_parse(sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("fcgiserve: error: "), done.stderr


def test_version_prints_the_package_version_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fcgiserve", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"fcgiserve {fcgiserve.__version__} (Python "), done.stdout
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared is not None and declared.group(1) == fcgiserve.__version__, "pyproject.toml disagrees"


def test_help_shows_every_flag_default_and_runfcgi_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for opt in OPTIONS:
        assert (opt.flags[0] if opt.flags else str(opt.metavar)) in out
        assert f"(default: {opt.describe_default()})" in out, opt.name
        for alias in opt.runfcgi:
            assert f"{alias}=" in out
