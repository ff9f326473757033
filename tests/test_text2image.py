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


def test_score_shapes_reuses_features_only_while_nothing_changed():
    """The cached reference/training features and yardstick give exactly the numbers of computing them afresh, and
    are recomputed when the reference images or the model change in place."""
    ruler = t2i.attribute_classifier()
    train = data.captioned_shapes(400, "train", seed=0)
    test = data.captioned_shapes(400, "test", seed=0)
    reference, samples = test.images[100:].clone(), test.images[:100]

    def fresh(model, reference):
        t2i._SET_FEATURES.clear()
        t2i._SHAPES_YARDSTICK.clear()
        return t2i.score_shapes(model, samples, reference, train.images, redraws=3)

    first = fresh(ruler, reference)
    again = t2i.score_shapes(ruler, samples, reference, train.images, redraws=3)
    assert again == first  # every field equal: the cache changes no number
    reference[:50] = torch.rand(50, 3, 16, 16)  # an in-place edit of the reference set
    edited = t2i.score_shapes(ruler, samples, reference, train.images, redraws=3)
    assert edited == fresh(ruler, reference) and edited.fd != first.fd
    model = t2i.AttributeClassifier(width=8)
    before = t2i.score_shapes(model, samples, reference, train.images, redraws=3)
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)  # the model changes in place, as an optimizer step changes it
    after = t2i.score_shapes(model, samples, reference, train.images, redraws=3)
    assert after == fresh(model, reference) and after.fd_real != before.fd_real
    with torch.inference_mode():  # such tensors have no version counter: scored, never cached
        frozen = test.images[100:].clone()
    assert t2i.score_shapes(ruler, samples, frozen, train.images, redraws=3) == fresh(ruler, frozen)


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


# ----------------------------------------------------------------------------- chapter 9: image tokens and unCLIP


def _token_model(seed: int = 0, codes: int = 16) -> tuple[t2i.CaptionToTokens, t2i.Vocabulary]:
    torch.manual_seed(seed)
    vocab = t2i.Vocabulary()
    model = t2i.CaptionToTokens(t2i.TextEncoder(len(vocab), dim=32, depth=1), codes, grid=3, dim=32, depth=2, heads=4).eval()
    for p in model.parameters():  # an untrained model whose output depends on every input
        torch.nn.init.normal_(p, std=0.3)
    return model, vocab


def test_vq_autoencoder_decodes_continuous_latents_through_their_codes():
    torch.manual_seed(0)
    ae = t2i.VQAutoencoder(channels=4, width=16, num_codes=8).eval()
    x = torch.rand(5, 3, 16, 16)
    codes = ae.codes(x)
    assert codes.shape == (5, 4, 4) and codes.dtype == torch.long and int(codes.max()) < 8
    z = ae.encode(x)
    assert torch.equal(ae.decode(z), ae.decode_codes(codes))  # Rombach et al.'s VQ-reg: decode quantizes first
    assert torch.equal(ae.decode(z + 1e-7), ae.decode_codes(codes))
    ae.train()
    loss = ae.loss(x)
    loss.backward()
    assert loss.item() > 0 and ae.encoder[0].weight.grad.abs().sum() > 0  # straight-through: the encoder learns


def test_nearest_codes_is_the_argmin_of_the_distances():
    g = torch.Generator().manual_seed(1)
    z, book = torch.randn(2, 3, 4, 5, generator=g), torch.randn(7, 3, generator=g)
    want = ((z.permute(0, 2, 3, 1)[..., None, :] - book) ** 2).sum(-1).argmin(-1)  # (B, h, w, K) -> (B, h, w)
    from genbook.vqvae import nearest_codes

    assert torch.equal(nearest_codes(z, book), want)


