"""By-value shipping without a server: pickle in this process, run with workers.execution in
a fresh interpreter that cannot import the user's modules, read the outcome back here."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import dill
import pytest

from functions.shipping import Shipper, code_names
from tests.client_shipping import install_user_module
from tests.stack import REPO
from workers.exceptions import FunctionFailedException

# A worker in miniature: the same run_call a pool child uses, from the repo root only.
RUNNER = """
import pickle, sys
from workers.execution import run_call
function, arguments = pickle.loads(sys.stdin.buffer.read())
outcome = run_call("t", function, arguments, 1 << 24)
sys.stdout.buffer.write(pickle.dumps((outcome.status, outcome.result, outcome.error, sorted(sys.modules))))
"""


@pytest.fixture
def user(tmp_path, monkeypatch):
    return install_user_module(tmp_path, monkeypatch)


def run_elsewhere(shipper: Shipper, function_bytes: bytes, *args):
    """(status, value or exception) of `function(*args)` run in another interpreter."""
    arguments = shipper.dumps((args, {}))
    done = subprocess.run([sys.executable, "-c", RUNNER], input=pickle.dumps((function_bytes, arguments)),
                          cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    status, result, error, modules = pickle.loads(done.stdout)
    assert not [m for m in modules if m.startswith("faas_user_")], "the user's module leaked to the runner"
    return status, shipper.loads(result)


def ship(fn, *args):
    shipper = Shipper()
    return run_elsewhere(shipper, shipper.dumps(fn), *args)


def test_user_modules_ship_by_value_and_libraries_by_reference(user):
    shipper = Shipper()
    assert shipper.ships(user.__name__) and shipper.ships(user.helpers.__name__) and shipper.ships("__main__")
    assert not any(shipper.ships(m) for m in ("math", "json", "dill", "requests", "workers.exceptions"))
    assert Shipper(by_reference=[user.__name__]).ships(user.__name__) is False
    assert Shipper(by_value=["requests"]).ships("requests.sessions") is True


def test_function_with_helper_constant_and_other_module_runs_where_module_is_absent(user):
    assert ship(user.compute, 2) == ("COMPLETED", user.compute(2)) == ("COMPLETED", 2 * 3 + 1 + 100 + 2)
    assert ship(user.where_am_i) == ("COMPLETED", "not importable")


def test_plain_dill_would_not_do(user):
    shipper = Shipper()
    status, failure = run_elsewhere(shipper, dill.dumps(user.compute), 2)
    assert status == "FAILED" and isinstance(failure, FunctionFailedException)
    assert "No module named" in str(failure)


def test_recursion_closures_lambdas_and_comprehensions(user):
    assert ship(user.factorial, 6) == ("COMPLETED", 720)
    assert ship(user.uses_closure_and_lambda, 3) == ("COMPLETED", [2, 5, 8])
    assert ship(lambda x: user.scale(x) * 10, 1) == ("COMPLETED", 40)


def test_user_exception_comes_back_as_the_users_own_class(user):
    init = user.DetailedError.__init__
    status, failure = ship(user.fail, "nope")
    assert status == "FAILED"
    assert type(failure) is user.DetailedError and isinstance(failure, user.UserError)
    assert str(failure) == "nope" and failure.detail == 4
    assert "in fail" in failure.remote_traceback
    # shipping and mapping back leave the user's classes exactly as they were
    assert user.DetailedError.__init__ is init and user.DetailedError.__module__ == user.__name__


def test_user_classes_travel_as_arguments_and_results(user):
    assert ship(user.make_point, 3, 4) == ("COMPLETED", user.Point(3, 4))
    assert type(ship(user.make_point, 3, 4)[1]) is user.Point
    assert ship(user.point_norm, user.Point(3, 4)) == ("COMPLETED", 15.0)
    assert ship(user.square_area, 3) == ("COMPLETED", (9, True))


def test_platform_exceptions_stay_the_platforms_class(user):
    status, failure = ship(user.raise_platform_error)
    assert status == "FAILED" and type(failure) is FunctionFailedException


def test_library_functions_are_pickled_by_reference():
    data = Shipper().dumps(json.dumps)
    assert len(data) < 100 and dill.loads(data) is json.dumps


def test_code_names_finds_globals_and_attributes_in_nested_code():
    def outer(obj):
        return [ALPHA.gamma for _ in BETA], obj.delta  # noqa: F821

    names, attributes = code_names(outer.__code__)
    assert names == {"ALPHA", "BETA"} and attributes == {"gamma", "delta"}


def test_only_the_globals_the_code_reads_travel(user):
    user.bonus = "x" * 100_000  # a big global named like the attribute `compute` reads (helpers.bonus)
    assert len(Shipper().dumps(user.compute)) < 10_000
