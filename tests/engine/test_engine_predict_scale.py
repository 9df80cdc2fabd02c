"""Prediction at scale: `seglab predict --nproc N` (spawned workers) and under torchrun (one share per rank)
write byte for byte what one process writes, summarise every failure once, and `--skip-existing` resumes a run
by predicting exactly the inputs whose outputs are missing."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from seglab.config import Config
from seglab.engine import shard
from seglab.engine.predict import PredictError, predict
from seglab.errors import ConfigError, SeglabError

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
SIZES = [(32, 40), (64, 64), (48, 33), (40, 56), (33, 64), (56, 48), (64, 37), (32, 32)]


@pytest.fixture(scope="module")
def run(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (U-Net depth 2, 4 channels, one epoch on 32 px SyntheticShapes)."""
    from seglab.engine.train import train

    out = tmp_path_factory.mktemp("scale") / "run"
    cfg = Config().override(
        [
            f"data.root={shapes_dir}",
            f"train.out_dir={out}",
            "train.epochs=1",
            "train.batch_size=8",
            "train.progress=false",
            "model.params={depth: 2, base_channels: 4}",
        ]
    )
    train(cfg)
    return out


def images(folder: Path, bad: tuple[str, ...] = ()) -> Path:
    """Eight RGB images of 32-64 px (im0..im7) and, for each name in ``bad``, a file that is no image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    for name in bad:
        (folder / name).write_text("not an image")
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**out, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def seglab_cmd(cmd: list[object], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env()
    )


# ------------------------------------------------------------------ --nproc: spawned workers


def test_nproc_2_writes_what_one_process_writes_and_one_summary(run, tmp_path, monkeypatch):
    """Two workers (each a share of the sorted inputs) write the same bytes as one process, every file; the
    unreadable files of both shares end in one PredictError, the one a single process raises, with every record
    and failure in input order."""
    src = images(tmp_path / "in", bad=("a_bad.png", "b_bad.png"))  # sorted: inputs 0 and 1, one in each share
    shares = []
    real = shard.predict_in_processes
    monkeypatch.setattr(
        shard,
        "predict_in_processes",
        lambda work, call, files, n, *a: shares.append((len(files), n)) or real(work, call, files, n, *a),
    )
    logs: dict[int, list[str]] = {1: [], 2: []}
    errors = {}
    for n in (1, 2):
        with pytest.raises(PredictError) as info:
            predict(run, [src], tmp_path / str(n), prob_maps=["circle"], nproc=n, log=logs[n].append)
        errors[n] = info.value
    assert shares == [(10, 2)]  # really shared out, by the second run only
    one, two = contents(tmp_path / "1"), contents(tmp_path / "2")
    assert len(one) == 8 * 3 and one.keys() == two.keys()  # mask, overlay, prob map per image; no temp files
    assert [k for k in one if one[k] != two[k]] == []
    assert sorted(logs[2]) == logs[1] and logs[1][0].startswith("skipped a_bad.png: cannot read")
    assert str(errors[2]) == str(errors[1]).replace(str(tmp_path / "1"), str(tmp_path / "2"))
    assert str(errors[2]).startswith("predicted 8 of 10 images into ")
    assert "2 failed: a_bad.png (cannot read" in str(errors[2]) and "; b_bad.png (cannot read" in str(
        errors[2]
    )
    assert [Path(r["input"]).name for r in errors[2].results] == [f"im{i}.png" for i in range(8)]
    assert [r["mask"] for r in errors[2].results] == [
        str(tmp_path / "2" / f"im{i}_mask.png") for i in range(8)
    ]
    assert [p.name for p, _ in errors[2].failures] == ["a_bad.png", "b_bad.png"]


def test_a_bad_checkpoint_stops_every_worker_in_one_line(run, tmp_path, run_cli):
    """Weights that do not fit the sidecar's model fail in each worker as they load: one line, no traceback."""
    from safetensors.torch import save_file

    from seglab.checkpoint import read_meta, write_sidecar
    from seglab.models.factory import create_model

    meta = read_meta(run / "best.safetensors")
    bad = tmp_path / "bad" / "best.safetensors"
    bad.parent.mkdir()
    wide = create_model("unet", num_classes=meta.num_classes, depth=2, base_channels=8)
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(bad))
    write_sidecar(bad, meta)  # a sidecar that matches the file: the mismatch shows only when the model loads
    code, out, err = run_cli(
        "predict", bad, images(tmp_path / "in"), "--out", tmp_path / "out", "--nproc", "2"
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("seglab: error: ") and "does not fit a unet model" in err
    assert not (tmp_path / "out").exists()  # as in one process: nothing made before the model loads


def test_a_worker_that_dies_is_one_line_naming_its_image():
    """A worker killed without a word (out of memory, a signal) is a crash of that worker on its current image."""
    messages: queue.Queue = queue.Queue()
    for code, how in ((9, "exited with code 9"), (-9, "was killed by signal 9")):
        dead = SimpleNamespace(exitcode=code)
        kind, k, *payload = shard._next_message(
            messages, [SimpleNamespace(exitcode=None), dead], {0, 1}, 0.01
        )
        error = shard._worker_error(kind, k, 2, payload, [Path("x.png"), Path("y.png")], 1)
        assert isinstance(error, SeglabError)
        assert str(error) == f"prediction process 2 of 2 failed on y.png: it {how} (out of memory?)"


def test_bad_nproc_values_fail_in_one_line(run, tmp_path, run_cli, monkeypatch):
    src = images(tmp_path / "in")
    for bad in ("0", "-1", "two", "1.5"):
        code, out, err = run_cli("predict", run, src, "--out", tmp_path / "out", "--nproc", bad)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "argument --nproc" in err and repr(bad) in err
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="nproc must be an integer >= 1"):
            predict(run, [src], tmp_path / "out", nproc=bad, progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, out, err = run_cli("predict", run, src, "--out", tmp_path / "out", "--nproc", "2")
    assert code == 2 and err.count("\n") == 1
    assert "--nproc 2 does not combine with torchrun (WORLD_SIZE=2)" in err
    assert not (tmp_path / "out").exists()


def test_worker_threads_share_torchs_threads(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert [shard.worker_threads(n, None) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert shard.worker_threads(4, 3) == 3  # --threads as given


# ------------------------------------------------------------------ --skip-existing


def test_skip_existing_predicts_exactly_the_unfinished_inputs(run, tmp_path, run_cli):
    src = images(tmp_path / "in")
    out = tmp_path / "out"
    assert (
        run_cli("predict", run, src, "--out", out, "--skip-existing", "--no-progress")[0] == 0
    )  # fresh: all
    first = contents(out)
    old = 1_000_000_000
    for p in out.iterdir():
        os.utime(p, (old, old))
    (out / "im2_overlay.png").unlink()  # an interrupted run: im2's mask written, its overlay not
    (out / "im5_mask.png").unlink()
    code, stdout, err = run_cli("predict", run, src, "--out", out, "--skip-existing", "--no-progress")
    assert code == 0 and err == ""
    assert stdout.strip() == f"wrote 2 masks and overlays to {out}; skipped 6 inputs done before"
    renewed = sorted(p.name for p in out.iterdir() if p.stat().st_mtime != old)
    assert renewed == ["im2_mask.png", "im2_overlay.png", "im5_mask.png", "im5_overlay.png"]
    assert contents(out) == first

    # a file that is not predict's own output is never trusted: with --overwrite that input is predicted again
    Image.new("RGB", (4, 4)).save(out / "im0_mask.png")
    records = predict(run, [src], out, skip_existing=True, overwrite=True, progress=False)
    assert [bool(r.get("skipped")) for r in records] == [False] + [True] * 7
    assert records[1] == {
        "input": str(src / "im1.png"),
        "mask": str(out / "im1_mask.png"),
        "overlay": str(out / "im1_overlay.png"),
        "skipped": True,
    }
    assert contents(out) == first

    # with every output there, nothing is loaded or predicted; in workers, only what is missing
    for p in out.iterdir():
        os.utime(p, (old, old))
    assert run_cli("predict", run, src, "--out", out, "--skip-existing")[1].endswith(
        "skipped 8 inputs done before\n"
    )
    (out / "im1_mask.png").unlink()
    (out / "im6_overlay.png").unlink()
    code, stdout, _ = run_cli(
        "predict", run, src, "--out", out, "--skip-existing", "--nproc", "2", "--no-progress"
    )
    assert code == 0 and stdout.startswith("wrote 2 masks")
    renewed = sorted(p.name for p in out.iterdir() if p.stat().st_mtime != old)
    assert renewed == ["im1_mask.png", "im1_overlay.png", "im6_mask.png", "im6_overlay.png"]
    assert contents(out) == first


# ------------------------------------------------------------------ torchrun: one share per rank


def test_torchrun_two_ranks_write_what_one_process_writes(run, tmp_path):
    """`torchrun --nproc-per-node 2 -m seglab predict`: rank r predicts inputs r, r+2, ... into the shared folder,
    the same bytes as one process; the unreadable files of both ranks end in rank 0's one summary of the job,
    and no rank prints anything else."""
    src = images(tmp_path / "in", bad=("a_bad.png", "b_bad.png"))  # inputs 0 and 1 of 10: one on each rank
    with pytest.raises(PredictError):
        predict(run, [src], tmp_path / "one", prob_maps=["circle"], progress=False, log=lambda line: None)
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "seglab", "predict", run, src]
    r = seglab_cmd([*cmd, "--out", tmp_path / "two", "--prob", "circle", "--no-progress"])
    assert r.returncode != 0 and r.stdout == ""
    assert contents(tmp_path / "two") == contents(tmp_path / "one")
    summary = [ln for ln in r.stderr.splitlines() if ln.startswith("seglab: error:")]
    assert len(summary) == 1, r.stderr[-3000:]
    assert summary[0].startswith(
        f"seglab: error: [rank 0] predicted 8 of 10 images into {tmp_path / 'two'}; "
    )
    assert "2 failed: a_bad.png (cannot read" in summary[0] and "; b_bad.png (cannot read" in summary[0]
