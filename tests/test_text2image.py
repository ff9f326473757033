"""Text to image: captioned shapes, tokens, CLIP's loss, cross-attention, guidance on captions, and the ruler."""

import math

import pytest
import torch
import torch.nn.functional as F

from genbook import data
from genbook import diffusion as dif
from genbook import text2image as t2i

COLOUR_NAMES = {"red": 0, "green": 1, "blue": 2, "yellow": 3}
SHAPE_NAMES = {"square": 0, "box": 0, "circle": 1, "disc": 1, "triangle": 2}


@pytest.fixture(scope="module")
def shapes():
    return data.captioned_shapes(400, "train", seed=3)


def test_held_out_pairs_never_reach_the_training_split_and_fill_the_novel_one():
    held = set(data.HELD_OUT)
    train = data.captioned_shapes(3000, "train", seed=0)
    pairs = {(c, s) for cs, ss in zip(train.colour.tolist(), train.shape.tolist()) for c, s in zip(cs, ss) if c >= 0}
    assert not pairs & held and len(pairs) == 10  # every other (colour, shape) pair is there
    novel = data.captioned_shapes(500, "novel", seed=0)
    assert all(any((c, s) in held for c, s in zip(cs, ss)) for cs, ss in zip(novel.colour.tolist(), novel.shape.tolist()))
    test = data.captioned_shapes(3000, "test", seed=0)
    assert not torch.equal(test.images, train.images)  # another random stream: images no model trained on
    again = data.captioned_shapes(3000, "train", seed=0)
    assert torch.equal(again.images, train.images) and again.captions == train.captions  # a seed gives one dataset


def describes(shapes, i, caption) -> bool:
    """Whether ``caption`` names the colours and shapes of scene ``i`` in their slots, its place or relation."""
    words = caption.split()
    colours = [COLOUR_NAMES[w] for w in words if w in COLOUR_NAMES]
    forms = [SHAPE_NAMES[w] for w in words if w in SHAPE_NAMES]
    layout = int(shapes.layout[i])
    slots = 2 if layout >= 4 else 1
    if not len(colours) == len(forms) == slots:
        return False
    if slots == 1:
        return (colours[0], forms[0]) == (int(shapes.colour[i, 0]), int(shapes.shape[i, 0])) and data.LAYOUTS[layout] in words
    horizontal = "left" in words or "right" in words
    first_is_slot0 = any(w in words for w in ("left", "above", "over"))  # "A left of B": A is the left shape
    named = [(colours[0], forms[0]), (colours[1], forms[1])]
    actual = [(int(shapes.colour[i, s]), int(shapes.shape[i, s])) for s in range(2)]
    return horizontal == (layout == 4) and named == (actual if first_is_slot0 else actual[::-1])


def test_captions_name_the_shapes_in_their_images(shapes):
    for i, caption in enumerate(shapes.captions):
        assert describes(shapes, i, caption), caption
    one = ~shapes.pairs
    assert (shapes.colour[one, 1] == -1).all() and (shapes.colour[~one, 1] >= 0).all()


def test_vocabulary_round_trips_and_refuses_unknown_words_with_the_word_list():
    vocab = t2i.Vocabulary()
    caption = "a small red circle to the left of a big blue square"
    tokens = vocab.encode([caption])
    assert tokens.shape == (1, 18) and tokens[0, 0] == vocab.BOS
    assert (tokens[0, 13:] == vocab.PAD).all() and (tokens[0, :13] != vocab.PAD).all()  # <bos> + 12 words
    assert vocab.decode(tokens) == [caption]
    with pytest.raises(t2i.UnknownWordError, match="purple") as err:
        vocab.encode("a purple circle on the left")
    assert "triangle" in str(err.value) and "yellow" in str(err.value)  # the message lists the vocabulary
    with pytest.raises(t2i.UnknownWordError):
        vocab.encode("a <pad> circle")
    with pytest.raises(ValueError, match="at most"):
        vocab.encode(" ".join(["a"] * 18))
    assert set(data.caption_words()) <= set(vocab.words)


