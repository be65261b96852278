"""hybrid_ps.cli.run_main: user errors as one line with their exit code, tracebacks only with --debug."""

from __future__ import annotations

import logging

import pytest

from hybrid_ps.cli import EXIT_INTERRUPTED, run_main
from hybrid_ps.errors import ConfigError, DataError, HybridPSError


def _fail(error: BaseException):
    def body() -> int:
        raise error

    return body


def test_the_body_s_exit_code_is_returned():
    assert run_main(lambda: 3, prog="hybrid_ps.x") == 3


def test_an_error_is_one_line_with_the_code_of_its_type(capsys):
    errors = {ConfigError: 2, HybridPSError: 1}
    assert run_main(_fail(ConfigError("cluster.servers: bad")), prog="hybrid_ps.serve", errors=errors) == 2
    assert run_main(_fail(DataError("bad.svm:3: bad")), prog="hybrid_ps.serve", errors=errors) == 1
    assert capsys.readouterr().err == ("hybrid_ps.serve: error: cluster.servers: bad\n"
                                       "hybrid_ps.serve: error: bad.svm:3: bad\n")


def test_where_names_who_failed(capsys):
    code = run_main(_fail(KeyError("parent_pid")), prog="hybrid_ps.server", errors={KeyError: 1}, where="shard 3")
    assert code == 1 and capsys.readouterr().err == "hybrid_ps.server: shard 3: error: 'parent_pid'\n"


def test_other_exceptions_propagate():
    with pytest.raises(ZeroDivisionError):
        run_main(_fail(ZeroDivisionError()), prog="hybrid_ps.x")


def test_ctrl_c_exits_130(capsys):
    assert run_main(_fail(KeyboardInterrupt()), prog="hybrid_ps.x") == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == ""


def test_debug_shows_the_traceback_as_asked(capsys, caplog):
    error = HybridPSError("boom")
    assert run_main(_fail(error), prog="hybrid_ps.x", debug=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "hybrid_ps.x: error: boom"
    assert run_main(_fail(error), prog="hybrid_ps.x", debug=True, traceback=None) == 1
    assert capsys.readouterr().err == "hybrid_ps.x: error: boom\n"
    with caplog.at_level(logging.ERROR):
        assert run_main(_fail(error), prog="hybrid_ps.server", debug=True, where="shard 2", traceback="log") == 1
    assert caplog.records[-1].getMessage() == "shard 2 failed" and caplog.records[-1].exc_info
    with pytest.raises(HybridPSError):
        run_main(_fail(error), prog="hybrid_ps.x", debug=True, traceback="raise")
    assert run_main(_fail(error), prog="hybrid_ps.x", traceback="raise") == 1  # without --debug: the line


def test_logging_is_set_up_before_the_body():
    seen = []
    run_main(lambda: 0, prog="hybrid_ps.x", debug=True, logs=seen.append)
    assert seen == [True]
