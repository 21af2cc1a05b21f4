"""scripts/mutation_check.py's list still applies to the source (so it cannot rot silently).

The mutation check itself runs the test suite once per mutation (minutes) and is run by hand; this
only checks that every mutation's snippet occurs exactly once in the file it names, that the bug
changes it, and that its test files exist.
"""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mutation_check():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", module)   # dataclasses look their module up by name
    spec.loader.exec_module(sys.modules["mutation_check"])
    return sys.modules["mutation_check"]


def test_every_mutation_applies_to_the_current_source():
    mc = _mutation_check()
    mutations = mc.load_mutations()
    assert mc.problems(mutations, ROOT) == []
    assert len(mutations) >= 30
    areas = {m.area for m in mutations}
    assert {"schedules", "posterior", "conversions", "losses", "samplers", "guidance", "respacing",
            "latent"} <= areas


def test_the_list_check_notices_a_stale_snippet(tmp_path):
    mc = _mutation_check()
    (tmp_path / "difflab").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("")
    (tmp_path / "difflab" / "m.py").write_text("a = 1\nb = 1\n")
    make = lambda original, mutated="c = 2": mc.Mutation("m", "x", "difflab/m.py", "bug", original, mutated,
                                                         ("tests/test_x.py",))
    assert mc.problems([make("a = 1")], tmp_path) == []
    assert "occurs 0 times" in mc.problems([make("z = 1")], tmp_path)[0]
    assert "occurs 2 times" in mc.problems([make(" = 1")], tmp_path)[0]
    assert "equals the original" in mc.problems([make("a = 1", "a = 1")], tmp_path)[0]