def test_clip_loss_is_the_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    t = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(1.5)
    logits = math.exp(1.5) * f @ t.T
    by_hand = 0.0
    for i in range(6):
        by_hand += -logits[i, i] + torch.logsumexp(logits[i], 0)  # image i picks its caption
        by_hand += -logits[i, i] + torch.logsumexp(logits[:, i], 0)  # caption i picks its image
    assert torch.allclose(t2i.clip_loss(f, t, scale), by_hand / 12, atol=1e-6)
    perfect = t2i.clip_loss(f, f, torch.tensor(math.log(100)))
    assert perfect < t2i.clip_loss(f, t, torch.tensor(math.log(100)))


def _text_model(seed=0):
    torch.manual_seed(seed)
    vocab = t2i.Vocabulary()
    den = t2i.TextDiT(t2i.TextEncoder(len(vocab), dim=32), dim=32, depth=2, heads=4)
    for p in den.parameters():  # leave the zero initialization, so the output depends on everything
        torch.nn.init.normal_(p, std=0.1)
    return vocab, den.eval()


def test_padding_cannot_change_the_denoiser_output():
    vocab, den = _text_model()
    captions = ["a small red circle on the left", "a big blue square above a little green triangle"]
    short = vocab.encode(captions, length=18)
    long = vocab.encode(captions, length=24)
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 700])
    out = den(x, t, short)
    assert torch.allclose(out, den(x, t, long), atol=1e-6)
    with torch.no_grad():  # the padding token's embedding itself is never read
        den.text.tok.weight[vocab.PAD] += 5.0
    assert torch.allclose(out, den(x, t, short), atol=1e-6)
    other = vocab.encode(["a small red circle on the right", captions[1]])
    assert (den(x, t, other)[0] - out[0]).abs().max() > 1e-3  # ... while a word does change it


def test_cross_attention_reads_only_the_text_it_is_given():
    torch.manual_seed(0)
    attn = t2i.CrossAttention(dim=16, text_dim=8, heads=2)
    attn.keep = True
    x, h = torch.randn(3, 5, 16), torch.randn(3, 7, 8)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] + [False] * 6])
    out = attn(x, h, mask)
    assert attn.weights.shape == (3, 2, 5, 7)
    assert (attn.weights.masked_select(~mask[:, None, None, :]) == 0).all()
    assert torch.allclose(attn.weights.sum(-1), torch.ones(3, 2, 5))
    h2 = h.clone()
    h2[~mask] = torch.randn(int((~mask).sum()), 8)  # change only the features it may not read
    assert torch.allclose(out, attn(x, h2, mask), atol=1e-6)
    h3 = h.clone()
    h3[1, 0] += 1.0  # change a feature it may read
    assert not torch.allclose(out[1], attn(x, h3, mask)[1], atol=1e-4)


def test_guidance_on_captions_with_w_zero_is_the_conditional_model():
    vocab, den = _text_model(1)
    y = vocab.encode(["a big yellow triangle at the top", "a small green box right of a big red disc"])
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([100, 900])
    with torch.no_grad():
        assert torch.equal(dif.classifier_free(den, 0.0)(x, t, y), den(x, t, y))
        uncond = den(x, t, torch.full_like(y, -1))
        empty = den(x, t, vocab.encode(["", ""]))  # "no caption" is the empty caption, <bos> alone
        assert torch.allclose(uncond, empty, atol=1e-6)
        guided = dif.classifier_free(den, 2.0)(x, t, y)
        assert torch.allclose(guided, 3 * den(x, t, y) - 2 * uncond, atol=1e-5)


def test_caption_dropout_replaces_whole_rows_with_no_caption():
    seen = []

    def eps_fn(x, t, y):
        seen.append(y)
        return torch.zeros_like(x)

    y = torch.arange(1, 13).view(4, 3)
    sched = dif.cosine_schedule(100)
    torch.manual_seed(0)
    dif.eps_loss(eps_fn, sched, torch.zeros(4, 2), y, p_uncond=0.5)
    got = seen[-1]
    dropped = (got == -1).all(1)
    assert dropped.any() and (~dropped).any()
    assert torch.equal(got[~dropped], y[~dropped])  # a row is kept whole or dropped whole


