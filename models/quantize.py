"""Statically quantised INT8 copies of exported image models, for CPU nodes.

ONNX Runtime's own tools do the quantisation (``onnxruntime.quantization``:
``quant_pre_process``, then ``quantize_static`` in QDQ format, uint8
activations, int8 weights per output channel, min-max ranges); what this module
adds is what a served model needs from them:

* learned upsampling (``ConvTranspose`` with kernel = stride) rewritten as an
  equal ``Conv`` + ``DepthToSpace``, so that it runs in INT8 too;
* calibration on real imagery: centre crops of a directory's images, read the
  way the server feeds them (raw band values as float32, the band means as the
  model's second input where it has one);
* a hold-out kept apart from calibration (whole sub-folders where the directory
  has several, as ``Tile 7/``, else every k-th image), on which the copy is
  scored against the float32 model: pixel IoU of the thresholded prediction and
  the mean absolute difference of every output, attention maps included;
* nodes kept in float32 on request (``keep_float``: substrings of node names
  or operator types, e.g. ``/gates.`` for the footprints attention gates), for
  partial quantisation;
* the manifest: ``precision: int8`` and a ``quantization`` record (method,
  images, nodes kept in float32, the losses), embedded with the same name and
  version, and ``attnserve.precision`` in the metadata, which the server reports.

Inputs and outputs stay float32, so requests, the batcher and the job store are
unchanged. Needs the ``onnx`` package (not the server).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import rasterio
from google.protobuf.message import DecodeError
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from rasterio.errors import NotGeoreferencedWarning

from service.runtime.manifest import MANIFEST_KEY, PRECISION_KEY, Manifest, load_manifest
from service.runtime.segmentation import band_means

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
METHOD = (
    "onnxruntime.quantization static QDQ: uint8 activations, int8 weights per channel, "
    "min-max calibration; ConvTranspose (kernel = stride) as Conv + DepthToSpace"
)
# Prediction probabilities above this count as the positive class for the IoU.
THRESHOLD = 0.5


def find_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (TIFF, JPEG, PNG), sorted by path."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory of images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def split_images(
    images: Sequence[Path], root: Path, holdout_fraction: float = 0.25
) -> tuple[list[Path], list[Path]]:
    """``(calibration, hold-out)``: whole sub-folders held out where there are several.

    Images of one folder (one tile's parts) are alike, so a hold-out taken from
    the same folders would flatter the copy. With two or more folders the last
    ``holdout_fraction`` of them (at least one) are held out; with one, every
    k-th image (k = 1 / ``holdout_fraction``).
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout fraction must lie between 0 and 1, not {holdout_fraction}")
    if len(images) < 2:
        raise ValueError(
            f"{root} holds {len(images)} image(s); calibration needs at least 2 "
            "(some to calibrate on, some to hold out)"
        )
    groups = sorted({p.parent.relative_to(root) for p in images})
    if len(groups) >= 2:
        held = set(groups[-max(1, round(holdout_fraction * len(groups))) :])
        if len(held) == len(groups):
            held = set(groups[-1:])
        return (
            [p for p in images if p.parent.relative_to(root) not in held],
            [p for p in images if p.parent.relative_to(root) in held],
        )
    step = max(2, round(1 / holdout_fraction))
    return (
        [p for i, p in enumerate(images) if i % step != step - 1],
        [p for i, p in enumerate(images) if i % step == step - 1],
    )


def read_crop(path: Path, bands: int, size: int, multiple: int) -> np.ndarray:
    """``(bands, h, w)`` float32: the centre crop of an image, at most ``size`` a side.

    Each side is the smaller of ``size`` and the image's, rounded down to
    ``multiple``; the first ``bands`` bands are read (an RGBA PNG gives RGB).

    Raises:
        ValueError: the image has too few bands, is smaller than ``multiple``, or
            cannot be read.
    """
    try:
        with warnings.catch_warnings():
            # Plain JPEG and PNG images carry no georeference; calibration needs none.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.count < bands:
                    raise ValueError(
                        f"{path} has {src.count} band(s); the model takes {bands} "
                        "(calibrate on a folder of images only, without masks)"
                    )
                h, w = (min(size, n) // multiple * multiple for n in (src.height, src.width))
                if h == 0 or w == 0:
                    raise ValueError(
                        f"{path.name} ({src.width} x {src.height}) is smaller than {multiple} px"
                    )
                window = rasterio.windows.Window((src.width - w) // 2, (src.height - h) // 2, w, h)
                return src.read(list(range(1, bands + 1)), window=window).astype(np.float32)
    except rasterio.RasterioIOError as exc:
        raise ValueError(f"{path.name} cannot be read as an image: {exc}") from None


def model_feed(manifest: Manifest, crop: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs the server gives a segmentation model for one ``(C, H, W)`` image."""
    norm = manifest.input.normalization
    image = crop
    if norm.applied == "caller":
        mean = np.asarray(norm.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(norm.std, dtype=np.float32)[:, None, None]
        image = (crop - mean) / std
    feed = {manifest.tensors[0].name: image[None].astype(np.float32)}
    if len(manifest.tensors) > 1:
        feed[manifest.tensors[1].name] = band_means(crop, None)[None]
    return feed


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    """Feeds the calibration crops one image at a time, reading each as it is asked for."""

    def __init__(self, manifest: Manifest, images: Sequence[Path], size: int) -> None:
        self._feeds = self._read(manifest, list(images), size)

    @staticmethod
    def _read(manifest: Manifest, images: list[Path], size: int) -> Iterator[dict[str, np.ndarray]]:
        bands, multiple = len(manifest.input.bands), manifest.input.size_multiple or 1
        for path in images:
            yield model_feed(manifest, read_crop(path, bands, size, multiple))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def compare(
    reference: Path, candidate: Path, manifest: Manifest, images: Sequence[Path], size: int
) -> dict[str, Any]:
    """How far ``candidate``'s outputs lie from ``reference``'s on ``images``.

    Returns:
        ``pixel_iou_vs_float32``: IoU of the two thresholded predictions over all
        pixels together (1.0 where neither predicts anything); ``mean_abs_diff``:
        per output name, the mean absolute difference, averaged over images;
        ``holdout_pixels``: pixels compared.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    ref = ort.InferenceSession(str(reference), options, providers=cpu)
    cand = ort.InferenceSession(str(candidate), options, providers=cpu)
    names = [o.name for o in ref.get_outputs()]
    prediction = manifest.prediction.name
    bands, multiple = len(manifest.input.bands), manifest.input.size_multiple or 1
    diffs: dict[str, list[float]] = {n: [] for n in names}
    inter = union = pixels = 0
    for path in images:
        feed = model_feed(manifest, read_crop(path, bands, size, multiple))
        a = dict(zip(names, ref.run(names, feed), strict=True))
        b = dict(zip(names, cand.run(names, feed), strict=True))
        for n in names:
            diffs[n].append(float(np.abs(a[n] - b[n]).mean()))
        pa, pb = a[prediction] > THRESHOLD, b[prediction] > THRESHOLD
        inter += int((pa & pb).sum())
        union += int((pa | pb).sum())
        pixels += int(pa.size)
    return {
        "pixel_iou_vs_float32": round(inter / union, 4) if union else 1.0,
        "mean_abs_diff": {n: round(float(np.mean(v)), 5) for n, v in diffs.items()},
        "holdout_pixels": pixels,
    }


def _source_manifest(src: Path) -> tuple[onnx.ModelProto, Manifest]:
    try:
        model = onnx.load(str(src))
    except DecodeError:
        raise ValueError(f"{src} is not an ONNX model") from None
    meta = {p.key: p.value for p in model.metadata_props}
    manifest, _ = load_manifest(src, meta.get(MANIFEST_KEY))
    precision = meta.get(PRECISION_KEY, manifest.precision)
    if precision != "float32":
        raise ValueError(f"{src.name} is {precision} already; quantise its float32 original")
    if manifest.task != "segmentation":
        raise ValueError(
            f"{src.name} is a {manifest.task} model; quantize calibrates image "
            "(segmentation) models on images"
        )
    return model, manifest


def upsampling_as_depth_to_space(graph: onnx.GraphProto) -> int:
    """Rewrite each ``ConvTranspose`` whose kernel equals its stride as Conv + DepthToSpace.

    Such a transposed convolution (a U-Net's learned 2x upsampling) gives every
    input pixel its own ``k x k`` output block, which is a 1 x 1 convolution to
    ``k*k*C_out`` channels rearranged by ``DepthToSpace`` (DCR order); the
    results are identical in float32. ONNX Runtime has no INT8 kernel for
    ``ConvTranspose`` on CPU, so left alone it runs in float32 between a
    dequantisation and a quantisation and layout transposes; a 1 x 1 ``Conv``
    becomes a ``QLinearConv``. Returns how many were rewritten.
    """
    weights = {i.name: i for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs.get("kernel_shape", []))
        if (
            node.op_type != "ConvTranspose"
            or node.input[1] not in weights
            or len(kernel) != 2
            or kernel[0] != kernel[1]
            or list(attrs.get("strides", [])) != kernel
            or any(attrs.get("pads", [0]))
            or any(attrs.get("output_padding", [0]))
            or "output_shape" in attrs
            or attrs.get("group", 1) != 1
            or any(d != 1 for d in attrs.get("dilations", [1]))
        ):
            nodes.append(node)
            continue
        k = kernel[0]
        w = onnx.numpy_helper.to_array(weights[node.input[1]])  # (C_in, C_out, k, k)
        c_in, c_out = w.shape[:2]
        # Output channel (dy * k + dx) * C_out + c holds block offset (dy, dx) of channel c.
        conv_w = w.transpose(2, 3, 1, 0).reshape(k * k * c_out, c_in, 1, 1)
        inputs = [node.input[0], f"{node.input[1]}_as_conv"]
        graph.initializer.append(onnx.numpy_helper.from_array(conv_w, inputs[1]))
        if len(node.input) > 2 and node.input[2]:
            bias = np.tile(onnx.numpy_helper.to_array(weights[node.input[2]]), k * k)
            inputs.append(f"{node.input[2]}_as_conv")
            graph.initializer.append(onnx.numpy_helper.from_array(bias, inputs[2]))
        blocks = f"{node.output[0]}_blocks"
        nodes.append(
            onnx.helper.make_node(
                "Conv", inputs, [blocks], name=f"{node.name}_as_conv", kernel_shape=[1, 1]
            )
        )
        nodes.append(
            onnx.helper.make_node(
                "DepthToSpace",
                [blocks],
                list(node.output),
                name=f"{node.name}_depth_to_space",
                blocksize=k,
                mode="DCR",
            )
        )
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return rewritten


def _prepare(path: Path, patterns: Sequence[str]) -> list[str]:
    """Rewrite upsampling and name unnamed nodes in ``path``; returns the nodes to keep float.

    A pattern matches a node whose name or operator type contains it; nodes are
    kept in float32 by name, and graphs from other exporters often leave names empty.
    """
    model = onnx.load(str(path))
    upsampling_as_depth_to_space(model.graph)
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
    onnx.save(model, str(path))
    return sorted(
        n.name for n in model.graph.node if any(p in n.name or p in n.op_type for p in patterns)
    )


def quantize_model(
    src: Path,
    out: Path,
    calibration: Path,
    *,
    holdout_fraction: float = 0.25,
    keep_float: Sequence[str] = (),
    calibration_size: int = 256,
    max_calibration_images: int = 48,
    holdout_size: int | None = None,
) -> Manifest:
    """Write an INT8 copy of ``src`` to ``out``, calibrated on the images under ``calibration``.

    Args:
        src: a float32 segmentation model with a manifest (embedded or sidecar).
        out: the ONNX file to write, its manifest embedded.
        calibration: a directory of images like those the model will serve.
        holdout_fraction: share of the images (or sub-folders) kept to score the copy.
        keep_float: nodes to keep in float32 (partial quantisation): substrings of
            their names or operator types.
        calibration_size: side of the centre crop of each calibration image.
        max_calibration_images: most calibration images, evenly spread over them.
        holdout_size: side of each hold-out crop (default: the model's tile size).

    Returns:
        The copy's manifest (``precision: int8`` and its ``quantization`` record).

    Raises:
        ValueError: ``src`` is no float32 segmentation model, or the images do not fit it.
    """
    _, manifest = _source_manifest(src)
    images = find_images(calibration)
    calibrate_on, held_out = split_images(images, calibration, holdout_fraction)
    if len(calibrate_on) > max_calibration_images:
        picks = np.linspace(0, len(calibrate_on) - 1, max_calibration_images).round()
        calibrate_on = [calibrate_on[int(i)] for i in picks]
    eval_size = holdout_size or manifest.input.tile_size or 512
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="attnserve-quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "int8.onnx"
        # Shape inference and graph optimisation first, as the tools advise; the
        # symbolic pass cannot follow the footprints graph's size arithmetic, and
        # ONNX's own inference suffices for QDQ.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        kept = _prepare(prepared, keep_float)
        if keep_float and not kept:
            raise ValueError(f"no node's name or operator contains any of {', '.join(keep_float)}")
        quantize_static(
            str(prepared),
            str(quantized),
            _Calibration(manifest, calibrate_on, calibration_size),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=kept,
        )
        loss = compare(src, quantized, manifest, held_out, eval_size)
        record = {
            "method": METHOD,
            "calibration_images": len(calibrate_on),
            "calibration_crop": calibration_size,
            "holdout_images": len(held_out),
            "holdout_crop": eval_size,
            "holdout": sorted({str(p.parent.relative_to(calibration)) for p in held_out}),
            "float32_nodes": kept,
            **loss,
        }
        result = replace(manifest, precision="int8", quantization=record)
        model = onnx.load(str(quantized))
    kept_meta = [p for p in model.metadata_props if p.key not in (MANIFEST_KEY, PRECISION_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept_meta)
    model.metadata_props.add(key=MANIFEST_KEY, value=result.to_json())
    model.metadata_props.add(key=PRECISION_KEY, value="int8")
    onnx.save(model, str(out))
    return result
