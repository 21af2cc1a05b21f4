import json

import pytest
import torch

from difflab.guidance import classifier_free
from difflab.nn import UNet, get_unet_preset
from difflab.nn.io import load_pretrained, save_pretrained
from difflab.nn.text import (ClassEncoder, ClassEncoderConfig, TextEncoder, TextEncoderConfig, WordTokenizer,
                             build_vocab, empty_prompt_uncond, split_words)




CAPTIONS = ["a handwritten seven", "the digit 7", "number three, written thin", "a handwritten one"]


def _encoder(**kw) -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder.from_captions(CAPTIONS, dim=16, depth=2, heads=2, max_length=8, **kw).eval()


def test_class_encoder_one_token_and_null_class():
    enc = ClassEncoder(ClassEncoderConfig(num_classes=3, dim=5))
    context, mask = enc(torch.tensor([0, 2, enc.null_class]))
    assert context.shape == (3, 1, 5) and mask.dtype == torch.bool and mask.all()
    torch.testing.assert_close(context[2, 0], enc.embedding.embedding.weight[3])
    assert not torch.equal(context[0], context[2])
    with pytest.raises(ValueError, match="null class"):
        enc(torch.tensor([4]))


def test_vocab_and_tokenizer_are_deterministic():
    vocab = build_vocab(CAPTIONS)
    assert vocab[:2] == ("<pad>", "<unk>") and list(vocab[2:]) == sorted(vocab[2:])
    assert build_vocab(reversed(CAPTIONS)) == vocab
    assert split_words("Number THREE, written thin") == ["number", "three", ",", "written", "thin"]
    tok = WordTokenizer(vocab, max_length=6)
    ids, mask = tok(["the digit 7", "a scribbled seven", ""])
    assert ids.shape == (3, 6) and mask.sum(1).tolist() == [3, 3, 0]
    assert tok.decode(ids, mask) == ["the digit 7", "a <unk> seven", ""]
    assert ids[~mask].eq(0).all()
    with pytest.raises(ValueError, match="max_length is 6"):
        tok(["one two three four five six seven"])


def test_padding_does_not_change_real_tokens():
    enc = _encoder()
    ids, mask = enc.tokenizer(["a handwritten seven", "number three, written thin"])
    context, out_mask = enc(ids, mask)
    assert torch.equal(out_mask, mask)
    # Junk in the padding positions changes nothing, and padding rows are zero.
    junk = torch.where(mask, ids, torch.randint(2, len(enc.config.vocab), ids.shape))
    torch.testing.assert_close(enc(junk, mask)[0], context, rtol=0, atol=0)
    assert context[~mask].eq(0).all() and context[mask].abs().sum(-1).gt(0).all()
    # A caption encodes the same alone, in a batch with a longer one, or with a shorter length.
    alone, _ = enc.encode(["a handwritten seven"])
    torch.testing.assert_close(alone[0], context[0], rtol=1e-6, atol=1e-6)
    short_ctx, _ = enc(ids[:1, :3], mask[:1, :3])
    torch.testing.assert_close(short_ctx[0], context[0, :3], rtol=1e-6, atol=1e-6)
    # ... but a real word does change the other real tokens (attention is on).
    other, _ = enc.encode(["a handwritten one"])
    assert not torch.allclose(other[0, :2], context[0, :2])


def test_empty_prompt_is_the_null_condition():
    enc = _encoder()
    context, mask = enc.encode(["", ""])
    assert context.shape == (2, 8, 16) and not mask.any() and context.eq(0).all()


def test_text_encoder_round_trip_keeps_vocabulary(tmp_path):
    enc = _encoder()
    save_pretrained(enc, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["class_name"] == "TextEncoder" and meta["config"]["vocab"] == list(enc.config.vocab)
    loaded = load_pretrained(tmp_path).eval()
    assert isinstance(loaded, TextEncoder) and loaded.config == enc.config
    with torch.no_grad():
        assert torch.equal(loaded.encode(CAPTIONS)[0], enc.encode(CAPTIONS)[0])
    with pytest.raises(ValueError, match="vocab must start with"):
        TextEncoderConfig(vocab=("seven",))


def test_unet_cross_attention_with_text_context_and_guidance():
    torch.manual_seed(0)
    enc = _encoder()
    unet = UNet(get_unet_preset("tiny", context_dim=16, cross_attention_resolutions=(4,))).eval()
    with torch.no_grad():
        for p in unet.parameters():          # zero-initialised outputs would hide the context
            p.add_(torch.randn_like(p) * 0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        ctx, mask = enc.encode(["a handwritten seven", "the digit 7"])
        out = unet(x, t, context=ctx, context_mask=mask)
        # padding content is invisible to the U-Net
        junk = torch.where(mask[..., None], ctx, torch.randn_like(ctx))
        torch.testing.assert_close(unet(x, t, context=junk, context_mask=mask), out, rtol=0, atol=0)
        # the prompt matters
        ctx2, mask2 = enc.encode(["a handwritten one", "the digit 7"])
        out2 = unet(x, t, context=ctx2, context_mask=mask2)
        assert not torch.allclose(out2[0], out[0]) and torch.allclose(out2[1], out[1], atol=1e-6)
        # classifier-free guidance with the empty prompt as the null condition (CFG eq. 6)
        null_ctx, null_mask = enc.encode(["", ""])
        uncond = unet(x, t, context=null_ctx, context_mask=null_mask)
        guided = classifier_free(unet, 2.0, uncond=empty_prompt_uncond(enc))(x, t, context=ctx, context_mask=mask)
        torch.testing.assert_close(guided, 3.0 * out - 2.0 * uncond, rtol=1e-5, atol=1e-5)


def test_pretrained_encoder_without_transformers_names_the_extra(monkeypatch):
    from difflab.nn.text import PretrainedTextEncoder
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)   # import now fails
    with pytest.raises(ImportError, match=r"pip install difflab\[text\]"):
        PretrainedTextEncoder()