def test_frozen_text_encoder_gets_no_gradient():
    vocab = t2i.Vocabulary()
    text = t2i.TextEncoder(len(vocab), dim=32)
    den = t2i.TextDiT(text, dim=32, depth=1)
    loss = dif.eps_loss(den, dif.cosine_schedule(100), torch.randn(4, 4, 4, 4), vocab.encode(["a red box on the left"] * 4))
    loss.backward()
    assert all(p.grad is None for p in text.parameters())
    assert any(p.grad is not None for p in den.blocks.parameters())
    learned = t2i.TextEncoder(len(vocab), dim=32)  # Imagen's ablation: the text encoder trained with the denoiser
    den = t2i.TextDiT(learned, dim=32, depth=1, freeze_text=False)
    dif.eps_loss(den, dif.cosine_schedule(100), torch.randn(4, 4, 4, 4), vocab.encode(["a red box on the left"] * 4)).backward()
    assert all(p.requires_grad for p in learned.parameters()) and learned.tok.weight.grad is not None


def test_the_ruler_reads_real_images_and_prompt_following_scores_them():
    ruler = t2i.attribute_classifier()
    real = data.captioned_shapes(300, "all", seed=11)
    acc = t2i.attribute_accuracy(ruler, real)
    assert min(acc.values()) > 0.97
    pf = t2i.prompt_following(ruler, real.images, real)
    assert pf["all"] > 0.95 and pf["order"] > 0.95
    two = real.subset(torch.nonzero(real.pairs).flatten())
    swapped = two.images.flip(-1)  # mirror: "A left of B" becomes "B left of A" (stacked pairs stay in order)
    pf_swapped = t2i.prompt_following(ruler, swapped, two)
    side = two.layout == 4
    assert pf_swapped["order"] < 0.5 * pf["order"] and side.float().mean() > 0.3


def test_zero_shot_is_perfect_for_a_perfect_matcher_and_at_chance_for_a_blind_one():
    vocab = t2i.Vocabulary()
    shapes = data.captioned_shapes(60, "test", seed=2)
    plain = [
        data.describe(int(lay), c.tolist(), s.tolist(), z.tolist())
        for lay, c, s, z in zip(shapes.layout, shapes.colour, shapes.shape, shapes.size)
    ]

    def oracle(idx, tokens):
        caps = vocab.decode(tokens)
        return torch.tensor([[float(plain[i] == c) for c in caps] for i in idx.tolist()])

    def blind(idx, tokens):
        return torch.zeros(len(idx), len(tokens))

    idx = torch.arange(len(shapes))
    for factor in ("colour", "shape", "size", "place", "order"):
        assert t2i.zero_shot(oracle, idx, shapes, vocab, factor) == 1.0
    # a matcher that cannot tell captions apart scores chance exactly: ties are shared, not won
    for factor, options in (("colour", 4), ("shape", 3), ("size", 2), ("place", 4), ("order", 2)):
        assert t2i.zero_shot(blind, idx, shapes, vocab, factor) == pytest.approx(1 / options)


def test_score_shapes_puts_the_yardstick_beside_the_samples():
    ruler = t2i.attribute_classifier()
    train = data.captioned_shapes(400, "train", seed=0)
    test = data.captioned_shapes(400, "test", seed=0)
    real = t2i.score_shapes(ruler, test.images[:100], test.images[100:], train.images, redraws=3)
    noise = t2i.score_shapes(ruler, torch.rand(100, 3, 16, 16), test.images[100:], train.images, redraws=3)
    assert real.n == noise.n == 100 and real.fd_real == noise.fd_real
    assert noise.fd > 5 * real.fd and "training images" in str(real)
    with pytest.raises(ValueError, match="between 20"):
        t2i.score_shapes(ruler, test.images[:10], test.images, train.images)


def test_spatial_autoencoder_keeps_a_spatial_latent():
    ae = t2i.SpatialAutoencoder(channels=4, width=16)
    x = torch.rand(2, 3, 16, 16)
    z = ae.encode(x)
    assert z.shape == (2, 4, 4, 4) and ae.decode(z).shape == x.shape
    assert ((ae(x) >= 0) & (ae(x) <= 1)).all()


