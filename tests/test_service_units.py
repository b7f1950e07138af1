"""LaunchAgent and systemd unit: rendering, validation, and the exact commands install runs.

launchctl and systemctl are never run for real here: the Installer gets a runner that records
the commands (and passes `systemd-analyze verify` through to the real tool), and a temporary
target directory. The real `launchctl`/`systemctl --user` paths need a Mac / a user session.
"""

from __future__ import annotations

import plistlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.service.process import ServiceError
from bridge.service.units import (
    LABEL,
    TEMPLATE,
    UNIT_NAME,
    Installer,
    build_spec,
    render_plist,
    render_systemd,
    validate_plist,
    verify_systemd,
)

from .service_util import clean_env, mlx_bridge

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed on this machine")


class Recorder:
    """Records launchctl/systemctl calls; real `systemd-analyze` runs; `fail` maps a verb to a
    status."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail or {}

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if argv[0] == "systemd-analyze":
            return subprocess.run(argv, capture_output=True, text=True, timeout=60)
        self.calls.append(argv)
        code = next((c for verb, c in self.fail.items() if verb in argv), 0)
        return subprocess.CompletedProcess(argv, code, "", f"{argv[1]} failed" if code else "")


def _spec(tmp_path: Path, home_name: str = "home", env: dict[str, str] | None = None):
    config = load_config({}, home=tmp_path / home_name, port=11500,
                         mappings_path=tmp_path / "maps.yaml", upstream="http://127.0.0.1:11435")
    return build_spec(config, 12, env if env is not None else {"PATH": "/usr/bin:/bin",
                                                               "OLLAMA_KEEP_ALIVE": "10m",
                                                               "UNRELATED": "x"})


def test_plist_is_rendered_from_the_template(tmp_path):
    spec = _spec(tmp_path, "state & <dir> with spaces")
    plist = plistlib.loads(render_plist(spec))
    assert TEMPLATE.parent.name == "launchd" and TEMPLATE.is_file()
    assert plist["Label"] == LABEL
    args = plist["ProgramArguments"]
    assert args[:4] == [sys.executable, "-m", "bridge", "serve"]
    assert args[args.index("--host") + 1] == "127.0.0.1:11500"
    assert args[args.index("--log-file") + 1] == str(spec.log_file)
    assert args[args.index("--grace") + 1] == "12"
    assert args[args.index("--upstream") + 1] == "http://127.0.0.1:11435"
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(spec.log_file)
    assert plist["WorkingDirectory"] == str(spec.home)  # '&' and '<' survived XML escaping
    assert plist["ExitTimeOut"] == 22  # grace + margin, as an integer
    env = plist["EnvironmentVariables"]
    assert env == {"MLX_BRIDGE_HOME": str(spec.home), "PATH": "/usr/bin:/bin",
                   "OLLAMA_KEEP_ALIVE": "10m"}


def test_plist_validation_names_the_problem(tmp_path):
    with pytest.raises(ServiceError, match="invalid plist"):
        validate_plist(b"<plist><dict><key>Label</string></dict></plist>")
    with pytest.raises(ServiceError, match="KeepAlive"):
        validate_plist(plistlib.dumps({"Label": "x", "ProgramArguments": ["a"], "RunAtLoad": True,
                                       "StandardOutPath": "l", "StandardErrorPath": "l"}))
    template = tmp_path / "t.plist"
    template.write_text(TEMPLATE.read_text().replace("{{LOG_FILE}}", "{{NOT_A_KEY}}"))
    with pytest.raises(ServiceError, match="unfilled"):
        render_plist(_spec(tmp_path), template)
    with pytest.raises(ServiceError, match="template missing"):
        render_plist(_spec(tmp_path), tmp_path / "absent.plist")


@needs_systemd_analyze
def test_systemd_unit_passes_systemd_analyze(tmp_path):
    spec = _spec(tmp_path, "state 100% $HOME dir")
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_systemd(spec))
    text = unit.read_text()
    assert "ExecStart=" + sys.executable in text and "Restart=on-failure" in text
    assert "TimeoutStopSec=22" in text and "WantedBy=default.target" in text
    assert '"' + str(spec.home).replace("%", "%%").replace("$", "$$") + '"' in text
    assert 'Environment="MLX_BRIDGE_HOME=' in text and "Environment=OLLAMA_KEEP_ALIVE=10m" in text
    assert verify_systemd(unit) == ""


@needs_systemd_analyze
def test_systemd_analyze_rejects_a_broken_unit(tmp_path):
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_systemd(_spec(tmp_path)).replace(sys.executable, "/nonexistent/python"))
    assert "/nonexistent/python" in verify_systemd(unit)


def test_launchd_install_and_uninstall_commands(tmp_path):
    runner = Recorder(fail={"bootout": 3})  # not loaded yet: bootout fails harmlessly
    installer = Installer(platform="darwin", target_dir=tmp_path / "LaunchAgents", runner=runner,
                          uid=501)
    spec = _spec(tmp_path, env={"PATH": "/bin", "MLX_BRIDGE_ADMIN_TOKEN": "s3cret"})
    installer.install(spec)
    path = tmp_path / "LaunchAgents" / f"{LABEL}.plist"
    assert runner.calls == [["launchctl", "bootout", f"gui/501/{LABEL}"],
                            ["launchctl", "enable", f"gui/501/{LABEL}"],
                            ["launchctl", "bootstrap", "gui/501", str(path)]]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the admin token
    plist_env = plistlib.loads(path.read_bytes())["EnvironmentVariables"]
    assert plist_env["MLX_BRIDGE_ADMIN_TOKEN"] == "s3cret"
    assert spec.log_file.parent.is_dir()

    runner.calls.clear()
    assert installer.uninstall() == [["launchctl", "bootout", f"gui/501/{LABEL}"]]
    assert not path.exists()
    assert installer.uninstall() == []


def test_the_service_gets_the_remote_engines_keys_and_not_the_rest(tmp_path):
    """An endpoint's key lives in MLX_BRIDGE_KEY_<NAME> (api_key_env): without it in the unit,
    the service would answer 502 for that endpoint."""
    env = _spec(tmp_path, env={"PATH": "/bin", "MLX_BRIDGE_KEY_GPU_BOX": "k1",
                               "OLLAMA_NUM_PARALLEL": "4", "AWS_SECRET_ACCESS_KEY": "no"}).env
    assert env["MLX_BRIDGE_KEY_GPU_BOX"] == "k1" and env["OLLAMA_NUM_PARALLEL"] == "4"
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_launchd_install_reports_a_failed_bootstrap(tmp_path):
    installer = Installer(platform="darwin", target_dir=tmp_path, uid=501,
                          runner=Recorder(fail={"bootstrap": 5}))
    with pytest.raises(ServiceError,
                       match=r"launchctl bootstrap .* failed \(5\): bootstrap failed"):
        installer.install(_spec(tmp_path))


@needs_systemd_analyze
def test_systemd_install_reinstall_and_uninstall_commands(tmp_path):
    runner = Recorder()
    installer = Installer(platform="linux", target_dir=tmp_path / "user", runner=runner)
    spec = _spec(tmp_path)
    installer.install(spec)
    path = tmp_path / "user" / UNIT_NAME
    assert path.read_text() == render_systemd(spec)
    assert runner.calls == [["systemctl", "--user", "daemon-reload"],
                            ["systemctl", "--user", "enable", "--now", UNIT_NAME]]
    runner.calls.clear()
    installer.install(spec)  # again: the running service must pick up the new definition
    assert runner.calls == [["systemctl", "--user", "daemon-reload"],
                            ["systemctl", "--user", "enable", UNIT_NAME],
                            ["systemctl", "--user", "restart", UNIT_NAME]]
    runner.calls.clear()
    installer.uninstall()
    assert runner.calls == [["systemctl", "--user", "disable", "--now", UNIT_NAME],
                            ["systemctl", "--user", "daemon-reload"]]
    assert not path.exists()


@needs_systemd_analyze
def test_systemd_install_refuses_a_unit_systemd_rejects(tmp_path):
    runner = Recorder()
    installer = Installer(platform="linux", target_dir=tmp_path, runner=runner)
    spec = _spec(tmp_path)
    spec.argv[0] = "/nonexistent/python"
    with pytest.raises(ServiceError, match="systemd-analyze verify rejected"):
        installer.install(spec)
    assert runner.calls == []  # nothing enabled


def test_unsupported_platform():
    with pytest.raises(ServiceError, match="macOS .* and Linux"):
        Installer(platform="win32").unit_path  # noqa: B018


def test_install_service_dry_run_changes_nothing(tmp_path, mappings_file):
    config_home = tmp_path / "xdg"
    env = clean_env(tmp_path / "home", XDG_CONFIG_HOME=str(config_home))
    result = mlx_bridge("install-service", "--dry-run", "--port", "11600", "--mappings",
                        str(mappings_file), env=env)
    assert result.returncode == 0, result.stderr
    unit = config_home / "systemd" / "user" / UNIT_NAME
    assert result.stdout.startswith(f"# {unit}\n[Unit]")
    assert "--host 127.0.0.1:11600" in result.stdout
    assert f"would run: systemctl --user enable --now {UNIT_NAME}" in result.stdout
    assert not config_home.exists()


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_the_unit_is_never_readable_by_others_not_even_for_a_moment(tmp_path, monkeypatch,
                                                                    platform):
    """Every file the install opens in the unit's directory is 0600 from its creation, also
    when an older install left the unit 0644 (the token must never sit in a readable file)."""
    import io
    import os

    target = tmp_path / "units"
    target.mkdir()
    seen: list[tuple[str, int]] = []
    real_os_open, real_io_open = os.open, io.open

    def record(path: object, fd: int) -> None:
        if Path(os.fsdecode(path)).parent == target:
            seen.append((Path(os.fsdecode(path)).name, stat.S_IMODE(os.fstat(fd).st_mode)))

    def spy_os_open(path, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_os_open(path, flags, mode, *args, **kwargs)
        record(path, fd)
        return fd

    def spy_io_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        fh = real_io_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            record(file, fh.fileno())
        return fh

    installer = Installer(platform=platform, target_dir=target, runner=Recorder(), uid=501)
    installer.unit_path.write_text("old unit\n")
    installer.unit_path.chmod(0o644)
    old_umask = os.umask(0o022)
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(io, "open", spy_io_open)
    monkeypatch.setattr("bridge.service.units.verify_systemd", lambda path, runner: "")
    try:
        installer.install(_spec(tmp_path, env={"PATH": "/bin", "MLX_BRIDGE_ADMIN_TOKEN": "s3cret"}))
    finally:
        os.umask(old_umask)
    assert seen and all(mode == 0o600 for _, mode in seen), seen
    assert stat.S_IMODE(installer.unit_path.stat().st_mode) == 0o600
    assert b"s3cret" in installer.unit_path.read_bytes()
    assert sorted(p.name for p in target.iterdir()) == [installer.unit_path.name]  # no temp left
