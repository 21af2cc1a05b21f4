"""The benchmark scripts' shared helpers: RESULTS.md sections, and the sampler benchmark's row bookkeeping."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import sampler_quality as sq  # noqa: E402
from _common import write_section  # noqa: E402


def test_split_rows_covers_every_row_once_and_balances_the_two_ddpm_chains():
    rows = sq.configurations(quick=False)
    parts = sq.split_rows(rows, 2, num_timesteps=1000)
    assert sorted(i for p in parts for i in p) == list(range(len(rows)))
    # the two 1000-step chains dominate the cost, so they go to different processes
    ddpm = [i for i, r in enumerate(rows) if r[3] is None]
    assert len(ddpm) == 2 and not any(set(ddpm) <= set(p) for p in parts)
    loads = [sum(sq.cost(rows[i], 1000) for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(sq.cost(r, 1000) for r in rows if r[3] is not None)


def test_split_rows_with_more_jobs_than_rows_returns_no_empty_part():
    rows = sq.configurations(quick=True)[:3]
    parts = sq.split_rows(rows, 8, num_timesteps=1000)
    assert len(parts) == 3 and all(parts)


def test_heun_cost_counts_both_evaluations_per_step():
    assert sq.cost(("difflab", "heun", "Heun (EDM)", 6, {}), 1000) == 11
    assert sq.cost(("difflab", "ddim", "DDIM eta=0", 10, {}), 1000) == 10


def test_drop_flags_removes_flag_and_value_only():
    argv = ["--run", "r", "--jobs", "2", "--n", "500", "--only", "DDPM"]
    assert sq.drop_flags(argv, ("--jobs", "--only")) == ["--run", "r", "--n", "500"]
    assert sq.drop_flags(argv, ()) == argv


def test_write_section_replaces_only_its_own_section_and_appends_new_ones(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## A\n\nold a\n\n## B\n\nkeep b\n")
    write_section(path, "## A", "## A\n\nnew a\nsecond line\n")
    assert path.read_text() == "# Benchmark results\n\n## A\n\nnew a\nsecond line\n\n## B\n\nkeep b\n"
    write_section(path, "## B", "## B\n\nnew b")
    write_section(path, "## C", "## C\n\nc\n")
    assert path.read_text() == "# Benchmark results\n\n## A\n\nnew a\nsecond line\n\n## B\n\nnew b\n\n## C\n\nc\n"
    assert [f.name for f in tmp_path.iterdir()] == ["RESULTS.md"]      # no temporary file left behind


def test_targets_line_reports_what_the_rows_allow():
    row = lambda sampler, impl, nfe, fd: dict(sampler=sampler, impl=impl, nfe=nfe, fd=fd)  # noqa: E731
    table = [row("DDIM eta=1", "difflab", 10, 29.5), row("DPM-Solver++(2M) SDE", "difflab", 10, 27.0),
             row("DPM-Solver++(2M) SDE", "difflab", 20, 20.0),
             row("diffusers DPMSolverMultistep (2M)", "diffusers", 10, 39.1)]
    line = sq.targets_line(table)
    assert "(DPM-Solver++(2M) SDE, 10 NFE): FD 27.000" in line and "DDPM" not in line
    assert "against DDIM eta=1's 29.500 (target: below: met)" in line and "ours at least as good" in line
    table.append(row("DDPM, sigma^2 = beta-tilde", "difflab", 1000, 25.0))
    table[1]["fd"] = 30.0
    line = sq.targets_line(table)
    assert "= 1.18x the best DDPM-1000 (25.000) (target <= 1.5x: met)" in line
    assert "best other than DDIM eta=1: DPM-Solver++(2M) SDE 30.000" in line and "NOT met" in line
    assert sq.targets_line([row("DDIM eta=1", "difflab", 20, 1.0)]) == "Targets: no difflab row at <= 10 NFE."
    # a peer that failed on the model (fd None) is left out of the comparison
    failed = [row("DDIM eta=1", "difflab", 10, 29.5),
              row("diffusers DPMSolverMultistep (2M, Karras)", "diffusers", 10, None)]
    assert "diffusers" not in sq.targets_line(failed)
