"""Text to image at toy scale: captions as tokens, a text encoder, CLIP, cross-attention, and an exact ruler.

| name in code | symbol |
| ------------ | ------ |
| ``tokens``   | a caption as word ids (B, L): <bos>, the words, then <pad>; a row of -1 is "no caption" |
| ``h``, ``mask`` | the text encoder's token features (B, L, D) and which of them are real words (B, L) |
| ``logit_scale`` | CLIP's learned temperature, logits = exp(logit_scale) <f(x), g(c)> |

The data is ``data.captioned_shapes``: every colour, shape, size and place in an image is known, so an attribute
classifier trained on real images measures prompt following exactly. The chapter "Text to image".
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from genbook import data, metrics, runtime
from genbook.diffusion.samplers import ddim_sample
from genbook.nets.dit import _modulate
from genbook.nets.embeddings import SinusoidalEmbedding
from genbook.nets.transformer import TransformerBlock, attend, cached_attention, empty_kv_cache
from genbook.train import History, fit
from genbook.vqvae import VectorQuantizer

# ----------------------------------------------------------------------------- tokens


class UnknownWordError(ValueError):
    """A caption used a word the vocabulary does not have."""


class Vocabulary:
    """Word-level tokens: <pad> = 0, <bos> = 1, then the caption grammar's words in sorted order."""

    PAD, BOS = 0, 1

    def __init__(self, words: list[str] | None = None):
        self.words = ["<pad>", "<bos>", *sorted(set(words if words is not None else data.caption_words()))]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, captions: list[str] | str, length: int = 18) -> torch.Tensor:
        """Captions to (B, length) token ids: <bos>, one id per word (lower case, split on spaces), <pad> after."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        out = torch.full((len(captions), length), self.PAD, dtype=torch.long)
        for i, caption in enumerate(captions):
            words = caption.lower().split()
            unknown = [w for w in words if w not in self.index or w.startswith("<")]
            if unknown:
                raise UnknownWordError(
                    f"caption {caption!r} uses {', '.join(map(repr, unknown))}, which the model has never seen; "
                    f"use only these words: {' '.join(self.words[2:])}"
                )
            if len(words) + 1 > length:
                raise ValueError(f"caption {caption!r} has {len(words)} words; at most {length - 1} fit")
            out[i, 0] = self.BOS
            out[i, 1 : len(words) + 1] = torch.tensor([self.index[w] for w in words], dtype=torch.long)
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [" ".join(self.words[t] for t in row.tolist() if t > self.BOS) for row in tokens]


def no_caption(tokens: torch.Tensor) -> torch.Tensor:
    """Rows of -1 ("no caption", as ``diffusion.classifier_free`` writes them) become the empty caption, <bos> alone."""
    empty = torch.zeros_like(tokens)
    empty[:, 0] = Vocabulary.BOS
    return torch.where(tokens[:, :1] < 0, empty, tokens)


# ----------------------------------------------------------------------------- text encoder and CLIP


class TextEncoder(nn.Module):
    """Token ids (B, L) -> features (B, L, dim) and the mask of real tokens (B, L): a bidirectional transformer whose
    attention never looks at padding, so the features of the words do not depend on how much padding follows."""

    def __init__(self, vocab_size: int, dim: int = 64, depth: int = 2, heads: int = 4, length: int = 24):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = no_caption(tokens)
        mask = tokens != Vocabulary.PAD  # (B, L)
        h = self.tok(tokens) + self.pos[:, : tokens.shape[1]]
        keep = mask[:, None, None, :]  # (B, 1, 1, L): every query may attend to the real tokens only
        for block in self.blocks:
            h = block(h, mask=keep)
        return self.ln(h), mask

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The mean of the real tokens' features, (B, dim)."""
        h, mask = self(tokens)
        w = mask.float()[..., None]
        return (h * w).sum(1) / w.sum(1)


class NoisyLatentEncoder(nn.Module):
    """Noisy latents and their step, (z_t (B, c, S, S), t (B,)) -> (B, dim): two 3x3 convolutions and a linear layer,
    the first convolution's features shifted by an embedding of t, so that one image tower reads clean latents
    (t = 0) and noisy ones. GLIDE's CLIP guidance needs such a noise-aware CLIP, since the gradient is taken at every
    step of sampling."""

    def __init__(self, channels: int = 4, size: int = 4, dim: int = 64, width: int = 64):
        super().__init__()
        self.first = nn.Conv2d(channels, width, 3, padding=1)
        self.time = SinusoidalEmbedding(width, scale=1.0)  # t is an integer step 0..T-1, as in the DiT
        self.rest = nn.Sequential(
            nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(width * size * size, dim)
        )

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if t is None:
            t = torch.zeros(len(z), dtype=torch.long, device=z.device)
        return self.rest(self.first(z) + self.time(t)[:, :, None, None])


