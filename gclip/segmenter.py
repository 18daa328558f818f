"""The facade: images and a vocabulary in, label maps and confidence out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch import nn

from gclip.backbone import VisionBackbone
from gclip.config import InferenceConfig, MethodConfig, build
from gclip.inference import (
    LabelAccumulator,
    label_dtype,
    refine,
    resize_image,
    resized_size,
    stitch,
    window_features,
)
from gclip.loading import LoadedModel, eval_transform, load_model
from gclip.methods import (
    ChannelSuppression,
    channel_suppression,
    dense_features,
    find_global_blocks,
)
from gclip.text import Template, TextEncoder
from gclip.vocabulary import Vocabulary

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class Segmentation:
    """Result for one image, in its original frame.

    Attributes:
        labels_hw: ``H0 x W0`` uint8, the vocabulary class index, or 255 for unlabelled
            (uint16 and 65535 for vocabularies of more than 255 classes).
        confidence_hw: ``H0 x W0`` float32 in [0, 1], the probability of the chosen class.
    """

    labels_hw: np.ndarray
    confidence_hw: np.ndarray


class Segmenter:
    """Open-vocabulary semantic segmentation with GCLIP or a peer on an open_clip ViT.

    The wrapped model is never modified: Channel Suppression keeps its own weight copies and
    every forward runs under ``torch.no_grad``. Build with :func:`load_segmenter` or
    :meth:`from_open_clip`.

    Attributes:
        inference: the settings :meth:`segment` uses when given none (a checkpoint's
            recommended scale, for example).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        config: MethodConfig,
        templates: Sequence[Template] | None = None,
        inference: InferenceConfig | None = None,
    ) -> None:
        self._model = model.eval()
        self._backbone = VisionBackbone(model.visual)
        self._config = config.resolve(self._backbone.depth)
        self.inference = inference or InferenceConfig()
        self._suppression: ChannelSuppression | None = None
        self.text = (
            TextEncoder(model, tokenizer, templates) if templates else TextEncoder(model, tokenizer)
        )
        mean = getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._eval_transform = eval_transform(model)
        if self._config.global_blocks != "auto":
            self._suppression = channel_suppression(self._backbone, self._config)

    @classmethod
    def from_open_clip(
        cls,
        model: nn.Module,
        tokenizer: Any,
        method: str = "gclip",
        templates: Sequence[Template] | None = None,
        **options: Any,
    ) -> Segmenter:
        """Wrap an already-built open_clip CLIP (any weights, also random).

        Args:
            model: an open_clip ``CLIP`` with a ViT vision tower.
            tokenizer: its tokenizer (``open_clip.get_tokenizer(name)``).
            method: one of :data:`gclip.METHODS`.
            templates: prompt templates; default the 80 OpenAI ImageNet templates.
            **options: :class:`gclip.MethodConfig` fields (``global_blocks``, ``head_average``,
                ``cs_start_block``, ``cs_enabled``, ``naclip_sigma``, ...).
        """
        return cls(model, tokenizer, build(MethodConfig, {"name": method, **options}), templates)

    @property
    def method(self) -> MethodConfig:
        """The resolved method config (``global_blocks`` fixed once calibrated)."""
        return self._config

    @property
    def patch_size(self) -> int:
        return self._backbone.patch_size

    @property
    def depth(self) -> int:
        """Blocks in the vision tower."""
        return self._backbone.depth

    @property
    def device(self) -> torch.device:
        return self._backbone.device

    @property
    def embedding_dim(self) -> int:
        """E: the width of :meth:`image_embeddings` (and of the text embeddings)."""
        return self._backbone.output_dim

    def calibrate(self, images: torch.Tensor) -> tuple[int, ...]:
        """Fix ``global_blocks="auto"`` from ``images`` (``B x 3 x H x W``, normalised)."""
        if self._config.global_blocks == "auto":
            with torch.no_grad():
                blocks = find_global_blocks(
                    self._backbone,
                    images.to(self.device),
                    self._config.auto_ratio,
                    self._config.auto_fraction,
                )
            self._config = self._config.with_global_blocks(blocks)
            self._suppression = channel_suppression(self._backbone, self._config)
            log.info("global_blocks='auto' resolved to %s for %s", blocks, self._config.name)
        assert isinstance(self._config.global_blocks, tuple)
        return self._config.global_blocks

    @torch.no_grad()
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch embeddings.

        Args:
            images: ``B x 3 x H x W`` float, normalised with the model's mean/std; H and W
                multiples of the patch size. ``global_blocks="auto"`` is calibrated on the
                first call's images.

        Returns:
            ``B x H/p x W/p x E`` float32, L2-normalised along E.
        """
        images = images.to(self.device)
        if self._config.global_blocks == "auto":
            self.calibrate(images)
        return dense_features(self._backbone, self._config, images, self._suppression)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Any]) -> np.ndarray:
        """The model's standard CLIP image embedding of each image, in one batch.

        Exactly open_clip's ``model.encode_image(preprocess(image))``, L2-normalised, where
        ``preprocess`` is the model's own evaluation transform (:func:`gclip.loading.
        eval_transform`: short side to the model's image size, centre crop, its mean and std):
        the unmodified network, at full precision, whatever the method does for the labels.

        Args:
            images: ``H x W x 3`` uint8 RGB arrays (or PIL RGB images), of any sizes.

        Returns:
            ``B x E`` float32, each row of unit L2 norm.
        """
        if not images:
            return np.zeros((0, self.embedding_dim), np.float32)
        crops = [self._eval_transform(_pil(image)) for image in images]  # each 3 x S x S
        batch = torch.stack(crops).to(self.device, self._backbone.dtype)  # B x 3 x S x S
        encode_image: Any = self._model.encode_image  # open_clip's public CLIP API
        embedding_be = encode_image(batch, normalize=True)  # B x E
        return embedding_be.float().cpu().numpy()

    def preprocess(
        self, image: Any, short_side: int | None, max_long_side: int | None = None
    ) -> torch.Tensor:
        """An image (see :func:`to_chw`) -> ``3 x h x w`` normalised float32 in the resized
        frame (see :func:`gclip.inference.resized_size`), on the model's device."""
        chw = to_chw(image)
        if self.device.type == "cuda" and not chw.is_cuda:
            # Pinned pages copy to the GPU asynchronously: the host does not wait for them.
            chw = chw.pin_memory().to(self.device, non_blocking=True)
        chw = chw.to(self.device)  # 3 x H0 x W0
        size_hw = resized_size(int(chw.shape[1]), int(chw.shape[2]), short_side, max_long_side)
        chw = resize_image(chw, size_hw)  # 3 x h x w
        return (chw - self._mean.to(chw.device)) / self._std.to(chw.device)  # 3 x h x w

    def segment(
        self,
        images: Sequence[Any],
        vocabulary: Vocabulary,
        config: InferenceConfig | None = None,
    ) -> list[Segmentation]:
        """Label every pixel of every image with a vocabulary class.

        Windows of all ``images`` are batched together (``config.batch_size`` per forward);
        the result for a batch equals the results image by image.

        Args:
            images: RGB images of any sizes (see :meth:`preprocess`).
            vocabulary: the classes; their text embeddings are computed once and cached.
            config: inference settings; default :attr:`inference`.

        Returns:
            One :class:`Segmentation` per image, in the original frame.
        """
        config = config or self.inference
        if not images:
            return []
        accumulators = self._accumulate([to_chw(im) for im in images], vocabulary, config)
        file_dtype, _ = vocabulary.label_format
        results = []
        while accumulators:  # popped, so an int32 label map is freed once cast to uint16
            labels, confidence = accumulators.pop(0).result()
            labels_hw = labels.cpu().numpy().astype(file_dtype, copy=False)
            results.append(Segmentation(labels_hw, confidence.cpu().numpy()))
        return results

    def _accumulate(
        self, chws: list[torch.Tensor], vocabulary: Vocabulary, config: InferenceConfig
    ) -> list[LabelAccumulator]:
        """Every image's labels and confidence, folded in a chunk of names at a time (the
        resized images and their window features are freed on return)."""
        originals = [(int(chw.shape[1]), int(chw.shape[2])) for chw in chws]
        resized = [self.preprocess(chw, config.short_side, config.max_long_side) for chw in chws]
        text = self.text.embed(vocabulary).to(self.device)  # N x E
        name_to_class = torch.tensor(vocabulary.name_to_class, dtype=torch.long)
        accumulators = [
            LabelAccumulator(
                size_hw,
                config.logit_scale,
                vocabulary.thresholds,
                vocabulary.below_threshold_label,
                label_dtype(len(vocabulary.classes)),
                self.device,
                names=text.shape[0],
            )
            for size_hw in originals
        ]
        # The vision forward runs once; names go through in chunks, so canvases, PAMR and
        # upsampling hold name_chunk names at a time however large the vocabulary.
        windowed = window_features(resized, self._features_fn(config), self.patch_size, config)
        for start in range(0, text.shape[0], config.name_chunk):
            chunk = slice(start, start + config.name_chunk)
            canvases = stitch(windowed, text[chunk])  # per image C x h x w
            for image, canvas, accumulator in zip(resized, canvases, accumulators, strict=True):
                accumulator.update(refine(canvas, image, config), name_to_class[chunk])
        return accumulators

    def _features_fn(self, config: InferenceConfig) -> Callable[[torch.Tensor], torch.Tensor]:
        precision = config.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        dtype = _AUTOCAST_DTYPES.get(precision)

        def features(crops: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                return self.dense_features(crops)

        return features


def load_segmenter(
    model: str | LoadedModel,
    pretrained: str | None = None,
    method: str | MethodConfig = "gclip",
    *,
    device: str | torch.device = "cpu",
    inference: Mapping[str, Any] | None = None,
    templates: Sequence[Template] | None = None,
    **options: Any,
) -> Segmenter:
    """Load a model and wrap it, under the settings its checkpoint ships.

    A checkpoint may ship GCLIP options (the demo model's global blocks), inference settings
    (the scale it was trained at) and prompt templates; each applies unless given here, a
    shipped method option only to a method that reads it
    (:meth:`gclip.ShippedSettings.method_options_for`).

    Args:
        model: an open_clip name, ``demo``, ``local-dir:PATH``, ``hf-hub:ORG/REPO`` (see
            :func:`gclip.load_model`), or an already loaded model.
        pretrained: tag, checkpoint path or ``none``; unused for an already loaded model.
        method: a method name, layered with the shipped options and ``options``; or a
            complete :class:`MethodConfig`, used as it is.
        device: where the model lives.
        inference: :class:`InferenceConfig` fields over the shipped ones; they become the
            segmenter's :attr:`Segmenter.inference`.
        templates: prompt templates; default the shipped ones, else the 80 OpenAI ones.
        **options: :class:`MethodConfig` fields over the shipped ones.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, pretrained, device)
    shipped = loaded.shipped
    if isinstance(method, MethodConfig):
        if options:
            raise ValueError("Pass method options inside the MethodConfig, not beside it.")
        config = method
    else:
        layered = {**shipped.method_options_for(method), **options}
        config = build(MethodConfig, {"name": method, **layered})
    return Segmenter(
        loaded.model,
        loaded.tokenizer,
        config,
        templates or shipped.templates,
        build(InferenceConfig, {**shipped.inference, **(inference or {})}),
    )


def _pil(image: Any) -> Image.Image:
    """A PIL RGB image of an ``H x W x 3`` uint8 array (or of a PIL image)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"Expected an H x W x 3 uint8 RGB image, got {array.dtype} of shape {array.shape}."
        )
    return Image.fromarray(array)


def to_chw(image: Any) -> torch.Tensor:
    """``3 x H x W`` tensor from an ``H x W x 3`` uint8 array, a PIL RGB image, or a
    ``3 x H x W`` tensor (uint8, or float in [0, 1]).

    A C-contiguous array is shared, not copied, read-only ones included (an image from Ray's
    object store): writing to the tensor is then undefined, and nothing here writes to it.
    """
    if isinstance(image, torch.Tensor):
        chw = image
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(
                f"Expected an H x W x 3 RGB image, got an array of shape {array.shape}."
            )
        with warnings.catch_warnings():
            # torch warns that writing to a read-only array is undefined; the segmenter only
            # reads its input, and a copy would cost 3 bytes a pixel (243 MB for 81 Mpx).
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            chw = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # 3 x H x W
    if chw.ndim != 3 or chw.shape[0] != 3:
        raise ValueError(f"Expected a 3 x H x W image tensor, got shape {tuple(chw.shape)}.")
    return chw
