"""edgekit.runtime.hugepages: a session's new mappings go to huge pages, its outputs do not change, and it can be
turned off."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.runtime import hugepages

MiB = 1 << 20


def test_new_ranges_takes_new_mappings_and_grown_tails_only() -> None:
    before = {(0, 10 * MiB), (100 * MiB, 120 * MiB), (200 * MiB, 210 * MiB)}
    now = {(0, 10 * MiB),  # unchanged
           (100 * MiB, 150 * MiB),  # grown in place (the heap)
           (200 * MiB, 205 * MiB),  # shrunk: nothing new in it
           (300 * MiB, 340 * MiB)}  # new
    assert hugepages.new_ranges(before, now) == [(120 * MiB, 150 * MiB), (300 * MiB, 340 * MiB)]


def _matmul_model(path: Path, k: int = 2048) -> np.ndarray:
    """A one-MatMul graph with a 16 MiB weight: enough for the kernel's packed copy to get its own mappings."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, k)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


_CHILD = """
import sys, json, numpy as np
from pathlib import Path
from edgekit.runtime import hugepages, make_session
x = np.random.default_rng(1).standard_normal((1, 2048)).astype(np.float32)
before = hugepages.anon_huge_mib()
sess = make_session(Path(sys.argv[1]))
y = sess.run(None, {"x": x})[0]
np.save(sys.argv[2], y)
print(json.dumps({"gained_mib": hugepages.anon_huge_mib() - before, "last": hugepages.LAST}))
"""


def _run_child(model: Path, out: Path, env_value: str) -> tuple[float, dict[str, object]]:
    import json
    import os

    env = {**os.environ, hugepages.ENV: env_value}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(out)], env=env, capture_output=True,
                          text=True, check=True, timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(result["gained_mib"]), dict(result["last"])


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or hugepages.thp_mode() == "never"
                    or not _kernel_at_least(6, 1), reason="needs Linux 6.1+ (MADV_COLLAPSE) with THP not 'never'")
def test_a_session_s_weights_move_to_huge_pages_and_compute_the_same(tmp_path: Path) -> None:
    # Fresh processes: this one's earlier sessions and allocations must not count.
    model = tmp_path / "m.onnx"
    w = _matmul_model(model)
    gained_on, last = _run_child(model, tmp_path / "on.npy", "1")
    gained_off, _ = _run_child(model, tmp_path / "off.npy", "0")
    assert last.get("advised_mib", 0) >= 8, last  # make_session asked for the session's new mappings
    if not last.get("collapsed_mib"):
        pytest.skip(f"the kernel collapsed nothing (no free huge pages on this machine now): {last}")
    assert gained_on >= 8, (gained_on, last)  # most of the 16 MiB packed weight (and its staging copy)
    if hugepages.thp_mode() == "madvise":  # nothing else asks for them there; in 'always' everything gets them
        assert gained_off < 2, gained_off
    on, off = np.load(tmp_path / "on.npy"), np.load(tmp_path / "off.npy")
    np.testing.assert_array_equal(on, off)  # the collapse moves pages, never their contents
    x = np.random.default_rng(1).standard_normal((1, 2048)).astype(np.float32)
    np.testing.assert_allclose(on, x @ w, rtol=1e-4, atol=1e-3)


def test_off_switch_and_non_linux_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hugepages.ENV, "0")
    assert not hugepages.enabled()
    assert hugepages.collapse_new(set())["applied"] is False
    monkeypatch.delenv(hugepages.ENV)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not hugepages.enabled() and hugepages.anonymous_mappings() == set()
