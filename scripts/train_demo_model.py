"""Train the small demo CLIP on the demo world, deterministically, on a CPU.

Recipe: an ordinary open_clip ``CLIP`` (6-block ViT, width 128, patch 8, 64 px crops; text
tower width 64) trained from scratch with one dense term: the GCLIP dense features
(``gclip.methods.dense_features`` with global blocks (2, 3) chosen for this depth, Channel
Suppression recomputed from the live weights each step) against the text embeddings of the 13
class prompts, as a per-pixel cross-entropy (object classes weighted 2x) on the bilinearly
upsampled logits, which is exactly how inference reads them. Image-level captions alone do not
localise at this size (an earlier experiment: image-level zero-shot 100 %, dense foreground
pixel accuracy 0.37 to 0.51). Shapes are learnt late: the loss drops
sharply after about 3,000 steps; 9,000 steps take about 35 minutes on 2 cores.

The dense term alone leaves the image-level embedding (open_clip's ``encode_image``, what
``--embeddings`` and ``jobs.search`` read) at chance. A second stage fine-tunes the first
stage's model with both terms: the dense one as before, and a global one, a per-class sigmoid
loss of the image embedding's cosine to each class prompt (a learnt scale and bias) against
which object classes the scene holds, on scenes of two crops a side resized to one crop as
the evaluation transform resizes an image. 1,500 steps (about 13 minutes) lift text-to-image
precision at 10 from 0.26 to 0.98 on generated scenes, dense mIoU unchanged.

    python scripts/train_demo_model.py --out /tmp/stage1               # dense term only
    python scripts/train_demo_model.py --init /tmp/stage1 --global-weight 1 --steps 1500 \
        --lr 3e-4 --seed 1                                             # the shipped model
    python scripts/train_demo_model.py --steps 3 --out /tmp/demo       # smoke test

Writes open_clip's local-dir layout (``open_clip_config.json`` + fp16
``open_clip_model.safetensors``) and ``gclip.json`` (method options, inference scale and prompt
templates).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gclip.backbone import VisionBackbone
from gclip.demo_world import CLASS_NAMES, generate_scene
from gclip.methods import MethodConfig, channel_suppression, dense_features

TEMPLATES = ("a photo of a {}.", "a {}.")
LOGIT_SCALE = 40.0
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def model_config(
    layers: int = 4, width: int = 128, patch_size: int = 8, image_size: int = 64
) -> dict:
    """An ordinary open_clip CLIP config; the text tower is narrow to keep the file small."""
    return {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": image_size,
            "layers": layers,
            "width": width,
            "head_width": 32,
            "patch_size": patch_size,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 64,
            "heads": 4,
            "layers": 2,
        },
    }


def method_options(layers: int) -> dict:
    """GCLIP blocks picked for this depth: the two middle blocks (both before the last one),
    Channel Suppression from the second on."""
    middle = layers // 2
    blocks = sorted({max(0, middle - 1), min(middle, layers - 2)})
    return {"global_blocks": blocks, "cs_start_block": blocks[-1]}


def batch(rng: np.random.Generator, size: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``B x 3 x S x S`` normalised images and ``B x S x S`` int64 labels."""
    scenes = [generate_scene(rng, (side, side)) for _ in range(size)]
    images = torch.from_numpy(np.stack([s.image_hwc_uint8 for s in scenes])).permute(0, 3, 1, 2)
    images = (images.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None
    ]
    labels = torch.from_numpy(np.stack([s.labels_hw for s in scenes])).long()
    return images, labels