def test_token_model_step_by_step_equals_the_full_pass_and_ignores_padding():
    model, vocab = _token_model()
    tokens = vocab.encode(["a red square at the top", "a big blue disc left of a small green triangle"])
    codes = torch.randint(0, 16, (2, 3, 3), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(codes, tokens)  # (2, 9, 16)
        h, mask = model.text(tokens)
        blk = model.blocks[0]
        shape = (len(model.blocks), 2, blk.heads, 9, 32 // blk.heads)
        keys, values = torch.empty(shape), torch.empty(shape)
        seq = torch.cat([torch.full((2, 1), 16), codes.flatten(1)[:, :-1]], 1)
        for t in range(9):  # what sample() does, with the true codes fed in
            x = model.tok(seq[:, t])[:, None] + model.pos[:, t : t + 1]
            for i, block in enumerate(model.blocks):
                x = block.step(x, keys[i], values[i], t, h, mask)
            assert torch.allclose(model.head(model.ln(x))[:, 0], full[:, t], atol=1e-5)
        padded = torch.cat([tokens, torch.zeros(2, 5, dtype=torch.long)], 1)
        assert torch.allclose(model(codes, padded), full, atol=1e-6)
        other = vocab.encode(["a yellow circle at the bottom", "a small red box"])
        assert (model(codes, other) - full).abs().max() > 1e-2  # the caption does matter


def test_token_model_samples_reproducibly_and_guidance_uses_the_empty_caption():
    model, vocab = _token_model()
    tokens = vocab.encode(["a red square at the top"] * 3)
    a = model.sample(tokens, generator=torch.Generator().manual_seed(5))
    b = model.sample(tokens, generator=torch.Generator().manual_seed(5))
    assert a.shape == (3, 3, 3) and torch.equal(a, b)
    cold = model.sample(tokens, temperature=1e-4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(model(cold, tokens).argmax(-1), cold.flatten(1))  # near zero temperature: greedy decoding
        empty = model(cold, torch.full_like(tokens, -1))
        guided = model.sample(tokens, w=2.0, temperature=1e-4, generator=torch.Generator().manual_seed(6))
        want = (3 * model(guided, tokens) - 2 * model(guided, torch.full_like(tokens, -1))).argmax(-1)
    assert torch.equal(want, guided.flatten(1))  # (1 + w) l(c | caption) - w l(c | none), greedily
    assert not torch.equal(empty, model(cold, tokens))


def test_token_loss_is_the_next_code_cross_entropy():
    model, vocab = _token_model()
    tokens = vocab.encode(["a red square at the top", "a small red box"])
    codes = torch.randint(0, 16, (2, 3, 3), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logp = model(codes, tokens).log_softmax(-1)
        want = -logp.gather(-1, codes.flatten(1)[..., None]).mean()
        assert torch.allclose(t2i.token_loss(model, codes, tokens), want, atol=1e-6)


def test_embedding_context_maps_no_condition_to_a_learned_null():
    torch.manual_seed(0)
    ctx = t2i.EmbeddingContext(8, 16, tokens=3)
    emb = F.normalize(torch.randn(4, 8), dim=-1)
    emb[1] = -1
    h, mask = ctx(emb)
    assert h.shape == (4, 3, 16) and mask.all()
    null, _ = ctx(torch.full((1, 8), -1.0))
    assert torch.allclose(h[1], null[0]) and not torch.allclose(h[0], null[0])
    den = t2i.TextDiT(ctx, channels=4, size=4, dim=16, depth=1, heads=4, freeze_text=False)
    out = dif.classifier_free(den, 0.0)(torch.randn(4, 4, 4, 4), torch.full((4,), 10), emb)
    assert out.shape == (4, 4, 4, 4)


def test_embedding_prior_eps_and_x0_agree_and_samples_are_unit_vectors():
    torch.manual_seed(0)
    sched = dif.cosine_schedule(100)
    prior = t2i.EmbeddingPrior(sched, emb_dim=8, width=32, depth=1)
    z, g = torch.randn(5, 8), F.normalize(torch.randn(5, 8), dim=-1)
    t = torch.tensor([0, 10, 50, 90, 99])
    ab = sched.alpha_bar[t][:, None].float()
    x0 = (z - (1 - ab).sqrt() * prior(z, t, g)) / ab.sqrt()  # eq. 84 from the eps it gives
    assert torch.allclose(x0, prior.predict_x0(z, t, g), atol=1e-3)
    assert prior.loss(F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)).item() > 0
    f = prior.sample(g, steps=5, generator=torch.Generator().manual_seed(0))
    assert f.shape == (5, 8) and torch.allclose(f.norm(dim=-1), torch.ones(5), atol=1e-5)


def test_slerp_stays_on_the_sphere_at_an_even_angle():
    g = torch.Generator().manual_seed(4)
    a, b = F.normalize(torch.randn(3, 6, generator=g), dim=-1), F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    assert torch.allclose(t2i.slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(t2i.slerp(a, b, 1.0), b, atol=1e-6)
    theta = torch.acos((a * b).sum(-1))
    for t in (0.25, 0.5, 0.8):
        m = t2i.slerp(a, b, t)
        assert torch.allclose(m.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(torch.acos((a * m).sum(-1).clamp(-1, 1)), t * theta, atol=1e-4)
    assert torch.allclose(t2i.slerp(a, a, 0.3), a, atol=1e-6)  # no division by zero where a = b
    e = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])  # exactly unit: <e, e> = 1, sin(theta) = 0 exactly
    same = t2i.slerp(e, e.clone(), 0.4)
    assert torch.isfinite(same).all() and torch.allclose(same, e, atol=1e-6)


def test_cached_text_gives_the_model_output_and_encodes_each_caption_batch_once():
    torch.manual_seed(0)
    vocab = t2i.Vocabulary()
    den = t2i.TextDiT(t2i.TextEncoder(len(vocab), dim=16, depth=1), channels=4, size=4, dim=16, depth=1, heads=4).eval()
    for block in den.blocks:
        torch.nn.init.normal_(block.cross.proj.weight, std=0.2)
        torch.nn.init.normal_(block.ada[1].weight, std=0.2)  # so that the output depends on t too
    torch.nn.init.normal_(den.out.weight, std=0.2)
    torch.nn.init.normal_(den.ada[1].weight, std=0.2)
    y = vocab.encode(["a red square at the top", "a small blue disc"])
    calls = []
    den.text.register_forward_hook(lambda *_: calls.append(1))
    cached = t2i.CachedText(den)
    guided = dif.classifier_free(cached, 2.0)
    with torch.no_grad():
        x = torch.randn(2, 4, 4, 4)
        for t in (900, 500, 100):
            tt = torch.full((2,), t)
            assert torch.allclose(guided(x, tt, y), dif.classifier_free(den, 2.0)(x, tt, y), atol=1e-6)
    assert len(calls) == 1 + 3  # the cached function encoded once; the plain model three times
    sched = dif.cosine_schedule(100)
    kw = dict(steps=5, y=y, generator=None)
    with torch.no_grad():
        a = dif.ddim_sample(dif.classifier_free(t2i.CachedText(den), 2.0), sched, (2, 4, 4, 4), x_T=x, **kw)
        b = dif.ddim_sample(dif.classifier_free(den, 2.0), sched, (2, 4, 4, 4), x_T=x, **kw)
    assert torch.allclose(a, b, atol=1e-5) and (a - x).abs().max() > 1e-2
    with torch.no_grad():
        other = vocab.encode(["a big green triangle", "a yellow box on the left"])
        assert torch.allclose(cached(x, tt, other), den(x, tt, other), atol=1e-6)  # new captions are encoded anew


def test_caption_features_train_the_denoiser_as_the_tokens_would():
    torch.manual_seed(0)
    vocab = t2i.Vocabulary()
    den = t2i.TextDiT(t2i.TextEncoder(len(vocab), dim=16, depth=1), channels=4, size=4, dim=16, depth=1, heads=4)
    for block in den.blocks:
        torch.nn.init.normal_(block.cross.proj.weight, std=0.2)
    torch.nn.init.normal_(den.out.weight, std=0.2)
    tokens = vocab.encode(["a red square at the top", "a small blue disc", "a big green triangle"])
    calls = []
    den.text.register_forward_hook(lambda *_: calls.append(1))
    table = t2i.CaptionFeatures(den, tokens, batch=2)
    assert len(table) == 3 and len(calls) == 2  # four rows (the empty caption last) in batches of two, once
    eps = table.eps(den)
    idx = torch.tensor([2, -1, 0, 1, -1])  # -1: a dropped caption, as diffusion.eps_loss writes it
    x, t = torch.randn(5, 4, 4, 4), torch.tensor([900, 500, 100, 10, 700])
    rows = torch.where(idx[:, None] < 0, torch.full_like(tokens[:1], -1), tokens[idx])
    got, want = eps(x, t, idx), den(x, t, rows)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got[1], eps(x, t, idx.clamp(min=0))[1], atol=1e-3)  # row -1 is not caption 0
    # the gradient reaches the denoiser as through the tokens, and not the frozen encoder
    g_got = torch.autograd.grad(got.square().sum(), den.out.weight)[0]
    g_want = torch.autograd.grad(den(x, t, rows).square().sum(), den.out.weight)[0]
    assert torch.allclose(g_got, g_want, atol=1e-5)
    assert not table.h.requires_grad
    # eps_loss's caption dropout works on indices: same loss, same random draws, as on the tokens
    sched = dif.cosine_schedule(1000)
    idx = torch.arange(3)
    torch.manual_seed(1)
    a = dif.eps_loss(eps, sched, x[:3], idx, p_uncond=0.5)
    torch.manual_seed(1)
    b = dif.eps_loss(den, sched, x[:3], tokens, p_uncond=0.5)
    assert torch.allclose(a, b, atol=1e-6)


def test_caption_features_refuse_a_trained_encoder_and_another_model():
    vocab = t2i.Vocabulary()
    tokens = vocab.encode(["a red square"])
    trained = t2i.TextDiT(t2i.TextEncoder(len(vocab), dim=16, depth=1), dim=16, depth=1, freeze_text=False)
    with pytest.raises(ValueError, match="frozen text encoder"):
        t2i.CaptionFeatures(trained, tokens)
    den = t2i.TextDiT(t2i.TextEncoder(len(vocab), dim=16, depth=1), dim=16, depth=1)
    with pytest.raises(ValueError, match="token ids"):
        t2i.CaptionFeatures(den, tokens.float())
    other = t2i.TextDiT(t2i.TextEncoder(len(vocab), dim=16, depth=1), dim=16, depth=1)
    with pytest.raises(ValueError, match="another text encoder"):
        t2i.CaptionFeatures(den, tokens).eps(other)
