"""The HTML reports: self-contained pages, and what headless Chromium actually shows."""

import os
import re
import shutil
import subprocess

import pytest
import torch

from vmd_fast.diagnose import DiagnosisResult
from vmd_fast.diagnose.result import COMPARISON_COLOURS, write_comparison

HISTOGRAM_RGB = (0x4C, 0x72, 0xB0)  # the bars of histogram.png (and the first run of a comparison)
SECOND_RUN_RGB = tuple(int(COMPARISON_COLOURS[1][i:i + 2], 16) for i in (1, 3, 5))


def _result(method, scale):
    gen = torch.Generator().manual_seed(0)
    changes = torch.rand(6, 3, generator=gen) * torch.tensor([1.0, 0.5, 0.1]) * scale
    return DiagnosisResult(method=method, target="toy", task="binary", attributes=["hat", "beard", "bangs"],
                           changes=changes, flipped=changes > 0.3, originals=torch.rand(6, 3, 8, 8, generator=gen),
                           counterfactuals=torch.rand(6, 3, 3, 8, 8, generator=gen), config={"steps": 7})


def _assert_self_contained(page):
    assert not re.search(r'(src|href)="(?!data:)', page), "the page links to something outside itself"
    assert "<script" not in page


def test_report_and_comparison_pages_are_self_contained(tmp_path):
    paths = _result("sia", 1.0).save(str(tmp_path / "run"))
    _assert_self_contained(open(paths["html"]).read())
    page = open(write_comparison(_result("sia", 1.0), _result("zoom", 0.5), str(tmp_path / "cmp"),
                                 labels=("before", "after"))).read()
    _assert_self_contained(page)
    assert "before" in page and "after" in page and '&quot;steps&quot;: 7' in page


def test_comparison_needs_two_labels(tmp_path):
    with pytest.raises(ValueError, match="labels must name the two runs"):
        write_comparison(_result("sia", 1.0), _result("zoom", 1.0), str(tmp_path), labels=("only one",))


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _screenshot(page: str, out: str) -> "torch.Tensor":
    """Render ``page`` in headless Chromium; returns the screenshot as (H, W, 3) uint8."""
    from PIL import Image

    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--window-size=1200,1400", f"--screenshot={out}", "file://" + os.path.abspath(page)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and os.path.exists(out), done.stderr[-2000:]
    with Image.open(out) as image:
        return torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8).reshape(image.height, image.width, 3)


def _pixels_near(shot: torch.Tensor, rgb, tolerance: int = 12) -> int:
    return int(((shot.int() - torch.tensor(rgb)).abs().amax(dim=-1) <= tolerance).sum())


@pytest.mark.skipif(_chromium() is None, reason="no chromium or chromium-browser on PATH (scripts/setup.sh installs "
                                                 "Debian's chromium when it runs as root with apt-get)")
def test_headless_chromium_shows_the_histogram(tmp_path):
    paths = _result("sia", 1.0).save(str(tmp_path / "run"))
    shot = _screenshot(paths["html"], str(tmp_path / "report.png"))
    assert shot.float().std() > 10, "the screenshot is blank"
    assert _pixels_near(shot, HISTOGRAM_RGB) > 500, "the histogram's bars are not on screen"

    page = write_comparison(_result("sia", 1.0), _result("zoom", 0.5), str(tmp_path / "cmp"))
    shot = _screenshot(page, str(tmp_path / "comparison.png"))
    assert _pixels_near(shot, HISTOGRAM_RGB) > 500 and _pixels_near(shot, SECOND_RUN_RGB) > 200
