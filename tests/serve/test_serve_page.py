"""The page's handlers without a browser: the controls each kind of run gets, the stream of a request,
errors on the page, and the Stop button reaching the running job of its own session."""

import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

gr = pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[ui]'")

from difflab.serve.page import PageServer, build_page  # noqa: E402
from difflab.serve.runs import find_runs  # noqa: E402


@pytest.fixture(scope="module")
def server(serve_runs, tmp_path_factory):
    entries, _ = find_runs([serve_runs])
    return PageServer(entries, "cpu", tmp_path_factory.mktemp("page"))


def _visible(update) -> bool:
    return update.get("visible", True)


def test_each_kind_of_run_gets_only_its_controls(server):
    build_page(list(server.entries.values()), device="cpu", out_dir=server.out_dir)   # lays out without errors
    cond = server.controls("runs/cond")
    plain = server.controls("runs/plain")
    # (info, sampler, steps, eta, seed, n, class, grid-by-class, prompts, guidance, source, uploads, inputs, targets, ...)
    assert [_visible(u) for u in cond[6:11]] == [True, True, False, True, False]
    assert [_visible(u) for u in plain[6:11]] == [False, False, False, False, False]
    assert cond[6]["choices"] == ["every class in turn"] + [str(i) for i in range(10)]
    assert cond[2]["value"] == 3 and cond[2]["label"] == "Steps (1 to 100)" and cond[5]["value"] == 10
    assert _visible(cond[3]) == (cond[1]["value"] == "ddim")      # eta only for DDIM


def _request(session="a"):
    return SimpleNamespace(session_hash=session)


def _form(**values):
    form = dict(name="runs/plain", sampler="ddim", steps=3, eta=0.0, seed=0, n=4, class_choice=None,
                grid_by_class=False, prompts="", guidance=0.0, source=None, uploads=None)
    form.update(values)
    return list(form.values())


def test_a_request_streams_progress_then_the_files(server):
    updates = list(server.sample(*_form(), request=_request()))
    statuses = [u[0] for u in updates]
    assert "Loading runs/plain" in statuses[0] and "Sampling 4 images" in statuses[1]
    assert 'id="dl-done"' in statuses[-1] and "Done: 4 images" in statuses[-1]
    final = updates[-1]
    assert str(final[3]).endswith("ddim-3steps-seed0.png") and str(final[6]).endswith("ddim-3steps-seed0.gif")
    assert final[9].startswith("difflab sample --checkpoint")


def test_a_bad_value_is_a_message_on_the_page_and_changes_nothing_else(server):
    updates = list(server.sample(*_form(n=0), request=_request()))
    assert len(updates) == 1
    status, *rest = updates[0]
    assert 'id="dl-error"' in status and "Number of images must be a whole number from 1 to 256, got 0" in status
    assert all(isinstance(r, dict) and r.get("__type__") == "update" and len(r) == 1 for r in rest)   # gr.skip()
    updates = list(server.sample(*_form(name="runs/nope"), request=_request()))
    assert "Run: choose one of the listed runs" in updates[0][0]


class _Slow(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        time.sleep(0.02)
        return self.net(*args, **kwargs)


def test_stop_cancels_the_running_request_of_its_own_session(server, monkeypatch):
    entry = server.entries["runs/plain"]
    run = server.cache.get(entry)
    monkeypatch.setattr(server.cache, "get", lambda e: replace(run, model=_Slow(run.model)))
    updates = []
    worker = threading.Thread(target=lambda: updates.extend(
        server.sample(*_form(sampler="ddpm", steps=100), request=_request("mine"))))
    worker.start()
    deadline = time.monotonic() + 30
    while "mine" not in server.jobs or server.jobs["mine"].frame is None:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    server.stop(_request("someone else"))           # another session's Stop does not touch this job
    time.sleep(0.1)
    assert not server.jobs["mine"].finished
    server.stop(_request("mine"))
    worker.join(30)
    assert "Stopped at step" in updates[-1][0] and 'id="dl-stopped"' in updates[-1][0]
    assert "mine" not in server.jobs
