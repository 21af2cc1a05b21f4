"""train.choose_guidance: the search over guidance weights, its config checks, and a run that applies it."""

import json

import pytest
import yaml

from difflab.config import ConfigError, resolve_config
from difflab.runs import load_run
from difflab.train import train
from difflab.train.guidance_choice import GUIDANCE_FILE, START_IF_ZERO, search_guidance


def bowl(best):
    """A distance with its minimum at ``best`` (in log space, as FD against w behaves), and the calls made."""
    calls = []

    def measure(w):
        calls.append(w)
        return abs(w - best) + 1.0

    return measure, calls


@pytest.mark.parametrize("start,best,expected", [
    (0.2, 0.8, 0.8),      # doubles while it helps: 0.2, 0.4, 0.8, then 1.6 is worse; 0.8 * 2**-0.5 loses
    (0.2, 1.1, 1.131),    # ... then the midpoint toward the better neighbour, 0.8 * 2**0.5, wins
    (0.2, 0.1, 0.1),      # doubling hurts: halves to 0.1, then 0.05 is worse; 0 is tried and loses
    (0.2, 0.0, 0.0),      # ... at most twice (0.1, 0.05), and 0 wins when no guidance is best
    (0.2, 0.2, 0.2),      # the start is best: one step each way and 0
])
def test_the_search_moves_toward_the_lowest_distance(start, best, expected):
    measure, calls = bowl(best)
    chosen, tried = search_guidance(measure, start)
    assert chosen == pytest.approx(expected)
    assert len(calls) == len(set(calls)) == len(tried) <= 6          # each weight measured once
    assert tried[chosen] == min(tried.values())
    assert calls[0] == start


def test_the_search_starts_at_a_default_without_guidance_and_respects_its_limits():
    measure, calls = bowl(100.0)
    chosen, tried = search_guidance(measure, None, max_tries=3, max_weight=8.0)
    assert calls[0] == START_IF_ZERO and len(tried) == 3 and chosen == max(tried) <= 8.0
    measure, calls = bowl(100.0)
    chosen, _ = search_guidance(measure, 0.0, max_tries=10, max_weight=8.0)
    assert calls[0] == START_IF_ZERO and chosen == 8.0                # 0.25 .. 8, never past max_weight
    with pytest.raises(ValueError, match="max_tries"):
        search_guidance(measure, 0.2, max_tries=0)


def test_choose_guidance_needs_classes_dropout_and_evaluation():
    with pytest.raises(ConfigError, match="eval_every_minutes"):
        resolve_config("tiny", overrides=["train.choose_guidance=true"])
    with pytest.raises(ConfigError, match="class-conditional"):
        resolve_config("tiny", overrides=["train.choose_guidance=true", "train.eval_every_minutes=1"])
    with pytest.raises(ConfigError, match="class_dropout"):
        resolve_config("tiny", overrides=["train.choose_guidance=true", "train.eval_every_minutes=1",
                                          "data.labels=true", "model.num_classes=10", "train.class_dropout=0"])


def test_a_run_chooses_its_guidance_on_training_images_and_writes_it_where_sampling_reads_it(tmp_path):
    from test_owndata_wiring import _tiny_folder_config, write_folder

    root = tmp_path / "imgs"
    write_folder(root, 48)
    cfg = _tiny_folder_config(root, "train.steps=3", "train.eval_every_minutes=100", "train.eval_n=8",
                              f"train.eval_cache_dir={tmp_path / 'cache'}", "train.choose_guidance=true",
                              "sample.guidance_scale=0.5")
    logs = []
    result = train(cfg, tmp_path / "run", progress=False, log=logs.append)
    record = json.loads((tmp_path / "run" / GUIDANCE_FILE).read_text())
    tried = {t["w"]: t["fd_train"] for t in record["tried"]}
    assert record["configured"] == 0.5 and 0.5 in tried and 2 <= len(tried) <= 6
    assert record["chosen"] in tried and tried[record["chosen"]] == min(tried.values())
    assert record["n"] == 8 and record["step"] == 3         # min(train.eval_n, CHOOSE_SAMPLES)
    # the reference is the training side of the split, not the held-out images
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record["reference_images"] == len(split["train"]) == 48 - len(split["heldout"]) < 48
    for path in (tmp_path / "run" / "config.yaml", result.checkpoint / "config.yaml"):
        assert yaml.safe_load(path.read_text())["sample"]["guidance_scale"] == (record["chosen"] or None)
    assert load_run(tmp_path / "run").config.sample.guidance_scale == (record["chosen"] or None)
    assert any(f"w={record['chosen']:g} chosen" in m for m in logs)
    # a resumed run keeps training (the sample section may differ from the original config)
    more = resolve_config(base=cfg, overrides=["train.steps=4"])
    assert train(more, tmp_path / "run", resume=True, progress=False, log=logs.append).step == 4


def test_a_chosen_weight_of_zero_turns_guidance_off(tmp_path):
    """w = 0 is the conditional model: the config says null, so sampling makes one network call per step."""
    from difflab.train.guidance_choice import apply_guidance

    cfg = resolve_config("tiny", overrides=["data.labels=true", "model.num_classes=10", "sample.guidance_scale=0.3"])
    new = apply_guidance(tmp_path, cfg, None, 0.0, {0.0: 1.0, 0.3: 2.0}, {})
    assert new.sample.guidance_scale is None
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["sample"]["guidance_scale"] is None
    assert json.loads((tmp_path / GUIDANCE_FILE).read_text())["chosen"] == 0.0