def test_clip_guidance_follows_the_gradient_of_the_similarity():
    torch.manual_seed(0)
    vocab = t2i.Vocabulary()
    clip = t2i.CLIP(len(vocab), dim=16, image=t2i.NoisyLatentEncoder(dim=16, width=8))
    clip.text = t2i.TextEncoder(len(vocab), dim=16)
    clip.text_proj = torch.nn.Linear(16, 16)
    sched = dif.cosine_schedule(100)
    y = vocab.encode(["a big red box on the left", "a small blue disc at the top"])
    z = torch.randn(2, 4, 4, 4)
    loss = t2i.noised_clip_loss(clip, sched, z, y)
    assert torch.isfinite(loss)

    def eps_fn(x, t, y):
        return 0.5 * x

    t = torch.tensor([10, 80])
    assert torch.equal(t2i.clip_guided(eps_fn, clip, sched, 0.0)(z, t, y), eps_fn(z, t, y))
    zg = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((clip.embed_images(zg, t) * clip.embed_text(y)).sum(), zg)
    ab = sched.alpha_bar[t].float().view(-1, 1, 1, 1)
    expected = 0.5 * z - 3.0 * (1 - ab).sqrt() * grad
    assert torch.allclose(t2i.clip_guided(eps_fn, clip, sched, 3.0)(z, t, y), expected, atol=1e-6)
    # a small step against the guided eps raises the similarity to the caption
    with torch.no_grad():
        before = (clip.embed_images(z, t) * clip.embed_text(y)).sum(1)
        after = (clip.embed_images(z + 1e-2 * grad, t) * clip.embed_text(y)).sum(1)
    assert (after > before).all()


def test_caption_scenes_writes_what_the_factors_say(shapes):
    captions = data.caption_scenes(shapes.layout, shapes.colour, shapes.shape, shapes.size, seed=5)
    assert all(describes(shapes, i, c) for i, c in enumerate(captions))
    assert captions != shapes.captions  # other synonyms and word orders from another seed
    with pytest.raises(ValueError, match="one layout"):
        data.caption_scenes(shapes.layout[:3], shapes.colour, shapes.shape, shapes.size)


def test_vague_captions_drop_and_corrupt_words_at_the_rates_asked(shapes):
    vocab = t2i.Vocabulary()
    words = {w for c in data.vague_captions(data.captioned_shapes(2000, seed=4), seed=4) for w in c.split()}
    assert words == set(data.caption_words())  # the grammar's words and word orders: they say less, not otherwise
    full = data.vague_captions(shapes, mention=1.0, wrong=0.0, seed=1)
    assert all(describes(shapes, i, c) for i, c in enumerate(full))  # nothing dropped, nothing wrong
    vocab.encode(full)  # every word is in the vocabulary
    bare = data.vague_captions(shapes, mention=0.0, seed=1)
    assert all(len(c.split()) == 2 and c.split()[1] in SHAPE_NAMES for c in bare)  # "a circle"
    one = torch.nonzero(~shapes.pairs).flatten().tolist()
    lying = data.vague_captions(shapes, mention=1.0, wrong=1.0, seed=1)
    for i in one:  # every colour named is another one
        named = [COLOUR_NAMES[w] for w in lying[i].split() if w in COLOUR_NAMES]
        assert len(named) == 1 and named[0] != int(shapes.colour[i, 0]), lying[i]
    default = data.vague_captions(shapes, seed=2)
    coloured = sum(any(w in COLOUR_NAMES for w in default[i].split()) for i in one) / len(one)
    assert 0.2 < coloured < 0.4  # mention = 0.3
    wrong = [i for i in one if any(COLOUR_NAMES.get(w, -1) not in (-1, int(shapes.colour[i, 0])) for w in default[i].split())]
    assert 0.03 < len(wrong) / len(one) < 0.18  # 0.3 x 0.3 = 0.09
    with pytest.raises(ValueError, match="probabilities"):
        data.vague_captions(shapes, mention=1.5)


def test_recaption_writes_what_its_reader_sees():
    real = data.captioned_shapes(200, "all", seed=12)
    captions = t2i.recaption(t2i.attribute_classifier(), real.images, seed=3)  # the ruler as a near-perfect captioner
    assert sum(describes(real, i, c) for i, c in enumerate(captions)) >= 0.95 * len(real)
    with pytest.raises(ValueError, match="fewer than one batch"):
        t2i.train_captioner(real.subset(slice(0, 10)), batch=64)
