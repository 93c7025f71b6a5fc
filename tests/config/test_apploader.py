"""fcgiserve.apploader: real modules written to a temporary project directory."""

from __future__ import annotations

import itertools
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fcgiserve.apploader import AppLoadError, load_app

_counter = itertools.count()

WSGI_APP = """
def application(environ, start_response):
    start_response("200 OK", [])
    return [b"application"]
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Writes a uniquely named module into a project directory; yields a writer returning the module name.

    The test runs with the project as working directory; sys.path and sys.modules are restored afterwards.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)

    def write(source: str, package: str | None = None) -> str:
        name = f"fcgiserve_test_app_{next(_counter)}"
        if package is not None:
            (tmp_path / package).mkdir(exist_ok=True)
            (tmp_path / package / "__init__.py").touch()
            (tmp_path / package / f"{name}.py").write_text(textwrap.dedent(source))
            return f"{package}.{name}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    yield write
    for name in set(sys.modules) - before:
        del sys.modules[name]


def call(app: Callable[..., object]) -> object:
    return app({}, lambda status, headers: None)


def test_module_alone_uses_application(project: Callable[[str], str]) -> None:
    name = project(WSGI_APP + "app = None\n")
    assert call(load_app(name)) == [b"application"]


def test_module_alone_falls_back_to_app(project: Callable[[str], str]) -> None:
    name = project("def app(environ, start_response):\n    return [b'app']\n")
    assert call(load_app(name)) == [b"app"]


def test_module_with_neither_name(project: Callable[[str], str]) -> None:
    name = project("x = 1\n")
    with pytest.raises(AppLoadError, match="defines neither 'application' nor 'app'"):
        load_app(name)


def test_explicit_and_dotted_callables(project: Callable[[str], str]) -> None:
    name = project(WSGI_APP + "class Holder:\n    wsgi = staticmethod(application)\n")
    assert call(load_app(f"{name}:application")) == [b"application"]
    assert call(load_app(f"{name}:Holder.wsgi")) == [b"application"]


def test_factory_call_syntax(project: Callable[[str], str]) -> None:
    name = project(WSGI_APP + "calls = []\ndef create_app():\n    calls.append(1)\n    return application\n")
    assert call(load_app(f"{name}:create_app()")) == [b"application"]
    assert sys.modules[name].calls == [1]


def test_factory_that_raises(project: Callable[[str], str]) -> None:
    name = project("def make():\n    raise LookupError('no settings')\n")
    with pytest.raises(AppLoadError, match="calling the factory raised LookupError: no settings") as info:
        load_app(f"{name}:make()")
    assert isinstance(info.value.__cause__, LookupError)


def test_factory_that_explains_its_own_failure_is_passed_through(project: Callable[[str], str]) -> None:
    """A factory raising AppLoadError (fcgiserve.contrib.django.wsgi) keeps its message and ``complete``."""
    name = project(
        "from fcgiserve.apploader import AppLoadError\n"
        "def make():\n    raise AppLoadError('settings.X names nothing', complete=True)\n"
    )
    with pytest.raises(AppLoadError) as info:
        load_app(f"{name}:make()")
    assert (str(info.value), info.value.complete) == ("settings.X names nothing", True)


def test_package_module(project: Callable[..., str]) -> None:
    name = project(WSGI_APP, package="mysite_pkg")
    assert call(load_app(name)) == [b"application"]


def test_not_callable(project: Callable[[str], str]) -> None:
    name = project("application = 42\n")
    with pytest.raises(AppLoadError, match=f"^{name}:application is a int, not a callable WSGI application$"):
        load_app(name)


def test_missing_attribute(project: Callable[[str], str]) -> None:
    name = project(WSGI_APP)
    with pytest.raises(AppLoadError, match="has no attribute 'wsgi_app'") as info:
        load_app(f"{name}:wsgi_app")
    assert isinstance(info.value.__cause__, AttributeError)


def test_missing_module_says_not_found(project: Callable[[str], str]) -> None:
    with pytest.raises(AppLoadError, match=r"^module 'no_such_module_here' not found") as info:
        load_app("no_such_module_here:app")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_missing_submodule_of_existing_package_says_not_found(project: Callable[..., str]) -> None:
    project(WSGI_APP, package="realpkg")
    with pytest.raises(AppLoadError, match=r"^module 'realpkg\.nothing' not found"):
        load_app("realpkg.nothing")


def test_module_whose_own_import_is_missing_is_not_reported_as_missing(project: Callable[[str], str]) -> None:
    """The module exists; a dependency it imports does not. Saying 'module not found' would mislead."""
    name = project("import some_dependency_that_is_not_installed\n")
    with pytest.raises(AppLoadError) as info:
        load_app(name)
    message = str(info.value)
    assert message.startswith(f"importing '{name}' failed: ModuleNotFoundError: ")
    assert "some_dependency_that_is_not_installed" in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_module_that_raises_on_import(project: Callable[[str], str]) -> None:
    name = project("raise RuntimeError('settings missing')\n")
    with pytest.raises(
        AppLoadError, match=f"^importing '{name}' failed: RuntimeError: settings missing$"
    ) as info:
        load_app(name)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.__cause__.__traceback__ is not None  # the original traceback travels with it


def test_module_that_exits_on_import(project: Callable[[str], str]) -> None:
    name = project("import sys\nsys.exit(3)\n")
    with pytest.raises(AppLoadError, match="failed: SystemExit: 3"):
        load_app(name)


def test_syntax_error_in_module(project: Callable[[str], str]) -> None:
    name = project("def broken(:\n")
    with pytest.raises(AppLoadError, match=f"^importing '{name}' failed: SyntaxError"):
        load_app(name)


@pytest.mark.parametrize("spec", ["", "my-app", "mod:", ":app", "mod:app(x)", "mod:app.", "mod app", "1mod"])
def test_invalid_specs(spec: str) -> None:
    with pytest.raises(AppLoadError, match="expected MODULE\\[:CALLABLE\\]"):
        load_app(spec)


def test_current_directory_goes_first_on_sys_path(project: Callable[[str], str], tmp_path: Path) -> None:
    name = project(WSGI_APP)
    sys.path[:] = [p for p in sys.path if p not in ("", str(tmp_path))]
    load_app(name)
    assert sys.path[0] == str(tmp_path)


def test_chdir_changes_directory_and_imports_from_there(
    project: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "chdir_target_app.py").write_text(WSGI_APP)
    monkeypatch.chdir(tmp_path)
    assert call(load_app("chdir_target_app", chdir=str(other))) == [b"application"]
    assert os.getcwd() == str(other) and sys.path[0] == str(other)


def test_chdir_to_a_missing_directory(project: Callable[[str], str], tmp_path: Path) -> None:
    with pytest.raises(AppLoadError, match=f"^cannot change directory to {tmp_path}/missing: "):
        load_app("anything", chdir=str(tmp_path / "missing"))