class CLIP(nn.Module):
    """f(x) and g(c), unit vectors in a shared space, and the temperature (Radford et al. 2021; survey 6.2).
    ``image`` is the image tower, mapping its inputs to ``dim`` numbers (the chapter's: ``NoisyLatentEncoder``)."""

    def __init__(self, vocab_size: int, image: nn.Module, dim: int = 64):
        super().__init__()
        self.image = image
        self.text = TextEncoder(vocab_size, dim)
        self.text_proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Unit image embeddings; ``t`` (B,) the diffusion step of noisy inputs, for a noise-aware image tower."""
        return F.normalize(self.image(x) if t is None else self.image(x, t), dim=-1)

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text.pooled(tokens)), dim=-1)

    def similarity(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (images, captions)."""
        return self.embed_images(x) @ self.embed_text(tokens).T


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE of CLIP: logits = exp(t) f g^T over a batch of B matching pairs, cross-entropy with
    the diagonal as the target, once over captions for each image and once over images for each caption."""
    logits = logit_scale.clamp(max=math.log(100)).exp() * image_emb @ text_emb.T  # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def noised_clip_loss(model: CLIP, sched, z: torch.Tensor, tokens: torch.Tensor, p_clean: float = 0.5) -> torch.Tensor:
    """CLIP's loss on latents noised to a random step t of ``sched`` (GLIDE's noised CLIP), clean (t = 0) with
    probability ``p_clean`` so the same model still reads clean latents."""
    t = torch.randint(0, sched.T, (len(z),), device=z.device)
    t = torch.where(torch.rand(len(z), device=z.device) < p_clean, torch.zeros_like(t), t)
    z_t = sched.q_sample(z, t, torch.randn_like(z))
    return clip_loss(model.embed_images(z_t, t), model.embed_text(tokens), model.logit_scale)


def clip_guided(eps_fn, clip: CLIP, sched, scale: float):
    """eps_hat(z_t, t, c) = eps(z_t, t, c) - s sqrt(1 - alpha_bar_t) grad_z <f(z_t, t), g(c)>: survey eq. 93 (GLIDE's
    CLIP guidance) written for eps-prediction, as ``diffusion.classifier_guided`` writes eq. 91. ``clip`` must be
    noise-aware (trained with :func:`noised_clip_loss`); ``y`` is the caption's tokens."""

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, t, y)
        if scale == 0:
            return eps
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            similarity = (clip.embed_images(xg, t) * clip.embed_text(y)).sum()
            (grad,) = torch.autograd.grad(similarity, xg)
        ab = sched.alpha_bar.to(x.device, x.dtype)[t].view(-1, *[1] * (x.dim() - 1))
        return eps - scale * (1 - ab).sqrt() * grad

    return guided


# ----------------------------------------------------------------------------- cross-attention denoiser


