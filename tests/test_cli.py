import subprocess
import sys

from m4 import cli


def test_top_level_help_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_each_command_has_help():
    # In a subprocess so that argparse's SystemExit and imports stay isolated, as a user sees it.
    for name in cli.COMMANDS:
        result = subprocess.run([sys.executable, "-m", "m4.cli", name, "--help"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (name, result.stderr)
        assert "usage: m4" in result.stdout


def test_unknown_command_is_an_error():
    result = subprocess.run([sys.executable, "-m", "m4.cli", "nonsense"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_entry_point_sets_the_runtime_environment():
    # The console script re-executes itself once with the fast allocator and XLA flags, keeping
    # the user's own XLA_FLAGS.
    import os
    import shutil

    m4_bin = shutil.which("m4") or str(__import__("pathlib").Path(sys.executable).parent / "m4")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "M4_RUNTIME_ENV_SET")}
    env["XLA_FLAGS"] = "--xla_dump_to=/nonexistent_dir_never_written"
    result = subprocess.run([m4_bin, "--help"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        [sys.executable, "-c", "import os, m4.cli as c; print(c.RUNTIME_ENV['XLA_FLAGS']); "
                               "print(c.RUNTIME_ENV['GLIBC_TUNABLES'])"],
        capture_output=True, text=True, env=env, timeout=60)
    flags, tunables = check.stdout.strip().splitlines()
    assert flags.startswith("--xla_dump_to=/nonexistent_dir_never_written ")
    assert "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED" in flags
    assert tunables == "glibc.malloc.hugetlb=1"
