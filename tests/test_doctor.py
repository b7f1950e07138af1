"""`mlx-bridge doctor`: a healthy setup passes; each broken piece is named with its fix and
exit 1."""

from __future__ import annotations

import sys

from bridge.engine import blas_rows
from bridge.routing.registry import Registry
from bridge.service.doctor import DEMO_MODEL, Check, check_demo_model, check_mlx, format_report

from .conftest import write_mappings
from .service_util import clean_env, free_port, mlx_bridge, port_holder


def _lines(output: str) -> dict[str, str]:
    """Check name -> its report line."""
    found = {}
    for line in output.splitlines():
        if line.startswith("[") and "] " in line:
            found[line.split("] ", 1)[1].split()[0]] = line
    return found


def test_healthy_setup(tmp_path, tiny_model_dir, server):
    maps = write_mappings(tmp_path / "maps.yaml", {DEMO_MODEL: {"mlx": str(tiny_model_dir)}})
    result = mlx_bridge("doctor", "--mappings", str(maps), "--port", str(free_port()),
                        "--upstream", server, "--home", str(tmp_path / "home"), env=clean_env())
    assert result.returncode == 0, result.stdout
    lines = _lines(result.stdout)
    assert lines["python"].startswith("[  ok]") and sys.executable in lines["python"]
    assert lines["mlx"].startswith("[  ok]") and "device cpu" in lines["mlx"]
    assert lines["state"].startswith("[  ok]") and "is writable" in lines["state"]
    assert lines["mappings"].startswith("[  ok]") and "1 models" in lines["mappings"]
    assert lines["port"].startswith("[  ok]") and "is free" in lines["port"]
    assert lines["upstream"] == f"[  ok] upstream    {server} answers"
    assert lines["demo"].startswith("[  ok]") and str(tiny_model_dir) in lines["demo"]
    if sys.platform.startswith("linux"):
        blas = lines["blas"]
        assert (("[  ok]" in blas and "OpenBLAS" in blas)
                or ("[warn]" in blas and "reference" in blas))
        if "OpenBLAS" in blas and blas_rows._compilers():  # the shim built: it says so
            assert f"matmuls of 1-{blas_rows.DEFAULT_ROWS} rows on the few-row kernel" in blas
            assert "libopenblas" in blas


def test_reference_blas_is_a_warning_with_a_fix(tmp_path):
    if not sys.platform.startswith("linux"):
        return
    checks = check_mlx(sys.executable, clean_env(MLX_BRIDGE_BLAS="off"))
    blas = next(c for c in checks if c.name == "blas")
    assert blas.status == "warn" and "reference BLAS bundled with mlx[cpu]" in blas.detail
    assert "MLX_BRIDGE_BLAS=off" in blas.detail and "scipy-openblas32" in blas.fix


def test_problems_are_named_with_fixes_and_exit_1(tmp_path):
    home_file = tmp_path / "home"
    home_file.write_text("a file where the state dir should be")
    bad_maps = tmp_path / "maps.yaml"
    bad_maps.write_text("models: [unclosed\n")
    port = free_port()
    with port_holder(port) as holder:
        result = mlx_bridge("doctor", "--mappings", str(bad_maps), "--port", str(port),
                            "--upstream", f"http://127.0.0.1:{port}", "--home", str(home_file),
                            env=clean_env())
    assert result.returncode == 1
    lines = _lines(result.stdout)
    assert lines["state"].startswith("[FAIL]") and str(home_file) in lines["state"]
    assert lines["mappings"].startswith("[FAIL]") and "not valid YAML" in lines["mappings"]
    assert lines["port"].startswith("[FAIL]") and f"pid {holder.pid}" in lines["port"]
    assert lines["upstream"].startswith("[FAIL]") and "own address" in lines["upstream"]
    assert lines["demo"].startswith("[warn]") and "skipped" in lines["demo"]
    assert lines["mlx"].startswith("[  ok]")  # the rest still ran
    assert "fix: make " in result.stdout and "fix: fix the YAML" in result.stdout
    assert "fix: stop it, or use another port" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("4 problem(s), ")


def test_port_held_by_a_bridge_is_fine(tmp_path, server):
    port = server.rsplit(":", 1)[1]
    result = mlx_bridge("doctor", "--port", port, "--home", str(tmp_path / "home"), env=clean_env())
    assert "served by mlx-bridge (pid " in _lines(result.stdout)["port"]
    assert _lines(result.stdout)["port"].startswith("[  ok]")


def test_a_broken_mlx_cannot_crash_the_doctor(tmp_path):
    fake = tmp_path / "fake"
    (fake / "mlx").mkdir(parents=True)
    (fake / "mlx" / "__init__.py").write_text("raise ImportError('simulated broken mlx')\n")
    checks = check_mlx(sys.executable, clean_env(PYTHONPATH=str(fake)))
    assert checks[0] == Check("mlx", "fail", "ImportError: simulated broken mlx",
                              checks[0].fix) and "reinstall" in checks[0].fix

    (fake / "mlx" / "__init__.py").write_text("import os\nos.abort()\n")
    checks = check_mlx(sys.executable, clean_env(PYTHONPATH=str(fake)))
    assert checks[0].status == "fail" and checks[0].detail.startswith("the MLX probe crashed")


def test_demo_model_missing(tmp_path, tiny_model_dir):
    home = tmp_path / "home"
    absent = Registry(write_mappings(tmp_path / "a.yaml", {"tiny": {"mlx": str(tiny_model_dir)}}),
                      home)
    check = check_demo_model(absent)
    assert check.status == "warn" and "not in the mapping files" in check.detail

    not_downloaded = Registry(write_mappings(tmp_path / "b.yaml", {
        DEMO_MODEL: {"mlx": "mlx-community/Not-Downloaded-135M"}}), home)
    check = check_demo_model(not_downloaded)
    assert check.status == "warn" and "is not downloaded" in check.detail
    assert check.fix == f"mlx-bridge pull {DEMO_MODEL}"


def test_demo_model_before_the_first_start_is_fine(tmp_path):
    """After `pip install -e .` and before the first `serve`, the demo is not there yet: the
    first start imports it, so the doctor says so rather than warn (operations.md's order)."""
    home = tmp_path / "home"
    shipped = Registry(write_mappings(tmp_path / "s.yaml", {}), home)
    check = check_demo_model(shipped, home)
    assert check.status == "ok" and "imported on the first start" in check.detail
    home.mkdir()
    (home / "demo-imported").write_text("deleted by its user since\n")
    assert check_demo_model(shipped, home).status == "warn"  # imported once: not again


def test_report_format():
    report = format_report([Check("python", "ok", "3.11"),
                            Check("port", "fail", "taken", "move it"),
                            Check("upstream", "warn", "down", "start it")])
    assert report.splitlines() == [
        "[  ok] python      3.11",
        "[FAIL] port        taken",
        "                   fix: move it",
        "[warn] upstream    down",
        "                   fix: start it",
        "1 problem(s), 1 warning(s)",
    ]
    assert "\033[31mFAIL" in format_report([Check("x", "fail", "y")], color=True)
