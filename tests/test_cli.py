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