def global_batch(
    rng: np.random.Generator, size: int, side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``B x 3 x S x S`` normalised images, scenes of ``2S`` a side resized to ``S`` (bicubic,
    antialiased, as the evaluation transform resizes), and ``B x (K-1)`` float targets: which
    object classes each scene holds."""
    scenes = [generate_scene(rng, (2 * side, 2 * side)) for _ in range(size)]
    images = torch.from_numpy(np.stack([s.image_hwc_uint8 for s in scenes])).permute(0, 3, 1, 2)
    images = F.interpolate(images.float() / 255, size=(side, side), mode="bicubic", antialias=True)
    images = (images - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    present = torch.zeros(size, len(CLASS_NAMES))
    for row, scene in enumerate(scenes):
        present[row, torch.from_numpy(np.unique(scene.labels_hw).astype(np.int64))] = 1
    return images, present[:, 1:]


def class_embeddings(model: open_clip.CLIP, tokenizer) -> torch.Tensor:
    """``K x E`` prompt-ensembled class embeddings (differentiable: the text tower trains too)."""
    prompts = [t.format(name) for name in CLASS_NAMES for t in TEMPLATES]
    emb = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)  # K*T x E
    return F.normalize(emb.view(len(CLASS_NAMES), len(TEMPLATES), -1).mean(1), dim=-1)  # K x E


def train(
    cfg: dict,
    steps: int,
    batch_size: int,
    seed: int,
    log_every: int,
    object_weight: float = 2.0,
    lr: float = 1e-3,
    init: Path | None = None,
    global_weight: float = 0.0,
) -> open_clip.CLIP:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if init is None:
        model = open_clip.CLIP(**cfg)
    else:  # an earlier stage's model (saved in fp16), trained on in fp32
        model = open_clip.create_model(f"local-dir:{init}", weights_only=True).float()
        model.train()
    tokenizer = open_clip.get_tokenizer(
        "ViT-B-16", context_length=cfg["text_cfg"]["context_length"]
    )
    backbone = VisionBackbone(model.visual)
    options = method_options(cfg["vision_cfg"]["layers"])
    config = MethodConfig(
        name="gclip",
        global_blocks=tuple(options["global_blocks"]),
        cs_start_block=options["cs_start_block"],
    ).resolve(backbone.depth)
    # the global term's sigmoid: a learnt scale (log) and bias, not part of the saved model
    global_scale = torch.nn.Parameter(torch.tensor(float(np.log(10.0))))
    global_bias = torch.nn.Parameter(torch.tensor(-5.0))
    extra = [global_scale, global_bias] if global_weight else []
    optimizer = torch.optim.AdamW([*model.parameters(), *extra], lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.1
    )
    # Background covers most pixels and is easy; weighting the 12 object classes up makes the
    # loss about telling shapes apart.
    class_weights = torch.tensor([1.0] + [object_weight] * (len(CLASS_NAMES) - 1))
    start = time.time()
    for step in range(1, steps + 1):
        images, labels = batch(rng, batch_size, cfg["vision_cfg"]["image_size"])
        feats = dense_features(
            backbone, config, images, channel_suppression(backbone, config)
        )  # B x g x g x E
        text = class_embeddings(model, tokenizer)  # K x E
        logits = LOGIT_SCALE * torch.einsum("bhwe,ke->bkhw", feats, text)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, weight=class_weights)
        global_loss = torch.zeros(())
        if global_weight:
            g_images, g_present = global_batch(rng, batch_size, cfg["vision_cfg"]["image_size"])
            g_emb = F.normalize(model.encode_image(g_images), dim=-1)  # B x E
            g_logits = global_scale.exp() * g_emb @ text[1:].T + global_bias  # B x (K-1)
            global_loss = F.binary_cross_entropy_with_logits(g_logits, g_present)
            loss = loss + global_weight * global_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            acc = (logits.argmax(1) == labels).float().mean().item()
            print(
                f"step {step:5d}  loss {loss.item():.4f}  global {global_loss.item():.4f}  "
                f"pixel acc {acc:.3f}  {time.time() - start:6.0f} s",
                flush=True,
            )
    return model.eval()


def save(model: open_clip.CLIP, cfg: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": {
            "mean": list(MEAN),
            "std": list(STD),
            "size": cfg["vision_cfg"]["image_size"],
        },
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    side = cfg["vision_cfg"]["image_size"]
    extras = {
        "method_options": method_options(cfg["vision_cfg"]["layers"]),
        # The scale it was trained at: shapes keep their training radii in scenes of 128 px
        # (two crops) a side, read in windows of one training crop; PAMR's dilations are in
        # pixels (8 and 16 suit 448-pixel inputs, 2 and 4 these).
        "inference": {
            "short_side": 2 * side,
            "crop": side,
            "stride": side // 2,
            "pamr_dilations": [2, 4],
        },
        "templates": list(TEMPLATES),
        "classes": list(CLASS_NAMES),
    }
    (out / "gclip.json").write_text(json.dumps(extras, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the demo CLIP on the demo world.")
    parser.add_argument("--steps", type=int, default=9000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="fixed for bit-reproducible runs")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--object-weight", type=float, default=2.0, help="loss weight of object classes"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64, help="training crop side, in pixels")
    parser.add_argument("--out", type=Path, default=Path("gclip/assets/demo"))
    parser.add_argument(
        "--init", type=Path, help="start from this saved model (the second stage: --global-weight)"
    )
    parser.add_argument(
        "--global-weight", type=float, default=0.0, help="weight of the image-level term"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = model_config(args.layers, args.width, args.patch_size, args.image_size)
    if args.init is not None:  # the earlier stage's architecture, whatever the flags say
        cfg = json.loads((args.init / "open_clip_config.json").read_text())["model_cfg"]
    model = train(
        cfg,
        args.steps,
        args.batch_size,
        args.seed,
        args.log_every,
        args.object_weight,
        args.lr,
        args.init,
        args.global_weight,
    )
    save(model, cfg, args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
