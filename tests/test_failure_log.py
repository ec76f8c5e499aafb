"""tests/conftest.py's DZSR_FAILURE_LOG hook: failures appended as they happen, passes ignored."""

from types import SimpleNamespace

import conftest


def test_failures_are_appended_and_passes_are_not(tmp_path, monkeypatch):
    path = tmp_path / "failures.log"
    monkeypatch.setenv("DZSR_FAILURE_LOG", str(path))
    report = lambda failed, nodeid: SimpleNamespace(  # noqa: E731
        failed=failed, nodeid=nodeid, when="call", longreprtext=f"trace of {nodeid}"
    )
    conftest.pytest_runtest_logreport(report(True, "t.py::a"))
    conftest.pytest_runtest_logreport(report(False, "t.py::b"))
    conftest.pytest_runtest_logreport(report(True, "t.py::c"))
    text = path.read_text()
    assert (
        text == "===== t.py::a (call)\ntrace of t.py::a\n===== t.py::c (call)\ntrace of t.py::c\n"
    )


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("DZSR_FAILURE_LOG", raising=False)
    monkeypatch.chdir(tmp_path)
    conftest.pytest_runtest_logreport(
        SimpleNamespace(failed=True, nodeid="t.py::a", when="call", longreprtext="x")
    )
    assert list(tmp_path.iterdir()) == []
