"""The predict command: a checkpoint on image files or folders -> palette index-mask PNGs and colour overlays
(and, with ``uncertainty``, per-pixel uncertainty heatmaps; see ``seglab.uncertainty``). Files in, files out:
each image goes through ``seglab.inference`` (the per-image path that evaluate, serve and the report share).

Any image kind ``read_image`` reads goes in (8/16-bit, float, N bands; PNG, TIFF, .npy). A GeoTIFF's mask is
written as ``<stem>_mask.tif`` with the image's GeoTIFF tags (geotransform and CRS), so it opens aligned in
QGIS; every other mask, and every picture (overlays, maps), is a PNG. Pictures of 16-bit, float or multi-band
images show them through the checkpoint's normalisation (``seglab.inference.shown``; ``display_bands``).

Every output has the input image's size. A checkpoint trained with ``data.resize`` sees the image resized as in
training; its logits are upsampled bilinearly to the image's size before the softmax and the argmax.

Memory: with ``tile`` nothing of full-image size is float except what is asked for; the labels (1 byte per
pixel), each requested probability map (1 byte) and the overlay (3 bytes) are filled tile by tile (with
``resize``, the logits at the model's resolution are kept and upsampled in blocks of rows).
"""

from __future__ import annotations

import re
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seglab.data.io import IMAGE_SUFFIXES, class_index, read_geotags, read_image, save_geotiff, save_png
from seglab.errors import ConfigError, DataError, SeglabError
from seglab.files import PNG_SOFTWARE, OutputKind, guard_file, is_seglab_png
from seglab.inference import (
    check_display_bands,
    instance_object_class,
    overlay,
    palette_of,
    predict_image,
    shown,
)

if TYPE_CHECKING:
    from seglab.uncertainty.config import UncertaintyConfig

# The files predict writes: <stem>_mask.png (a GeoTIFF's: _mask.tif), _overlay.png, _prob_<class>.png,
# _uncertainty.png / .npz, _instances.png, _instances_overlay.png
OUTPUT_NAME = re.compile(
    r".+_(mask|overlay|uncertainty|instances|instances_overlay|prob_[A-Za-z0-9_.-]+)\.(png|npz)|.+_mask\.tif"
)


class PredictError(DataError):
    """Some inputs could not be read; the others were predicted. ``results``: the records of the predicted
    images (as :func:`predict` returns them); ``failures``: (input path, reason) per skipped image."""

    def __init__(self, message: str, results: list[dict[str, Any]], failures: list[tuple[Path, str]]) -> None:
        super().__init__(message)
        self.results, self.failures = results, failures