class CrossAttention(nn.Module):
    """Image tokens (B, N, D) attend to text features (B, L, Dt), never to padding: softmax(Q K^T / sqrt(d)) V with
    Q from the image and K, V from the text (survey eq. 95). With ``keep = True`` the weights (B, heads, N, L) of
    the last call are kept in ``weights``, to show which words each region reads."""

    def __init__(self, dim: int, text_dim: int, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(text_dim, 2 * dim), nn.Linear(dim, dim)
        self.keep, self.weights = False, None

    def forward(self, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q(x).reshape(b, n, self.heads, hd).transpose(1, 2)  # (B, nh, N, hd)
        k, v = self.kv(h).reshape(b, h.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # each (B, nh, L, hd)
        allowed = mask[:, None, None, :]  # (B, 1, 1, L)
        if self.keep:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            self.weights = logits.masked_fill(~allowed, float("-inf")).softmax(-1).detach()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, nh, N, hd)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class TextDiTBlock(nn.Module):
    """A DiT block (adaLN-Zero on t) with cross-attention to the caption between self-attention and the MLP."""

    def __init__(self, dim: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(dim)
        self.ln3 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.cross = CrossAttention(dim, text_dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.proj(attend(self.qkv(_modulate(self.ln1(x), shift_a, scale_a)), self.heads))
        x = x + self.cross(self.ln2(x), h, mask)
        return x + gate_m[:, None] * self.mlp(_modulate(self.ln3(x), shift_m, scale_m))


class TextDiT(nn.Module):
    """eps_theta(z_t, t, caption) on latents (B, C, S, S): a DiT over 1x1 patches whose blocks read the caption's
    token features through cross-attention, as Stable Diffusion's UNet does. ``text`` is the text encoder: frozen
    (``freeze_text``, Stable Diffusion's choice: CLIP's, trained before) or trained with the denoiser (Imagen's ablation).
    ``y`` is the caption's tokens (B, L); a row of -1 (``diffusion.classifier_free``'s "no label") is the empty
    caption, which the model learns from caption dropout. ``t`` is an integer step (``time_scale`` 1, as chapter 6)."""

    def __init__(
        self,
        text: TextEncoder,
        channels: int = 4,
        size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        freeze_text: bool = True,
        time_scale: float = 1.0,
    ):
        super().__init__()
        self.text, self.freeze_text = text, freeze_text
        if freeze_text:
            text.requires_grad_(False)
        text_dim = text.ln.normalized_shape[0]
        self.embed = nn.Linear(channels, dim)
        self.pos = nn.Parameter(torch.randn(1, size * size, dim) * 0.02)
        self.time = SinusoidalEmbedding(dim, scale=time_scale)
        self.blocks = nn.ModuleList(TextDiTBlock(dim, text_dim, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(dim, elementwise_affine=False)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, channels)
        for layer in (self.ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def cross_attention(self, keep: bool) -> None:
        """Keep (or stop keeping) every block's cross-attention weights of the next call."""
        for block in self.blocks:
            block.cross.keep, block.cross.weights = keep, None

    def encode_text(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The caption's features and mask, (B, L, Dt) and (B, L): what every block's cross-attention reads."""
        if self.freeze_text:
            self.text.eval()
            with torch.no_grad():
                return self.text(y)
        return self.text(y)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, t, *self.encode_text(y))

    def denoise(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """eps_theta(z_t, t, caption) from the caption's features (``encode_text``), so a sampler can encode once."""
        b, ch, s, _ = x.shape
        z = self.embed(x.flatten(2).transpose(1, 2)) + self.pos  # (B, S*S, D)
        c = self.time(t)
        for block in self.blocks:
            z = block(z, c, h, mask)
        shift, scale = self.ada(c).chunk(2, dim=1)
        z = self.out(_modulate(self.ln(z), shift, scale))  # (B, S*S, C)
        return z.transpose(1, 2).reshape(b, ch, s, s)


class CachedText:
    """An eps function for the samplers that encodes each batch of captions once: a call with the same tokens as
    the call before reuses their features, so the text encoder runs once per sampling run instead of once per step
    (``diffusion.classifier_free`` passes the captions and the empty ones as one batch, encoded together). It holds
    one entry: a sampler that alternated between two caption batches would encode at every call. Same outputs as
    ``model`` itself, in eval mode."""

    def __init__(self, model: TextDiT):
        self.model, self.y, self.context = model, None, None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.y is None or self.y.shape != y.shape or not torch.equal(self.y, y):
            self.y, self.context = y.clone(), self.model.encode_text(y)
        return self.model.denoise(x, t, *self.context)


class CaptionFeatures:
    """A frozen text encoder's features of a fixed table of captions, computed once, for training a ``TextDiT`` on
    them: with the encoder frozen, a caption's features never change, so encoding each batch's captions at every
    step would compute the same features again (about a tenth of chapter 8's denoiser step). Train on caption indices:
    ``Batches(latents, torch.arange(len(features)))`` and ``eps_loss(features.eps(model), ...)``. Row ``i`` is caption
    ``i``; index -1, what ``diffusion.eps_loss``'s caption dropout writes, is the empty caption, kept as the last row.
    The eps function gives ``model(x, t, tokens[i])`` for index ``i`` (the same features, computed in bigger batches,
    so equal up to float rounding)."""

    def __init__(self, model: TextDiT, tokens: torch.Tensor, batch: int = 1024):
        if not model.freeze_text:
            raise ValueError(
                "CaptionFeatures needs a frozen text encoder (TextDiT(..., freeze_text=True)): a text encoder trained "
                "with the denoiser changes its features at every step, so pass the tokens to the model instead"
            )
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"tokens must be token ids (captions, length), got {tuple(tokens.shape)} {tokens.dtype}")
        rows = torch.cat([tokens, torch.full_like(tokens[:1], -1)])  # the empty caption last, at index -1
        rows = rows.to(model.pos.device)  # the table lives where the model does
        parts = [model.encode_text(chunk) for chunk in rows.split(batch)]
        self.h, self.mask = torch.cat([h for h, _ in parts]), torch.cat([m for _, m in parts])
        self.model = model

    def __len__(self) -> int:
        return len(self.h) - 1  # the captions, without the empty one

    def eps(self, model: TextDiT):
        """eps_theta(x_t, t, i) of ``model`` (the ``TextDiT`` being trained, whose frozen encoder made the table). It
        calls ``model.denoise``, so under ``GENBOOK_COMPILE=1`` this loop runs uncompiled (``fit`` compiles ``forward``)."""
        if model.text is not self.model.text:
            raise ValueError("these features come from another text encoder: build CaptionFeatures from this model")
        return lambda x, t, i: model.denoise(x, t, self.h[i], self.mask[i])


# ----------------------------------------------------------------------------- latent autoencoder


class SpatialAutoencoder(nn.Module):
    """Images (B, 3, 16, 16) <-> latents (B, c, 4, 4): Stable Diffusion's kind of autoencoder at toy scale, whose
    latent keeps a spatial layout (a region per latent pixel) for cross-attention to address. ``width`` channels at
    8 x 8 and 4 x 4, half of them at full resolution."""

    def __init__(self, channels: int = 4, width: int = 64):
        super().__init__()
        outer = width // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(3, outer, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(outer, width, 4, stride=2, padding=1),  # 16 -> 8
            nn.SiLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1),  # 8 -> 4
            nn.SiLU(),
            nn.Conv2d(width, channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),  # 4 -> 8
            nn.SiLU(),
            nn.ConvTranspose2d(width, outer, 4, stride=2, padding=1),  # 8 -> 16
            nn.SiLU(),
            nn.Conv2d(outer, 3, 3, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# ----------------------------------------------------------------------------- the ruler: an attribute classifier


HEADS = {"layout": len(data.LAYOUTS), "colour": len(data.COLOURS), "shape": len(data.SHAPES), "size": len(data.SIZES)}


class AttributeClassifier(nn.Module):
    """Reads every factor back from an image: the layout, and colour, shape and size of each of the two slots.
    ``features`` (B, 64) are the penultimate activations, the feature space of this data's FD."""

    def __init__(self, size: int = 16, width: int = 32):
        super().__init__()
        self.body = metrics.classifier_body(3, size, width, 64, act=nn.SiLU)
        self.layout = nn.Linear(64, HEADS["layout"])
        self.slots = nn.Linear(64, 2 * (HEADS["colour"] + HEADS["shape"] + HEADS["size"]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits: "layout" (B, 6), and "colour", "shape", "size" (B, 2 slots, classes)."""
        phi = self.features(x)
        colour, shape, size = self.slots(phi).view(len(x), 2, -1).split([HEADS["colour"], HEADS["shape"], HEADS["size"]], -1)
        return {"layout": self.layout(phi), "colour": colour, "shape": shape, "size": size}


CLASSIFIER_RECIPE = {"seed": 0, "images": 20000, "steps": 3000, "batch": 128, "lr": 2e-3, "width": 32}
_CLASSIFIER: AttributeClassifier | None = None


def train_attribute_classifier(recipe: dict | None = None) -> AttributeClassifier:
    """Train the ruler on real images of every (colour, shape) pair, the held-out ones included, deterministically
    (fixed seed, CPU); the caller's random stream is left as it was."""
    r = {**CLASSIFIER_RECIPE, **(recipe or {})}
    shapes = data.captioned_shapes(r["images"], "all", seed=r["seed"])
    factors = _factors(shapes)
    g = torch.Generator().manual_seed(r["seed"])
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), runtime.uncut():  # the ruler: never cut by smoke mode
        torch.manual_seed(r["seed"])
        model = AttributeClassifier(width=r["width"])
        opt = torch.optim.Adam(model.parameters(), lr=r["lr"])
        model.train()
        for _ in range(r["steps"]):
            idx = torch.randint(0, len(shapes), (r["batch"],), generator=g)
            loss = attribute_loss(model, shapes.images[idx], {k: v[idx] for k, v in factors.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval().requires_grad_(False)


def train_captioner(
    labelled: data.CaptionedShapes,
    steps: int = 1500,
    batch: int = 64,
    lr: float = 2e-3,
    width: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[AttributeClassifier, History]:
    """DALL-E 3's captioner at toy scale: an attribute classifier trained on a small set of correctly labelled images
    (``labelled``: their factors are the labels), whose readings :func:`recaption` turns into captions. It has the
    ruler's architecture but none of its training data or weights. Returns the model and ``fit``'s history."""
    if len(labelled) < batch:
        raise ValueError(f"the labelled set has {len(labelled)} images, fewer than one batch of {batch}")
    f = _factors(labelled)
    dev = torch.device(device)
    batches = data.Batches(
        labelled.images.to(dev), *(f[k].to(dev) for k in ("layout", "colour", "shape", "size")), batch_size=batch, seed=seed
    )
    loss = lambda m, b: attribute_loss(m, b[0], dict(zip(("layout", "colour", "shape", "size"), b[1:])))  # noqa: E731
    torch.manual_seed(seed)
    model = AttributeClassifier(width=width).to(dev)
    hist = fit(model, loss, batches, steps=steps, lr=lr, desc="captioner")
    return model.eval().requires_grad_(False), hist


def recaption(captioner: AttributeClassifier, images: torch.Tensor, seed: int = 0) -> list[str]:
    """Captions written from what ``captioner`` reads in ``images``: every factor named, in the grammar's words."""
    f = read_attributes(captioner, images)
    return data.caption_scenes(f["layout"], f["colour"], f["shape"], f["size"], seed=seed)


def attribute_classifier(verbose: bool = False) -> AttributeClassifier:
    """The ruler of the text-to-image chapter: the weights shipped with the package for ``CLASSIFIER_RECIPE`` (the
    same ruler on every machine, as for the digits harness), else cached in ``GENBOOK_CACHE``, else trained."""
    global _CLASSIFIER
    if _CLASSIFIER is None:
        key = hashlib.sha256(repr(sorted(CLASSIFIER_RECIPE.items())).encode()).hexdigest()[:12]
        _CLASSIFIER = metrics.load_or_train(
            f"shapes_classifier_{key}.pt",
            lambda: AttributeClassifier(width=CLASSIFIER_RECIPE["width"]),
            train_attribute_classifier,
            "attribute classifier",
            verbose,
        )
    return _CLASSIFIER


def _factors(shapes: data.CaptionedShapes) -> dict[str, torch.Tensor]:
    return {"layout": shapes.layout, "colour": shapes.colour, "shape": shapes.shape, "size": shapes.size}


def attribute_loss(model: AttributeClassifier, x: torch.Tensor, factors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the layout and of each present slot's colour, shape and size (slot 1 of a one-shape image is
    absent, -1, and ignored)."""
    out = model(x)
    loss = F.cross_entropy(out["layout"], factors["layout"])
    for name in ("colour", "shape", "size"):
        loss = loss + F.cross_entropy(out[name].flatten(0, 1), factors[name].flatten(), ignore_index=-1)
    return loss


@torch.no_grad()
def read_attributes(model: AttributeClassifier, images: torch.Tensor, batch: int = 1024) -> dict[str, torch.Tensor]:
    """The classifier's reading of each image: "layout" (N,), "colour", "shape", "size" (N, 2), on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    outs = [model(images[i : i + batch].to(device)) for i in range(0, len(images), batch)]
    return {k: torch.cat([o[k] for o in outs]).argmax(-1).cpu() for k in outs[0]}


def attribute_accuracy(model: AttributeClassifier, shapes: data.CaptionedShapes) -> dict[str, float]:
    """Per-factor accuracy on real images with known factors (present slots only)."""
    pred, true = read_attributes(model, shapes.images), _factors(shapes)
    acc = {"layout": (pred["layout"] == true["layout"]).float().mean().item()}
    for name in ("colour", "shape", "size"):
        present = true[name] >= 0
        acc[name] = (pred[name] == true[name])[present].float().mean().item()
    return acc


def prompt_following(model: AttributeClassifier, images: torch.Tensor, asked: data.CaptionedShapes) -> dict[str, float]:
    """How often generated ``images`` show what their captions (``asked``, one per image) asked for, as the attribute
    classifier reads them.

    - "place": the layout (where a single shape is, or whether two are side by side or stacked);
    - "colour", "shape", "size": per shape named, in its slot;
    - "order": of the two-shape captions whose two (colour, shape) pairs were both drawn, in either order, the share
      drawn in the order asked (the spatial relation alone; chance 0.5 when the two pairs differ);
    - "all": every factor right at once.
    """
    pred, true = read_attributes(model, images), _factors(asked)
    present = true["colour"] >= 0
    right = {name: (pred[name] == true[name]) | ~present for name in ("colour", "shape", "size")}
    place = pred["layout"] == true["layout"]
    out = {"place": place.float().mean().item()}
    for name in ("colour", "shape", "size"):
        out[name] = (pred[name] == true[name])[present].float().mean().item()
    out["all"] = (place & right["colour"].all(1) & right["shape"].all(1) & right["size"].all(1)).float().mean().item()
    identity = true["colour"] * len(data.SHAPES) + true["shape"]  # (N, 2) which pair each slot asked for
    drawn = pred["colour"] * len(data.SHAPES) + pred["shape"]
    pairs = (true["layout"] >= 4) & (identity[:, 0] != identity[:, 1]) & (pred["layout"] == true["layout"])
    straight = (drawn == identity).all(1)
    swapped = (drawn == identity.flip(1)).all(1)
    either = pairs & (straight | swapped)
    every = place & right["colour"].all(1) & right["shape"].all(1) & right["size"].all(1)
    two = true["layout"] >= 4
    out["all, one shape"], out["all, two shapes"] = every[~two].float().mean().item(), every[two].float().mean().item()
    out["order"] = (straight & either).float().sum().item() / int(either.sum()) if either.any() else float("nan")
    out["order_n"] = int(either.sum())
    return out


@torch.no_grad()
def zero_shot(similarity, x: torch.Tensor, shapes: data.CaptionedShapes, vocab: Vocabulary, factor: str) -> float:
    """CLIP as a classifier it was never trained to be: for each image, the caption it matches best among the plain
    captions of its own scene with ``factor`` set to every value it can take. ``factor``: "colour", "shape", "size" or
    "place" (one-shape images), or "order" (two-shape images with two different shapes: the true caption against
    the one with the shapes swapped). ``similarity(x, tokens)`` gives (images, captions) scores; ``x`` holds the
    images' inputs to it. Ties count as a share of a hit, so a matcher that cannot tell captions apart scores chance."""
    two = factor == "order"
    if two:  # two identical shapes: the swapped caption is the same caption
        differ = (
            (shapes.colour[:, 0] != shapes.colour[:, 1])
            | (shapes.shape[:, 0] != shapes.shape[:, 1])
            | (shapes.size[:, 0] != shapes.size[:, 1])
        )
        keep = torch.nonzero(shapes.pairs & differ).flatten()
    else:
        keep = torch.nonzero(~shapes.pairs).flatten()
    options = 2 if two else {"place": 4, **HEADS}[factor]
    captions = []
    for i in keep.tolist():
        layout, colour, shape, size = int(shapes.layout[i]), shapes.colour[i].tolist(), shapes.shape[i].tolist(), shapes.size[i].tolist()
        for v in range(options):
            if two:
                c, s_, z = (colour, shape, size) if v == 0 else (colour[::-1], shape[::-1], size[::-1])
                captions.append(data.describe(layout, c, s_, z))
            elif factor == "place":
                captions.append(data.describe(v, colour, shape, size))
            else:
                f = {"colour": colour, "shape": shape, "size": size}
                f[factor] = [v, -1]
                captions.append(data.describe(layout, f["colour"], f["shape"], f["size"]))
    sims = similarity(x[keep], vocab.encode(captions).to(x.device))  # (n, n * options)
    n = len(keep)
    own = sims.view(n, n, options)[torch.arange(n), torch.arange(n)]  # (n, options): each image against its captions
    if two:
        truth = torch.zeros(n, dtype=torch.long)  # the true caption is option 0
    else:
        truth = {"place": shapes.layout, "colour": shapes.colour[:, 0], "shape": shapes.shape[:, 0], "size": shapes.size[:, 0]}[factor][
            keep
        ]
    own = own.cpu()
    tied = own == own.max(1, keepdim=True).values  # a tie with the truth earns 1 / (options tied), not a win
    return (tied[torch.arange(n), truth].float() / tied.sum(1)).mean().item()


_SET_FEATURES: dict[tuple, tuple] = {}  # (id(model), id(images)) -> (model, images, their versions, features)
_SHAPES_YARDSTICK: dict[tuple, tuple] = {}


def _stamp(model: nn.Module, images: torch.Tensor) -> tuple | None:
    """What the features of ``images`` under ``model`` depend on: their storage, device, dtype and in-place versions
    (an optimizer step or an in-place edit bumps a tensor's version; ``.to()`` and ``.data =`` change its storage).
    None for a tensor made under ``torch.inference_mode``, which has no version: such sets are not cached. An edit
    through ``.data`` or a NumPy view bumps no version, so the cache cannot see it."""
    try:
        return tuple((t._version, t.data_ptr(), t.shape, t.device, t.dtype) for t in (images, *model.parameters()))
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


def _set_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model.features(images)`` on the CPU, computed once per (model, image set) while neither changes: a chapter
    scores many sample sets against the same reference and training images. The cache keeps the 4 sets computed
    most recently."""
    key, stamp = (id(model), id(images)), _stamp(model, images)
    hit = _SET_FEATURES.get(key)
    if stamp is not None and hit is not None and hit[0] is model and hit[1] is images and hit[2] == stamp:
        return hit[3]
    device = next(model.parameters()).device
    with torch.no_grad():
        feats = model.features(images.to(device)).cpu()
    if stamp is None:
        return feats
    _SET_FEATURES.pop(key, None)
    _SET_FEATURES[key] = (model, images, stamp, feats)
    while len(_SET_FEATURES) > 4:
        _SET_FEATURES.pop(next(iter(_SET_FEATURES)))
        _SHAPES_YARDSTICK.clear()  # its keys name feature sets by id: drop it with them
    return feats


def score_shapes(
    model: AttributeClassifier,
    images: torch.Tensor,
    reference: torch.Tensor,
    train: torch.Tensor,
    seed: int = 0,
    redraws: int = 10,
) -> metrics.Score:
    """FD, precision, recall and the copying statistic C_T of n images in the attribute classifier's feature space,
    against ``reference`` images no model trained on, beside the yardstick: n ``train`` images scored the same way
    (mean and spread of FD over 1 + ``redraws`` draws), as ``metrics.score_digits`` does for digits. The features of
    ``reference`` and ``train``, and the yardstick, are computed once while the same tensors are scored against again
    (the same numbers as computing them every time)."""
    n = len(images)
    if not 20 <= n <= len(train):
        raise ValueError(f"score_shapes needs between 20 and {len(train)} images (the training images bound the yardstick's n), got {n}")
    model.eval()
    f_ref, f_train = _set_features(model, reference), _set_features(model, train)
    with torch.no_grad():
        f_gen = model.features(images.to(next(model.parameters()).device)).cpu()
    key = (id(model), id(reference), id(train), n, seed, redraws)
    hit = _SHAPES_YARDSTICK.get(key)
    if hit is None or hit[0] is not f_ref or hit[1] is not f_train:  # new features: a new yardstick
        g = torch.Generator().manual_seed(seed)
        draws = [torch.randperm(len(train), generator=g)[:n] for _ in range(1 + redraws)]
        hit = (f_ref, f_train, *metrics.yardstick_scores(f_train, f_ref, draws, seed))
        _SHAPES_YARDSTICK[key] = hit
    _, _, fd_real, fd_real_spread, p_real, r_real, c_real = hit
    p, r = metrics.precision_recall(f_ref, f_gen)
    return metrics.Score(
        n=n,
        reference="held-out images",
        fd=metrics.frechet_distance(f_gen, f_ref),
        precision=p,
        recall=r,
        copying=metrics.copying_statistic(f_train, f_ref, f_gen, seed=seed),
        fd_real=fd_real,
        fd_real_spread=fd_real_spread,
        precision_real=p_real,
        recall_real=r_real,
        copying_real=c_real,
        real_name="training images",
    )


# ----------------------------------------------------------------------------- two stages: image tokens and a transformer


class VQAutoencoder(SpatialAutoencoder):
    """The spatial autoencoder with a vector quantizer between encoder and decoder: images (B, 3, 16, 16) <-> a 4 x 4
    grid of codes from a codebook of ``num_codes`` vectors of ``channels`` numbers (van den Oord et al. 2017, the
    tokenizer of DALL-E and Parti at toy scale). ``encode`` gives the encoder's output before quantization; ``decode``
    quantizes first, so continuous latents (a diffusion model's samples) decode as Rombach et al.'s "VQ-reg"
    autoencoder decodes them, and one decoder serves a token model and a latent diffusion model alike."""

    def __init__(self, channels: int = 4, width: int = 64, num_codes: int = 256, beta: float = 0.25):
        super().__init__(channels, width)
        self.quantizer = VectorQuantizer(num_codes, channels, beta=beta)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 16, 16) -> code grids (B, 4, 4) long."""
        return self.quantizer.nearest(self.encode(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.quantizer.lookup(codes)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_codes(self.quantizer.nearest(z))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Squared error per image plus the commitment term; the codebook follows the encoder by moving averages."""
        out = self.quantizer(self.encode(x))
        return (torch.sigmoid(self.decoder(out.z_q)) - x).pow(2).flatten(1).sum(1).mean() + out.loss


class TokenDecoderBlock(nn.Module):
    """Causal self-attention over the image tokens so far, cross-attention to the caption, an MLP (Parti's decoder
    block; pre-norm). ``step`` runs one position with a KV cache."""

    def __init__(self, dim: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.cross = CrossAttention(dim, text_dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(attend(self.qkv(self.ln1(x)), self.heads, causal=True))
        x = x + self.cross(self.ln2(x), h, mask)
        return x + self.mlp(self.ln3(x))

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, t: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + cached_attention(self.qkv, self.proj, self.heads, self.ln1(x), keys, values, t)
        x = x + self.cross(self.ln2(x), h, mask)
        return x + self.mlp(self.ln3(x))


class CaptionToTokens(nn.Module):
    """p(c_1 .. c_T | caption) = prod_i p(c_i | c_<i, caption) over a raster-ordered code grid (survey eq. 27 with a
    caption): the caption's words through a text encoder, and a causal transformer over the image tokens that reads
    them by cross-attention, as Parti does (DALL-E 1 puts the words and the image tokens in one sequence instead).
    Input [start, c_1 .. c_{T-1}], so output i predicts c_i. A row of -1 tokens is "no caption" (the empty caption),
    which caption dropout teaches, for classifier-free guidance on the logits. Shapes: codes (B, g, g), tokens (B, L)
    -> logits (B, g*g, num_codes)."""

    def __init__(self, text: TextEncoder, num_codes: int, grid: int = 4, dim: int = 64, depth: int = 3, heads: int = 4):
        super().__init__()
        self.text, self.num_codes, self.grid = text, num_codes, grid
        text_dim = text.ln.normalized_shape[0]
        self.tok = nn.Embedding(num_codes + 1, dim)  # the codes, then the start token
        self.pos = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.blocks = nn.ModuleList(TokenDecoderBlock(dim, text_dim, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_codes)

    def forward(self, codes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        seq = codes.flatten(1)  # (B, T)
        inp = torch.cat([torch.full_like(seq[:, :1], self.num_codes), seq[:, :-1]], 1)
        h, mask = self.text(tokens)
        x = self.tok(inp) + self.pos
        for block in self.blocks:
            x = block(x, h, mask)
        return self.head(self.ln(x))

    @torch.no_grad()
    def sample(
        self, tokens: torch.Tensor, w: float = 0.0, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """One code grid per caption, one position at a time with a KV cache: tokens (B, L) -> codes (B, g, g).
        With ``w`` > 0 the logits are guided as eq. 92 guides eps: (1 + w) l(c | caption) - w l(c | no caption).
        Each draw is the Gumbel-max of logits / temperature, the uniforms from ``generator`` on the CPU."""
        b, n = len(tokens), self.grid * self.grid
        guided = w != 0
        if guided:
            tokens = torch.cat([tokens, torch.full_like(tokens, -1)])
        h, mask = self.text(tokens)
        rows = len(tokens)
        keys, values = empty_kv_cache(len(self.blocks), rows, self.blocks[0].heads, n, self.pos.shape[-1], like=h)
        out = torch.empty(b, n, dtype=torch.long, device=h.device)
        token = torch.full((rows,), self.num_codes, dtype=torch.long, device=h.device)
        for t in range(n):
            x = self.tok(token)[:, None] + self.pos[:, t : t + 1]
            for i, block in enumerate(self.blocks):
                x = block.step(x, keys[i], values[i], t, h, mask)
            logits = self.head(self.ln(x))[:, 0]  # (rows, K)
            if guided:
                cond, uncond = logits.chunk(2)
                logits = (1 + w) * cond - w * uncond
            u = torch.rand(logits.shape, generator=generator).to(logits.device)
            out[:, t] = (logits / temperature - torch.log(-torch.log(u))).argmax(1)
            token = torch.cat([out[:, t], out[:, t]]) if guided else out[:, t]
        return out.view(b, self.grid, self.grid)


def token_loss(model: CaptionToTokens, codes: torch.Tensor, tokens: torch.Tensor, p_uncond: float = 0.0) -> torch.Tensor:
    """The next-code cross-entropy per position, -1/T log p(c | caption); a caption is dropped (-1) with probability
    ``p_uncond``, so the same model also learns p(c | no caption)."""
    if p_uncond > 0:
        drop = torch.rand(len(tokens), device=tokens.device) < p_uncond
        tokens = torch.where(drop[:, None], torch.full_like(tokens, -1), tokens)
    logits = model(codes, tokens)
    return F.cross_entropy(logits.transpose(1, 2), codes.flatten(1))


# ----------------------------------------------------------------------------- unCLIP: a prior and a decoder


class EmbeddingContext(nn.Module):
    """A unit embedding (B, E) as the context a cross-attention denoiser reads: ``tokens`` learned projections of it,
    (B, tokens, dim), all real (DALL-E 2's decoder adds four such tokens to GLIDE's caption). A row of -1 (eq. 92's
    "no condition", which ``diffusion.eps_loss`` writes for dropped labels) becomes a learned null context."""

    def __init__(self, emb_dim: int = 64, dim: int = 64, tokens: int = 4):
        super().__init__()
        self.n = tokens
        self.proj = nn.Linear(emb_dim, tokens * dim)
        self.null = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.ln = nn.LayerNorm(dim)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(emb)
        none = (emb == -1).all(1)[:, None, None]
        h = torch.where(none, self.null.expand(b, -1, -1), self.proj(emb).view(b, self.n, -1))
        return self.ln(h), torch.ones(b, self.n, dtype=torch.bool, device=emb.device)


class EmbeddingPrior(nn.Module):
    """DALL-E 2's diffusion prior at toy scale: from the caption's CLIP text embedding g (B, E), a unit image
    embedding f(x) (B, E). An MLP x0_theta(z_t, t, g) predicts the clean embedding from its noised version, trained
    on ||x0_theta - x0||^2 as Ramesh et al. train theirs; embeddings are scaled by sqrt(E) to unit variance per
    number, and samples are put back on the unit sphere. ``forward`` gives eps through eq. 84, so the samplers of
    ``diffusion`` run it unchanged."""

    def __init__(self, sched, emb_dim: int = 64, width: int = 256, depth: int = 3):
        super().__init__()
        self.sched, self.emb_dim, self.scale = sched, emb_dim, math.sqrt(emb_dim)
        self.time = SinusoidalEmbedding(width, scale=1.0)
        self.inp = nn.Linear(2 * emb_dim, width)
        layers = []
        for _ in range(depth):
            layers += [nn.SiLU(), nn.Linear(width, width)]
        self.body = nn.Sequential(*layers, nn.SiLU(), nn.Linear(width, emb_dim))

    def predict_x0(self, z: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.body(self.inp(torch.cat([z, g * self.scale], 1)) + self.time(t))

    def forward(self, z: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        ab = self.sched.alpha_bar.to(z.device, z.dtype)[t][:, None]
        return (z - ab.sqrt() * self.predict_x0(z, t, g)) / (1 - ab).sqrt()  # eps from x0 (eq. 84)

    def loss(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """||x0_theta(z_t, t, g) - x0||^2 per number, x0 = sqrt(E) f, at a random step t."""
        x0 = f * self.scale
        t = torch.randint(0, self.sched.T, (len(f),), device=f.device)
        z = self.sched.q_sample(x0, t, torch.randn_like(x0))
        return F.mse_loss(self.predict_x0(z, t, g), x0)

    @torch.no_grad()
    def sample(self, g: torch.Tensor, steps: int = 25, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unit image embeddings (B, E) for text embeddings g (B, E), by DDIM over ``steps`` steps."""
        z = ddim_sample(self, self.sched, (len(g), self.emb_dim), steps=steps, y=g, generator=generator, device=g.device)
        return F.normalize(z, dim=-1)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors, (sin((1 - t) theta) a + sin(t theta) b) / sin(theta) with
    cos(theta) = <a, b>: every point is a unit vector, and the angle moves evenly with t (DALL-E 2 interpolates
    CLIP image embeddings so). a, b (..., E), t a number or broadcastable to (..., 1). Where sin(theta) is almost
    zero the formula divides by it, and the straight line (1 - t) a + t b is returned instead: a itself where a = b;
    for opposite vectors, where no single great circle joins them, a point that is not a unit vector."""
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    dot = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    close = sin < 1e-6
    safe = torch.where(close, torch.ones_like(sin), sin)
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / safe
    return torch.where(close, (1 - t) * a + t * b, out)
