"""Boot counting and health checks as pure logic: GRUB's environment block, /etc/system/boot.conf, which default
is on trial and with how many tries, the menu's counting preamble (checked by GRUB's own parser), and the checks'
order, timeouts and output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from arkes import bootloader, boots, health
from arkes.errors import UsageError

ENTRY = bootloader.MenuEntry("Arkēs 0", "/boot/vmlinuz", "/boot/initrd", "root=UUID=x ostree=/ostree/boot.1/a/0")


@pytest.mark.grub_tools
def test_the_environment_block_is_what_grub_editenv_writes(tmp_path: Path) -> None:
    block = health.render_env({"arkes_trial": "abc.0", "arkes_tries": "3"})
    assert len(block.encode()) == 1024 and block.startswith("# GRUB Environment Block\narkes_trial=abc.0\n")
    path = tmp_path / "grubenv"
    path.write_text(block)
    assert boots.read_env(path) == {"arkes_trial": "abc.0", "arkes_tries": "3"}
    listed = subprocess.run(["grub-editenv", str(path), "list"], capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines() == ["arkes_trial=abc.0", "arkes_tries=3"], "GRUB's own tool reads it alike"
    subprocess.run(["grub-editenv", str(path), "set", "arkes_tries=2", "other=kept"], check=True)
    assert boots.read_env(path) == {"arkes_trial": "abc.0", "arkes_tries": "2", "other": "kept"}
    assert boots.read_env(tmp_path / "absent") == {}
    with pytest.raises(UsageError, match="1024 bytes"):
        health.render_env({"x": "y" * 1100})


@pytest.mark.grub_tools
def test_a_trial_is_kept_on_the_block_with_the_other_variables(tmp_path: Path) -> None:
    (tmp_path / "grub").mkdir()
    health.write_trial(tmp_path, health.Trial("abc.0", 3))
    subprocess.run(["grub-editenv", str(tmp_path / boots.ENV), "set", "saved_entry=1"], check=True)
    health.write_trial(tmp_path, None)
    assert boots.read_env(tmp_path / boots.ENV) == {"saved_entry": "1"}


def test_boot_conf_is_read_and_a_bad_line_named(tmp_path: Path) -> None:
    assert health.settings(tmp_path) == health.Settings(3, 60.0, ())
    (tmp_path / "system").mkdir()
    conf = tmp_path / "system/boot.conf"
    conf.write_text(
        "# how many boots a new system gets\ntries = 5\ncheck-timeout = 20\nrequired-units = nginx.service a.service\n"
    )
    assert health.settings(tmp_path) == health.Settings(5, 20.0, ("nginx.service", "a.service"))
    for text, message in (
        ("tries = 0\n", "boot.conf:1: tries must be a number from 1 to 9"),
        ("\ntries = 10\n", "boot.conf:2: tries must be a number from 1 to 9"),
        ("check-timeout = soon\n", "boot.conf:1: check-timeout must be a number of seconds"),
        ("retries = 2\n", "boot.conf:1: unknown setting 'retries'"),
        ("tries 3\n", "boot.conf:1: expected `key = value`"),
    ):
        conf.write_text(text)
        with pytest.raises(UsageError, match=message):
            health.settings(tmp_path)


GOOD = boots.Record("good", "2026-12-01T00:00:00+00:00")


def test_which_default_is_on_trial() -> None:
    new, old = ("n.0", "n", False), ("o.0", "o", True)
    assert health.trial_for([new, old], {}, {}, 3) == health.Trial("n.0", 3), "a new default starts a trial"
    assert health.trial_for([new], {}, {}, 3) is None, "nothing to fall back to"
    assert health.trial_for([new, old], {}, {"n": GOOD}, 3) is None, "proven good before"
    running = ("n.0", "n", True)
    assert health.trial_for([running, old], {}, {}, 3) is None, "the running one is judged by its own boot"
    env = {"arkes_trial": "n.0", "arkes_tries": "1"}
    assert health.trial_for([new, old], env, {}, 3) == health.Trial("n.0", 1), "GRUB's count is kept"
    assert health.trial_for([running, old], env, {}, 3) == health.Trial("n.0", 1), "until the boot check ends it"
    assert health.trial_for([running, old], env, {"n": GOOD}, 3) is None, "by proving it good"
    assert health.trial_for([old, new], env, {}, 3) is None, "a default that is running and no trial's"


@pytest.mark.grub_tools
def test_the_menu_counts_the_tries_of_the_default_on_trial(tmp_path: Path) -> None:
    plain = bootloader.render_menu([ENTRY, ENTRY])
    assert "load_env" not in plain, "no trial, no counting"
    counted = bootloader.render_menu([ENTRY, ENTRY], trial=health.Trial("abc.0", 3))
    assert 'if [ "$arkes_trial" = "abc.0" ]; then' in counted
    assert "set arkes_tries=2" in counted and "save_env --file $prefix/grubenv arkes_tries" in counted
    assert counted.index("set default=0") < counted.index("set default=1") < counted.index("menuentry")
    menu = tmp_path / "grub.cfg"
    menu.write_text(counted)
    checked = subprocess.run(["grub-script-check", str(menu)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def write_check(directory: Path, name: str, body: str, *, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def test_the_machine_s_checks_replace_the_image_s_of_the_same_name(tmp_path: Path) -> None:
    image, etc = tmp_path / "image", tmp_path / "etc"
    write_check(image, "10-ssh", "exit 0")
    write_check(image, "50-web", "exit 0")
    write_check(image, "60-off", "exit 1")
    write_check(etc / "system/health.d", "50-web", "exit 3")
    (etc / "system/health.d/60-off").write_text("")  # empty: switched off
    write_check(etc / "system/health.d", "70-plain", "exit 1", mode=0o644)  # not executable: not run
    assert [str(p.relative_to(tmp_path)) for p in health.check_paths(etc, image)] == [
        "image/10-ssh",
        "etc/system/health.d/50-web",
    ]


def test_a_check_s_exit_timeout_and_last_lines(tmp_path: Path) -> None:
    lines = "".join(f"echo line {i}\n" for i in range(15))
    failed = health.run_check(write_check(tmp_path, "fails", lines + "echo oops >&2\nexit 7"), timeout=30)
    assert failed.exit == 7 and not failed.passed and failed.reason() == "health check fails failed (exit 7)"
    assert len(failed.output) == health.OUTPUT_LINES and failed.output[-1] == "oops"
    slow = health.run_check(write_check(tmp_path, "slow", "sleep 60 & wait"), timeout=0.5)
    assert slow.exit is None and slow.seconds < 10 and "did not finish within its timeout" in slow.reason()
    result = health.Health("c" * 64, "now", (), (failed, health.run_check(write_check(tmp_path, "ok", "true"), 30)))
    assert not result.good and result.failure().reason == failed.reason()
    document = result.to_json()
    assert document["kind"] == "Health" and document["good"] is False
    assert "FAIL   fails  exit 7" in result.render() and "ok     ok" in result.render()


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ({"LoadState": "loaded", "ActiveState": "active", "InactiveExitTimestampMonotonic": "812"}, None),
        ({"LoadState": "loaded", "ActiveState": "activating", "InactiveExitTimestampMonotonic": "812"}, None),
        # a oneshot that ran and finished, or a service someone stopped
        ({"LoadState": "loaded", "ActiveState": "inactive", "InactiveExitTimestampMonotonic": "812"}, None),
        ({"LoadState": "loaded", "ActiveState": "failed", "InactiveExitTimestampMonotonic": "812"}, "failed"),
        ({"LoadState": "not-found", "ActiveState": "inactive"}, "is unknown to systemd"),
        (
            {"LoadState": "loaded", "ActiveState": "inactive", "UnitFileState": "disabled"},
            "never started in this boot (unit file disabled)",
        ),
        (
            {"ActiveState": "inactive", "UnitFileState": "enabled", "InactiveExitTimestampMonotonic": "0"},
            "never started in this boot (unit file enabled)",
        ),
    ],
)
def test_what_makes_a_required_unit_fail_the_boot(state: dict[str, str], why: str | None) -> None:
    assert health.unit_failure(state) == why


def test_a_failure_names_every_unit_and_check_that_failed(tmp_path: Path) -> None:
    check = health.run_check(write_check(tmp_path, "50-web", "echo asking\necho refused; exit 1"), timeout=30)
    result = health.Health(
        "c" * 64,
        "now",
        ("nginx.service",),
        (check,),
        ("Stopped nginx.",),
        ("never started in this boot (unit file disabled)",),
    )
    failure = result.failure()
    assert failure.reason == (
        "required unit nginx.service never started in this boot (unit file disabled); "
        "health check 50-web failed (exit 1)"
    )
    assert failure.output == ("Stopped nginx.", "asking", "refused")
    assert "FAIL   nginx.service never started" in result.render()


def test_a_failed_system_is_known_by_its_commit_and_by_its_inputs(tmp_path: Path) -> None:
    failed = boots.Record("failed", "2026-12-01T00:00:00+00:00", "health check 50-web failed (exit 7)", ("no",), "i1")
    health.record(tmp_path, "c1", failed)
    health.record(tmp_path, "c2", boots.Record("good", "2026-12-01T00:01:00+00:00", input_hash="i2"))
    assert boots.records(tmp_path) == {"c1": failed, "c2": boots.records(tmp_path)["c2"]}
    assert boots.failed_before(tmp_path, "c1", "") == failed
    assert boots.failed_before(tmp_path, "c9", "i1") == failed, "built again from the same inputs"
    assert boots.failed_before(tmp_path, "c2", "i2") is None and boots.failed_before(tmp_path, "c9", "") is None


def test_the_boot_after_a_rollback_says_why_the_one_before_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    check = health.Check("50-web", "/usr/lib/arkes/health.d/50-web", 1, 0.2, ("Connection refused",))
    failing = health.Health("f" * 64, "2026-12-07T21:00:00+00:00", (), (check,))
    health.keep_last(tmp_path, failing)
    health.record(tmp_path, "f" * 64, failing.failure())
    caplog.set_level("INFO", logger="arkes")
    health._tell_previous_failure(tmp_path, "p" * 64)
    assert caplog.messages == [
        "the previous boot, of deployment ffffffffffff, failed: health check 50-web failed (exit 1)",
        "  Connection refused",
    ]
    caplog.clear()
    health._tell_previous_failure(tmp_path, "f" * 64)  # the same deployment booted again: it says so itself
    health.keep_last(tmp_path, health.Health("p" * 64, "2026-12-07T21:02:00+00:00", (), ()))
    health._tell_previous_failure(tmp_path, "q" * 64)  # the last check was good: nothing to tell
    assert caplog.messages == []