def collect_inputs(inputs: Sequence[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Image files given directly or found (non-recursively) in given folders; DataError if none or missing.

    With ``out_dir``, files inside it named like predict's outputs (``*_mask.png``, ``*_overlay.png``,
    ``*_prob_*.png``, ``*_uncertainty.png``) are left out, so predicting into the input folder (or a folder that
    a shell glob passes back in) never predicts on earlier outputs."""
    out = Path(out_dir).resolve() if out_dir is not None else None

    def ours(p: Path) -> bool:
        return out is not None and p.parent.resolve() == out and OUTPUT_NAME.fullmatch(p.name) is not None

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            kept = [p for p in found if not ours(p)]
            if not kept and not (found and item.resolve() == out):
                raise DataError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += kept
        elif item.is_file():
            if not ours(item):
                files.append(item)
        else:
            raise DataError(f"input {item} does not exist")
    if not files:
        raise DataError("no input images given" + (f" (only earlier outputs in {out_dir})" if inputs else ""))
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise DataError(
                f"inputs {stems[f.stem]} and {f} share the name {f.stem!r}; outputs would collide"
            )
        stems[f.stem] = f
    return files


def predict(  # noqa: C901 - the command: each optional output (prob maps, uncertainty, instances) branches
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    write_overlay: bool = True,
    device: str = "cpu",
    progress: bool = True,
    uncertainty: UncertaintyConfig | str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    prob_maps: Sequence[str | int] = (),
    threshold: float | None = None,
    log: Callable[[str], None] | None = None,
    instances: str | None = None,
    instance_class: str | int | None = None,
    instance_params: Any = None,
    overwrite: bool = False,
    display_bands: Sequence[int] | None = None,
    backend: str | None = None,
    nproc: int | None = None,
    threads: int | None = None,
    skip_existing: bool = False,
    on_image: Callable[[Path], None] | None = None,
) -> list[dict[str, Any]]:
    """Write ``<stem>_mask.png`` (palette PNG of class indices; for a GeoTIFF input ``<stem>_mask.tif``, the
    indices with the image's GeoTIFF tags) and ``<stem>_overlay.png`` per input image, both of the image's size (a checkpoint trained with ``data.resize`` sees the image resized, and its logits are
    upsampled to the image's size before the softmax; probability and uncertainty maps too).

    ``prob_maps`` (class names or indices): also ``<stem>_prob_<class>.png``, the probability of that class as
    8-bit grayscale (255 = 1.0), e.g. the ISBI membrane map. ``threshold`` (with one ``prob_maps`` class): the
    mask labels that class wherever its probability is at least ``threshold``, the best other class elsewhere.

    With ``uncertainty`` (an UncertaintyConfig or a method name: deterministic, mc-dropout, tta, ensemble) the
    mask is the argmax of that predictor's mean probabilities, and ``<stem>_uncertainty.png`` (entropy or mutual
    information on the fixed scale 0 .. log C, viridis) and optionally ``<stem>_uncertainty.npz`` (every raw map)
    are written too.

    With ``instances`` (components, watershed or learned; see ``seglab.instances``) the probabilities also become
    an instance label map: ``<stem>_instances.png`` (16-bit, 0 = no object, 1..K) and
    ``<stem>_instances_overlay.png`` (a colour per object, outlined). ``instance_class``: the object class of a
    model of more than two classes; ``instance_params``: an ``InstanceParams``.

    Pictures (overlays) of a 16-bit, float or multi-band image show it through the checkpoint's normalisation;
    ``display_bands`` (0-based, one or three) picks the bands shown (``--display-bands 4,3,2``).

    ``backend`` (torch, onnxruntime or openvino; default: the file's own, see ``seglab.models.runtime``) runs
    the model in that runtime: an exported ``.onnx`` or OpenVINO ``.xml`` (with its sidecar), or a seglab
    checkpoint exported on the fly; every output comes from the same code path.

    ``nproc`` (N > 1): the images are shared out over N spawned processes (each loads the model; see
    ``seglab.engine.shard``), every check done first here; ``threads``: torch threads per process (default: torch's,
    divided by N). Under torchrun every rank takes its share (inputs r, r + W, ...) and rank 0 returns (or raises)
    the whole job's records; the other ranks return their own. ``skip_existing``: an input whose every output
    exists already as an earlier output of predict (outputs are written atomically, so a file there is whole) is
    not predicted again; its record says ``"skipped": True``. ``on_image(path)`` is called after each input
    predicted or found unreadable (progress for a caller).

    Returns one record (the input and its output paths) per image. An image that cannot be read is skipped:
    ``log`` (default: standard error) gets one line naming it, the other images are predicted, and at the end
    :class:`PredictError` (a DataError; ``.results`` and ``.failures``) says how many failed and why. Any other
    error (a bad checkpoint or flag, an output folder blocked by a file) stops at once, before the first image.
    Files in ``out_dir`` named like these outputs are never taken as inputs (``out_dir`` may be an input folder).
    Before the first image, ``out_dir`` and every output name are checked (``seglab.files.guard_dir``/``guard_file``):
    never a data set or a run folder itself; a file already at an output name must be an earlier PNG/NPZ output
    (``overwrite``: replace a file of another kind, never a checkpoint, state or data-set file).
    """
    call = dict(locals())  # every argument, for the processes that share the work (seglab.engine.shard)
    from seglab.checkpoint import checkpoint_paths, load_checkpoint, read_meta
    from seglab.engine import shard
    from seglab.engine.device import resolve_device
    from seglab.files import ensure_dir, guard_dir
    from seglab.models.runtime import runtime_device

    nproc = shard.check_nproc(nproc)
    guard_dir(out_dir, "output folder")
    dev = resolve_device(runtime_device(checkpoint_paths(checkpoint)[0], backend, device))
    if uncertainty is not None:
        from seglab.inference import build_predictor
        from seglab.inference.predictor import check_method
        from seglab.uncertainty.build import write_outputs
        from seglab.uncertainty.config import UncertaintyConfig

        if isinstance(uncertainty, str):
            uncertainty = UncertaintyConfig(method=uncertainty)
        check_method(
            checkpoint, uncertainty.method, backend
        )  # MC dropout needs torch: refused before any work
    meta = read_meta(checkpoint)  # the model is loaded after every check (and by each process of nproc)
    prob_idx = [class_index(meta.class_names, c) for c in prob_maps]
    if instances is not None:
        from seglab.instances.infer import instances_from_probs
        from seglab.instances.postprocess import instance_overlay

        obj = instance_object_class(meta, instances, instance_class)
    if threshold is not None and (len(prob_idx) != 1 or not 0.0 < threshold < 1.0):
        raise ConfigError(
            f"--threshold needs one --prob class and a value in (0, 1), got {threshold} with "
            f"{len(prob_idx)} classes"
        )
    check_display_bands(meta, display_bands)
    files = everything = collect_inputs(inputs, out_dir)
    files, dev = shard.rank_share(files, dev)  # under torchrun: this rank's share and device
    geotags = {path: read_geotags(path) for path in files}  # GeoTIFFs: the mask is a GeoTIFF of the same grid
    suffixes = [*(f"_prob_{_safe(meta.class_names[c])}.png" for c in prob_idx)]
    suffixes += ["_overlay.png"] * write_overlay + ["_instances.png", "_instances_overlay.png"] * (
        instances is not None
    )
    if uncertainty is not None:
        suffixes += ["_uncertainty.png"] + ["_uncertainty.npz"] * bool(uncertainty.save_maps)
    for path in files:
        for suffix in [_mask_suffix(geotags[path]), *suffixes]:
            guard_file(Path(out_dir) / f"{path.stem}{suffix}", PREDICTION, overwrite)
    done: list[dict[str, Any]] = []
    if skip_existing:
        files, done = _split_done(files, Path(out_dir), geotags, suffixes)
    if not files:  # all done before (skip_existing), or no share for this rank: no model to load
        return _finish(done, [], everything, Path(out_dir))
    if nproc > 1 and len(files) > 1:
        say = lambda line, bar: _log(log, line, bar)  # noqa: E731 - a worker's line, printed here
        results, failures = shard.predict_in_processes(
            _shard_worker, call, files, nproc, threads, say, progress, on_image
        )
        return _finish(done + results, failures, everything, Path(out_dir))
    if threads:
        import torch

        torch.set_num_threads(threads)
    predictor = None
    if uncertainty is not None:
        predictor, meta = build_predictor(checkpoint, uncertainty, str(dev), tile, overlap, backend)
    else:
        model, meta = load_checkpoint(checkpoint, device=str(dev), backend=backend)
    out = ensure_dir(
        out_dir
    )  # after every check of the arguments and the model's load, before the first image
    palette = palette_of(meta)
    results: list[dict[str, Any]] = list(done)
    failures: list[tuple[Path, str]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            files, desc="predict", leave=False, dynamic_ncols=True, disable=None
        )  # no bar in a log file
    for path in bar if bar is not None else files:
        try:
            image = read_image(path, meta.in_channels)
        except DataError as e:  # skip it, name it, carry on; summarised at the end
            failures.append((path, str(e)))
            _log(log, f"skipped {path.name}: {e}", bar)
            if on_image is not None:
                on_image(path)
            continue
        p = predict_image(
            model if predictor is None else predictor,
            meta,
            image,
            dev,
            tile=tile,
            overlap=overlap,
            prob_idx=prob_idx,
            threshold=threshold,
            need_probs=instances is not None,
        )
        labels, maps, probs, result = p.labels, p.maps, p.probs, p.result
        record: dict[str, Any] = {
            "input": str(path),
            "mask": str(out / f"{path.stem}{_mask_suffix(geotags[path])}"),
        }
        if geotags[path]:
            save_geotiff(Path(record["mask"]), labels, geotags[path])
        else:
            save_png(Path(record["mask"]), labels, palette)
        picture = shown(image, meta, display_bands) if write_overlay or instances is not None else image
        for c, prob in zip(prob_idx, maps):
            name = _safe(meta.class_names[c])
            record[f"prob_{name}"] = str(out / f"{path.stem}_prob_{name}.png")
            save_png(Path(record[f"prob_{name}"]), prob)
        if write_overlay:
            record["overlay"] = str(out / f"{path.stem}_overlay.png")
            save_png(Path(record["overlay"]), overlay(picture, labels, palette))
        if instances is not None:
            objects = instances_from_probs(
                probs, instances, target=meta.target, object_class=obj, params=instance_params
            )
            if objects.max(initial=0) > 65535:
                raise DataError(
                    f"{path} has {objects.max()} objects; a 16-bit instance map holds at most 65535"
                )
            record["instances"] = str(out / f"{path.stem}_instances.png")
            record["objects"] = int(objects.max(initial=0))
            save_png(Path(record["instances"]), objects.astype(np.uint16))
            record["instances_overlay"] = str(out / f"{path.stem}_instances_overlay.png")
            save_png(Path(record["instances_overlay"]), instance_overlay(picture, objects))
        if predictor is not None:
            record.update(write_outputs(out, path.stem, result, uncertainty, meta.num_classes))
        results.append(record)
        if on_image is not None:
            on_image(path)
    return _finish(results, failures, everything, out)


def _finish(
    results: list[dict[str, Any]], failures: list[tuple[Path, str]], inputs: Sequence[Path], out: Path
) -> list[dict[str, Any]]:
    """The records in input order, or PredictError (one summary of every failure) when some images failed;
    under torchrun rank 0 summarises every rank's (``seglab.engine.shard.gather``)."""
    from seglab.engine.shard import gather

    results, failures = gather(results, failures)
    order = {str(p): i for i, p in enumerate(inputs)}
    results.sort(key=lambda r: order.get(r["input"], len(order)))
    failures.sort(key=lambda f: order.get(str(f[0]), len(order)))
    if not failures:
        return results
    skipped = sum(bool(r.get("skipped")) for r in results)
    listed = "; ".join(f"{p.name} ({why})" for p, why in failures[:3])
    more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    done = f" ({skipped} skipped: done before)" if skipped else ""
    raise PredictError(
        f"predicted {len(results) - skipped} of {len(inputs)} images into {out}{done}; {len(failures)} failed: "
        f"{listed}{more}",
        results,
        failures,
    )


def _shard_worker(k: int, call: dict[str, Any], files: list[Path], threads: int, messages: Any) -> None:
    """Worker ``k`` of ``predict(nproc=N)`` (``seglab.engine.shard.predict_in_processes``), in a spawned
    process: the single-process predict of ``files`` with ``threads`` torch threads, every record, line and error
    sent to ``messages`` as (kind, k, ...)."""
    import torch

    from seglab.engine.shard import crash

    torch.set_num_threads(threads)
    try:
        records = predict(
            **{
                **call,
                "inputs": files,
                "nproc": 1,
                "threads": threads,
                "skip_existing": False,  # the caller took out what was done
                "progress": False,
                "log": lambda line: messages.put(("log", k, line)),
                "on_image": lambda path: messages.put(("image", k, str(path))),
            }
        )
        messages.put(("done", k, records, []))
    except PredictError as e:
        messages.put(("done", k, e.results, e.failures))
    except SeglabError as e:
        messages.put(("error", k, type(e), str(e)))
    except KeyboardInterrupt:  # Ctrl-C reaches every process; the caller reports it once
        pass
    except BaseException as e:  # noqa: BLE001 - told to the caller in one line, not a traceback per worker
        messages.put(("crash", k, *crash(e)))


def _split_done(
    files: Sequence[Path], out: Path, geotags: dict[Path, Any], suffixes: Sequence[str]
) -> tuple[list[Path], list[dict[str, Any]]]:
    """(inputs still to predict, records of those whose every output is already an earlier output of predict):
    what ``skip_existing`` leaves out. Outputs are written atomically, so a file there is a whole one."""
    todo, done = [], []
    for path in files:
        names = {_output_key(s): out / f"{path.stem}{s}" for s in [_mask_suffix(geotags[path]), *suffixes]}
        if all(_is_prediction(f) for f in names.values()):
            done.append({"input": str(path), **{k: str(f) for k, f in names.items()}, "skipped": True})
        else:
            todo.append(path)
    return todo, done


def _output_key(suffix: str) -> str:
    """The record key of an output suffix: ``_mask.tif`` -> mask, ``_prob_sky.png`` -> prob_sky,
    ``_uncertainty.npz`` -> maps (as the records of predicted images name them)."""
    return "maps" if suffix == "_uncertainty.npz" else suffix[1:].rsplit(".", 1)[0]


def _mask_suffix(geotags: Sequence[Any]) -> str:
    """A GeoTIFF's mask is a GeoTIFF (its tags place it on the image's grid); any other image's a palette PNG."""
    return "_mask.tif" if geotags else "_mask.png"


def _safe(name: str) -> str:
    """A class name as it appears in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _is_prediction(path: Path) -> bool:
    """An earlier output of predict: a PNG or a GeoTIFF mask seglab wrote, or an NPZ of uncertainty maps
    (``--save-maps``)."""
    if path.suffix == ".png":
        return is_seglab_png(path)
    if path.suffix == ".tif":
        return _is_seglab_tiff(path)
    try:
        with zipfile.ZipFile(path) as z:
            return {"entropy.npy", "probs.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _is_seglab_tiff(path: Path) -> bool:
    """A TIFF whose Software tag says seglab wrote it (``save_geotiff``)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get(305)  # Software
            return tag is not None and tag.value == PNG_SOFTWARE
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


PREDICTION = OutputKind("prediction", (".png", ".npz", ".tif"), _is_prediction)


def _log(log: Callable[[str], None] | None, line: str, bar: Any = None) -> None:
    """``line`` to ``log`` (default: standard error), clearing a progress bar around it."""
    write = log or (lambda text: print(text, file=sys.stderr))
    if bar is None:
        write(line)
        return
    with bar.external_write_mode(file=sys.stderr):
        write(line)
