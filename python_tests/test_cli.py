"""The command line: errors a person can act on, and re-rendering a report."""

import subprocess
import sys

import pytest
import torch

from vmd_fast import cli
from vmd_fast.diagnose import DiagnosisResult


def _saved_result(directory):
    result = DiagnosisResult(
        method="sia", target="toy", task="binary", attributes=["a", "b"],
        changes=torch.tensor([[0.1, 0.5], [0.2, 0.7]]), flipped=torch.tensor([[False, True], [False, True]]),
        originals=torch.rand(2, 3, 8, 8), counterfactuals=torch.rand(2, 2, 3, 8, 8), codes=torch.rand(2, 2),
    )
    result.save(str(directory))
    return result


def test_report_re_renders_a_saved_report(tmp_path, capsys):
    _saved_result(tmp_path / "run")
    assert cli.main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert "index.html" in out and (tmp_path / "copy" / "index.html").exists()
    assert DiagnosisResult.load(str(tmp_path / "copy")).ranking() == ["b", "a"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["report", "/nonexistent-dir"], "is not a directory"),
        (["diagnose", "--target", "no.such.module:factory", "--device", "cpu"], "cannot import"),
        (["diagnose", "--target", "vmd_fast.cli:nothing", "--device", "cpu"], "has no 'nothing'"),
        (["diagnose", "--target", "vmd_fast.cli:build_parser", "--device", "cpu"], "not an nn.Module"),
        (["diagnose", "--device", "nonsense"], "is not a device"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_an_absent_gpu_is_a_clear_error(capsys):
    assert cli.main(["diagnose", "--device", "cuda"]) == 2
    assert "asks for a GPU" in capsys.readouterr().err


def test_debug_shows_the_trace():
    with pytest.raises(cli.UsageError):
        cli.main(["--debug", "report", "/nonexistent-dir"])


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "vmd_fast.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "diagnose" in done.stdout
