"""Mutation check: does the test suite catch realistic one-line bugs in difflab's math?

Every entry of ``scripts/mutations.toml`` names a file of the package, a snippet that occurs in it
exactly once, the same snippet with a bug in it (a sign, a missing square root, a swapped
argument, an off-by-one, a wrong convention) and the test files that ought to notice. For each
entry the script copies the package and its tests into a temporary folder once, writes the
mutated file there, runs ``pytest -x`` on that entry's test files, and restores the file. A
mutation is *killed* when the tests fail and *survives* when they pass; a survivor is either a
gap in the tests or a change of no consequence (an equivalent mutation), and the report says which
mutations survived so that someone can decide. Before any mutation the selected test files are run
unmodified: they must pass, or the check stops.

Run it from the repository root (it takes a few minutes on two cores; one pytest process per
mutation, most stop at their first failure):

    .venv/bin/python scripts/mutation_check.py                       # every mutation
    .venv/bin/python scripts/mutation_check.py --list                # the mutations, no tests run
    .venv/bin/python scripts/mutation_check.py --only ddim-sigma-inner-sqrt,ddpm-noise-at-last-step
    .venv/bin/python scripts/mutation_check.py --area samplers --tests tests/test_samplers_exact.py
    .venv/bin/python scripts/mutation_check.py --report mutation-report.md

``--tests`` replaces each entry's own test files (to ask "does this one file catch them?").
``--jobs N`` runs N mutations at once, each in its own copy. Exit status: 0 when every mutation
was killed, 1 when at least one survived, 2 when the list does not apply or the unmutated tests fail.

The list is data: add an entry when a bug slips through review, with the test that now catches it.
``tests/test_mutation_list.py`` checks that every snippet still occurs exactly once in the current
source, so the list cannot silently rot when the code it mutates is edited.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS_FILE = Path(__file__).with_name("mutations.toml")
COPIED = ("difflab", "tests", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    id: str
    area: str
    file: str
    bug: str
    original: str
    mutated: str
    tests: tuple[str, ...]


@dataclass
class Outcome:
    mutation: Mutation
    status: str            # "killed", "survived", "error" (tests could not run), "timeout"
    seconds: float
    detail: str            # the first failing test, or the tail of the output


def load_mutations(path: Path = MUTATIONS_FILE) -> list[Mutation]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out = []
    for entry in data.get("mutation", []):
        out.append(Mutation(id=entry["id"], area=entry["area"], file=entry["file"], bug=entry["bug"],
                            original=entry["original"], mutated=entry["mutated"], tests=tuple(entry["tests"])))
    return out


def problems(mutations: list[Mutation], root: Path = ROOT) -> list[str]:
    """Why the list does not apply to the source under ``root`` (empty when it does)."""
    found, seen = [], set()
    for m in mutations:
        if m.id in seen:
            found.append(f"{m.id}: duplicate id")
        seen.add(m.id)
        path = root / m.file
        if not path.is_file():
            found.append(f"{m.id}: {m.file} does not exist")
            continue
        count = path.read_text(encoding="utf-8").count(m.original)
        if count != 1:
            found.append(f"{m.id}: the original snippet occurs {count} times in {m.file} (must be once)")
        if m.mutated == m.original:
            found.append(f"{m.id}: the mutated snippet equals the original")
        if not m.tests:
            found.append(f"{m.id}: no test files")
        for t in m.tests:
            if not (root / t.split("::")[0]).exists():
                found.append(f"{m.id}: test path {t} does not exist")
    return found


def make_copy(root: Path) -> Path:
    """A temporary copy of the package, its tests and pytest's configuration."""
    tmp = Path(tempfile.mkdtemp(prefix="difflab-mutation-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, ignore=ignore)
        else:
            shutil.copy2(src, tmp / name)
    return tmp


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = str(copy) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def check_imports_the_copy(copy: Path) -> None:
    """The copy must shadow an installed (or editable) difflab, or every mutation would survive."""
    out = subprocess.run([sys.executable, "-c", "import difflab, os; print(os.path.realpath(difflab.__file__))"],
                         cwd=copy, env=environment(copy), capture_output=True, text=True, check=True).stdout
    if not Path(out.strip()).is_relative_to(copy.resolve()):
        raise SystemExit(f"mutation check: the copy's difflab is not the one imported ({out.strip()})")


def run_pytest(copy: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[int | None, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "--no-header", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=copy, env=environment(copy), capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    match = re.search(r"^(FAILED|ERROR) (\S+)", output, re.MULTILINE)
    if match:
        return match.group(2)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def apply_and_run(m: Mutation, copy: Path, tests: tuple[str, ...], timeout_s: float) -> Outcome:
    path = copy / m.file
    source = path.read_text(encoding="utf-8")
    start = time.monotonic()
    try:
        path.write_text(source.replace(m.original, m.mutated, 1), encoding="utf-8")
        code, output = run_pytest(copy, tests, timeout_s)
    finally:
        path.write_text(source, encoding="utf-8")
    seconds = time.monotonic() - start
    if code is None:
        return Outcome(m, "timeout", seconds, f"no result in {timeout_s:.0f} s")
    if code == 0:
        return Outcome(m, "survived", seconds, "all selected tests passed")
    if code == 1:
        return Outcome(m, "killed", seconds, first_failure(output))
    return Outcome(m, "error", seconds, first_failure(output))  # 2-5: interrupted, usage or collection error


def report_table(outcomes: list[Outcome], tests_override: tuple[str, ...] | None) -> str:
    lines = ["| mutation | area | bug | result | first failing test |", "|---|---|---|---|---|"]
    for o in outcomes:
        status, caught = ("**survived**", "-") if o.status == "survived" else (o.status, f"`{o.detail}`")
        bug = o.mutation.bug.replace("|", "\\|")
        lines.append(f"| `{o.mutation.id}` | {o.mutation.area} | {bug} | {status} | {caught} |")
    killed = sum(o.status in ("killed", "error", "timeout") for o in outcomes)
    scope = f"the test files {', '.join(tests_override)}" if tests_override else "each mutation's own test files"
    lines.append("")
    lines.append(f"{killed} of {len(outcomes)} mutations killed, {len(outcomes) - killed} survived ({scope}).")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print the mutations and exit")
    p.add_argument("--only", help="comma-separated mutation ids")
    p.add_argument("--area", help="only the mutations of this area (schedules, respacing, posterior, ...)")
    p.add_argument("--tests", nargs="+", help="run these test files for every mutation instead of its own")
    p.add_argument("--jobs", type=int, default=1, help="mutations run at once, each in its own copy (default 1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutation before it counts as a timeout")
    p.add_argument("--report", metavar="FILE.md", help="also write the result table (markdown) here")
    args = p.parse_args(argv)

    mutations = load_mutations()
    bad = problems(mutations)
    if bad:
        print("mutation check: the list does not apply to the current source:\n  " + "\n  ".join(bad),
              file=sys.stderr)
        return 2
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {m.id for m in mutations})
        if unknown:
            print(f"mutation check: unknown ids {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m.id in wanted]
    if args.area:
        mutations = [m for m in mutations if m.area == args.area]
    if args.list:
        for m in mutations:
            print(f"{m.id:34s} {m.area:11s} {m.file}: {m.bug}")
        return 0
    if not mutations:
        print("mutation check: nothing selected", file=sys.stderr)
        return 2
    override = tuple(args.tests) if args.tests else None
    jobs = max(1, min(args.jobs, len(mutations)))
    copies = [make_copy(ROOT) for _ in range(jobs)]
    try:
        check_imports_the_copy(copies[0])
        selected = override or tuple(sorted({t for m in mutations for t in m.tests}))
        print(f"baseline: {len(selected)} test file(s) on the unmutated copy ...", flush=True)
        code, output = run_pytest(copies[0], selected, args.timeout)
        if code != 0:
            print(f"mutation check: the unmutated tests do not pass (exit {code}):\n{output[-3000:]}", file=sys.stderr)
            return 2
        print(f"{len(mutations)} mutation(s), {jobs} at a time", flush=True)
        outcomes: list[Outcome] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            free = list(copies)
            pending = {}
            queue = list(mutations)
            while queue or pending:
                while queue and free:
                    m, copy = queue.pop(0), free.pop()
                    pending[pool.submit(apply_and_run, m, copy, override or m.tests, args.timeout)] = copy
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in done:
                    free.append(pending.pop(fut))
                    o = fut.result()
                    outcomes.append(o)
                    print(f"  {o.status:8s} {o.mutation.id:34s} {o.seconds:5.1f} s  {o.detail}", flush=True)
    finally:
        for copy in copies:
            shutil.rmtree(copy, ignore_errors=True)
    order = {m.id: i for i, m in enumerate(mutations)}
    outcomes.sort(key=lambda o: order[o.mutation.id])
    table = report_table(outcomes, override)
    print()
    print(table)
    if args.report:
        Path(args.report).write_text(table + "\n", encoding="utf-8")
    survivors = [o.mutation.id for o in outcomes if o.status == "survived"]
    if survivors:
        print(f"\nsurvived: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
