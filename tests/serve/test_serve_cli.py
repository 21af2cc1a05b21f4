"""``difflab serve`` on the command line: gradio stays out of everything else, and its absence or a bad
argument is one line on stderr."""

import subprocess
import sys

import pytest

from difflab.cli import main


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_difflab_and_running_other_commands_never_imports_gradio():
    code = """
import sys
import difflab, difflab.cli, difflab.generate, difflab.serve, difflab.serve.jobs, difflab.serve.runs
from difflab.cli import main
from difflab.cli.main import build_parser
build_parser().parse_args(["serve", "runs"])
assert main(["config", "--preset", "tiny"]) == 0
assert "gradio" not in sys.modules, sorted(m for m in sys.modules if m.startswith("gradio"))
print("ok")
"""
    r = _python(code)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr


def test_without_gradio_serve_says_how_to_install_it(serve_runs):
    r = _python(f"import sys; sys.modules['gradio'] = None\nfrom difflab.cli import main\n"
                f"sys.exit(main(['serve', {str(serve_runs)!r}]))")
    assert r.returncode == 1
    assert r.stderr.strip() == "difflab: error: difflab serve needs gradio: pip install 'difflab[ui]' " \
                               "(or: pip install 'gradio>=6,<7')"


@pytest.mark.parametrize("args, message", [
    (["/definitely/not/here"], "/definitely/not/here does not exist"),
    (["{empty}"], "holds no diffusion run"),
    (["{runs}", "--port", "70000"], "--port must be in 1..65535, got 70000"),
])
def test_bad_serve_arguments_are_one_line_with_exit_code_2(serve_runs, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    argv = ["serve", *(a.format(empty=tmp_path / "empty", runs=serve_runs) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("difflab: error: ") and message in err[0]
